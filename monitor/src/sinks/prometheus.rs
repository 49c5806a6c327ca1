//! The Prometheus endpoint: `GET /metrics` in the OpenMetrics text format, for hosts that
//! scrape their agents instead of (or as well as) receiving OTLP.
//!
//! A bus consumer like the others: it subscribes to the [`EventBus`] and keeps its own
//! counters (the `prometheus-client` registry), so a scrape only encodes what is already
//! counted and never waits on the pipeline. The names are the OTLP metrics of
//! docs/telemetry.md mapped by the OpenTelemetry → Prometheus rules (`.` → `_`, unit
//! suffix, `_total` on counters): `connmon.connect.attempts` is
//! `connmon_connect_attempts_total`, `connmon.connect.duration` (s) is
//! `connmon_connect_duration_seconds`.
//!
//! Two gauges need the policy's table (`connmon_destinations_tracked`, `..._ejected`):
//! they come from a policy snapshot asked at most every [`SNAPSHOT_EVERY`], and only
//! while someone scrapes. Per-destination series are bounded by
//! `agent.metrics_destinations` ([`DestinationSeries`]): ejected destinations first, then
//! pool members, then the most failing targets; a destination pushed out loses its series
//! (counted in `connmon_metrics_destinations_dropped_total`), so a host talking to millions
//! of targets cannot explode the cardinality.
//!
//! If the consumer falls behind the bus it loses the oldest messages and counts them
//! (`connmon_subscribers_lagged_total{subscriber="prometheus"}`).

use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use axum::{Router, extract::State, http::header, response::IntoResponse, routing::get};
use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric, MetricEncoder},
    metrics::{
        MetricType,
        counter::{ConstCounter, Counter},
        family::Family,
        gauge::Gauge,
        histogram::Histogram,
        info::Info,
    },
    registry::{Registry, Unit},
};
use tokio::sync::{
    broadcast::error::RecvError,
    mpsc::{self, error::TrySendError},
    oneshot,
};
use tokio_util::sync::CancellationToken;

use crate::{
    bus::{Payload, Published},
    config::AgentConfig,
    control::Control,
    policy::{PolicySnapshot, Role, decision::Decision},
    sinks::otlp::metrics::{DURATION_BUCKETS, DropReason, ExportCounts},
    source::event::Outcome,
};

/// The OpenMetrics content type Prometheus asks for and understands.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// At most one policy snapshot this often, and only if `/metrics` was scraped since.
const SNAPSHOT_EVERY: Duration = Duration::from_secs(10);
/// How long a snapshot may take before the gauges keep their last values.
const SNAPSHOT_TIMEOUT: Duration = Duration::from_secs(1);

