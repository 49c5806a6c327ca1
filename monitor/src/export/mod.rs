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

pub mod config;
pub mod metrics;
pub mod spans;

use std::{
    collections::HashMap,
    future::Future,
    sync::{Arc, OnceLock, Weak},
    time::Duration,
};

use opentelemetry::{
    InstrumentationScope, KeyValue, metrics::MeterProvider as _, trace::TracerProvider as _,
};
use opentelemetry_otlp::{WithExportConfig as _, WithHttpConfig as _, WithTonicConfig as _};
use opentelemetry_sdk::{
    Resource,
    error::OTelSdkResult,
    metrics::{
        InstrumentKind, ManualReader, Pipeline, SdkMeterProvider, Temporality,
        data::ResourceMetrics, exporter::PushMetricExporter as _, reader::MetricReader,
    },
    trace::{SdkTracerProvider, SpanData, SpanExporter as _, SpanProcessor},
};
use tokio::{
    sync::{broadcast::error::RecvError, mpsc, oneshot},
    time::Instant,
};
use tokio_util::{sync::CancellationToken, task::TaskTracker};

pub use self::config::{OtlpConfig, OtlpConfigError, Protocol};
use self::{
    config::{ExportTargets, HostIdentity, SignalTarget},
    metrics::{DropReason, Instruments, Tally},
    spans::ConnectSpans,
};
use crate::{
    bus::{EventBus, Payload, Published},
    clock::{WallClock, monotonic_now_ns},
    config::Config,
    control::Control,
    policy::decision::Decision,
};

/// Why the exporter could not start.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error(transparent)]
    Config(#[from] OtlpConfigError),
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
/// does nothing otherwise. Must run inside the agent's Tokio runtime.
pub fn spawn(
    config: &Config,
    bus: &EventBus,
    control: &mpsc::Sender<Control>,
    shutdown: &CancellationToken,
    tasks: &TaskTracker,
) -> Result<(), ExportError> {
    let otlp = &config.otlp;
    otlp.validate()?;
    let Some(targets) = config::resolve(otlp, &config::process_env)? else {
        return Ok(());
    };
    let attrs = config::resource_attributes(&config::process_env, &HostIdentity::detect())?;
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

    let tally = Tally::shared();
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
    let instruments = Instruments::new(&meter_provider.meter_with_scope(scope.clone()), &tally);

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
            control: control.clone(),
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

fn header_map(headers: &[(String, String)]) -> Result<http::HeaderMap, ExportError> {
    let mut map = http::HeaderMap::new();
    for (name, value) in headers {
        let name = http::HeaderName::from_bytes(name.as_bytes())
            .map_err(|e| ExportError::Header(format!("{name}: {e}")))?;
        let value = http::HeaderValue::from_str(value)
            .map_err(|e| ExportError::Header(format!("{name}: {e}")))?;
        map.insert(name, value);
    }
    Ok(map)
}

fn span_exporter(
    t: &SignalTarget,
    timeout: Duration,
) -> Result<opentelemetry_otlp::SpanExporter, ExportError> {
    let built = match t.protocol {
        Protocol::Grpc => opentelemetry_otlp::SpanExporter::builder()
            .with_tonic()
            .with_endpoint(t.endpoint.clone())
            .with_timeout(timeout)
            .with_metadata(
                opentelemetry_otlp::tonic_types::metadata::MetadataMap::from_headers(header_map(
                    &t.headers,
                )?),
            )
            .build(),
        Protocol::HttpProtobuf => opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_endpoint(t.endpoint.clone())
            .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
            .with_timeout(timeout)
            .with_headers(t.headers.iter().cloned().collect::<HashMap<_, _>>())
            .build(),
    };
    built.map_err(|source| ExportError::Build {
        signal: "traces",
        endpoint: t.endpoint.clone(),
        source,
    })
}

fn metric_exporter(
    t: &SignalTarget,
    timeout: Duration,
) -> Result<opentelemetry_otlp::MetricExporter, ExportError> {
    let built = match t.protocol {
        Protocol::Grpc => opentelemetry_otlp::MetricExporter::builder()
            .with_tonic()
            .with_endpoint(t.endpoint.clone())
            .with_timeout(timeout)
            .with_metadata(
                opentelemetry_otlp::tonic_types::metadata::MetadataMap::from_headers(header_map(
                    &t.headers,
                )?),
            )
            .with_temporality(Temporality::Cumulative)
            .build(),
        Protocol::HttpProtobuf => opentelemetry_otlp::MetricExporter::builder()
            .with_http()
            .with_endpoint(t.endpoint.clone())
            .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
            .with_timeout(timeout)
            .with_headers(t.headers.iter().cloned().collect::<HashMap<_, _>>())
            .with_temporality(Temporality::Cumulative)
            .build(),
    };
    built.map_err(|source| ExportError::Build {
        signal: "metrics",
        endpoint: t.endpoint.clone(),
        source,
    })
}

/// The shutdown signal plus the deadline of the final flush, fixed when first observed.
struct Stop {
    token: CancellationToken,
    grace: Duration,
    deadline: OnceLock<Instant>,
}

impl Stop {
    fn deadline(&self) -> Instant {
        *self.deadline.get_or_init(|| Instant::now() + self.grace)
    }

    /// Runs `fut` for at most `limit`, and once shutdown has begun, no later than the
    /// shutdown deadline. `None`: it did not finish in time.
    async fn bounded<F: Future>(&self, fut: F, limit: Duration) -> Option<F::Output> {
        let fut = tokio::time::timeout(limit, fut);
        tokio::pin!(fut);
        if !self.token.is_cancelled() {
            tokio::select! {
                out = &mut fut => return out.ok(),
                _ = self.token.cancelled() => {}
            }
        }
        tokio::time::timeout_at(self.deadline(), fut)
            .await
            .ok()
            .and_then(Result::ok)
    }
}

/// The SDK's span processor: hands finished spans to the bounded export queue without
/// waiting; a full queue drops the span and counts it.
#[derive(Debug)]
struct QueueProcessor {
    tx: mpsc::Sender<SpanData>,
    tally: Arc<Tally>,
}

impl SpanProcessor for QueueProcessor {
    fn on_start(&self, _span: &mut opentelemetry_sdk::trace::Span, _cx: &opentelemetry::Context) {}

    fn on_end(&self, span: SpanData) {
        match self.tx.try_send(span) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(_)) => self.tally.dropped(DropReason::QueueFull, 1),
            Err(mpsc::error::TrySendError::Closed(_)) => {
                self.tally.dropped(DropReason::Shutdown, 1)
            }
        }
    }

    fn force_flush(&self) -> OTelSdkResult {
        Ok(())
    }

    fn shutdown_with_timeout(&self, _timeout: Duration) -> OTelSdkResult {
        Ok(())
    }
}

