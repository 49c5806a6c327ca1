//! OTLP export: connect outcomes and decisions from the event bus as OpenTelemetry spans
//! and metrics, sent to a collector over gRPC or HTTP/protobuf.
//!
//! Three tasks, none of which can slow the pipeline (they only read the bounded bus):
//!
//! - the **consumer** subscribes to the bus, turns messages into spans ([`spans`]) and
//!   metric updates ([`metrics`]); if it falls behind, the bus tells it how many messages
//!   it lost, which are counted (`connmon.export.dropped{reason="bus_lagged"}`);
//! - the **span exporter** takes finished spans from a bounded queue (`span_queue_size`;
//!   when full the newest span is dropped and counted) and sends them in batches;
//! - the **metric exporter** collects the SDK's aggregates every `export_interval` (with
//!   the destination gauges from a policy snapshot) and sends them.
//!
//! Each request is limited by `export_timeout`. When the collector is away, failed
//! batches are dropped and counted, the queue stays bounded, and export resumes on its
//! own when it is back (metrics are cumulative, so nothing is lost for them). At exit the
//! queue and the last metrics are flushed within `shutdown_timeout`.

pub mod env;
mod exporters;
pub mod metrics;
mod send;
pub mod spans;

use std::{
    sync::{Arc, OnceLock},
    time::Duration,
};

use opentelemetry::{
    InstrumentationScope, KeyValue, metrics::MeterProvider as _, trace::TracerProvider as _,
};
use opentelemetry_sdk::{
    Resource,
    metrics::{ManualReader, SdkMeterProvider, Temporality},
    trace::{SdkTracerProvider, SpanExporter as _},
};
use tokio::sync::{broadcast::error::RecvError, mpsc};
use tokio_util::sync::CancellationToken;

use self::{
    env::{ExportTargets, HostIdentity, SignalTarget},
    exporters::{metric_exporter, span_exporter},
    metrics::{ExportCounts, Instruments},
    send::{MetricExport, QueueProcessor, SharedReader, SpanBatcher, Stop},
    spans::ConnectSpans,
};
use crate::{
    bus::{Payload, Published},
    clock::{WallClock, monotonic_now_ns},
    config::{Invalid, otlp::OtlpConfig},
    policy::decision::Decision,
    sinks::SinkContext,
};

/// Why the exporter could not start.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error(transparent)]
    Config(#[from] Invalid),
    #[error("cannot set up the OTLP {signal} exporter for {endpoint}: {source}")]
    Build {
        signal: &'static str,
        endpoint: String,
        #[source]
        source: opentelemetry_otlp::ExporterBuildError,
    },
    #[error("otlp.headers: {0}")]
    Header(String),
}

