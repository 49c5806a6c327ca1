//! A serializable view of the policy's state — every tracked destination with its
//! statistics, role, state and ejection — for `connmon status` and the Unix socket.

use std::{net::SocketAddr, sync::Arc};

use serde::Serialize;

use super::{
    decision::Reason,
    evidence::{EvidenceScope, Trust},
    pool::Role,
};
use crate::{
    source::{cgroup::CgroupOrigin, event::Outcome},
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
    /// Connects and SYN retransmits outside the evidence scope (reported, never counted).
    pub untrusted_events: u64,
    /// The evidence scope in force.
    pub evidence: EvidenceView,
    /// Sorted by address, then namespace.
    pub destinations: Vec<DestinationView>,
}

/// `[policy.evidence]` as in force: namespaces resolved to inode numbers.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct EvidenceView {
    pub trust: Trust,
    pub netns: Vec<u32>,
    pub cgroups: Vec<String>,
}

impl EvidenceView {
    pub fn of(scope: &EvidenceScope) -> Self {
        EvidenceView {
            trust: scope.trust(),
            netns: scope.netns().to_vec(),
            cgroups: scope.cgroups().to_vec(),
        }
    }
}

/// A cgroup that connected to a destination, with its path and container once the
/// agent resolved them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct CgroupTally {
    pub cgroup_id: u64,
    /// `cgroup`, `container`, `pod_uid`, each when known.
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    pub origin: Option<Arc<CgroupOrigin>>,
    pub connects: u32,
}

impl From<Tally<Cgroup>> for CgroupTally {
    fn from(t: Tally<Cgroup>) -> Self {
        CgroupTally {
            cgroup_id: t.key.cgroup_id,
            origin: None,
            connects: t.connects,
        }
    }
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
    /// For another network namespace's loopback: that namespace.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub netns: Option<u32>,
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
    /// `ejection_reason: fleet`: the host whose verdict it is.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub origin: Option<String>,
    pub top_processes: Vec<Tally<Process>>,
    pub top_cgroups: Vec<CgroupTally>,
}