/// Sends queued spans in batches.
struct SpanBatcher {
    exporter: opentelemetry_otlp::SpanExporter,
    rx: mpsc::Receiver<SpanData>,
    batch_size: usize,
    flush_every: Duration,
    export_timeout: Duration,
    tally: Arc<Tally>,
    stop: Arc<Stop>,
}

impl SpanBatcher {
    async fn run(mut self) {
        let mut batch = Vec::with_capacity(self.batch_size);
        let mut tick =
            tokio::time::interval_at(Instant::now() + self.flush_every, self.flush_every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let stopping = self.stop.token.is_cancelled();
            // select! evaluates disabled branches too: fix the deadline only once stopping.
            let deadline = if stopping {
                self.stop.deadline()
            } else {
                Instant::now() + self.flush_every
            };
            let room = self.batch_size - batch.len();
            tokio::select! {
                n = self.rx.recv_many(&mut batch, room) => {
                    if n == 0 {
                        // Every tracer is gone (exit): send the rest and stop.
                        if !batch.is_empty() {
                            self.export(&mut batch).await;
                        }
                        return;
                    }
                    if batch.len() >= self.batch_size {
                        self.export(&mut batch).await;
                    }
                }
                _ = tick.tick() => {
                    if !batch.is_empty() {
                        self.export(&mut batch).await;
                    }
                    self.tally.warn_if_due(std::time::Instant::now());
                }
                _ = self.stop.token.cancelled(), if !stopping => {}
                _ = tokio::time::sleep_until(deadline), if stopping => break,
            }
        }
        // Out of time at exit: whatever is still queued is lost, and counted.
        self.rx.close();
        let mut left = batch.len() as u64;
        while self.rx.try_recv().is_ok() {
            left += 1;
        }
        self.tally.dropped(DropReason::Shutdown, left);
        self.tally.warn_if_due(std::time::Instant::now());
    }