/// Starts the exporter if an endpoint is configured (config, flag or environment);
/// does nothing otherwise. Must run inside the agent's Tokio runtime. `host_id` is
/// the `origin` of this host's own decisions on the ejection metrics (`[fleet]`).
pub fn start(otlp: &OtlpConfig, host_id: &str, cx: &SinkContext) -> Result<(), ExportError> {
    let SinkContext {
        bus,
        shutdown,
        tasks,
        ..
    } = cx;
    let Some(targets) = env::resolve(otlp, &env::process_env)? else {
        return Ok(());
    };
    let attrs = env::resource_attributes(&env::process_env, &HostIdentity::detect())?;
    let resource = Resource::builder_empty()
        .with_attributes(attrs.into_iter().map(|(k, v)| KeyValue::new(k, v)))
        .build();
    // Both exporters are built before anything is spawned: a bad target stops the agent.
    let span_exporter = match &targets.traces {
        Some(target) => {
            let mut exporter = span_exporter(target, otlp.export_timeout)?;
            exporter.set_resource(&resource);
            Some(exporter)
        }
        None => None,
    };
    let metric_exporter = targets
        .metrics
        .as_ref()
        .map(|t| metric_exporter(t, otlp.export_timeout))
        .transpose()?;
    log_targets(&targets);

    let tally = ExportCounts::shared();
    cx.consumers.register("otlp", tally.delivery());
    let stop = Arc::new(Stop {
        token: shutdown.clone(),
        grace: otlp.shutdown_timeout,
        deadline: OnceLock::new(),
    });
    let scope = InstrumentationScope::builder("connmon")
        .with_version(env!("CARGO_PKG_VERSION"))
        .build();

    // Metrics are always recorded (cheap), and collected only with a metrics target.
    let reader = SharedReader(Arc::new(
        ManualReader::builder()
            .with_temporality(Temporality::Cumulative)
            .build(),
    ));
    let mut meters = SdkMeterProvider::builder().with_resource(resource.clone());
    if metric_exporter.is_some() {
        meters = meters.with_reader(reader.clone());
    }
    let meter_provider = meters.build();
    let instruments = Instruments::new(
        &meter_provider.meter_with_scope(scope.clone()),
        &tally,
        host_id,
    );

    let spans = span_exporter.map(|exporter| {
        let (tx, rx) = mpsc::channel(otlp.span_queue_size);
        let provider = SdkTracerProvider::builder()
            .with_resource(resource.clone())
            .with_span_processor(QueueProcessor {
                tx,
                tally: Arc::clone(&tally),
            })
            .build();
        let seed = u64::from(std::process::id()) ^ monotonic_now_ns();
        // The mapping the bus uses, measured again (the two differ by microseconds).
        let clock = WallClock::calibrate();
        let spans = ConnectSpans::new(
            provider.tracer_with_scope(scope),
            clock,
            otlp.success_sample_ratio,
            seed,
        );
        let batcher = SpanBatcher {
            exporter,
            rx,
            batch_size: otlp.span_batch_size,
            flush_every: otlp.span_flush_interval,
            export_timeout: otlp.export_timeout,
            tally: Arc::clone(&tally),
            stop: Arc::clone(&stop),
        };
        tasks.spawn(batcher.run());
        (spans, provider)
    });

    let consumer_done = CancellationToken::new();
    if let Some(exporter) = metric_exporter {
        let task = MetricExport {
            exporter,
            reader,
            provider: meter_provider.clone(),
            tracked: instruments.tracked.clone(),
            ejected: instruments.ejected.clone(),
            gauges: Arc::clone(&cx.gauges),
            every: otlp.export_interval,
            export_timeout: otlp.export_timeout,
            tally: Arc::clone(&tally),
            stop: Arc::clone(&stop),
            consumer_done: consumer_done.clone(),
        };
        tasks.spawn(task.run());
    }

    let consumer = Consumer {
        rx: bus.subscribe(),
        spans,
        instruments,
        tally,
        shutdown: shutdown.clone(),
        meter_provider,
    };
    tasks.spawn(consumer.run(consumer_done));
    Ok(())
}

fn log_targets(targets: &ExportTargets) {
    let describe = |t: &Option<SignalTarget>| match t {
        Some(t) => format!("{} ({})", t.endpoint, t.protocol.as_str()),
        None => "off".to_owned(),
    };
    tracing::info!(traces = %describe(&targets.traces), metrics = %describe(&targets.metrics), "OTLP export on");
}

/// Reads the bus and records spans and metrics.
struct Consumer {
    rx: tokio::sync::broadcast::Receiver<Arc<Published>>,
    spans: Option<(ConnectSpans, SdkTracerProvider)>,
    instruments: Instruments,
    tally: Arc<ExportCounts>,
    shutdown: CancellationToken,
    meter_provider: SdkMeterProvider,
}

impl Consumer {
    async fn run(mut self, done: CancellationToken) {
        loop {
            tokio::select! {
                biased;
                msg = self.rx.recv() => match msg {
                    Ok(msg) => self.on_message(&msg),
                    Err(RecvError::Lagged(n)) => self.tally.lagged(n),
                    Err(RecvError::Closed) => break,
                },
                _ = self.shutdown.cancelled() => break,
            }
        }
        if let Some((mut spans, provider)) = self.spans.take() {
            spans.finish();
            drop(spans);
            // Ends the SDK side; the span queue closes once the last tracer is gone.
            let _ = provider.shutdown_with_timeout(Duration::from_millis(100));
        }
        drop(self.meter_provider);
        done.cancel();
    }