/// Why the endpoint could not start.
#[derive(Debug, thiserror::Error)]
pub enum PrometheusError {
    #[error("cannot listen on {addr} for agent.metrics: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AttemptLabels {
    outcome: &'static str,
    role: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RoleLabels {
    role: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EvictionLabels {
    reason: String,
    origin: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OriginLabels {
    origin: &'static str,
}

/// The `origin` label of the ejection counters: `local` for this host's own decisions,
/// `fleet` for one applied from other hosts' verdicts (`[fleet]`). Two values only: a
/// label per remote host would add a series per host of the fleet (hundreds) to every
/// scrape of every host; the `evict` line names the host(s).
fn origin_label(origin: Option<&str>) -> &'static str {
    if origin.is_some() { "fleet" } else { "local" }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DestinationLabels {
    dst: String,
    role: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DestinationOutcomeLabels {
    dst: String,
    role: &'static str,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BuildLabels {
    version: &'static str,
}

fn role_str(role: Role) -> &'static str {
    crate::sinks::otlp::spans::role_str(role)
}

fn duration_histogram() -> Histogram {
    Histogram::new(DURATION_BUCKETS)
}

/// A metric of any type, so that metrics of different types register from one list.
#[derive(Debug)]
struct AnyMetric(Box<dyn prometheus_client::registry::Metric>);

fn any(metric: impl prometheus_client::registry::Metric) -> AnyMetric {
    AnyMetric(Box::new(metric))
}

impl EncodeMetric for AnyMetric {
    fn encode(&self, encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        self.0.encode(encoder)
    }

    fn metric_type(&self) -> MetricType {
        self.0.metric_type()
    }

    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// Every metric the endpoint serves, updated by the consumer.
#[derive(Clone)]
pub struct Metrics {
    attempts: Family<AttemptLabels, Counter>,
    duration: Family<RoleLabels, Histogram, fn() -> Histogram>,
    syn_retransmits: Family<RoleLabels, Counter>,
    evictions: Family<EvictionLabels, Counter>,
    reinstatements: Family<OriginLabels, Counter>,
    tracked: Gauge,
    ejected: Gauge,
    lost_events: Counter,
    kernel_overflow: Counter,
    lagged: Counter,
    /// The agent's own handshake-check probes that ended (`[checks]`), counted apart
    /// from the clients' connect attempts (as OTLP's `connmon.probes`).
    probes: Counter,
    dst_attempts: Family<DestinationOutcomeLabels, Counter>,
    dst_ejected: Family<DestinationLabels, Gauge>,
    dst_dropped: Counter,
    /// Last cumulative `lost_events` seen in a `stats` message.
    last_lost: u64,
    /// Last cumulative `overflow` seen in a `stats` message.
    last_overflow: u64,
    /// Handles of the hot counters, so that a connect costs no label hashing: by
    /// (outcome, role), and per tracked destination by outcome.
    attempt_handles: HashMap<(Outcome, Role), Counter>,
    dst_handles: HashMap<SocketAddr, [Option<Counter>; Outcome::ALL.len()]>,
}

impl Metrics {
    /// The metrics, registered in a new registry.
    pub fn register() -> (Metrics, Registry) {
        let mut registry = Registry::with_prefix("connmon");
        let m = Metrics {
            attempts: Family::default(),
            duration: Family::new_with_constructor(duration_histogram),
            syn_retransmits: Family::default(),
            evictions: Family::default(),
            reinstatements: Family::default(),
            tracked: Gauge::default(),
            ejected: Gauge::default(),
            lost_events: Counter::default(),
            kernel_overflow: Counter::default(),
            lagged: Counter::default(),
            probes: Counter::default(),
            dst_attempts: Family::default(),
            dst_ejected: Family::default(),
            dst_dropped: Counter::default(),
            last_lost: 0,
            last_overflow: 0,
            attempt_handles: HashMap::new(),
            dst_handles: HashMap::new(),
        };
        let build = Info::new(BuildLabels {
            version: env!("CARGO_PKG_VERSION"),
        });
        // Both series from the start (a reinstatement counter reading 0, not absent).
        for origin in ["local", "fleet"] {
            let _ = m.reinstatements.get_or_create(&OriginLabels { origin });
        }
        // (name, help, unit, metric), in the order they are served.
        #[rustfmt::skip]
        let metrics = [
            ("build", "connmon's version", None, any(build)),
            ("connect_attempts", "Outgoing TCP connect attempts by outcome and role", None, any(m.attempts.clone())),
            ("connect_duration", "TCP handshake time of established connects", Some(Unit::Seconds), any(m.duration.clone())),
            ("syn_retransmits", "SYN retransmissions of pending connects", None, any(m.syn_retransmits.clone())),
            ("evictions", "Destinations taken out of rotation, by reason and origin (local or fleet)", None, any(m.evictions.clone())),
            ("reinstatements", "Destinations put back into rotation, by origin (local or fleet)", None, any(m.reinstatements.clone())),
            ("destinations_tracked", "Destinations in the policy's table (policy snapshot, at most every 10 s)", None, any(m.tracked.clone())),
            ("destinations_ejected", "Destinations currently ejected (policy snapshot, at most every 10 s)", None, any(m.ejected.clone())),
            ("events_lost", "Kernel events lost because the ring buffer was full (as of the last stats)", None, any(m.lost_events.clone())),
            ("kernel_overflow", "Connects whose kernel state went to socket storage: slot table and connects hash full (as of the last stats)", None, any(m.kernel_overflow.clone())),
            ("probes", "Handshake-check probes made by the agent itself that ended (not in connect_attempts)", None, any(m.probes.clone())),
            ("destination_connect_attempts", "Connect attempts per destination (bounded: agent.metrics_destinations)", None, any(m.dst_attempts.clone())),
            ("destination_ejected", "1 while the destination is ejected (bounded: agent.metrics_destinations)", None, any(m.dst_ejected.clone())),
            ("metrics_destinations_dropped", "Destinations whose series were removed to keep within agent.metrics_destinations", None, any(m.dst_dropped.clone())),
        ];
        for (name, help, unit, metric) in metrics {
            match unit {
                Some(unit) => registry.register_with_unit(name, help, unit, metric),
                None => registry.register(name, help, metric),
            }
        }
        registry.register_collector(Box::new(ExporterTally {
            tally: ExportCounts::shared(),
            prometheus_lagged: m.lagged.clone(),
        }));
        (m, registry)
    }

    fn on_message(&mut self, msg: &Published, series: &mut DestinationSeries) {
        let role = msg.role.unwrap_or(Role::Target);
        match &msg.payload {
            // The agent's own probes: a counter of their own, never client attempts.
            Payload::Connect(_) if msg.probe => {
                self.probes.inc();
            }
            Payload::SynRetransmit(_) if msg.probe => {}
            Payload::Connect(c) => {
                let r = role_str(role);
                let attempts = &self.attempts;
                self.attempt_handles
                    .entry((c.outcome, role))
                    .or_insert_with(|| {
                        attempts.get_or_create_owned(&AttemptLabels {
                            outcome: c.outcome.as_str(),
                            role: r,
                        })
                    })
                    .inc();
                if !c.outcome.is_failure() {
                    self.duration
                        .get_or_create(&RoleLabels { role: r })
                        .observe(c.ktime_ns.saturating_sub(c.start_ns) as f64 / 1e9);
                }
                let admission = series.touch(c.dst, role, c.outcome.is_failure());
                self.apply(&admission);
                if admission.tracked {
                    let family = &self.dst_attempts;
                    self.dst_handles.entry(c.dst).or_default()[c.outcome as usize]
                        .get_or_insert_with(|| {
                            family.get_or_create_owned(&DestinationOutcomeLabels {
                                dst: c.dst.to_string(),
                                role: r,
                                outcome: c.outcome.as_str(),
                            })
                        })
                        .inc();
                }
            }
            Payload::SynRetransmit(_) => {
                self.syn_retransmits
                    .get_or_create(&RoleLabels {
                        role: role_str(role),
                    })
                    .inc();
            }
            Payload::Decision(Decision::Evict(e)) => {
                let reason = serde_json::to_value(e.reason)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_owned))
                    .unwrap_or_default();
                self.evictions
                    .get_or_create(&EvictionLabels {
                        reason,
                        origin: origin_label(e.origin.as_deref()),
                    })
                    .inc();
                let admission = series.set_ejected(e.dst, role, true);
                self.apply(&admission);
                self.dst_ejected
                    .get_or_create(&DestinationLabels {
                        dst: e.dst.to_string(),
                        role: role_str(role),
                    })
                    .set(1);
            }
            Payload::Decision(Decision::Reinstate(r)) => {
                self.reinstatements
                    .get_or_create(&OriginLabels {
                        origin: origin_label(r.origin.as_deref()),
                    })
                    .inc();
                if series.set_ejected(r.dst, role, false).tracked {
                    self.dst_ejected
                        .get_or_create(&DestinationLabels {
                            dst: r.dst.to_string(),
                            role: role_str(role),
                        })
                        .set(0);
                }
            }
            Payload::Decision(_) => {}
            Payload::Stats(s) => {
                if s.lost_events > self.last_lost {
                    self.lost_events.inc_by(s.lost_events - self.last_lost);
                    self.last_lost = s.lost_events;
                }
                if s.overflow > self.last_overflow {
                    self.kernel_overflow.inc_by(s.overflow - self.last_overflow);
                    self.last_overflow = s.overflow;
                }
            }
        }
    }

    /// Removes the series of a destination pushed out of the bounded set.
    fn apply(&mut self, admission: &Admission) {
        let Some((dst, role)) = admission.dropped else {
            return;
        };
        self.dst_dropped.inc();
        self.dst_handles.remove(&dst);
        let dst = dst.to_string();
        let role = role_str(role);
        for outcome in Outcome::ALL {
            self.dst_attempts.remove(&DestinationOutcomeLabels {
                dst: dst.clone(),
                role,
                outcome: outcome.as_str(),
            });
        }
        self.dst_ejected.remove(&DestinationLabels { dst, role });
    }

    fn on_snapshot(&mut self, snapshot: &PolicySnapshot, series: &mut DestinationSeries) {
        self.tracked.set(snapshot.tracked as i64);
        self.ejected.set(snapshot.ejected as i64);
        // Reinstatements this consumer missed (it lagged behind the bus).
        let ejected_now: std::collections::HashSet<SocketAddr> = snapshot
            .destinations
            .iter()
            .filter(|d| d.ejected_until.is_some())
            .map(|d| d.dst)
            .collect();
        for (dst, role) in series.ejected_except(&ejected_now) {
            series.set_ejected(dst, role, false);
            self.dst_ejected
                .get_or_create(&DestinationLabels {
                    dst: dst.to_string(),
                    role: role_str(role),
                })
                .set(0);
        }
        // Ejections restored from the state file were never on the bus.
        for d in snapshot
            .destinations
            .iter()
            .filter(|d| d.ejected_until.is_some())
        {
            let admission = series.set_ejected(d.dst, d.role, true);
            self.apply(&admission);
            self.dst_ejected
                .get_or_create(&DestinationLabels {
                    dst: d.dst.to_string(),
                    role: role_str(d.role),
                })
                .set(1);
        }
    }
}

/// The exporters' own losses, read at scrape time: the OTLP exporter's drops and lag
/// (shared [`ExportCounts`]) and this endpoint's bus lag.
#[derive(Debug)]
struct ExporterTally {
    tally: Arc<ExportCounts>,
    prometheus_lagged: Counter,
}

impl Collector for ExporterTally {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        {
            let mut family = encoder.encode_descriptor(
                "export_dropped",
                "OTLP telemetry that never reached the collector, by reason",
                None,
                MetricType::Counter,
            )?;
            for &reason in DropReason::ALL {
                let labels = [("reason", reason.as_str())];
                ConstCounter::new(self.tally.dropped_total(reason))
                    .encode(family.encode_family(&labels)?)?;
            }
        }
        let mut family = encoder.encode_descriptor(
            "subscribers_lagged",
            "Event-bus messages a subscriber lost because it fell behind",
            None,
            MetricType::Counter,
        )?;
        ConstCounter::new(self.tally.lagged_total())
            .encode(family.encode_family(&[("subscriber", "otlp")])?)?;
        ConstCounter::new(self.prometheus_lagged.get())
            .encode(family.encode_family(&[("subscriber", "prometheus")])?)?;
        Ok(())
    }
}

/// What [`DestinationSeries`] decided for one destination.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Admission {
    /// The destination has (now) its own series.
    pub tracked: bool,
    /// Another destination lost its series to make room.
    pub dropped: Option<(SocketAddr, Role)>,
}