    async fn export(&mut self, batch: &mut Vec<SpanData>) {
        let n = batch.len() as u64;
        let spans = std::mem::take(batch);
        match self
            .stop
            .bounded(self.exporter.export(spans), self.export_timeout)
            .await
        {
            Some(Ok(())) => {}
            Some(Err(err)) => {
                self.tally.dropped(DropReason::ExportFailed, n);
                self.tally.export_failed("traces", &err.to_string());
            }
            None => {
                self.tally.dropped(DropReason::ExportFailed, n);
                self.tally.export_failed("traces", "timed out");
            }
        }
    }
}

/// A [`ManualReader`] shared between the meter provider and the export task.
#[derive(Clone, Debug)]
struct SharedReader(Arc<ManualReader>);

impl MetricReader for SharedReader {
    fn register_pipeline(&self, pipeline: Weak<Pipeline>) {
        self.0.register_pipeline(pipeline);
    }

    fn collect(&self, rm: &mut ResourceMetrics) -> OTelSdkResult {
        self.0.collect(rm)
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.0.force_flush()
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.0.shutdown_with_timeout(timeout)
    }

    fn temporality(&self, kind: InstrumentKind) -> Temporality {
        self.0.temporality(kind)
    }
}

/// Collects and sends metrics every `export_interval`, and once more at exit.
struct MetricExport {
    exporter: opentelemetry_otlp::MetricExporter,
    reader: SharedReader,
    provider: SdkMeterProvider,
    tracked: opentelemetry::metrics::Gauge<u64>,
    ejected: opentelemetry::metrics::Gauge<u64>,
    control: mpsc::Sender<Control>,
    every: Duration,
    export_timeout: Duration,
    tally: Arc<Tally>,
    stop: Arc<Stop>,
    consumer_done: CancellationToken,
}

/// How long a policy snapshot may take before the gauges keep their last values.
const SNAPSHOT_TIMEOUT: Duration = Duration::from_secs(1);

impl MetricExport {
    async fn run(self) {
        let mut tick = tokio::time::interval_at(Instant::now() + self.every, self.every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = self.stop.token.cancelled() => break,
            }
            self.refresh_gauges().await;
            self.export().await;
            self.tally.warn_if_due(std::time::Instant::now());
        }
        // The consumer records the last messages (the final stats) before the last export.
        let _ = self
            .stop
            .bounded(self.consumer_done.cancelled(), self.stop.grace)
            .await;
        self.export().await;
        let _ = self
            .provider
            .shutdown_with_timeout(Duration::from_millis(100));
    }

    /// Destination gauges from a policy snapshot, asked without ever waiting on a full
    /// control queue.
    async fn refresh_gauges(&self) {
        let (reply, answer) = oneshot::channel();
        if self.control.try_send(Control::Snapshot { reply }).is_err() {
            return;
        }
        if let Ok(Ok(snapshot)) = tokio::time::timeout(SNAPSHOT_TIMEOUT, answer).await {
            self.tracked.record(snapshot.tracked as u64, &[]);
            self.ejected.record(snapshot.ejected as u64, &[]);
        }
    }

    async fn export(&self) {
        let mut rm = ResourceMetrics::default();
        if let Err(err) = self.reader.collect(&mut rm) {
            self.tally.export_failed("metrics", &err.to_string());
            return;
        }
        match self
            .stop
            .bounded(self.exporter.export(&rm), self.export_timeout)
            .await
        {
            Some(Ok(())) => {}
            Some(Err(err)) => self.tally.export_failed("metrics", &err.to_string()),
            None => self.tally.export_failed("metrics", "timed out"),
        }
    }
}

/// Reads the bus and records spans and metrics.
struct Consumer {
    rx: tokio::sync::broadcast::Receiver<Arc<Published>>,
    spans: Option<(ConnectSpans, SdkTracerProvider)>,
    instruments: Instruments,
    tally: Arc<Tally>,
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
                self.instruments.on_reinstate();
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

    use super::*;
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
        Arc<Tally>,
    ) {
        let tally = Arc::new(Tally::default());
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