    fn on_message(&mut self, msg: &Published) {
        let role = msg.role.unwrap_or(crate::policy::Role::Target);
        match &msg.payload {
            // The agent's own probes: a counter of their own, no spans.
            Payload::Connect(c) if msg.probe => self.instruments.on_probe(c, role),
            Payload::SynRetransmit(_) if msg.probe => {}
            Payload::Connect(c) => {
                self.instruments.on_connect(c, role);
                if let Some((spans, _)) = &mut self.spans {
                    spans.on_connect(c, role);
                }
            }
            Payload::SynRetransmit(r) => {
                if let Some((spans, _)) = &mut self.spans {
                    spans.on_syn_retransmit(r, role);
                }
            }
            Payload::Decision(Decision::Evict(e)) => {
                self.instruments.on_evict(e);
                if let Some((spans, _)) = &mut self.spans {
                    spans.on_evict(e);
                }
            }
            Payload::Decision(Decision::Reinstate(r)) => {
                self.instruments.on_reinstate(r);
                if let Some((spans, _)) = &mut self.spans {
                    spans.on_reinstate(r, msg.role);
                }
            }
            Payload::Decision(_) => {}
            Payload::Stats(s) => self.tally.set_lost_events(s.lost_events),
        }
    }
}

#[cfg(test)]
mod tests {
    use opentelemetry::trace::{SpanKind, Status};
    use opentelemetry_sdk::trace::SpanData;

    use super::{metrics::DropReason, *};
    use crate::{
        policy::{
            Role,
            decision::{EjectionTerm, Eviction, Evidence, Reason, Trigger},
        },
        source::event::{Attribution, Comm, ConnectRecord, Family, Outcome, SynRetransmitRecord},
        table::FailureMode,
    };

    fn who() -> Attribution {
        Attribution {
            pid: 7,
            tgid: 7,
            comm: Comm::from("scraper"),
            cgroup_id: 1,
            netns: 1,
            netns_owner: crate::source::event::NetnsOwner::Initial,
            cgroup: None,
            trusted: true,
        }
    }

    fn connect(
        outcome: Outcome,
        dst: &str,
        start_ns: u64,
        ktime_ns: u64,
        syn_retransmits: u32,
    ) -> ConnectRecord {
        ConnectRecord {
            outcome,
            ktime_ns,
            start_ns,
            family: Family::Ipv4,
            src: "10.0.0.1:40000".parse().unwrap(),
            dst: dst.parse().unwrap(),
            who: who(),
            syn_retransmits,
            errno: if outcome == Outcome::Refused { 111 } else { 0 },
        }
    }

    /// Spans through the real SDK into the exporter's queue, read back without a network.
    fn pipeline(
        queue: usize,
        ratio: f64,
    ) -> (
        ConnectSpans,
        SdkTracerProvider,
        mpsc::Receiver<SpanData>,
        Arc<ExportCounts>,
    ) {
        let tally = Arc::new(ExportCounts::default());
        let (tx, rx) = mpsc::channel(queue);
        let provider = SdkTracerProvider::builder()
            .with_span_processor(QueueProcessor {
                tx,
                tally: Arc::clone(&tally),
            })
            .build();
        let spans = ConnectSpans::new(
            provider.tracer("test"),
            WallClock::from_offset_ns(1_700_000_000_000_000_000),
            ratio,
            42,
        );
        (spans, provider, rx, tally)
    }

    fn drain(rx: &mut mpsc::Receiver<SpanData>) -> Vec<SpanData> {
        std::iter::from_fn(|| rx.try_recv().ok()).collect()
    }