#[derive(Clone, Copy, Debug)]
struct SeriesEntry {
    role: Role,
    failures: u64,
    ejected: bool,
}

impl SeriesEntry {
    /// Higher ranks keep their series: ejected, then pool members, then failures.
    fn rank(&self) -> (bool, bool, u64) {
        (self.ejected, self.role == Role::Proxy, self.failures)
    }
}

/// Which destinations have their own series: at most `capacity`, ranked by ejected, pool
/// member, failures. A target that never failed never gets one; a newcomer takes the
/// place of the lowest-ranked destination only if it ranks strictly higher, so equal
/// destinations do not churn series.
#[derive(Debug)]
pub struct DestinationSeries {
    capacity: usize,
    entries: HashMap<SocketAddr, SeriesEntry>,
}

impl DestinationSeries {
    pub fn new(capacity: usize) -> Self {
        DestinationSeries {
            capacity,
            entries: HashMap::with_capacity(capacity.min(1024)),
        }
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// A connect to `dst` (`failure`: it failed).
    pub fn touch(&mut self, dst: SocketAddr, role: Role, failure: bool) -> Admission {
        if let Some(e) = self.entries.get_mut(&dst) {
            e.role = role;
            e.failures += u64::from(failure);
            return Admission {
                tracked: true,
                dropped: None,
            };
        }
        if role == Role::Target && !failure {
            return Admission::default();
        }
        self.admit(
            dst,
            SeriesEntry {
                role,
                failures: u64::from(failure),
                ejected: false,
            },
        )
    }

    /// Destinations marked ejected that are not in `ejected`.
    fn ejected_except(
        &self,
        ejected: &std::collections::HashSet<SocketAddr>,
    ) -> Vec<(SocketAddr, Role)> {
        self.entries
            .iter()
            .filter(|(dst, e)| e.ejected && !ejected.contains(*dst))
            .map(|(dst, e)| (*dst, e.role))
            .collect()
    }

    /// `dst` was ejected or reinstated.
    pub fn set_ejected(&mut self, dst: SocketAddr, role: Role, ejected: bool) -> Admission {
        if let Some(e) = self.entries.get_mut(&dst) {
            e.ejected = ejected;
            return Admission {
                tracked: true,
                dropped: None,
            };
        }
        if !ejected {
            return Admission::default();
        }
        self.admit(
            dst,
            SeriesEntry {
                role,
                failures: 0,
                ejected,
            },
        )
    }

    fn admit(&mut self, dst: SocketAddr, entry: SeriesEntry) -> Admission {
        if self.capacity == 0 {
            return Admission::default();
        }
        let mut dropped = None;
        if self.entries.len() >= self.capacity {
            let Some((&lowest, low)) = self.entries.iter().min_by_key(|(_, e)| e.rank()) else {
                return Admission::default();
            };
            if low.rank() >= entry.rank() {
                return Admission::default();
            }
            let low = *low;
            self.entries.remove(&lowest);
            dropped = Some((lowest, low.role));
        }
        self.entries.insert(dst, entry);
        Admission {
            tracked: true,
            dropped,
        }
    }
}

/// Starts the endpoint if `agent.metrics` is set; binds before returning, so an address
/// in use stops the agent before it attaches anything.
pub fn start(agent: &AgentConfig, cx: &super::SinkContext) -> Result<(), PrometheusError> {
    let super::SinkContext {
        bus,
        control,
        shutdown,
        tasks,
        ..
    } = cx;
    let Some(addr) = agent.metrics else {
        return Ok(());
    };
    let listener = std::net::TcpListener::bind(addr)
        .and_then(|l| l.set_nonblocking(true).map(|()| l))
        .and_then(tokio::net::TcpListener::from_std)
        .map_err(|source| PrometheusError::Bind { addr, source })?;
    let local = listener.local_addr().unwrap_or(addr);
    let (metrics, mut registry) = Metrics::register();
    if let Some(fleet) = &cx.fleet {
        registry.register_collector(Box::new(super::fleet::prometheus::FleetCollector(
            Arc::clone(fleet),
        )));
    }
    let scraped = Arc::new(AtomicBool::new(false));
    let endpoint = Endpoint {
        registry: Arc::new(registry),
        scraped: Arc::clone(&scraped),
    };
    let app = Router::new()
        .route("/metrics", get(serve_metrics))
        .route("/", get(serve_index))
        .with_state(endpoint);
    let stop = shutdown.clone();
    tasks.spawn(async move {
        if let Err(err) = axum::serve(listener, app)
            .with_graceful_shutdown(stop.cancelled_owned())
            .await
        {
            tracing::error!(%err, "the Prometheus endpoint stopped");
        }
    });
    let consumer = Consumer {
        rx: bus.subscribe(),
        metrics,
        series: DestinationSeries::new(agent.metrics_destinations),
        control: control.clone(),
        scraped,
        shutdown: shutdown.clone(),
    };
    tasks.spawn(consumer.run());
    tracing::info!(addr = %local, "Prometheus endpoint on http://{local}/metrics");
    Ok(())
}

#[derive(Clone)]
struct Endpoint {
    registry: Arc<Registry>,
    scraped: Arc<AtomicBool>,
}

async fn serve_metrics(State(endpoint): State<Endpoint>) -> impl IntoResponse {
    endpoint.scraped.store(true, Ordering::Relaxed);
    let mut body = String::with_capacity(16 * 1024);
    if let Err(err) = prometheus_client::encoding::text::encode(&mut body, &endpoint.registry) {
        tracing::error!(%err, "cannot encode /metrics");
        return (
            axum::http::StatusCode::INTERNAL_SERVER_ERROR,
            [(header::CONTENT_TYPE, "text/plain")],
            format!("cannot encode metrics: {err}\n"),
        );
    }
    (
        axum::http::StatusCode::OK,
        [(header::CONTENT_TYPE, CONTENT_TYPE)],
        body,
    )
}

async fn serve_index() -> &'static str {
    "connmon: metrics are at /metrics\n"
}

