//! Decisions: what the policy tells the world — evict, reinstate, suspect, diagnosis —
//! as NDJSON objects on the same stream as connect outcomes.
//!
//! The engine fills everything except `ts` (RFC 3339 of the moment the decision is
//! written) and `detect_us` (from the kernel event to that moment): the sink calls
//! [`Decision::stamp`] just before writing, so both describe the emission, not the
//! engine's bookkeeping. Unstamped, the two keys are absent.

use std::{net::SocketAddr, sync::Arc};

use serde::{Deserialize, Serialize};

use super::pool::Role;
use crate::{
    clock::WallClock,
    source::{
        cgroup::CgroupOrigin,
        event::{Attribution, Comm, ConnectRecord, Outcome, SynRetransmitRecord},
    },
    table::{Destination, DestinationKey, FailureMode},
};

/// One policy decision.
#[derive(Clone, Debug, PartialEq, Serialize, schemars::JsonSchema)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Decision {
    Evict(Eviction),
    Reinstate(Reinstatement),
    Suspect(Suspicion),
    Diagnosis(Diagnosis),
}

impl Decision {
    /// Fills `ts` and `detect_us` for a decision emitted at `emitted_ns` (CLOCK_MONOTONIC).
    pub fn stamp(&mut self, emitted_ns: u64, wall: &WallClock) {
        let ts = Some(wall.rfc3339(emitted_ns));
        let detect = |ktime_ns: Option<u64>| ktime_ns.map(|k| emitted_ns.saturating_sub(k) / 1_000);
        match self {
            Decision::Evict(e) => {
                e.detect_us = detect(e.trigger.as_ref().map(|t| t.ktime_ns));
                e.ts = ts;
            }
            Decision::Reinstate(r) => r.ts = ts,
            Decision::Suspect(s) => {
                s.detect_us = detect(Some(s.trigger.ktime_ns));
                s.ts = ts;
            }
            Decision::Diagnosis(d) => {
                d.detect_us = detect(d.trigger_ktime_ns);
                d.ts = ts;
            }
        }
    }

    /// The address of the destination concerned, if any (a `local_outage` concerns none).
    /// See [`Decision::key`] for which namespace's address it is.
    pub fn dst(&self) -> Option<SocketAddr> {
        self.key().map(|k| k.addr)
    }

    /// The destination concerned, if any: for another namespace's loopback the key
    /// carries that namespace (a localhost trap always does).
    pub fn key(&self) -> Option<DestinationKey> {
        let key = |addr, netns| DestinationKey { addr, netns };
        match self {
            Decision::Evict(e) => Some(key(e.dst, e.netns)),
            Decision::Reinstate(r) => Some(key(r.dst, r.netns)),
            Decision::Suspect(s) => Some(key(s.dst, s.netns)),
            Decision::Diagnosis(d) => match &d.finding {
                Finding::LocalhostTrap { dst, netns, .. } => Some(key(*dst, Some(*netns))),
                Finding::EjectionGuard { dst, netns, .. } => Some(key(*dst, *netns)),
                Finding::LocalOutage { .. } => None,
            },
        }
    }

    /// Whether the destination is another network namespace's own (loopback): such a
    /// decision must not be applied to anything on the host, such as an HAProxy server
    /// with the same address.
    pub fn is_foreign_local(&self) -> bool {
        self.key().is_some_and(|k| k.is_foreign_local())
    }
}

/// Why a destination was ejected.
/// In the schema, a written decision has `ts` ([`Decision::stamp`]).
fn stamped(schema: &mut schemars::Schema) {
    require(schema, &["ts"]);
}

/// A written suspicion has `ts` and `detect_us` (its trigger is always known).
fn stamped_and_timed(schema: &mut schemars::Schema) {
    require(schema, &["ts", "detect_us"]);
}

