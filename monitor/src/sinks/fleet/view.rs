//! The fleet's view: which hosts evicted which destinations, and what this host does
//! about it. A plain data structure driven by the caller's clock (Unix ms), no I/O.
//!
//! - Votes: `host → until` per destination, from live messages and from the KV bucket
//!   at (re)connect ([`FleetView::resync`]). A vote ends with the host's reinstate or its
//!   term.
//! - Guards: this host's own messages are skipped (no echo); a host that reports a
//!   local outage (in its evict or its heartbeat) or untrusted evidence casts no vote.
//!   `max_ejection_percent` is the policy's guard (`EjectionPolicy::evict_fleet`).
//! - `share` applies the first vote; `quorum` applies once `quorum` distinct hosts voted
//!   within `window`; `observe` applies nothing. An applied destination is lifted when
//!   its last vote ends (the host's own term also ends it in the policy).

use std::{
    collections::{BTreeMap, HashMap},
    net::SocketAddr,
    sync::Arc,
    time::Duration,
};

use super::{
    config::FleetMode,
    message::{FleetMessage, Heartbeat, RemoteEvict},
};
use crate::stats::fleet::IgnoredReason;

/// Destinations with votes at most; more are ignored (counted in `ignored_full`).
pub const MAX_DESTINATIONS: usize = 100_000;

/// What the caller must do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Eject `dst` here for `duration`, `reason: fleet`, `origin`.
    Apply {
        dst: SocketAddr,
        duration: Duration,
        origin: Arc<str>,
    },
    /// Lift the fleet ejection of `dst`.
    Lift { dst: SocketAddr },
}

/// Why a message changed nothing here.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ignored {
    Own,
    LocalOutage,
    Untrusted,
    Expired,
    /// `quorum`: recorded; fewer than `quorum` hosts agree within `window` yet.
    QuorumPending,
    /// Recorded; the destination is already applied here by an earlier vote.
    AlreadyApplied,
    /// `observe`: recorded, never applied.
    Observe,
    Full,
    Heartbeat,
    /// A reinstate that ended a vote while other votes remain (or none was applied).
    Remaining,
}