/// Reads the bus into [`Metrics`]; refreshes the table gauges from a snapshot while scraped.
struct Consumer {
    rx: tokio::sync::broadcast::Receiver<Arc<Published>>,
    metrics: Metrics,
    series: DestinationSeries,
    control: mpsc::Sender<Control>,
    scraped: Arc<AtomicBool>,
    shutdown: CancellationToken,
}

impl Consumer {
    async fn run(mut self) {
        let mut tick = tokio::time::interval(SNAPSHOT_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // The first snapshot (restored ejections, table size) is asked at once.
        self.scraped.store(true, Ordering::Relaxed);
        let mut pending: Option<oneshot::Receiver<PolicySnapshot>> = None;
        let mut deadline = tokio::time::Instant::now();
        loop {
            tokio::select! {
                biased;
                msg = self.rx.recv() => match msg {
                    Ok(msg) => self.metrics.on_message(&msg, &mut self.series),
                    Err(RecvError::Lagged(n)) => { self.metrics.lagged.inc_by(n); }
                    Err(RecvError::Closed) => break,
                },
                answer = async { pending.as_mut().expect("guarded").await }, if pending.is_some() => {
                    pending = None;
                    if let Ok(snapshot) = answer {
                        self.metrics.on_snapshot(&snapshot, &mut self.series);
                    }
                }
                _ = tokio::time::sleep_until(deadline), if pending.is_some() => pending = None,
                _ = tick.tick() => {
                    if pending.is_none() && self.scraped.swap(false, Ordering::Relaxed) {
                        let (reply, answer) = oneshot::channel();
                        match self.control.try_send(Control::Snapshot { reply }) {
                            Ok(()) => {
                                pending = Some(answer);
                                deadline = tokio::time::Instant::now() + SNAPSHOT_TIMEOUT;
                            }
                            // Busy: try again at the next tick.
                            Err(TrySendError::Full(_)) => self.scraped.store(true, Ordering::Relaxed),
                            Err(TrySendError::Closed(_)) => {}
                        }
                    }
                }
                _ = self.shutdown.cancelled() => break,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{bus::EventBus, clock::WallClock, source::event::refused_to};

    fn addr(i: u16) -> SocketAddr {
        SocketAddr::from(([10, 0, 0, 1], i))
    }

    #[test]
    fn series_are_bounded_and_ranked_ejected_then_pool_members_then_failures() {
        let mut s = DestinationSeries::new(2);
        assert!(
            !s.touch(addr(1), Role::Target, false).tracked,
            "a healthy target never gets a series"
        );
        assert!(s.touch(addr(1), Role::Target, true).tracked);
        assert!(s.touch(addr(2), Role::Target, true).tracked);
        s.touch(addr(2), Role::Target, true);
        // Full: a target with 1 failure does not push out one with as many.
        assert_eq!(
            s.touch(addr(3), Role::Target, true),
            Admission::default(),
            "equal ranks do not churn"
        );
        // A pool member outranks any target: the least failing target goes.
        assert_eq!(
            s.touch(addr(4), Role::Proxy, false),
            Admission {
                tracked: true,
                dropped: Some((addr(1), Role::Target))
            }
        );
        // An ejection outranks everything.
        assert_eq!(
            s.set_ejected(addr(5), Role::Target, true),
            Admission {
                tracked: true,
                dropped: Some((addr(2), Role::Target))
            }
        );
        assert_eq!(s.len(), 2);
        assert!(
            !s.set_ejected(addr(6), Role::Target, false).tracked,
            "a reinstatement of an unknown destination adds nothing"
        );
        assert!(
            DestinationSeries::new(0).touch(addr(1), Role::Proxy, true) == Admission::default()
        );
    }

    fn scrape(registry: &Registry) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, registry).unwrap();
        out
    }

    /// The metrics, fed from a bus of their own as the consumer feeds them.
    struct Fed {
        metrics: Metrics,
        registry: Registry,
        series: DestinationSeries,
        bus: EventBus,
        rx: tokio::sync::broadcast::Receiver<Arc<Published>>,
    }

    impl Fed {
        fn new() -> Self {
            let (metrics, registry) = Metrics::register();
            let bus = EventBus::new(16, WallClock::from_offset_ns(0));
            Fed {
                metrics,
                registry,
                series: DestinationSeries::new(10),
                rx: bus.subscribe(),
                bus,
            }
        }

        /// Counts what the bus carried so far, then scrapes.
        fn scrape(&mut self) -> String {
            while let Ok(msg) = self.rx.try_recv() {
                self.metrics.on_message(&msg, &mut self.series);
            }
            scrape(&self.registry)
        }
    }

    #[test]
    fn the_exposition_uses_prometheus_names_and_counts_bus_messages() {
        let mut fed = Fed::new();
        let bus = &fed.bus;
        let dst = SocketAddr::from(([127, 0, 0, 1], 9));
        for _ in 0..3 {
            bus.event(&refused_to(dst), Role::Proxy);
        }
        let crate::source::event::KernelEvent::Connect(mut ok) = refused_to(dst) else {
            unreachable!("refused_to is a connect")
        };
        ok.outcome = crate::source::event::Outcome::Established;
        ok.ktime_ns = ok.start_ns + 300_000;
        bus.event(&crate::source::event::KernelEvent::Connect(ok), Role::Proxy);
        let text = fed.scrape();
        for line in [
            "connmon_connect_attempts_total{outcome=\"refused\",role=\"proxy\"} 3",
            "connmon_destination_connect_attempts_total{dst=\"127.0.0.1:9\",role=\"proxy\",outcome=\"refused\"} 3",
            "# TYPE connmon_connect_duration_seconds histogram",
            "# UNIT connmon_connect_duration_seconds seconds",
            "connmon_connect_duration_seconds_bucket{le=\"0.0005\",role=\"proxy\"} 1",
            "connmon_connect_duration_seconds_bucket{le=\"0.00025\",role=\"proxy\"} 0",
            "connmon_build_info{version=\"",
            "connmon_probes_total 0",
            "connmon_export_dropped_total{reason=\"queue_full\"} 0",
            "connmon_subscribers_lagged_total{subscriber=\"prometheus\"} 0",
            "connmon_events_lost_total 0",
            "# EOF",
        ] {
            assert!(text.contains(line), "missing {line:?} in:\n{text}");
        }
    }

    fn eviction(dst: SocketAddr, origin: Option<&str>) -> Decision {
        use crate::policy::{EjectionTerm, Evidence, Reason};
        Decision::Evict(crate::policy::Eviction {
            dst,
            netns: None,
            role: Role::Proxy,
            reason: if origin.is_some() {
                Reason::Fleet
            } else {
                Reason::Refused
            },
            failure_mode: None,
            evidence: Evidence {
                attempts: 3,
                refused: 3,
                timeout: 0,
                abandoned: 0,
                reset: 0,
                unreachable: 0,
                syn_retransmits: 0,
                streak: 3,
            },
            ejection: EjectionTerm {
                count: 1,
                duration_ms: 30_000,
                until: "2026-01-01T00:00:00Z".into(),
            },
            trigger: None,
            origin: origin.map(Arc::from),
            local_outage: false,
            detect_us: None,
            ts: None,
        })
    }

    fn reinstatement(dst: SocketAddr, origin: Option<&str>) -> Decision {
        Decision::Reinstate(crate::policy::Reinstatement {
            dst,
            netns: None,
            ejected_ms: 1_000,
            verified: false,
            early: false,
            origin: origin.map(Arc::from),
            ts: None,
        })
    }

    #[test]
    fn ejection_counters_say_whether_the_verdict_was_this_hosts_or_the_fleets() {
        let mut fed = Fed::new();
        let bus = &fed.bus;
        let text = scrape(&fed.registry);
        for line in [
            "connmon_reinstatements_total{origin=\"local\"} 0",
            "connmon_reinstatements_total{origin=\"fleet\"} 0",
        ] {
            assert!(
                text.contains(line),
                "missing {line:?} before any decision:\n{text}"
            );
        }
        // One local eviction, two from the fleet (one host's, one a quorum's): the
        // label has two values whatever the number of hosts.
        bus.decision(&eviction(addr(1), None), Some(Role::Proxy));
        bus.decision(&eviction(addr(2), Some("host-a")), Some(Role::Proxy));
        bus.decision(&eviction(addr(3), Some("host-b,host-c")), Some(Role::Proxy));
        bus.decision(&reinstatement(addr(1), None), Some(Role::Proxy));
        bus.decision(&reinstatement(addr(2), Some("host-a")), Some(Role::Proxy));
        let text = fed.scrape();
        for line in [
            "connmon_evictions_total{reason=\"refused\",origin=\"local\"} 1",
            "connmon_evictions_total{reason=\"fleet\",origin=\"fleet\"} 2",
            "connmon_reinstatements_total{origin=\"local\"} 1",
            "connmon_reinstatements_total{origin=\"fleet\"} 1",
        ] {
            assert!(text.contains(line), "missing {line:?} in:\n{text}");
        }
        assert!(
            !text.contains("host-a") && !text.contains("host-b"),
            "a host id became a label value:\n{text}"
        );
    }
}
