//! A serializable view of the policy's state — every tracked destination with its
//! statistics, role, state and ejection — for `connmon status` and the Unix socket.

use std::net::SocketAddr;

use serde::Serialize;

use super::{decision::Reason, pool::Role};
use crate::{
    source::event::Outcome,
    table::{Cgroup, FailureMode, Process, Tally},
};

/// The policy at one moment.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct PolicySnapshot {
    /// RFC 3339 time of the snapshot.
    pub ts: String,
    pub local_outage: bool,
    /// Pool members known to the percentage guard.
    pub known_members: usize,
    pub ejected: usize,
    /// How many may be ejected at once now.
    pub max_ejected: usize,
    pub tracked: usize,
    /// Table entries dropped to make room, and events for destinations that found no room.
    pub dropped_from_table: u64,
    pub untracked_events: u64,
    /// Sorted by address.
    pub destinations: Vec<DestinationView>,
}

/// Where a destination stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DestinationState {
    Healthy,
    Suspect,
    Ejected,
    Probation,
}

pub use crate::source::event::OutcomeCounts;

/// One destination.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct DestinationView {
    pub dst: SocketAddr,
    pub role: Role,
    pub state: DestinationState,
    pub attempts: u64,
    pub outcomes: OutcomeCounts,
    pub syn_retransmits: u64,
    /// Failures / attempts over the ratio window; `None` without attempts in it.
    pub failure_ratio: Option<f64>,
    pub window_attempts: u32,
    pub handshake_p50_us: Option<u64>,
    pub handshake_p99_us: Option<u64>,
    pub last_outcome: Option<Outcome>,
    pub last_outcome_at: Option<String>,
    pub failure_mode: Option<FailureMode>,
    pub ejection_count: u32,
    pub ejection_reason: Option<Reason>,
    pub ejected_until: Option<String>,
    pub top_processes: Vec<Tally<Process>>,
    pub top_cgroups: Vec<Tally<Cgroup>>,
}
