//! A serializable view of the policy's state — every tracked destination with its
//! statistics, role, state and ejection — for `connmon status` and the Unix socket.
//!
//! The agent does not build it on the pipeline: there it takes a [`SnapshotCopy`] (a
//! clone of each table entry, a few hundred nanoseconds a destination) and the views —
//! percentiles, times, top lists, the sort — are made from the copy on another thread,
//! so a snapshot of a large table does not hold up decisions (issue #18).

use std::{collections::HashMap, net::SocketAddr, sync::Arc};

use serde::Serialize;

use super::{
    EjectionPolicy,
    decision::Reason,
    ejection::Standing,
    evidence::{EvidenceScope, Trust},
    guard::allowed_ejections,
    pool::Role,
};
use crate::{
    clock::WallClock,
    source::{cgroup::CgroupOrigin, event::Outcome},
    table::{Cgroup, Destination, DestinationKey, FailureMode, Process, Tally},
};

/// The policy at one moment.
#[derive(Clone, Debug, PartialEq, Serialize, schemars::JsonSchema)]
pub struct PolicySnapshot {
    /// RFC 3339 time of the snapshot.
    #[schemars(extend("format" = "date-time"))]
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
#[derive(Clone, Debug, PartialEq, Eq, Serialize, schemars::JsonSchema)]
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
#[derive(Clone, Debug, PartialEq, Eq, Serialize, schemars::JsonSchema)]
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
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum DestinationState {
    Healthy,
    Suspect,
    Ejected,
    Probation,
}

pub use crate::source::event::OutcomeCounts;

/// One destination.
#[derive(Clone, Debug, PartialEq, Serialize, schemars::JsonSchema)]
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

/// What a [`PolicySnapshot`] is made of, copied from the policy
/// ([`super::EjectionPolicy::snapshot_copy`]); [`SnapshotCopy::into_snapshot`] makes
/// the snapshot from it, wherever that is cheap.
#[derive(Debug)]
pub struct SnapshotCopy {
    /// Everything but the destinations.
    pub(super) head: PolicySnapshot,
    pub(super) now: u64,
    pub(super) slot_ns: u64,
    pub(super) wall: WallClock,
    pub(super) entries: Vec<(DestinationKey, Destination<Standing>)>,
    /// Fleet ejections' origin hosts.
    pub(super) origins: HashMap<DestinationKey, Arc<str>>,
    /// The origin of every cgroup among the entries' top cgroups.
    pub(super) cgroups: HashMap<u64, Option<Arc<CgroupOrigin>>>,
}

impl SnapshotCopy {
    /// Destinations copied.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The snapshot, exactly as [`super::EjectionPolicy::snapshot`] would have made it at
    /// the copy's time, with each top cgroup's origin filled in.
    pub fn into_snapshot(self) -> PolicySnapshot {
        let SnapshotCopy {
            head,
            now,
            slot_ns,
            wall,
            entries,
            origins,
            cgroups,
        } = self;
        let mut destinations: Vec<DestinationView> = entries
            .into_iter()
            .map(|(dst, dest)| {
                let mut view = view(dst, &dest, now, slot_ns, &wall, origins.get(&dst));
                for tally in &mut view.top_cgroups {
                    tally.origin = cgroups.get(&tally.cgroup_id).cloned().flatten();
                }
                view
            })
            .collect();
        destinations.sort_by_key(|d| (d.dst, d.netns));
        PolicySnapshot {
            destinations,
            ..head
        }
    }
}

/// One destination's view at `now`.
pub(super) fn view(
    dst: DestinationKey,
    dest: &Destination<Standing>,
    now: u64,
    slot_ns: u64,
    wall: &WallClock,
    origin: Option<&Arc<str>>,
) -> DestinationView {
    let standing = &dest.annotation;
    let state = if standing.ejected.is_some() {
        DestinationState::Ejected
    } else if standing.probation {
        DestinationState::Probation
    } else if standing.suspect {
        DestinationState::Suspect
    } else {
        DestinationState::Healthy
    };
    let (window_attempts, window_failures) = dest.window_totals(now, slot_ns);
    let handshake = dest.handshake();
    DestinationView {
        dst: dst.addr,
        netns: dst.netns,
        role: standing.role,
        state,
        attempts: dest.attempts(),
        outcomes: OutcomeCounts::from_fn(|outcome| dest.count(outcome)),
        syn_retransmits: dest.syn_retransmits(),
        failure_ratio: (window_attempts > 0)
            .then(|| f64::from(window_failures) / f64::from(window_attempts)),
        window_attempts,
        handshake_p50_us: handshake.quantile(0.50),
        handshake_p99_us: handshake.quantile(0.99),
        last_outcome: dest.last_outcome().map(|(o, _)| o),
        last_outcome_at: dest.last_outcome().map(|(_, at)| wall.rfc3339(at)),
        failure_mode: dest.failure_mode(),
        ejection_count: standing.ejection_count,
        ejection_reason: standing.ejected.as_ref().map(|e| e.reason),
        ejected_until: standing.ejected.as_ref().map(|e| wall.rfc3339(e.until_ns)),
        origin: origin.map(|o| o.to_string()),
        top_processes: dest.top_processes(),
        top_cgroups: dest.top_cgroups().into_iter().map(Into::into).collect(),
    }
}

impl EjectionPolicy {
    /// Every tracked destination with its statistics and standing.
    pub fn snapshot(&mut self, now: u64) -> PolicySnapshot {
        let slot_ns = self.table.slot_ns();
        let mut destinations: Vec<DestinationView> = self
            .table
            .iter()
            .map(|(dst, dest)| {
                view(
                    dst,
                    dest,
                    now,
                    slot_ns,
                    &self.wall,
                    self.fleet_origins.get(&dst),
                )
            })
            .collect();
        destinations.sort_by_key(|d| (d.dst, d.netns));
        PolicySnapshot {
            destinations,
            ..self.snapshot_head(now)
        }
    }

