//! What the fuzz targets share: an [`Engine`] that drives the real decision engine
//! ([`EjectionPolicy`]) the way the agent's pipeline does — kernel events, socket
//! commands, timer ticks — and renders every decision through the real event bus, so a
//! fuzzed input reaches everything downstream of its parser, not just the parser.
//!
//! The invariants checked here hold for any input: every published line is one JSON
//! object, and the engine never panics (libFuzzer reports a panic as a crash).

use std::{net::SocketAddr, time::Duration};

use monitor::{
    bus::{EventBus, Published},
    clock::WallClock,
    control::{Control, PoolOp},
    policy::{Decision, EjectionPolicy, PolicyConfig, PoolMembership},
    server::protocol::{self, Action},
    source::event::KernelEvent,
};
use serde_json::{Value, json};
use tokio::sync::broadcast;

/// The host's network namespace inode the engine is given (for `localhost_trap`).
pub const HOST_NETNS: u32 = 4_026_531_840;
/// A fixed Unix-time offset: 2023-11-14, so rendered timestamps are deterministic.
pub const WALL_OFFSET_NS: i128 = 1_700_000_000_000_000_000;
/// The engine's clock starts here (CLOCK_MONOTONIC ns).
pub const BOOT_NS: u64 = 1_000_000_000_000;

/// The decision engine, its bus and a subscriber that checks every published line.
pub struct Engine {
    pub policy: EjectionPolicy,
    bus: EventBus,
    rx: broadcast::Receiver<std::sync::Arc<Published>>,
    decisions: Vec<Decision>,
    wall: WallClock,
    /// The engine's CLOCK_MONOTONIC "now"; only moves forward.
    pub now: u64,
    default_ejection: Duration,
}

impl Engine {
    /// An engine with `config` (None when the config is invalid: the agent would not
    /// start with it either).
    pub fn new(config: PolicyConfig, pool: PoolMembership) -> Option<Self> {
        let wall = WallClock::from_offset_ns(WALL_OFFSET_NS);
        let default_ejection = config.base_ejection;
        config.validate().ok()?;
        let policy = EjectionPolicy::new(config, pool, HOST_NETNS, wall, 1).ok()?;
        let bus = EventBus::new(1024, wall);
        let rx = bus.subscribe();
        Some(Engine {
            policy,
            bus,
            rx,
            decisions: Vec::new(),
            wall,
            now: BOOT_NS,
            default_ejection,
        })
    }

    /// An engine with the default policy and no pool.
    pub fn with_defaults() -> Self {
        Self::new(PolicyConfig::default(), PoolMembership::unconfigured())
            .expect("the default policy is valid")
    }

    /// Moves the clock forward by `ns` and runs the timers, as the pipeline does.
    pub fn advance(&mut self, ns: u64) {
        self.now = self.now.saturating_add(ns);
        self.policy.tick(self.now, &mut self.decisions);
        self.emit();
    }

    /// One decoded ring-buffer record, as the pipeline feeds it.
    pub fn kernel_event(&mut self, event: &KernelEvent) {
        self.now = self.now.max(event.ktime_ns());
        match event {
            KernelEvent::Connect(c) => self.policy.on_connect(c, self.now, &mut self.decisions),
            KernelEvent::SynRetransmit(r) => {
                self.policy
                    .on_syn_retransmit(r, self.now, &mut self.decisions)
            }
        }
        let dst = match event {
            KernelEvent::Connect(c) => c.dst,
            KernelEvent::SynRetransmit(r) => r.dst,
        };
        self.bus.event(event, self.policy.pool().role(&dst));
        self.emit();
    }

