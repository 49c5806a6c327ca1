//! `connmon run`: attach, then feed kernel events through the policy to the sinks until
//! SIGINT/SIGTERM.
//!
//! One task owns the pipeline (kernel → source → table/policy → sinks): it drains the ring
//! buffer when the kernel wakes it (every failure does) and on a short timer (routine
//! `established` outcomes are written without a wake-up to keep the per-connect cost
//! low), decodes each record, runs it through the [`EjectionPolicy`], and renders events
//! and decisions. Output is flushed once per drain; the state file is written after a
//! drain that changed an ejection, and at exit.

use std::{
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::Context as _;
use tokio::{
    signal::unix::{SignalKind, signal},
    sync::mpsc,
};
use tokio_util::{sync::CancellationToken, task::TaskTracker};

use crate::{
    bus::EventBus,
    clock::{WallClock, monotonic_now_ns},
    config::Config,
    control::{self, Control},
    persist::StateWriter,
    policy::{EjectionPolicy, decision::Decision, pool::PoolMembership},
    sinks::stdout::{OutputFormat, StdoutSink},
    source::{
        event::{KernelEvent, decode},
        kernel::{KernelSource, SourceOptions},
    },
    stats::{Counters, Stats},
};

/// Fails with one clear sentence when the host cannot run connmon.
pub fn preflight() -> anyhow::Result<()> {
    if !nix::unistd::geteuid().is_root() {
        anyhow::bail!("connmon must run as root (it loads eBPF programs and may mount tracefs)");
    }
    let btf = Path::new(crate::source::btf::VMLINUX);
    if !btf.exists() {
        anyhow::bail!(
            "{} not found: connmon needs Linux >= 5.8 built with CONFIG_DEBUG_INFO_BTF",
            btf.display()
        );
    }
    Ok(())
}

/// The pool: `policy.pool` entries from the config plus the lines of the pool file.
pub fn load_pool(config: &Config) -> anyhow::Result<PoolMembership> {
    let mut entries = config.policy.pool_entries()?;
    if let Some(path) = &config.agent.pool_file {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read pool file {}", path.display()))?;
        let file_entries = PoolMembership::parse_entries(&text)
            .with_context(|| format!("pool file {}", path.display()))?;
        entries.extend(file_entries);
    } else if entries.is_empty() {
        return Ok(PoolMembership::unconfigured());
    }
    Ok(PoolMembership::from_entries(entries))
}

/// The inode of the agent's own network namespace — the host's, where connmon runs —
/// for `localhost_trap` (a refused loopback connect from any other namespace).
fn host_netns() -> u32 {
    use std::os::unix::fs::MetadataExt as _;
    std::fs::metadata("/proc/self/ns/net")
        .map(|m| m.ino() as u32)
        .unwrap_or(0)
}

/// The pipeline's state between drains.
struct Pipeline {
    policy: EjectionPolicy,
    sink: StdoutSink,
    bus: EventBus,
    counters: Counters,
    decisions: Vec<Decision>,
    clock: WallClock,
    state: StateWriter,
}

impl Pipeline {
    /// Reads everything the ring buffer holds; returns how many records that was.
    fn drain(&mut self, ring: &mut aya::maps::RingBuf<aya::maps::MapData>) -> usize {
        let mut records = 0;
        while let Some(item) = ring.next() {
            records += 1;
            match decode(&item) {
                Ok(event) => self.on_event(&event),
                Err(err) => {
                    self.counters.decode_errors += 1;
                    tracing::warn!(%err, "undecodable ring-buffer record");
                }
            }
        }
        self.persist_if_changed();
        records
    }

    fn on_event(&mut self, event: &KernelEvent) {
        self.counters.count(event);
        let role = match event {
            KernelEvent::Connect(c) => self.policy.pool().role(&c.dst),
            KernelEvent::SynRetransmit(r) => self.policy.pool().role(&r.dst),
        };
        self.sink.event(event, role);
        self.bus.event(event, role);
        match event {
            KernelEvent::Connect(c) => self.policy.on_connect(c, c.ktime_ns, &mut self.decisions),
            KernelEvent::SynRetransmit(r) => {
                self.policy
                    .on_syn_retransmit(r, r.ktime_ns, &mut self.decisions)
            }
        }
        self.emit_decisions();
    }

    fn tick(&mut self) {
        self.policy.tick(monotonic_now_ns(), &mut self.decisions);
        self.emit_decisions();
        self.persist_if_changed();
    }

    fn emit_decisions(&mut self) {
        if self.decisions.is_empty() {
            return;
        }
        let now = monotonic_now_ns();
        for mut decision in self.decisions.drain(..) {
            decision.stamp(now, &self.clock);
            self.sink.decision(&decision);
            let role = decision.dst().map(|dst| self.policy.pool().role(&dst));
            self.bus.decision(&decision, role);
        }
    }

    /// Runs one command from the control channel on the engine.
    fn control(&mut self, command: Control) {
        let now = monotonic_now_ns();
        match command {
            Control::Snapshot { reply } => {
                let _ = reply.send(self.policy.snapshot(now));
            }
            // Adding or removing nothing is a read (`pool list`): an unconfigured pool
            // must stay unconfigured.
            Control::Pool {
                op: control::PoolOp::Add | control::PoolOp::Remove,
                members,
                reply,
            } if members.is_empty() => {
                let _ = reply.send(self.policy.pool().entries());
            }
            Control::Pool { op, members, reply } => {
                let pool = self.policy.pool().apply(op, &members);
                let entries = pool.entries();
                tracing::info!(
                    ?op,
                    members = entries.len(),
                    "pool changed by a control command"
                );
                self.policy.set_pool(pool);
                let _ = reply.send(entries);
            }
            Control::Evict {
                dst,
                duration,
                reply,
            } => {
                let done = self
                    .policy
                    .evict_manual(dst, duration, now, &mut self.decisions);
                let _ = reply.send(done);
            }
            Control::Reinstate { dst, reply } => {
                let done = self.policy.reinstate_manual(dst, now, &mut self.decisions);
                let _ = reply.send(done);
            }
        }
        self.emit_decisions();
        self.persist_if_changed();
    }

    fn persist_if_changed(&mut self) {
        if self.policy.take_state_changed() {
            self.persist();
        }
    }

    fn persist(&mut self) {
        self.state
            .submit(self.policy.state_snapshot(monotonic_now_ns()));
    }
}

pub async fn run(config: Config, config_path: Option<PathBuf>) -> anyhow::Result<()> {
    preflight()?;
    // Before anything is attached: a SIGTERM that arrives during start-up must still
    // detach cleanly and exit 0, not kill the process by default action.
    let mut sigint = signal(SignalKind::interrupt()).context("installing SIGINT handler")?;
    let mut sigterm = signal(SignalKind::terminate()).context("installing SIGTERM handler")?;
    let mut sighup = signal(SignalKind::hangup()).context("installing SIGHUP handler")?;
    config.validate()?;
    let started = Instant::now();
    let agent = &config.agent;
    let output = agent.output.unwrap_or_else(|| {
        use std::io::IsTerminal as _;
        if std::io::stdout().is_terminal() {
            OutputFormat::Text
        } else {
            OutputFormat::Json
        }
    });
    let clock = WallClock::calibrate();
    let pool = load_pool(&config)?;
    let seed = u64::from(std::process::id()) ^ monotonic_now_ns();
    let policy = EjectionPolicy::new(config.policy.clone(), pool, host_netns(), clock, seed)?;
    let bus = EventBus::new(agent.bus_capacity, clock);
    let mut pipe = Pipeline {
        policy,
        sink: StdoutSink::new(output, clock),
        bus: bus.clone(),
        counters: Counters::default(),
        decisions: Vec::new(),
        clock,
        state: StateWriter::spawn(agent.state_file.clone())
            .context("starting the state-file writer")?,
    };
    match pipe
        .policy
        .load_state(&agent.state_file, monotonic_now_ns(), &mut pipe.decisions)
    {
        Ok(report) if report.found => tracing::info!(
            path = %agent.state_file.display(),
            restored = report.restored,
            reinstated = report.reinstated,
            history = report.history,
            "loaded ejection state"
        ),
        Ok(_) => {}
        Err(err) => {
            tracing::warn!(path = %agent.state_file.display(), %err, "ignoring unusable state file; starting with no ejections")
        }
    }

    // Consumers of the bus and the control channel run as their own tasks; each gets a
    // receiver from `bus.subscribe()` and stops when `shutdown` is cancelled.
    let shutdown = CancellationToken::new();
    let tasks = TaskTracker::new();
    let (control_tx, mut control_rx) = control::channel();
    spawn_consumers(&config, &bus, &control_tx, &shutdown, &tasks).await?;
    drop(control_tx);

    let mut source = KernelSource::attach(&SourceOptions {
        ring_buffer_bytes: agent.ring_buffer_bytes,
        wakeup_every_event: agent.wakeup_every_event,
    })?;
    if source.info.mounted_tracefs {
        tracing::info!(path = %source.info.tracefs.display(), "mounted tracefs");
    }
    tracing::info!(
        ring_buffer_bytes = agent.ring_buffer_bytes,
        netns = source.info.netns_resolved,
        pool_members = pipe.policy.pool().len(),
        "attached to sock:inet_sock_set_state, tcp:tcp_receive_reset, tcp:tcp_retransmit_skb, sock:inet_sk_error_report"
    );
    // Reinstatements from loading the state file, now that every consumer listens.
    pipe.emit_decisions();

    let mut last_lost = 0u64;
    let mut batch_tick = tokio::time::interval(agent.batch_interval);
    batch_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let stats_every = if agent.stats_interval.is_zero() {
        Duration::from_secs(86_400 * 365)
    } else {
        agent.stats_interval
    };
    let mut stats_tick =
        tokio::time::interval_at(tokio::time::Instant::now() + stats_every, stats_every);

    loop {
        tokio::select! {
            guard = source.ring.readable_mut() => {
                let mut guard = guard.context("waiting on the ring buffer")?;
                let records = pipe.drain(guard.get_inner_mut());
                guard.clear_ready();
                if records >= BUSY_DRAIN {
                    // Wake-up moderation: under a flood, pause outside epoll so the kernel's
                    // per-record wake-ups find no sleeper and the next drain takes a batch.
                    // A deliberate blocking sleep: a tokio timer would park in epoll_wait
                    // and be woken by the very records it is meant to batch.
                    std::thread::sleep(MODERATION);
                }
            }
            _ = batch_tick.tick() => {
                let _ = pipe.drain(source.ring.get_mut());
                pipe.tick();
            }
            _ = stats_tick.tick() => {
                let stats = snapshot(&source, &pipe.counters, &clock, started, false)?;
                warn_if_lost(&mut last_lost, stats.lost_events);
                pipe.sink.stats(&stats);
                pipe.bus.stats(&stats);
            }
            Some(command) = control_rx.recv() => pipe.control(command),
            _ = sighup.recv() => reload_pool(&mut pipe.policy, config_path.as_deref(), &config),
            _ = sigint.recv() => break,
            _ = sigterm.recv() => break,
        }
        pipe.sink.flush().context("writing to stdout")?;
    }

    let _ = pipe.drain(source.ring.get_mut());
    let stats = snapshot(&source, &pipe.counters, &clock, started, true)?;
    warn_if_lost(&mut last_lost, stats.lost_events);
    pipe.sink.stats(&stats);
    pipe.bus.stats(&stats);
    pipe.sink.flush().context("writing to stdout")?;
    pipe.persist();
    drop(source);
    let Pipeline { state, .. } = pipe;
    state.finish();

    shutdown.cancel();
    tasks.close();
    if tokio::time::timeout(SHUTDOWN_GRACE, tasks.wait())
        .await
        .is_err()
    {
        tracing::warn!("consumers did not finish within {SHUTDOWN_GRACE:?}; exiting anyway");
    }
    tracing::info!("detached; exiting");
    Ok(())
}

/// A drain at least this large means a flood: see [`MODERATION`].
const BUSY_DRAIN: usize = 8;
/// How long the reader pauses after a busy drain (bounded added latency under load).
const MODERATION: Duration = Duration::from_micros(500);

/// How long consumers get to flush (OTLP) and say goodbye (socket clients) at exit.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// Starts the bus consumers the configuration asks for. Each is spawned on `tasks`,
/// reads `bus.subscribe()`, may send commands on `control`, and returns when
/// `shutdown` is cancelled. Errors here (e.g. a socket path in use) stop the agent
/// before it attaches anything.
async fn spawn_consumers(
    config: &Config,
    bus: &EventBus,
    control: &mpsc::Sender<Control>,
    shutdown: &CancellationToken,
    tasks: &TaskTracker,
) -> anyhow::Result<()> {
    crate::server::spawn(config, bus, control, shutdown, tasks).await?;
    crate::sinks::haproxy::spawn(config, bus, control, shutdown, tasks)?;
    crate::export::spawn(config, bus, control, shutdown, tasks)?;
    crate::sinks::prometheus::spawn(config, bus, control, shutdown, tasks)?;
    Ok(())
}

/// SIGHUP: re-read the pool — the config file's `policy.pool` and the pool file in
/// effect (a `--pool` flag still wins) — and swap it in, keeping every destination's
/// history. A bad file keeps the old pool.
fn reload_pool(policy: &mut EjectionPolicy, config_path: Option<&Path>, started_with: &Config) {
    let reloaded = Config::load(config_path)
        .map_err(anyhow::Error::from)
        .and_then(|file| {
            let mut config = started_with.clone();
            config.policy.pool = file.policy.pool;
            load_pool(&config)
        });
    match reloaded {
        Ok(pool) => {
            tracing::info!(
                members = pool.len(),
                configured = pool.is_configured(),
                "SIGHUP: pool reloaded"
            );
            policy.set_pool(pool);
        }
        Err(err) => tracing::error!("SIGHUP: keeping the current pool: {err:#}"),
    }
}

fn warn_if_lost(last: &mut u64, lost: u64) {
    if lost > *last {
        tracing::warn!(
            lost = lost - *last,
            total = lost,
            "ring buffer full: events were lost (raise --ring-buffer-bytes)"
        );
        *last = lost;
    }
}

fn snapshot(
    source: &KernelSource,
    counters: &Counters,
    clock: &WallClock,
    started: Instant,
    is_final: bool,
) -> anyhow::Result<Stats> {
    let kernel = source.counters().context("reading kernel counters")?;
    Ok(Stats {
        r#type: "stats",
        ts: clock.rfc3339(monotonic_now_ns()),
        uptime_s: started.elapsed().as_secs(),
        events: counters.events,
        outcomes: counters.outcome_counts(),
        syn_retransmits: counters.syn_retransmits,
        lost_events: kernel.lost_events,
        untracked: kernel.untracked,
        decode_errors: counters.decode_errors,
        is_final,
    })
}