    /// What [`EjectionPolicy::snapshot`] is made of, copied — one clone per destination,
    /// nothing rendered — for [`SnapshotCopy::into_snapshot`] to finish elsewhere: the
    /// pipeline pays for the copy only. `resolve` gives the origin of each cgroup among
    /// the destinations' top cgroups (asked once per cgroup).
    pub fn snapshot_copy(
        &mut self,
        now: u64,
        mut resolve: impl FnMut(u64) -> Option<Arc<crate::source::cgroup::CgroupOrigin>>,
    ) -> SnapshotCopy {
        let mut cgroups = HashMap::new();
        let entries = self
            .table
            .iter()
            .map(|(dst, dest)| {
                for id in dest.cgroup_ids() {
                    cgroups.entry(id).or_insert_with(|| resolve(id));
                }
                (dst, dest.clone())
            })
            .collect();
        SnapshotCopy {
            head: self.snapshot_head(now),
            now,
            slot_ns: self.table.slot_ns(),
            wall: self.wall,
            entries,
            origins: self.fleet_origins.clone(),
            cgroups,
        }
    }

    /// A snapshot without its destinations.
    fn snapshot_head(&mut self, now: u64) -> PolicySnapshot {
        let known = self.known_members();
        PolicySnapshot {
            ts: self.wall.rfc3339(now),
            local_outage: self.outage.active(),
            known_members: known,
            ejected: self.ejected(),
            max_ejected: allowed_ejections(known, self.config.max_ejection_percent),
            tracked: self.table.len(),
            dropped_from_table: self.table.dropped(),
            untracked_events: self.table.refused_when_full(),
            untrusted_events: self.untrusted,
            evidence: EvidenceView::of(&self.evidence),
            destinations: Vec::new(),
        }
    }
}

/// For tests of snapshots here and in the socket: an engine over the pool 10.1.0.0/16
/// fed refused or established connects.
#[cfg(test)]
pub(crate) mod fixture {
    use std::net::SocketAddr;

