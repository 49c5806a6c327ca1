//! The consumers: everything that takes what the pipeline decides somewhere else.
//!
//! Every consumer is started in one place, [`start`], from one [`SinkContext`] (the
//! model is vector's `SinkContext`). Two are called inline by the pipeline because they
//! must never lag: [`stdout`] (its lines are the agent's output) and [`prober`] (the
//! queue of handshake checks). The others read the [`crate::bus::EventBus`] on their own
//! task, may send commands on the control channel, and end when `shutdown` is cancelled.
//!
//! Adding a consumer: a file or directory here with a `start(section, cx)` function,
//! and one line in [`start`].

pub mod fleet;
pub mod haproxy;
pub mod otlp;
pub mod prober;
pub mod prometheus;
pub mod socket;
pub mod stdout;
pub mod text;

use std::sync::{
    Arc,
    atomic::{AtomicU64, Ordering},
};

use tokio::sync::mpsc;
use tokio_util::{sync::CancellationToken, task::TaskTracker};

/// The JSON lines, rendered by the bus for every subscriber (and by stdout).
pub use crate::bus::json;
use crate::{
    bus::EventBus,
    clock::WallClock,
    config::ValidConfig,
    control::Control,
    stats::consumers::{ConsumerCounters, Consumers},
};

/// What every consumer is built from.
#[derive(Clone, Debug)]
pub struct SinkContext {
    /// Everything the pipeline emits; subscribe at start so nothing is missed.
    pub bus: EventBus,
    /// Commands into the pipeline (snapshots, pool changes, manual evict/reinstate).
    pub control: mpsc::Sender<Control>,
    /// Cancelled when the agent stops: finish, flush, return.
    pub shutdown: CancellationToken,
    /// Where consumer tasks are spawned; the agent waits for them at exit.
    pub tasks: TaskTracker,
    /// The agent's monotonic-to-wall-clock mapping.
    pub clock: WallClock,
    /// The policy's gauges, kept current by the pipeline (no snapshot needed).
    pub gauges: Arc<Gauges>,
    /// The fleet link's counters when `[fleet]` is on: the link writes them, the
    /// pipeline's `stats` line and the Prometheus endpoint read them.
    pub fleet: Option<Arc<crate::stats::fleet::FleetCounters>>,
    /// Every consumer's delivery counters (sent, dropped, failed), read into the
    /// `stats` line: a consumer takes its own with [`SinkContext::consumer_counters`].
    pub consumers: Arc<Consumers>,
}

impl SinkContext {
    /// New delivery counters for the consumer `name`, listed in the `stats` line.
    pub fn consumer_counters(&self, name: &'static str) -> Arc<ConsumerCounters> {
        let counters = Arc::new(ConsumerCounters::default());
        self.consumers.register(name, Arc::clone(&counters));
        counters
    }
}

/// Gauges the pipeline publishes after every tick, for consumers that only need a
/// number or two (the OTLP exporter) rather than a whole policy snapshot.
#[derive(Debug, Default)]
pub struct Gauges {
    tracked: AtomicU64,
    ejected: AtomicU64,
}

impl Gauges {
    pub fn set(&self, tracked: usize, ejected: usize) {
        self.tracked.store(tracked as u64, Ordering::Relaxed);
        self.ejected.store(ejected as u64, Ordering::Relaxed);
    }

    /// Destinations in the table.
    pub fn tracked(&self) -> u64 {
        self.tracked.load(Ordering::Relaxed)
    }

    /// Destinations ejected now.
    pub fn ejected(&self) -> u64 {
        self.ejected.load(Ordering::Relaxed)
    }
}

/// The consumers the pipeline calls inline.
pub struct Inline {
    pub stdout: stdout::StdoutSink,
    pub prober: prober::ProbeSender,
}

/// Starts every consumer the configuration asks for. An error (a socket path in use, a
/// port taken, a bad OTLP target) stops the agent before it attaches anything.
pub async fn start(config: &ValidConfig, cx: &SinkContext) -> anyhow::Result<Inline> {
    let inline = Inline {
        stdout: stdout::start(config.agent.output, config.agent.events, cx),
        prober: prober::start(cx),
    };
    socket::start(&config.agent, config.policy.base_ejection, cx).await?;
    haproxy::start(&config.haproxy, cx)?;
    otlp::start(&config.otlp, &config.fleet.host(), cx)?;
    prometheus::start(&config.agent, cx)?;
    fleet::start(config, cx)?;
    Ok(inline)
}
