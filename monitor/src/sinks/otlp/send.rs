//! The sending side: the bounded span queue and its batcher, the periodic metric
//! export, and the shutdown deadline both respect.

use std::{
    future::Future,
    sync::{Arc, OnceLock, Weak},
    time::Duration,
};

use opentelemetry_sdk::{
    error::OTelSdkResult,
    metrics::{
        InstrumentKind, ManualReader, Pipeline, SdkMeterProvider, Temporality,
        data::ResourceMetrics, exporter::PushMetricExporter as _, reader::MetricReader,
    },
    trace::{SpanData, SpanExporter as _, SpanProcessor},
};
use tokio::{sync::mpsc, time::Instant};
use tokio_util::sync::CancellationToken;

use super::metrics::{DropReason, ExportCounts};
use crate::sinks::Gauges;

/// The shutdown signal plus the deadline of the final flush, fixed when first observed.
pub(super) struct Stop {
    pub(super) token: CancellationToken,
    pub(super) grace: Duration,
    pub(super) deadline: OnceLock<Instant>,
}

impl Stop {
    pub(super) fn deadline(&self) -> Instant {
        *self.deadline.get_or_init(|| Instant::now() + self.grace)
    }

    /// Runs `fut` for at most `limit`, and once shutdown has begun, no later than the
    /// shutdown deadline. `None`: it did not finish in time.
    pub(super) async fn bounded<F: Future>(&self, fut: F, limit: Duration) -> Option<F::Output> {
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
pub(super) struct QueueProcessor {
    pub(super) tx: mpsc::Sender<SpanData>,
    pub(super) tally: Arc<ExportCounts>,
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
pub(super) struct SpanBatcher {
    pub(super) exporter: opentelemetry_otlp::SpanExporter,
    pub(super) rx: mpsc::Receiver<SpanData>,
    pub(super) batch_size: usize,
    pub(super) flush_every: Duration,
    pub(super) export_timeout: Duration,
    pub(super) tally: Arc<ExportCounts>,
    pub(super) stop: Arc<Stop>,
}

impl SpanBatcher {
    pub(super) async fn run(mut self) {
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
            Some(Ok(())) => self.tally.exported(n),
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
pub(super) struct SharedReader(pub(super) Arc<ManualReader>);

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
pub(super) struct MetricExport {
    pub(super) exporter: opentelemetry_otlp::MetricExporter,
    pub(super) reader: SharedReader,
    pub(super) provider: SdkMeterProvider,
    pub(super) tracked: opentelemetry::metrics::Gauge<u64>,
    pub(super) ejected: opentelemetry::metrics::Gauge<u64>,
    pub(super) gauges: Arc<Gauges>,
    pub(super) every: Duration,
    pub(super) export_timeout: Duration,
    pub(super) tally: Arc<ExportCounts>,
    pub(super) stop: Arc<Stop>,
    pub(super) consumer_done: CancellationToken,
}

impl MetricExport {
    pub(super) async fn run(self) {
        let mut tick = tokio::time::interval_at(Instant::now() + self.every, self.every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = self.stop.token.cancelled() => break,
            }
            self.refresh_gauges();
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

    /// Destination gauges, as the pipeline last published them.
    fn refresh_gauges(&self) {
        self.tracked.record(self.gauges.tracked(), &[]);
        self.ejected.record(self.gauges.ejected(), &[]);
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
            Some(Ok(())) => self.tally.exported(1),
            Some(Err(err)) => self.tally.export_failed("metrics", &err.to_string()),
            None => self.tally.export_failed("metrics", "timed out"),
        }
    }
}