    #[test]
    fn retransmits_are_events_and_the_eviction_links_to_the_pending_connect() {
        let (mut spans, _provider, mut rx, _) = pipeline(16, 0.0);
        let dst = "10.0.0.9:80";
        let retransmit = SynRetransmitRecord {
            ktime_ns: 2_000_000_000,
            start_ns: 1_000_000_000,
            family: Family::Ipv4,
            src: "10.0.0.1:40000".parse().unwrap(),
            dst: dst.parse().unwrap(),
            who: who(),
            retransmits: 1,
        };
        spans.on_syn_retransmit(&retransmit, Role::Proxy);
        assert_eq!(spans.pending_len(), 1);
        let eviction = Eviction {
            dst: dst.parse().unwrap(),
            netns: None,
            role: Role::Proxy,
            reason: Reason::SynRetransmits,
            failure_mode: Some(FailureMode::Drop),
            evidence: Evidence {
                attempts: 1,
                refused: 0,
                timeout: 0,
                abandoned: 0,
                reset: 0,
                unreachable: 0,
                syn_retransmits: 1,
                streak: 1,
            },
            ejection: EjectionTerm {
                count: 1,
                duration_ms: 30_000,
                until: "2026-01-01T00:00:00Z".into(),
            },
            trigger: Some(Trigger {
                ktime_ns: 2_000_000_000,
                pid: 7,
                comm: Comm::from("scraper"),
                cgroup_id: 1,
                origin: None,
                netns: 1,
            }),
            origin: None,
            local_outage: false,
            detect_us: Some(150),
            ts: None,
        };
        spans.on_evict(&eviction);
        spans.on_connect(
            &connect(Outcome::Abandoned, dst, 1_000_000_000, 2_500_000_000, 1),
            Role::Proxy,
        );
        assert_eq!(spans.pending_len(), 0);
        let out = drain(&mut rx);
        let evict = out
            .iter()
            .find(|s| s.name == "connmon.evict")
            .expect("evict span");
        let conn = out
            .iter()
            .find(|s| s.name == "tcp.connect")
            .expect("connect span");
        assert_eq!(conn.span_kind, SpanKind::Client);
        assert_eq!(conn.status, Status::error("connect_abandoned"));
        assert_eq!(conn.events.events.len(), 1);
        assert_eq!(conn.events.events[0].name, "syn_retransmit");
        let start = conn
            .start_time
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        let end = conn
            .end_time
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        assert_eq!(
            (start, end),
            (1_700_000_001_000_000_000, 1_700_000_002_500_000_000)
        );
        assert_eq!(evict.links.links.len(), 1);
        assert_eq!(
            evict.links.links[0].span_context, conn.span_context,
            "linked to the connect being retransmitted"
        );
        let evict_len = evict.end_time.duration_since(evict.start_time).unwrap();
        assert_eq!(
            evict_len,
            Duration::from_micros(150),
            "from the trigger to the decision"
        );
    }

    #[test]
    fn successes_follow_the_sample_ratio_and_failures_are_always_kept() {
        for (ratio, want) in [(0.0, 0), (1.0, 50)] {
            let (mut spans, _provider, mut rx, _) = pipeline(256, ratio);
            for i in 0..50 {
                spans.on_connect(
                    &connect(Outcome::Established, "10.0.0.9:80", i, i + 1_000, 0),
                    Role::Target,
                );
            }
            spans.on_connect(
                &connect(Outcome::Refused, "10.0.0.9:81", 1, 2, 0),
                Role::Target,
            );
            let out = drain(&mut rx);
            assert_eq!(out.len(), want + 1, "ratio {ratio}");
        }
        let (mut spans, _provider, mut rx, _) = pipeline(4096, 0.25);
        for i in 0..2000 {
            spans.on_connect(
                &connect(Outcome::Established, "10.0.0.9:80", i, i + 1_000, 0),
                Role::Target,
            );
        }
        let n = drain(&mut rx).len();
        assert!((350..650).contains(&n), "about a quarter of 2000: {n}");
    }

    #[test]
    fn a_full_queue_drops_the_newest_span_and_counts_it() {
        let (mut spans, _provider, mut rx, tally) = pipeline(4, 0.0);
        for i in 0..10 {
            spans.on_connect(
                &connect(Outcome::Refused, "10.0.0.9:81", i, i + 10, 0),
                Role::Target,
            );
        }
        assert_eq!(drain(&mut rx).len(), 4);
        assert_eq!(tally.dropped_total(DropReason::QueueFull), 6);
    }
}
