//! connmon's OpenTelemetry metrics: the instruments, and the exporter's own drop and lag
//! accounting ([`ExportCounts`]), which feeds both `connmon.export.dropped` and a warning
//! logged at most once a minute.

use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use opentelemetry::{
    KeyValue,
    metrics::{Counter, Gauge, Histogram, Meter, ObservableCounter},
};

use super::spans::role_str;
use crate::{
    log_limit::LogLimiter,
    policy::{
        Role,
        decision::{Eviction, Reinstatement},
    },
    source::event::ConnectRecord,
    stats::consumers::ConsumerCounters,
};

/// Why telemetry was dropped before reaching the collector.
#[derive(Clone, Copy, Debug, PartialEq, Eq, strum::IntoStaticStr, strum::VariantArray)]
#[strum(serialize_all = "snake_case")]
pub enum DropReason {
    /// The span queue was full (the collector is slow or away).
    QueueFull,
    /// An export request failed or timed out; its spans are gone.
    ExportFailed,
    /// The exporter fell behind the event bus and lost messages.
    BusLagged,
    /// Spans still queued when the shutdown time limit ran out.
    Shutdown,
}

impl DropReason {
    pub const ALL: &[DropReason] = <DropReason as strum::VariantArray>::VARIANTS;

    pub fn as_str(self) -> &'static str {
        self.into()
    }
}

/// How often the drop warning may be logged.
pub const DROP_LOG_EVERY: Duration = Duration::from_secs(60);

/// Running totals shared by the exporter's tasks; read by observable counters.
#[derive(Debug, Default)]
pub struct ExportCounts {
    dropped: [AtomicU64; 4],
    /// Messages this exporter's bus subscription lost.
    lagged: AtomicU64,
    /// `lost_events` of the last `stats` message (cumulative in the kernel).
    lost_events: AtomicU64,
    failed_exports: AtomicU64,
    /// The same for the `stats` line: spans and metric exports delivered (sent), spans
    /// dropped before export (dropped), spans and metric exports that failed (failed).
    delivery: Arc<ConsumerCounters>,
    log: Mutex<LogState>,
}

#[derive(Debug)]
struct LogState {
    limit: LogLimiter,
    reported: [u64; 4],
    reported_failures: u64,
    last_error: Option<String>,
}

impl Default for LogState {
    fn default() -> Self {
        LogState {
            limit: LogLimiter::new(DROP_LOG_EVERY),
            reported: [0; 4],
            reported_failures: 0,
            last_error: None,
        }
    }
}

/// The process's exporter tally, also read by the Prometheus endpoint
/// (`connmon_export_dropped_total`), so both report the same losses.
static SHARED: std::sync::OnceLock<Arc<ExportCounts>> = std::sync::OnceLock::new();

impl ExportCounts {
    /// The tally the OTLP exporter counts into (zero while export is off).
    pub fn shared() -> Arc<ExportCounts> {
        Arc::clone(SHARED.get_or_init(Arc::default))
    }

    /// Messages the OTLP exporter's bus subscription lost.
    pub fn lagged_total(&self) -> u64 {
        self.lagged.load(Ordering::Relaxed)
    }

    /// The counters this tally keeps for the `stats` line.
    pub fn delivery(&self) -> Arc<ConsumerCounters> {
        Arc::clone(&self.delivery)
    }

    /// Counts `n` dropped items (spans or bus messages).
    pub fn dropped(&self, reason: DropReason, n: u64) {
        self.dropped[reason as usize].fetch_add(n, Ordering::Relaxed);
        match reason {
            DropReason::ExportFailed => self.delivery.failed(n),
            _ => self.delivery.dropped(n),
        }
    }

    /// `n` items (spans, or one metrics export) reached the collector.
    pub fn exported(&self, n: u64) {
        self.delivery.sent(n);
    }

    pub fn dropped_total(&self, reason: DropReason) -> u64 {
        self.dropped[reason as usize].load(Ordering::Relaxed)
    }

    /// The bus told the exporter it missed `n` messages.
    pub fn lagged(&self, n: u64) {
        self.lagged.fetch_add(n, Ordering::Relaxed);
        self.dropped(DropReason::BusLagged, n);
    }

    pub fn set_lost_events(&self, total: u64) {
        self.lost_events.fetch_max(total, Ordering::Relaxed);
    }