    use crate::{
        clock::WallClock,
        policy::{Decision, EjectionPolicy, config::PolicyConfig, pool::PoolMembership},
        source::event::{ConnectRecord, KernelEvent, refused_to},
    };

    const SEC: u64 = 1_000_000_000;

    /// Connects to `n` destinations `10.1.(i / row).(i % row):8080`, 1 µs apart from
    /// 1 000 s on: destination `i` gets `rounds(i)` of them, and `set(i, k, record)`
    /// makes the `k`-th. Returns the engine, the time after the last, and its decisions.
    pub(crate) fn fed(
        n: u16,
        row: u16,
        rounds: impl Fn(u16) -> u32,
        set: impl Fn(u16, u32, &mut ConnectRecord),
    ) -> (EjectionPolicy, u64, Vec<Decision>) {
        let pool = PoolMembership::parse("10.1.0.0/16").expect("pool");
        let wall = WallClock::from_offset_ns(1_700_000_000_000_000_000);
        let mut policy =
            EjectionPolicy::new(PolicyConfig::default(), pool, 1, wall, 1).expect("valid config");
        let (mut now, mut out) = (1_000 * SEC, Vec::new());
        for i in 0..n {
            let dst = SocketAddr::from(([10, 1, (i / row) as u8, (i % row) as u8], 8080));
            let KernelEvent::Connect(mut rec) = refused_to(dst) else {
                panic!("refused_to gives a connect")
            };
            for k in 0..rounds(i) {
                set(i, k, &mut rec);
                rec.ktime_ns = now;
                rec.start_ns = now - 1_000;
                policy.on_connect(&rec, now, &mut out);
                now += 1_000;
            }
        }
        (policy, now, out)
    }
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use super::*;

    #[test]
    fn the_copy_makes_the_snapshot_the_policy_makes_and_resolves_each_cgroup_once() {
        // Successes only (inline summaries), mixed outcomes (details), and runs of
        // refusals long enough to eject; three cgroups among them.
        let rounds = |i| 1 + u32::from(i % 9);
        let (mut policy, now, mut out) = fixture::fed(600, 200, rounds, |i, k, rec| {
            rec.outcome = match i % 3 {
                0 => Outcome::Established,
                1 if k % 2 == 0 => Outcome::Established,
                _ => Outcome::Refused,
            };
            rec.who.cgroup_id = u64::from(i % 3) + u64::from(k % 2);
        });
        let manual = SocketAddr::from(([10, 1, 9, 9], 80));
        assert!(policy.evict_manual(manual, std::time::Duration::from_secs(60), now, &mut out));
        assert!(
            out.iter()
                .filter(|d| matches!(d, super::super::Decision::Evict(_)))
                .count()
                > 1,
            "some destinations were ejected"
        );
        let direct = policy.snapshot(now);
        let mut asked = Vec::new();
        let copy = policy.snapshot_copy(now, |id| {
            asked.push(id);
            Some(Arc::new(CgroupOrigin::from_path(&format!("/test/{id}"))))
        });
        assert_eq!(copy.len(), direct.destinations.len());
        let mut made = copy.into_snapshot();
        for tally in made
            .destinations
            .iter_mut()
            .flat_map(|d| d.top_cgroups.iter_mut())
        {
            let origin = tally
                .origin
                .take()
                .expect("every top cgroup has its origin");
            assert_eq!(&*origin.path, format!("/test/{}", tally.cgroup_id));
        }
        assert_eq!(
            made, direct,
            "the copy's snapshot differs from the policy's"
        );
        let mut distinct = asked.clone();
        distinct.sort_unstable();
        distinct.dedup();
        assert_eq!(
            asked.len(),
            distinct.len(),
            "a cgroup was resolved twice: {asked:?}"
        );
        assert_eq!(distinct, vec![0, 1, 2, 3]);
    }
}