impl Ignored {
    /// The counter of an ignored verdict (`None`: not a verdict, or nothing to count).
    pub fn reason(self) -> Option<IgnoredReason> {
        Some(match self {
            Ignored::Own => IgnoredReason::Echo,
            Ignored::LocalOutage => IgnoredReason::LocalOutage,
            Ignored::Untrusted => IgnoredReason::Untrusted,
            Ignored::Expired => IgnoredReason::Expired,
            Ignored::QuorumPending => IgnoredReason::QuorumPending,
            Ignored::AlreadyApplied => IgnoredReason::AlreadyEjected,
            Ignored::Observe => IgnoredReason::Observe,
            Ignored::Full => IgnoredReason::Full,
            Ignored::Heartbeat | Ignored::Remaining => return None,
        })
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HostSeen {
    pub last_ms: u64,
    pub local_outage: bool,
    pub evicts: u64,
    pub reinstates: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Vote {
    at_ms: u64,
    until_ms: u64,
}

#[derive(Debug, Default)]
struct Votes {
    by_host: BTreeMap<Arc<str>, Vote>,
    applied: bool,
}

/// See the module documentation.
#[derive(Debug)]
pub struct FleetView {
    mode: FleetMode,
    quorum: usize,
    window_ms: u64,
    own: String,
    hosts: HashMap<Arc<str>, HostSeen>,
    votes: HashMap<SocketAddr, Votes>,
    pub ignored_full: u64,
    /// Lifts owed to a host's retraction (it reported a local outage), taken by
    /// [`FleetView::take_retractions`].
    retracted: Vec<Action>,
}

impl FleetView {
    pub fn new(mode: FleetMode, quorum: u32, window: Duration, own: &str) -> Self {
        FleetView {
            mode,
            quorum: quorum.max(1) as usize,
            window_ms: u64::try_from(window.as_millis()).unwrap_or(u64::MAX),
            own: own.to_owned(),
            hosts: HashMap::new(),
            votes: HashMap::new(),
            ignored_full: 0,
            retracted: Vec::new(),
        }
    }

    pub fn hosts(&self) -> &HashMap<Arc<str>, HostSeen> {
        &self.hosts
    }

    /// Destinations applied here as fleet ejections.
    pub fn applied(&self) -> usize {
        self.votes.values().filter(|v| v.applied).count()
    }

    fn host_entry(&mut self, host: &str) -> (Arc<str>, &mut HostSeen) {
        let key = self
            .hosts
            .get_key_value(host)
            .map(|(k, _)| Arc::clone(k))
            .unwrap_or_else(|| Arc::from(host));
        let seen = self.hosts.entry(Arc::clone(&key)).or_default();
        (key, seen)
    }

    /// One live message.
    pub fn on_message(&mut self, message: &FleetMessage, now_ms: u64) -> Result<Action, Ignored> {
        if message.host() == self.own {
            return Err(Ignored::Own);
        }
        match message {
            FleetMessage::Heartbeat(h) => {
                let (host, seen) = self.host_entry(&h.host);
                seen.last_ms = now_ms;
                let entered = h.local_outage && !seen.local_outage;
                seen.local_outage = h.local_outage;
                if entered {
                    self.retract(&host, now_ms);
                }
                Err(Ignored::Heartbeat)
            }
            FleetMessage::Evict(e) => self.on_evict(e, now_ms),
            FleetMessage::Reinstate(r) => {
                let (host, seen) = self.host_entry(&r.host);
                seen.last_ms = now_ms;
                seen.reinstates += 1;
                self.end_vote(r.dst, &host, now_ms)
            }
        }
    }

    fn on_evict(&mut self, e: &RemoteEvict, now_ms: u64) -> Result<Action, Ignored> {
        let (host, seen) = self.host_entry(&e.host);
        seen.last_ms = now_ms;
        seen.evicts += 1;
        if e.local_outage {
            let entered = !seen.local_outage;
            seen.local_outage = true;
            if entered {
                self.retract(&host, now_ms);
            }
            return Err(Ignored::LocalOutage);
        }
        if seen.local_outage {
            return Err(Ignored::LocalOutage);
        }
        if !e.trusted {
            return Err(Ignored::Untrusted);
        }
        if e.until_ms <= now_ms {
            return Err(Ignored::Expired);
        }
        if !self.votes.contains_key(&e.dst) && self.votes.len() >= MAX_DESTINATIONS {
            self.prune(now_ms);
            if self.votes.len() >= MAX_DESTINATIONS {
                self.ignored_full += 1;
                return Err(Ignored::Full);
            }
        }
        let votes = self.votes.entry(e.dst).or_default();
        votes.by_host.retain(|_, v| v.until_ms > now_ms);
        votes.by_host.insert(
            Arc::clone(&host),
            Vote {
                at_ms: now_ms,
                until_ms: e.until_ms,
            },
        );
        if votes.applied {
            return Err(Ignored::AlreadyApplied);
        }
        let since = now_ms.saturating_sub(self.window_ms);
        let origin: Arc<str> = match self.mode {
            FleetMode::Observe => return Err(Ignored::Observe),
            FleetMode::Share => host,
            FleetMode::Quorum => {
                let agreeing: Vec<&str> = votes
                    .by_host
                    .iter()
                    .filter(|(_, v)| v.at_ms >= since)
                    .map(|(h, _)| &**h)
                    .collect();
                if agreeing.len() < self.quorum {
                    return Err(Ignored::QuorumPending);
                }
                Arc::from(agreeing.join(","))
            }
        };
        votes.applied = true;
        let remaining = e.until_ms - now_ms;
        Ok(Action::Apply {
            dst: e.dst,
            duration: Duration::from_millis(remaining.min(e.duration_ms).max(1)),
            origin,
        })
    }

    fn end_vote(&mut self, dst: SocketAddr, host: &str, now_ms: u64) -> Result<Action, Ignored> {
        let Some(votes) = self.votes.get_mut(&dst) else {
            return Err(Ignored::Remaining);
        };
        votes.by_host.remove(host);
        votes.by_host.retain(|_, v| v.until_ms > now_ms);
        if !votes.by_host.is_empty() {
            return Err(Ignored::Remaining);
        }
        let applied = votes.applied;
        self.votes.remove(&dst);
        if applied {
            Ok(Action::Lift { dst })
        } else {
            Err(Ignored::Remaining)
        }
    }

    /// `host` reported a local outage: every vote it cast stops counting (its verdicts
    /// may be the outage's first symptoms), and destinations left without a vote are
    /// lifted. Its own ejections on its own host are its business; a vote it casts
    /// after the outage counts again.
    fn retract(&mut self, host: &str, now_ms: u64) {
        let dsts: Vec<SocketAddr> = self
            .votes
            .iter()
            .filter(|(_, v)| v.by_host.contains_key(host))
            .map(|(dst, _)| *dst)
            .collect();
        for dst in dsts {
            if let Ok(action) = self.end_vote(dst, host, now_ms) {
                self.retracted.push(action);
            }
        }
    }

    /// The lifts owed to retractions since the last call.
    pub fn take_retractions(&mut self) -> Vec<Action> {
        std::mem::take(&mut self.retracted)
    }

    /// Forgets votes past their term (the policy ends the applied ejections itself).
    pub fn prune(&mut self, now_ms: u64) {
        self.votes.retain(|_, votes| {
            votes.by_host.retain(|_, v| v.until_ms > now_ms);
            !votes.by_host.is_empty()
        });
    }

    /// The fleet's current state as read from the KV bucket after a (re)connect: the
    /// hosts' last heartbeats first (a host in local outage casts no vote), then votes
    /// the bucket no longer holds end (reinstates missed while disconnected), then every
    /// entry counts as a live evict.
    pub fn resync(
        &mut self,
        heartbeats: &[Heartbeat],
        current: &[RemoteEvict],
        now_ms: u64,
    ) -> Vec<Action> {
        for h in heartbeats {
            let _ = self.on_message(&FleetMessage::Heartbeat(h.clone()), now_ms);
        }
        let mut actions = self.take_retractions();
        let still: std::collections::HashSet<(SocketAddr, &str)> =
            current.iter().map(|e| (e.dst, e.host.as_str())).collect();
        let gone: Vec<(SocketAddr, Arc<str>)> = self
            .votes
            .iter()
            .flat_map(|(dst, votes)| {
                votes
                    .by_host
                    .keys()
                    .filter(|h| !still.contains(&(*dst, &***h)))
                    .map(|h| (*dst, Arc::clone(h)))
            })
            .collect();
        for (dst, host) in gone {
            if let Ok(action) = self.end_vote(dst, &host, now_ms) {
                actions.push(action);
            }
        }
        for e in current {
            let message = FleetMessage::Evict(e.clone());
            if let Ok(action) = self.on_message(&message, now_ms) {
                actions.push(action);
            }
        }
        actions
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        policy::{Evidence, Reason},
        sinks::fleet::message::{RemoteReinstate, VERSION},
    };

    const DST: &str = "10.0.0.1:80";

    fn evict(host: &str, at_ms: u64) -> FleetMessage {
        FleetMessage::Evict(RemoteEvict {
            v: VERSION,
            host: host.into(),
            dst: DST.parse().unwrap(),
            reason: Reason::Refused,
            failure_mode: None,
            duration_ms: 30_000,
            until_ms: at_ms + 30_000,
            count: 1,
            evidence: Evidence::default(),
            trusted: true,
            local_outage: false,
            ts_ms: at_ms,
        })
    }

    fn reinstate(host: &str) -> FleetMessage {
        FleetMessage::Reinstate(RemoteReinstate {
            v: VERSION,
            host: host.into(),
            dst: DST.parse().unwrap(),
            ts_ms: 0,
        })
    }

    fn view(mode: FleetMode) -> FleetView {
        FleetView::new(mode, 2, Duration::from_secs(30), "me")
    }

    #[test]
    fn share_applies_the_first_vote_with_the_remaining_term_and_lifts_after_the_last() {
        let mut v = view(FleetMode::Share);
        assert_eq!(
            v.on_message(&evict("a", 1_000), 11_000),
            Ok(Action::Apply {
                dst: DST.parse().unwrap(),
                duration: Duration::from_secs(20),
                origin: "a".into()
            })
        );
        assert_eq!(
            v.on_message(&evict("b", 12_000), 12_000),
            Err(Ignored::AlreadyApplied)
        );
        assert_eq!(
            v.on_message(&reinstate("a"), 13_000),
            Err(Ignored::Remaining)
        );
        assert_eq!(
            v.on_message(&reinstate("b"), 14_000),
            Ok(Action::Lift {
                dst: DST.parse().unwrap()
            })
        );
        assert_eq!(v.applied(), 0);
    }

    #[test]
    fn own_outage_untrusted_and_expired_verdicts_are_not_applied() {
        let mut v = view(FleetMode::Share);
        assert_eq!(v.on_message(&evict("me", 0), 0), Err(Ignored::Own));
        let FleetMessage::Evict(mut e) = evict("a", 0) else {
            unreachable!()
        };
        e.trusted = false;
        assert_eq!(
            v.on_message(&FleetMessage::Evict(e.clone()), 0),
            Err(Ignored::Untrusted)
        );
        e.trusted = true;
        e.local_outage = true;
        assert_eq!(
            v.on_message(&FleetMessage::Evict(e), 0),
            Err(Ignored::LocalOutage)
        );
        assert_eq!(
            v.on_message(&evict("a", 0), 0),
            Err(Ignored::LocalOutage),
            "still in outage"
        );
        let hb = FleetMessage::Heartbeat(heartbeat("a", false));
        assert_eq!(v.on_message(&hb, 1), Err(Ignored::Heartbeat));
        assert!(v.on_message(&evict("a", 1), 1).is_ok(), "outage over");
        assert_eq!(v.on_message(&evict("b", 0), 40_000), Err(Ignored::Expired));
        assert_eq!(v.hosts()["a"].evicts, 4);
    }

    #[test]
    fn quorum_needs_distinct_hosts_within_the_window() {
        let mut v = view(FleetMode::Quorum);
        assert_eq!(v.on_message(&evict("a", 0), 0), Err(Ignored::QuorumPending));
        assert_eq!(
            v.on_message(&evict("a", 1), 1),
            Err(Ignored::QuorumPending),
            "same host twice"
        );
        let Ok(Action::Apply { origin, .. }) = v.on_message(&evict("b", 2), 2) else {
            panic!("two hosts agree")
        };
        assert_eq!(&*origin, "a,b");
        let mut late = view(FleetMode::Quorum);
        late.on_message(&evict("a", 0), 0).unwrap_err();
        let mut e = evict("b", 31_000);
        if let FleetMessage::Evict(e) = &mut e {
            e.until_ms = 90_000;
        }
        assert_eq!(
            late.on_message(&e, 31_000),
            Err(Ignored::QuorumPending),
            "a's vote is outside the window"
        );
    }

    #[test]
    fn observe_records_and_applies_nothing() {
        let mut v = view(FleetMode::Observe);
        assert_eq!(v.on_message(&evict("a", 0), 0), Err(Ignored::Observe));
        assert_eq!(v.on_message(&reinstate("a"), 1), Err(Ignored::Remaining));
        assert_eq!(v.hosts().len(), 1);
    }

    #[test]
    fn resync_applies_the_bucket_and_lifts_what_it_no_longer_holds() {
        let mut v = view(FleetMode::Share);
        let FleetMessage::Evict(a) = evict("a", 0) else {
            unreachable!()
        };
        let actions = v.resync(&[], std::slice::from_ref(&a), 1_000);
        assert!(
            matches!(&actions[..], [Action::Apply { .. }]),
            "{actions:?}"
        );
        assert!(
            v.resync(&[], std::slice::from_ref(&a), 2_000).is_empty(),
            "nothing new"
        );
        assert_eq!(
            v.resync(&[], &[], 3_000),
            vec![Action::Lift {
                dst: DST.parse().unwrap()
            }]
        );
    }

    fn heartbeat(host: &str, outage: bool) -> Heartbeat {
        Heartbeat {
            v: VERSION,
            host: host.into(),
            mode: FleetMode::Share,
            ejected: 0,
            local_outage: outage,
            published: 0,
            applied: 0,
            dropped: 0,
            ts_ms: 0,
        }
    }

    #[test]
    fn a_host_entering_a_local_outage_retracts_its_votes() {
        let mut v = view(FleetMode::Share);
        assert!(v.on_message(&evict("a", 0), 0).is_ok(), "applied from a");
        let other: SocketAddr = "10.0.0.2:80".parse().unwrap();
        let mut both = evict("a", 0);
        if let FleetMessage::Evict(e) = &mut both {
            e.dst = other;
        }
        assert!(v.on_message(&both, 0).is_ok());
        let mut from_b = both.clone();
        if let FleetMessage::Evict(e) = &mut from_b {
            e.host = "b".into();
        }
        assert_eq!(v.on_message(&from_b, 0), Err(Ignored::AlreadyApplied));
        assert_eq!(
            v.on_message(&FleetMessage::Heartbeat(heartbeat("a", true)), 1),
            Err(Ignored::Heartbeat)
        );
        assert_eq!(
            v.take_retractions(),
            vec![Action::Lift {
                dst: DST.parse().unwrap()
            }],
            "only the destination no other host voted for is lifted"
        );
        assert_eq!(v.applied(), 1, "b's vote keeps the other one");
        assert!(v.take_retractions().is_empty(), "taken once");
        assert_eq!(
            v.on_message(&FleetMessage::Heartbeat(heartbeat("a", true)), 2),
            Err(Ignored::Heartbeat)
        );
        assert!(v.take_retractions().is_empty(), "no second retraction");
        assert_eq!(v.on_message(&evict("a", 3), 3), Err(Ignored::LocalOutage));
        let _ = v.on_message(&FleetMessage::Heartbeat(heartbeat("a", false)), 4);
        assert!(
            v.on_message(&evict("a", 5), 5).is_ok(),
            "outage over: counts again"
        );
    }

    #[test]
    fn resync_reads_heartbeats_first_so_a_host_in_outage_casts_no_vote() {
        let mut v = view(FleetMode::Share);
        let FleetMessage::Evict(a) = evict("a", 0) else {
            unreachable!()
        };
        assert!(
            v.resync(&[heartbeat("a", true)], std::slice::from_ref(&a), 1_000)
                .is_empty()
        );
        assert!(v.hosts()["a"].local_outage);
    }

    #[test]
    fn ignored_reasons_map_to_counters() {
        assert_eq!(Ignored::Own.reason(), Some(IgnoredReason::Echo));
        assert_eq!(
            Ignored::QuorumPending.reason(),
            Some(IgnoredReason::QuorumPending)
        );
        assert_eq!(Ignored::Heartbeat.reason(), None);
        assert_eq!(Ignored::Remaining.reason(), None);
    }
}