/// Makes `keys` required, non-null: `ts` an RFC 3339 time (UTC, nanoseconds) and
/// `detect_us` the microseconds from the kernel event to the decision being written.
fn require(schema: &mut schemars::Schema, keys: &[&str]) {
    let object = schema.ensure_object();
    if let Some(serde_json::Value::Object(properties)) = object.get_mut("properties") {
        for key in keys {
            let written = match *key {
                "ts" => serde_json::json!({"type": "string", "format": "date-time",
                    "description": "RFC 3339 UTC with nanoseconds: when the decision was written"}),
                _ => serde_json::json!({"type": "integer", "format": "uint64", "minimum": 0,
                    "description": "microseconds from the kernel event to the decision being written"}),
            };
            properties.insert((*key).to_owned(), written);
        }
    }
    let required = object
        .entry("required")
        .or_insert_with(|| serde_json::Value::Array(Vec::new()));
    if let serde_json::Value::Array(required) = required {
        required.extend(keys.iter().map(|&k| serde_json::Value::from(k)));
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Reason {
    Refused,
    Timeout,
    Abandoned,
    Unreachable,
    Reset,
    SynRetransmits,
    FailureRatio,
    Manual,
    /// Applied from another host's verdict (`[fleet]`, see sinks::fleet); `origin` names it.
    Fleet,
}

impl Reason {
    /// The reason named after a failed outcome.
    pub fn of(outcome: Outcome) -> Option<Self> {
        match outcome {
            Outcome::Established => None,
            Outcome::Refused => Some(Reason::Refused),
            Outcome::Reset => Some(Reason::Reset),
            Outcome::Timeout => Some(Reason::Timeout),
            Outcome::Abandoned => Some(Reason::Abandoned),
            Outcome::Unreachable => Some(Reason::Unreachable),
        }
    }
}

/// The destination's record at the moment of the decision.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema,
)]
#[serde(default)]
pub struct Evidence {
    pub attempts: u64,
    pub refused: u64,
    pub timeout: u64,
    pub abandoned: u64,
    pub reset: u64,
    pub unreachable: u64,
    pub syn_retransmits: u64,
    /// The streak that fired (for `failure_ratio` and `manual`: the current one of the
    /// triggering kind, possibly 0).
    pub streak: u32,
}

impl Evidence {
    pub fn of<A>(dest: &Destination<A>, streak: u32) -> Self {
        Evidence {
            attempts: dest.attempts(),
            refused: dest.count(Outcome::Refused),
            timeout: dest.count(Outcome::Timeout),
            abandoned: dest.count(Outcome::Abandoned),
            reset: dest.count(Outcome::Reset),
            unreachable: dest.count(Outcome::Unreachable),
            syn_retransmits: dest.syn_retransmits(),
            streak,
        }
    }
}

/// How long an ejection lasts.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, schemars::JsonSchema)]
pub struct EjectionTerm {
    /// How many times this destination has been ejected (after decay), this one included.
    pub count: u32,
    pub duration_ms: u64,
    /// RFC 3339 end of the ejection.
    pub until: String,
}

/// The kernel event that caused a decision, with where it came from: the process,
/// its cgroup (v2 path, container, pod when resolved) and network namespace.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, schemars::JsonSchema)]
pub struct Trigger {
    pub ktime_ns: u64,
    pub pid: u32,
    pub comm: Comm,
    pub cgroup_id: u64,
    /// `cgroup`, `container`, `pod_uid`, each when known.
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    pub origin: Option<Arc<CgroupOrigin>>,
    pub netns: u32,
}

impl Trigger {
    fn of(ktime_ns: u64, who: &Attribution) -> Self {
        Trigger {
            ktime_ns,
            pid: who.pid,
            comm: who.comm,
            cgroup_id: who.cgroup_id,
            origin: who.cgroup.clone(),
            netns: who.netns,
        }
    }
}

impl From<&ConnectRecord> for Trigger {
    fn from(rec: &ConnectRecord) -> Self {
        Trigger::of(rec.ktime_ns, &rec.who)
    }
}

impl From<&SynRetransmitRecord> for Trigger {
    fn from(rec: &SynRetransmitRecord) -> Self {
        Trigger::of(rec.ktime_ns, &rec.who)
    }
}

/// `{"type":"evict",...}`: take the destination out of rotation until `ejection.until`.
#[derive(Clone, Debug, PartialEq, Serialize, schemars::JsonSchema)]
#[schemars(transform = stamped)]
pub struct Eviction {
    pub dst: SocketAddr,
    /// For another network namespace's loopback: that namespace (see [`DestinationKey`]).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub netns: Option<u32>,
    pub role: Role,
    pub reason: Reason,
    /// Absent for a manual ejection of a destination that never failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failure_mode: Option<FailureMode>,
    pub evidence: Evidence,
    pub ejection: EjectionTerm,
    /// Absent for manual ejections.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub trigger: Option<Trigger>,
    /// `reason: fleet`: the host whose verdict this is.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub origin: Option<Arc<str>>,
    /// Decided while this host was in a local outage (a manual ejection can be).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub local_outage: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detect_us: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ts: Option<String>,
}

