//! `connmon run`: attach, then feed kernel events through the policy to the sinks until
//! SIGINT/SIGTERM.
//!
//! One task owns the pipeline (kernel → source → table/policy → sinks): it drains the ring
//! buffer when the kernel wakes it (every failure does) and on a short timer while
//! failures flow (routine `established` outcomes are written without a wake-up to keep
//! the per-connect cost low; see `source::poll`), decodes each record, runs it through
//! the [`EjectionPolicy`], and renders events and decisions. Decisions are written at
//! once, event lines when the reader sleeps (see `sinks::stdout`); the state file is
//! written after a drain that changed an ejection, and at exit.

use std::{
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::Context as _;
use tokio::signal::unix::{SignalKind, signal};
use tokio_util::{sync::CancellationToken, task::TaskTracker};

use crate::{
    bus::EventBus,
    clock::{WallClock, monotonic_now_ns},
    config::{Config, ValidConfig},
    control::{self, Control},
    log_limit::LogLimiter,
    persist::StateWriter,
    policy::{
        EjectionPolicy, EvidenceScope, ProbeVerdict,
        checks::{CheckScheduler, ChecksConfig, ProbeEnded, ProbeRequest},
        decision::{Decision, Trigger},
        pool::{PoolEntry, PoolMembership, Role},
    },
    sinks::{Gauges, SinkContext, prober::ProbeSender, stdout::StdoutSink},
    source::{
        cgroup::CgroupResolver,
        event::{KernelEvent, decode},
        kernel::{KernelSource, SourceOptions},
    },
    stats::{Counters, Stats},
};

/// Fails with one clear sentence when the host cannot run connmon.
pub fn preflight() -> anyhow::Result<()> {
    crate::privileges::check_current()?;
    let btf = Path::new(crate::source::btf::VMLINUX);
    if !btf.exists() {
        anyhow::bail!(
            "{} not found: connmon needs Linux >= 5.8 built with CONFIG_DEBUG_INFO_BTF",
            btf.display()
        );
    }
    Ok(())
}

/// The pool: `policy.pool` entries (parsed) plus the lines of the pool file.
pub fn load_pool(
    mut entries: Vec<PoolEntry>,
    pool_file: Option<&Path>,
) -> anyhow::Result<PoolMembership> {
    if let Some(path) = pool_file {
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
    cgroups: CgroupResolver,
    sink: StdoutSink,
    bus: EventBus,
    counters: Counters,
    decisions: Vec<Decision>,
    clock: WallClock,
    state: StateWriter,
    probes: Probes,
    decode_warn: LogLimiter,
    /// Published after every tick for the consumers.
    gauges: Arc<Gauges>,
    /// The fleet link's counters, for the `stats` line (`[fleet]` on).
    fleet: Option<Arc<crate::stats::fleet::FleetCounters>>,
    /// Every consumer's delivery counters, for the `stats` line.
    consumers: Arc<crate::stats::consumers::Consumers>,
}

/// The pipeline's side of the handshake checks: the schedule, the prober's queue, and
/// scratch space reused between polls.
struct Probes {
    scheduler: CheckScheduler,
    prober: ProbeSender,
    /// Our tgid: a kernel event with it and a probe in flight to its `dst` is a probe.
    own_tgid: u32,
    requests: Vec<ProbeRequest>,
    ended: Vec<ProbeEnded>,
}

impl Pipeline {
    /// Reads everything the ring buffer holds; returns how many of the records were
    /// failures or warnings (the reader polls while they flow).
    fn drain(&mut self, ring: &mut aya::maps::RingBuf<aya::maps::MapData>) -> usize {
        let mut failures = 0;
        while let Some(item) = ring.next() {
            match decode(&item) {
                Ok(event) => {
                    failures += usize::from(event.is_failure());
                    self.on_event(event);
                }
                Err(err) => {
                    self.counters.decode_errors += 1;
                    if let Some(held_back) = self.decode_warn.allow(Instant::now()) {
                        tracing::warn!(%err, held_back, "undecodable ring-buffer record (counted in decode_errors; this warning repeats at most every 10s)");
                    }
                }
            }
        }
        self.persist_if_changed();
        failures
    }

    fn on_event(&mut self, mut event: KernelEvent) {
        // Attribution first: the cgroup path (and container) is part of what the
        // evidence scope may look at, and every consumer reports both.
        let who = event.who_mut();
        who.cgroup = self.cgroups.resolve(who.cgroup_id);
        who.trusted = self.policy.evidence().trusts(who);
        if self.is_probe(&event) {
            self.on_probe_event(&event);
            return;
        }
        self.counters.count(&event);
        let key = self.policy.key_of(event.dst(), event.who().netns);
        let role = self.policy.role(&key);
        self.sink.event(&event, role);
        self.bus.event(&event, role);
        match &event {
            KernelEvent::Connect(c) => self.policy.on_connect(c, c.ktime_ns, &mut self.decisions),
            KernelEvent::SynRetransmit(r) => {
                self.policy
                    .on_syn_retransmit(r, r.ktime_ns, &mut self.decisions)
            }
        }
        if let KernelEvent::Connect(c) = &event {
            self.saw(c.dst, role, c.ktime_ns);
        }
        self.emit_decisions();
    }

    /// Whether a kernel event is one of our own probes: made by this process, to a
    /// destination with a probe in flight.
    fn is_probe(&self, event: &KernelEvent) -> bool {
        event.who().tgid == self.probes.own_tgid && self.probes.scheduler.in_flight(&event.dst())
    }

    /// A probe's kernel event: reported with `"probe":true`, counted apart from the
    /// clients' outcomes, and handed to the scheduler and the policy.
    fn on_probe_event(&mut self, event: &KernelEvent) {
        self.counters.events += 1;
        let role = match event {
            KernelEvent::Connect(c) => self.policy.pool().role(&c.dst),
            KernelEvent::SynRetransmit(r) => self.policy.pool().role(&r.dst),
        };
        self.sink.probe_event(event, role);
        self.bus.probe_event(event, role);
        match event {
            KernelEvent::Connect(c) => {
                if let Some(ended) = self.probes.scheduler.on_own_connect(c.dst, c.outcome) {
                    self.probe_ended(ended, Some(c));
                }
            }
            // An idle member's retransmitted SYN is evidence like any other; an ejected
            // member's is expected and changes nothing.
            KernelEvent::SynRetransmit(r) => {
                if !self.policy.is_ejected(&r.dst) {
                    self.policy
                        .on_syn_retransmit(r, r.ktime_ns, &mut self.decisions);
                }
            }
        }
        self.emit_decisions();
    }

    /// A probe ended (`rec`: its kernel outcome; None when it was lost).
    fn probe_ended(
        &mut self,
        ended: ProbeEnded,
        rec: Option<&crate::source::event::ConnectRecord>,
    ) {
        let now = rec.map_or_else(monotonic_now_ns, |c| c.ktime_ns);
        if self.policy.is_ejected(&ended.dst) {
            // Known-dead members are not fed to the detectors or the outage tracker:
            // their failing probes would otherwise look like a local outage.
            let trigger = rec.map(Trigger::from);
            let verdict = self
                .policy
                .on_probe_result(&ended, trigger, now, &mut self.decisions);
            if verdict == ProbeVerdict::Inconclusive {
                self.probes.scheduler.verify_later(ended.dst, now);
            }
        } else if let Some(c) = rec {
            // A background check: evidence like any other connect.
            self.policy.on_connect(c, now, &mut self.decisions);
        }
    }

    /// A client's connect to `dst`: a member of a CIDR pool entry is scheduled for
    /// background checks once seen.
    fn saw(&mut self, dst: std::net::SocketAddr, role: Role, now: u64) {
        if self.probes.scheduler.config().idle_after.is_zero()
            || role != Role::Proxy
            || !self.policy.pool().is_configured()
            || self.policy.pool().members().contains(&dst)
        {
            return;
        }
        self.probes.scheduler.saw_network_member(dst, now);
    }

    fn tick(&mut self) {
        let now = monotonic_now_ns();
        self.policy.tick(now, &mut self.decisions);
        self.emit_decisions();
        self.poll_checks(now);
        self.persist_if_changed();
        self.gauges
            .set(self.policy.table().len(), self.policy.ejected());
    }

    /// Hands due verifications to the scheduler, ends lost probes and sends due ones.
    fn poll_checks(&mut self, now: u64) {
        for dst in self.policy.take_verifications() {
            self.probes.scheduler.verify(dst, now);
        }
        let table = self.policy.table();
        let pool = self.policy.pool();
        let probes = &mut self.probes;
        probes.scheduler.poll(
            now,
            |dst| pool.is_configured() && pool.role(dst) == Role::Proxy,
            |dst| {
                table
                    .get(dst)
                    .and_then(|d| d.last_outcome())
                    .map(|(_, at)| at)
            },
            &mut probes.requests,
            &mut probes.ended,
        );
        for request in probes.requests.drain(..) {
            if probes.prober.try_send(request).is_err() {
                probes.scheduler.unsent(&request, now);
            }
        }
        let mut ended = std::mem::take(&mut self.probes.ended);
        for e in ended.drain(..) {
            self.probe_ended(e, None);
        }
        self.probes.ended = ended;
        self.emit_decisions();
    }

    /// When the checks next need the pipeline (None: nothing scheduled).
    fn checks_deadline(&self) -> Option<u64> {
        if !self.probes.scheduler.busy() {
            return None;
        }
        self.probes.scheduler.next_deadline(monotonic_now_ns())
    }

    /// The pool changed: explicit members get background checks; verifications of
    /// destinations that left the pool end unverified.
    fn pool_changed(&mut self) {
        let now = monotonic_now_ns();
        self.probes
            .scheduler
            .set_members(self.policy.pool().members(), now);
        self.policy.release_unprobeable(now, &mut self.decisions);
        self.emit_decisions();
    }

    /// SIGHUP: re-read `[checks]`; a bad section keeps the current one. A `--checks off`
    /// given at start still wins.
    fn reload_checks(&mut self, config_path: Option<&Path>, started_with: &Config) {
        let reloaded = Config::load(config_path)
            .map_err(anyhow::Error::from)
            .and_then(|file| {
                let checks = ChecksConfig {
                    forced_off: started_with.checks.forced_off,
                    ..file.checks
                };
                checks.validate()?;
                Ok(checks)
            });
        match reloaded {
            Ok(checks) => {
                tracing::info!(?checks, "SIGHUP: checks reloaded");
                self.apply_checks(&checks);
                self.persist_if_changed();
            }
            Err(err) => tracing::error!("SIGHUP: keeping the current checks: {err:#}"),
        }
    }

    /// Applies a `[checks]` section (start, SIGHUP).
    fn apply_checks(&mut self, checks: &ChecksConfig) {
        let now = monotonic_now_ns();
        let checks = checks.effective();
        self.probes.scheduler.reconfigure(checks.clone(), now);
        self.policy.set_verify_before_reinstate(
            checks.verify_before_reinstate,
            now,
            &mut self.decisions,
        );
        self.pool_changed();
    }

    fn emit_decisions(&mut self) {
        if self.decisions.is_empty() {
            return;
        }
        let now = monotonic_now_ns();
        for mut decision in self.decisions.drain(..) {
            match &decision {
                Decision::Evict(e) if self.policy.pool().role(&e.dst) == Role::Proxy => {
                    self.probes.scheduler.ejected(e.dst, now);
                }
                Decision::Reinstate(r) => self.probes.scheduler.reinstated(r.dst),
                _ => {}
            }
            decision.stamp(now, &self.clock);
            self.sink.decision(&decision);
            let role = decision.key().map(|key| self.policy.role(&key));
            self.bus.decision(&decision, role);
        }
    }

    /// Runs one command from the control channel on the engine.
    fn control(&mut self, command: Control) {
        let now = monotonic_now_ns();
        match command.answer(&mut self.policy, now, &mut self.decisions) {
            None => {}
            // The pipeline only copies the table; the views are made and sorted on a
            // blocking thread (a large table's snapshot would otherwise hold up decisions).
            Some(Control::Snapshot { reply }) => {
                let cgroups = &mut self.cgroups;
                let copy = self.policy.snapshot_copy(now, |id| cgroups.resolve(id));
                tokio::task::spawn_blocking(move || {
                    let _ = reply.send(copy.into_snapshot());
                });
            }
            Some(Control::Pool { op, members, reply }) => {
                let pool = self.policy.pool().apply(op, &members);
                let entries = pool.entries();
                tracing::info!(
                    ?op,
                    members = entries.len(),
                    "pool changed by a control command"
                );
                self.policy.set_pool(pool);
                self.pool_changed();
                let _ = reply.send(entries);
            }
            Some(_) => unreachable!("Control::answer answers every other command"),
        }
        self.emit_decisions();
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

pub async fn run(config: ValidConfig, config_path: Option<PathBuf>) -> anyhow::Result<()> {
    preflight()?;
    // Before anything is attached: a SIGTERM that arrives during start-up must still
    // detach cleanly and exit 0, not kill the process by default action.
    let mut sigint = signal(SignalKind::interrupt()).context("installing SIGINT handler")?;
    let mut sigterm = signal(SignalKind::terminate()).context("installing SIGTERM handler")?;
    let mut sighup = signal(SignalKind::hangup()).context("installing SIGHUP handler")?;
    let started = Instant::now();
    let agent = &config.agent;
    let clock = WallClock::calibrate();
    let pool = load_pool(config.pool_entries().to_vec(), agent.pool_file.as_deref())?;
    let seed = u64::from(std::process::id()) ^ monotonic_now_ns();
    let policy = EjectionPolicy::new(config.policy.clone(), pool, host_netns(), clock, seed)?;
    let cgroups = CgroupResolver::open().unwrap_or_else(|err| {
        tracing::warn!("{err}: connects will carry cgroup_id only, no cgroup path or container");
        CgroupResolver::disabled()
    });
    let bus = EventBus::new(agent.bus_capacity, clock);
    let gauges = Arc::new(Gauges::default());
    let fleet = config
        .fleet
        .enabled()
        .then(|| Arc::new(crate::stats::fleet::FleetCounters::default()));
    let consumers = Arc::new(crate::stats::consumers::Consumers::default());
    let (control_tx, mut control_rx) = control::channel();
    // Consumers of the bus and the control channel run as their own tasks; each gets a
    // receiver from `bus.subscribe()` and stops when `shutdown` is cancelled.
    let shutdown = CancellationToken::new();
    let tasks = TaskTracker::new();
    let cx = SinkContext {
        bus: bus.clone(),
        control: control_tx,
        shutdown: shutdown.clone(),
        tasks: tasks.clone(),
        clock,
        gauges: Arc::clone(&gauges),
        fleet: fleet.clone(),
        consumers: Arc::clone(&consumers),
    };
    let checks = config.checks.effective();
    let inline = crate::sinks::start(&config, &cx).await?;
    drop(cx);
    let probes = Probes {
        scheduler: CheckScheduler::new(
            checks.clone(),
            config.policy.max_destinations,
            seed.rotate_left(17),
            monotonic_now_ns(),
        ),
        prober: inline.prober,
        own_tgid: std::process::id(),
        requests: Vec::new(),
        ended: Vec::new(),
    };
    let mut pipe = Pipeline {
        policy,
        cgroups,
        sink: inline.stdout,
        bus,
        counters: Counters::default(),
        decisions: Vec::new(),
        clock,
        state: StateWriter::spawn(agent.state_file.clone())
            .context("starting the state-file writer")?,
        probes,
        decode_warn: LogLimiter::new(Duration::from_secs(10)),
        gauges,
        fleet,
        consumers,
    };
    // Before the state file: an ejection that expired while connmon was down is then
    // verified like any other.
    pipe.policy.set_verify_before_reinstate(
        checks.verify_before_reinstate,
        monotonic_now_ns(),
        &mut pipe.decisions,
    );
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

    {
        let now = monotonic_now_ns();
        let _ = pipe.policy.take_verifications();
        let ejections: Vec<_> = pipe.policy.ejections().collect();
        for (dst, verifying) in ejections {
            if pipe.policy.pool().role(&dst) != Role::Proxy {
                continue;
            }
            pipe.probes.scheduler.ejected(dst, now);
            if verifying {
                pipe.probes.scheduler.verify(dst, now);
            }
        }
        pipe.probes
            .scheduler
            .set_members(pipe.policy.pool().members(), now);
    }

    let mut source = KernelSource::attach(&SourceOptions {
        ring_buffer_bytes: agent.ring_buffer_bytes,
        wakeup_every_event: agent.wakeup_every_event,
    })?;
    tracing::info!(
        ring_buffer_bytes = agent.ring_buffer_bytes,
        netns = source.info.netns_resolved,
        netns_owner = source.info.netns_owner_resolved,
        trust = %pipe.policy.evidence().trust(),
        cgroup_v2 = %pipe.cgroups.mount().map_or_else(|| "-".into(), |m| m.display().to_string()),
        pool_members = pipe.policy.pool().len(),
        "attached to {}",
        source.info.attached.join(", ")
    );
    // Reinstatements from loading the state file, now that every consumer listens.
    pipe.emit_decisions();
    let service = crate::service::ServiceManager::from_env();
    service.ready("attached; observing TCP connects");
    let watchdog_every = service
        .watchdog_every()
        .unwrap_or(Duration::from_secs(86_400 * 365));
    let mut watchdog_tick = tokio::time::interval(watchdog_every);

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
        // A timer only when a probe is scheduled: with checks off the loop is as before.
        let checks_wake = pipe
            .checks_deadline()
            .map(|at| Duration::from_nanos(at.saturating_sub(monotonic_now_ns())));
        tokio::select! {
            guard = source.ring.readable_mut() => {
                let mut guard = guard.context("waiting on the ring buffer")?;
                let failures = pipe.drain(guard.get_inner_mut());
                guard.clear_ready();
                source.poll.after_drain(failures, false)?;
            }
            tick = source.poll.tick(), if source.poll.active() => {
                tick.context("waiting on the poll timer")?;
                let failures = pipe.drain(source.ring.get_mut());
                source.poll.after_drain(failures, true)?;
            }
            _ = batch_tick.tick() => {
                let _ = pipe.drain(source.ring.get_mut());
                pipe.tick();
            }
            _ = stats_tick.tick() => {
                let stats = snapshot(&source, &pipe, &clock, started, false)?;
                warn_if_lost(&mut last_lost, stats.lost_events);
                pipe.sink.stats(&stats);
                pipe.bus.stats(&stats);
            }
            _ = tokio::time::sleep(checks_wake.unwrap_or(FAR_FUTURE)), if checks_wake.is_some() => {
                let _ = pipe.drain(source.ring.get_mut());
                pipe.poll_checks(monotonic_now_ns());
                pipe.persist_if_changed();
            }
            Some(command) = control_rx.recv() => {
                // Commands already queued (a burst of fleet verdicts) are taken together,
                // then the state is saved once: a save walks the whole table.
                pipe.control(command);
                for _ in 0..CONTROL_BATCH {
                    let Ok(command) = control_rx.try_recv() else { break };
                    pipe.control(command);
                }
                pipe.persist_if_changed();
            }
            _ = sighup.recv() => {
                reload_pool(&mut pipe.policy, config_path.as_deref(), &config);
                reload_evidence(&mut pipe.policy, config_path.as_deref());
                pipe.reload_checks(config_path.as_deref(), &config);
            }
            _ = watchdog_tick.tick() => service.watchdog(),
            _ = sigint.recv() => break,
            _ = sigterm.recv() => break,
        }
        // Event lines wait while the reader polls (one write per many polls).
        pipe.sink
            .flush_due(!source.poll.active())
            .context("writing to stdout")?;
    }

    service.stopping();
    let _ = pipe.drain(source.ring.get_mut());
    let stats = snapshot(&source, &pipe, &clock, started, true)?;
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

/// Control commands handled between two saves of the state at most.
const CONTROL_BATCH: usize = 256;

/// A sleep that does not end (no probe is scheduled).
const FAR_FUTURE: Duration = Duration::from_secs(86_400 * 365);

/// How long consumers get to flush (OTLP) and say goodbye (socket clients) at exit.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// SIGHUP: re-read the pool — the config file's `policy.pool` and the pool file in
/// effect (a `--pool` flag still wins) — and swap it in, keeping every destination's
/// history. A bad file keeps the old pool.
fn reload_pool(policy: &mut EjectionPolicy, config_path: Option<&Path>, started_with: &Config) {
    let reloaded = Config::load(config_path)
        .map_err(anyhow::Error::from)
        .and_then(|file| {
            load_pool(
                file.policy.pool_entries()?,
                started_with.agent.pool_file.as_deref(),
            )
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

/// SIGHUP: re-read `[policy.evidence]` from the config file and swap the scope in. An
/// invalid section (a namespace path that no longer exists, say) keeps the current one.
fn reload_evidence(policy: &mut EjectionPolicy, config_path: Option<&Path>) {
    let reloaded = Config::load(config_path)
        .map_err(anyhow::Error::from)
        .and_then(|file| {
            EvidenceScope::from_config(&file.policy.evidence, host_netns())
                .map_err(anyhow::Error::from)
        });
    match reloaded {
        Ok(scope) => {
            tracing::info!(
                trust = %scope.trust(),
                netns = ?scope.netns(),
                cgroups = ?scope.cgroups(),
                "SIGHUP: evidence scope reloaded"
            );
            policy.set_evidence(scope);
        }
        Err(err) => tracing::error!("SIGHUP: keeping the current evidence scope: {err:#}"),
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
    pipe: &Pipeline,
    clock: &WallClock,
    started: Instant,
    is_final: bool,
) -> anyhow::Result<Stats> {
    let kernel = source.counters().context("reading kernel counters")?;
    let counters = &pipe.counters;
    let probes = pipe.probes.scheduler.counts();
    let checks_used = pipe.probes.scheduler.config().any_enabled() || probes.sent > 0;
    Ok(Stats {
        r#type: "stats",
        ts: clock.rfc3339(monotonic_now_ns()),
        uptime_s: started.elapsed().as_secs(),
        events: counters.events,
        outcomes: counters.outcome_counts(),
        syn_retransmits: counters.syn_retransmits,
        lost_events: kernel.lost_events,
        untracked: kernel.untracked,
        storage_failed: kernel.storage_failed,
        overflow: kernel.overflow,
        decode_errors: counters.decode_errors,
        probes: checks_used.then_some(probes),
        fleet: pipe.fleet.as_ref().map(|f| f.snapshot()),
        consumers: pipe.consumers.snapshot(),
        is_final,
    })
}