    /// An export request failed; the error is kept for the next warning.
    pub fn export_failed(&self, signal: &str, error: &str) {
        self.failed_exports.fetch_add(1, Ordering::Relaxed);
        // A failed span export is counted by its spans (`dropped(ExportFailed, n)`).
        if signal == "metrics" {
            self.delivery.failed(1);
        }
        if let Ok(mut log) = self.log.lock() {
            log.last_error = Some(format!("{signal}: {error}"));
        }
    }

    /// Logs what was dropped or failed since the last warning, at most once a minute.
    pub fn warn_if_due(&self, now: Instant) {
        let Ok(mut log) = self.log.lock() else { return };
        let totals: [u64; 4] = std::array::from_fn(|i| self.dropped[i].load(Ordering::Relaxed));
        let failures = self.failed_exports.load(Ordering::Relaxed);
        if totals == log.reported && failures == log.reported_failures
            || log.limit.allow(now).is_none()
        {
            return;
        }
        let delta = |r: DropReason| totals[r as usize] - log.reported[r as usize];
        tracing::warn!(
            queue_full = delta(DropReason::QueueFull),
            export_failed = delta(DropReason::ExportFailed),
            bus_lagged = delta(DropReason::BusLagged),
            shutdown = delta(DropReason::Shutdown),
            failed_requests = failures - log.reported_failures,
            last_error = log.last_error.as_deref().unwrap_or("none"),
            "OTLP export is losing telemetry (counted in connmon.export.dropped; this warning repeats at most once a minute)"
        );
        log.reported = totals;
        log.reported_failures = failures;
    }
}

/// The instruments the consumer records into.
pub struct Instruments {
    attempts: Counter<u64>,
    probes: Counter<u64>,
    duration: Histogram<f64>,
    evictions: Counter<u64>,
    reinstatements: Counter<u64>,
    pub tracked: Gauge<u64>,
    pub ejected: Gauge<u64>,
    _observed: [ObservableCounter<u64>; 3],
    /// `origin` of this host's own decisions: its fleet host id.
    local_origin: KeyValue,
}

/// The `origin` attribute of an ejection metric: the host whose verdict it is — this
/// host's id for its own decisions, the remote host for a `reason: fleet` one, and
/// `quorum` for a quorum of hosts (their list would multiply the series).
pub fn origin_attribute(local: &KeyValue, origin: Option<&str>) -> KeyValue {
    match origin {
        None => local.clone(),
        Some(hosts) if hosts.contains(',') => KeyValue::new("origin", "quorum"),
        Some(host) => KeyValue::new("origin", host.to_owned()),
    }
}

/// Handshake-time buckets, seconds: 100 µs (loopback) to 10 s (retransmitted SYNs).
pub(crate) const DURATION_BUCKETS: [f64; 15] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    10.0,
];

impl Instruments {
    pub fn new(meter: &Meter, tally: &Arc<ExportCounts>, host_id: &str) -> Self {
        let t = Arc::clone(tally);
        let dropped = meter
            .u64_observable_counter("connmon.export.dropped")
            .with_unit("{item}")
            .with_description(
                "Spans and bus messages dropped before reaching the collector, by reason",
            )
            .with_callback(move |o| {
                for &r in DropReason::ALL {
                    o.observe(t.dropped_total(r), &[KeyValue::new("reason", r.as_str())]);
                }
            })
            .build();
        let t = Arc::clone(tally);
        let lagged = meter
            .u64_observable_counter("connmon.subscribers.lagged")
            .with_unit("{message}")
            .with_description("Event-bus messages a slow subscriber lost")
            .with_callback(move |o| {
                o.observe(
                    t.lagged.load(Ordering::Relaxed),
                    &[KeyValue::new("subscriber", "otlp")],
                )
            })
            .build();
        let t = Arc::clone(tally);
        let lost = meter
            .u64_observable_counter("connmon.events.lost")
            .with_unit("{event}")
            .with_description("Kernel events lost because the ring buffer was full")
            .with_callback(move |o| o.observe(t.lost_events.load(Ordering::Relaxed), &[]))
            .build();
        Instruments {
            attempts: meter
                .u64_counter("connmon.connect.attempts")
                .with_unit("{attempt}")
                .with_description("Outgoing TCP connect attempts by outcome and role")
                .build(),
            probes: meter
                .u64_counter("connmon.probes")
                .with_unit("{probe}")
                .with_description(
                    "The agent's own handshake checks by outcome (not in connmon.connect.attempts)",
                )
                .build(),
            duration: meter
                .f64_histogram("connmon.connect.duration")
                .with_unit("s")
                .with_description("TCP handshake time of established connects")
                .with_boundaries(DURATION_BUCKETS.to_vec())
                .build(),
            evictions: meter
                .u64_counter("connmon.evictions")
                .with_unit("{eviction}")
                .with_description("Destinations taken out of rotation, by reason")
                .build(),
            reinstatements: meter
                .u64_counter("connmon.reinstatements")
                .with_unit("{reinstatement}")
                .with_description("Destinations put back into rotation")
                .build(),
            tracked: meter
                .u64_gauge("connmon.destinations.tracked")
                .with_unit("{destination}")
                .with_description("Destinations in the policy's table")
                .build(),
            ejected: meter
                .u64_gauge("connmon.destinations.ejected")
                .with_unit("{destination}")
                .with_description("Destinations currently ejected")
                .build(),
            _observed: [dropped, lagged, lost],
            local_origin: KeyValue::new("origin", host_id.to_owned()),
        }
    }

