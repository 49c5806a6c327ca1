//! Commands into the pipeline from outside (the Unix socket server): they run on the
//! pipeline task, between two ring-buffer drains, so the engine stays single-owner.
//! The channel is bounded; senders wait (a command is a request, not a stream).

use std::{net::SocketAddr, time::Duration};

use tokio::sync::{mpsc, oneshot};

pub use crate::policy::pool::PoolOp;
use crate::policy::{Decision, EjectionPolicy, FleetApply, PolicySnapshot, PoolEntry};

/// One command, with the channel its answer goes back on.
#[derive(Debug)]
pub enum Control {
    /// Current ejections and per-destination statistics.
    Snapshot {
        reply: oneshot::Sender<PolicySnapshot>,
    },
    /// Change the pool; answers with the resulting pool entries.
    Pool {
        op: PoolOp,
        members: Vec<PoolEntry>,
        reply: oneshot::Sender<Vec<PoolEntry>>,
    },
    /// The pool as it is (`pool list`); an unconfigured pool stays unconfigured.
    PoolList {
        reply: oneshot::Sender<Vec<PoolEntry>>,
    },
    /// Manual ejection through the engine (broadcast like any other); false if refused.
    Evict {
        dst: SocketAddr,
        duration: Duration,
        reply: oneshot::Sender<bool>,
    },
    /// Manual reinstatement; false if the destination was not ejected.
    Reinstate {
        dst: SocketAddr,
        reply: oneshot::Sender<bool>,
    },
    /// Another host's verdict (`[fleet]`, see sinks::fleet).
    Fleet {
        verdict: FleetVerdict,
        reply: oneshot::Sender<crate::policy::FleetApply>,
    },
}

impl Control {
    /// Answers the commands the policy answers alone (evict, reinstate, the pool's list,
    /// a fleet verdict), its decisions into `out`; hands back the others (`Snapshot`,
    /// `Pool`), whose answer is the pipeline's own.
    pub fn answer(
        self,
        policy: &mut EjectionPolicy,
        now: u64,
        out: &mut Vec<Decision>,
    ) -> Option<Control> {
        match self {
            Control::Evict {
                dst,
                duration,
                reply,
            } => {
                let _ = reply.send(policy.evict_manual(dst, duration, now, out));
            }
            Control::Reinstate { dst, reply } => {
                let _ = reply.send(policy.reinstate_manual(dst, now, out));
            }
            Control::PoolList { reply } => {
                let _ = reply.send(policy.pool().entries());
            }
            Control::Fleet { verdict, reply } => {
                let _ = reply.send(verdict.apply(policy, now, out));
            }
            Control::Snapshot { .. } | Control::Pool { .. } => return Some(self),
        }
        None
    }
}

/// A verdict of another host that the fleet view decided to apply here.
#[derive(Debug)]
pub enum FleetVerdict {
    Evict {
        dst: SocketAddr,
        duration: Duration,
        origin: std::sync::Arc<str>,
    },
    /// Lift the fleet ejection (this host's own ejections stay).
    Reinstate { dst: SocketAddr },
}

impl FleetVerdict {
    /// Applies the verdict to the policy; lifting a fleet ejection that is not there
    /// answers `AlreadyEjected`.
    fn apply(self, policy: &mut EjectionPolicy, now: u64, out: &mut Vec<Decision>) -> FleetApply {
        match self {
            FleetVerdict::Evict {
                dst,
                duration,
                origin,
            } => policy.evict_fleet(dst, duration, origin, now, out),
            FleetVerdict::Reinstate { dst } => {
                if policy.reinstate_fleet(dst, now, out) {
                    FleetApply::Applied
                } else {
                    FleetApply::AlreadyEjected
                }
            }
        }
    }
}

/// Bounded queue of commands for the pipeline.
pub fn channel() -> (mpsc::Sender<Control>, mpsc::Receiver<Control>) {
    mpsc::channel(64)
}