    /// One socket command from a privileged client, handled as the session and the
    /// pipeline handle it; returns the reply line.
    pub fn request(&mut self, request: Action, id: Option<&Value>) -> String {
        let now = self.now;
        let out = &mut self.decisions;
        let line = match request {
            Action::Subscribe(filter) => protocol::subscribed(&filter, id),
            Action::Ping => protocol::reply(json!({"type": "pong"}), id),
            Action::Snapshot => {
                let snapshot = self.policy.snapshot(now);
                let value = serde_json::to_value(&snapshot).expect("a snapshot serializes");
                protocol::reply(value, id)
            }
            Action::PoolList => Self::pool_reply(&self.policy.pool().entries(), id),
            Action::Pool { op, members } => {
                let entries = if members.is_empty() && op != PoolOp::Replace {
                    self.policy.pool().entries()
                } else {
                    let pool = self.policy.pool().apply(op, &members);
                    let entries = pool.entries();
                    self.policy.set_pool(pool);
                    entries
                };
                Self::pool_reply(&entries, id)
            }
            Action::Evict { dst, duration } => {
                let duration = duration.unwrap_or(self.default_ejection);
                let done = self.policy.evict_manual(dst, duration, now, out);
                reply_or_reject(done, "evict", dst, id)
            }
            Action::Reinstate { dst } => {
                let done = self.policy.reinstate_manual(dst, now, out);
                reply_or_reject(done, "reinstate", dst, id)
            }
        };
        self.emit();
        line
    }

    /// The event bus decisions are published on (sessions subscribe to it).
    pub fn bus(&self) -> EventBus {
        self.bus.clone()
    }

    /// One command from the socket server's control channel, answered as the agent's
    /// pipeline answers it.
    pub fn control(&mut self, control: Control) {
        let now = self.now;
        match control.answer(&mut self.policy, now, &mut self.decisions) {
            None => {}
            // As the agent answers it: a copy of the table, made into the snapshot
            // afterwards; it must be the snapshot the policy makes directly.
            Some(Control::Snapshot { reply }) => {
                let snapshot = self.policy.snapshot_copy(now, |_| None).into_snapshot();
                assert_eq!(
                    snapshot,
                    self.policy.snapshot(now),
                    "the snapshot made from the copy differs"
                );
                let _ = reply.send(snapshot);
            }
            Some(Control::Pool { op, members, reply }) => {
                let pool = self.policy.pool().apply(op, &members);
                let entries = pool.entries();
                self.policy.set_pool(pool);
                let _ = reply.send(entries);
            }
            Some(_) => unreachable!("Control::answer answers every other command"),
        }
        self.emit();
    }

    /// The reply to a `pool` command: the pool after the change.
    fn pool_reply(entries: &[monitor::policy::PoolEntry], id: Option<&Value>) -> String {
        let pool: Vec<String> = entries.iter().map(ToString::to_string).collect();
        protocol::reply(json!({"type": "ok", "cmd": "pool", "pool": pool}), id)
    }

    /// The state file the agent would write now.
    pub fn state_snapshot(&self) -> monitor::policy::state::StateFile {
        self.policy.state_snapshot(self.now)
    }

    /// Stamps and publishes pending decisions, then checks every line published.
    fn emit(&mut self) {
        for mut decision in self.decisions.drain(..) {
            decision.stamp(self.now, &self.wall);
            let role = decision.dst().map(|d| self.policy.pool().role(&d));
            self.bus.decision(&decision, role);
        }
        loop {
            match self.rx.try_recv() {
                Ok(msg) => assert_one_json_object(&msg.json()),
                Err(broadcast::error::TryRecvError::Lagged(_)) => {}
                Err(_) => break,
            }
        }
    }
}

fn reply_or_reject(done: bool, cmd: &str, dst: SocketAddr, id: Option<&Value>) -> String {
    if done {
        protocol::reply(
            json!({"type": "ok", "cmd": cmd, "dst": dst.to_string()}),
            id,
        )
    } else {
        let err = protocol::ProtocolError::Rejected(format!("{cmd}: {dst} refused"));
        protocol::error(&err, id)
    }
}

/// Panics unless `line` is exactly one JSON object on one line.
pub fn assert_one_json_object(line: &str) {
    assert!(
        !line.contains('\n'),
        "a protocol line contains a newline: {line:?}"
    );
    let value: Value = serde_json::from_str(line)
        .unwrap_or_else(|e| panic!("a published line is not JSON ({e}): {line:?}"));
    assert!(
        value.is_object(),
        "a published line is not an object: {line:?}"
    );
}