    pub fn on_connect(&self, c: &ConnectRecord, role: Role) {
        let role = KeyValue::new("role", role_str(role));
        self.attempts.add(
            1,
            &[KeyValue::new("outcome", c.outcome.as_str()), role.clone()],
        );
        if !c.outcome.is_failure() {
            self.duration
                .record(c.ktime_ns.saturating_sub(c.start_ns) as f64 / 1e9, &[role]);
        }
    }

    /// One of the agent's own probes ended (counted apart from the clients' attempts).
    pub fn on_probe(&self, c: &ConnectRecord, role: Role) {
        self.probes.add(
            1,
            &[
                KeyValue::new("outcome", c.outcome.as_str()),
                KeyValue::new("role", role_str(role)),
            ],
        );
    }

    pub fn on_evict(&self, e: &Eviction) {
        let reason = serde_json::to_value(e.reason)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default();
        self.evictions.add(
            1,
            &[
                KeyValue::new("reason", reason),
                origin_attribute(&self.local_origin, e.origin.as_deref()),
            ],
        );
    }

    pub fn on_reinstate(&self, r: &Reinstatement) {
        self.reinstatements.add(
            1,
            &[origin_attribute(&self.local_origin, r.origin.as_deref())],
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_origin_is_this_host_the_remote_one_or_a_quorum() {
        let local = KeyValue::new("origin", "me");
        assert_eq!(origin_attribute(&local, None), local);
        assert_eq!(
            origin_attribute(&local, Some("a")),
            KeyValue::new("origin", "a")
        );
        assert_eq!(
            origin_attribute(&local, Some("a,b")),
            KeyValue::new("origin", "quorum")
        );
    }

    #[test]
    fn the_stats_line_gets_spans_sent_dropped_and_failed() {
        let t = ExportCounts::default();
        t.exported(4);
        t.exported(1);
        t.dropped(DropReason::QueueFull, 2);
        t.lagged(3);
        t.dropped(DropReason::ExportFailed, 6);
        t.export_failed("traces", "refused");
        t.export_failed("metrics", "refused");
        assert_eq!(
            t.delivery().snapshot(),
            crate::stats::consumers::ConsumerStats {
                sent: 5,
                dropped: 5,
                failed: 7
            },
            "a failed span export counts its spans, a failed metrics export one"
        );
    }

    #[test]
    fn drops_are_counted_by_reason_and_lag_counts_twice() {
        let t = ExportCounts::default();
        t.dropped(DropReason::QueueFull, 3);
        t.lagged(5);
        assert_eq!(t.dropped_total(DropReason::QueueFull), 3);
        assert_eq!(t.dropped_total(DropReason::BusLagged), 5);
        assert_eq!(t.lagged.load(Ordering::Relaxed), 5);
        t.set_lost_events(7);
        t.set_lost_events(4);
        assert_eq!(
            t.lost_events.load(Ordering::Relaxed),
            7,
            "a cumulative total never goes back"
        );
    }

    #[test]
    fn the_warning_is_rate_limited_to_once_a_minute() {
        let t = ExportCounts::default();
        let start = Instant::now();
        t.dropped(DropReason::QueueFull, 1);
        t.warn_if_due(start);
        assert_eq!(t.log.lock().unwrap().limit.last(), Some(start));
        t.dropped(DropReason::QueueFull, 1);
        t.warn_if_due(start + Duration::from_secs(30));
        assert_eq!(
            t.log.lock().unwrap().limit.last(),
            Some(start),
            "not again within a minute"
        );
        t.warn_if_due(start + Duration::from_secs(61));
        assert_eq!(
            t.log.lock().unwrap().reported[DropReason::QueueFull as usize],
            2
        );
    }
}