/// `{"type":"reinstate",...}`: the ejection is over (expired, or lifted by hand).
#[derive(Clone, Debug, PartialEq, Serialize, schemars::JsonSchema)]
#[schemars(transform = stamped)]
pub struct Reinstatement {
    pub dst: SocketAddr,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub netns: Option<u32>,
    /// How long the destination was out of rotation.
    pub ejected_ms: u64,
    /// A probe by the agent succeeded just before (`checks`); absent when false.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub verified: bool,
    /// Verified before the ejection's end; absent when false.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub early: bool,
    /// The ejection was a fleet verdict of this host (`reason: fleet`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub origin: Option<Arc<str>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ts: Option<String>,
}

/// `{"type":"suspect",...}`: a pending connect's SYN was retransmitted; no ejection yet.
#[derive(Clone, Debug, PartialEq, Serialize, schemars::JsonSchema)]
#[schemars(transform = stamped_and_timed)]
pub struct Suspicion {
    pub dst: SocketAddr,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub netns: Option<u32>,
    pub role: Role,
    pub syn_retransmits: u32,
    pub trigger: Trigger,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detect_us: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ts: Option<String>,
}

/// `{"type":"diagnosis","kind":...}`: something a person should look at.
#[derive(Clone, Debug, PartialEq, Serialize, schemars::JsonSchema)]
#[schemars(transform = stamped)]
pub struct Diagnosis {
    #[serde(flatten)]
    pub finding: Finding,
    /// One line saying what to do about it.
    pub hint: &'static str,
    #[serde(skip)]
    pub trigger_ktime_ns: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detect_us: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ts: Option<String>,
}

/// What a diagnosis found; `kind` in the JSON.
#[derive(Clone, Debug, PartialEq, Serialize, schemars::JsonSchema)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Finding {
    /// A refused connect to loopback from another network namespace.
    LocalhostTrap {
        dst: SocketAddr,
        netns: u32,
        pid: u32,
        tgid: u32,
        comm: Comm,
        cgroup_id: u64,
        /// `cgroup`, `container`, `pod_uid`, each when known: which container it was.
        #[serde(flatten, skip_serializing_if = "Option::is_none")]
        origin: Option<Arc<CgroupOrigin>>,
        /// Whether the connect came from a namespace whose connects are evidence.
        trusted: bool,
    },
    /// Most recently attempted destinations are failing at once.
    LocalOutage {
        destinations: u32,
        failing: u32,
        window_ms: u64,
    },
    /// An ejection was withheld because `max_ejection_percent` of the pool is out.
    EjectionGuard {
        dst: SocketAddr,
        #[serde(skip_serializing_if = "Option::is_none")]
        netns: Option<u32>,
        ejected: u32,
        known_members: u32,
        max_ejection_percent: u32,
    },
}

pub const LOCALHOST_TRAP_HINT: &str = "inside a network namespace (a container) localhost is the namespace itself: \
     connect to the host's address (e.g. host.docker.internal or the bridge gateway) or run the service in this namespace";
pub const LOCAL_OUTAGE_HINT: &str = "most destinations fail at once: this host's network (link, route, firewall, \
     conntrack) is the likely culprit, not the nodes; no new ejections until it recovers";
pub const EJECTION_GUARD_HINT: &str = "policy.max_ejection_percent of the pool is already ejected, so this \
     destination stays in rotation; check the pool as a whole or raise the limit";

impl Diagnosis {
    pub fn new(finding: Finding, trigger_ktime_ns: Option<u64>) -> Self {
        let hint = match finding {
            Finding::LocalhostTrap { .. } => LOCALHOST_TRAP_HINT,
            Finding::LocalOutage { .. } => LOCAL_OUTAGE_HINT,
            Finding::EjectionGuard { .. } => EJECTION_GUARD_HINT,
        };
        Diagnosis {
            finding,
            hint,
            trigger_ktime_ns,
            detect_us: None,
            ts: None,
        }
    }
}
