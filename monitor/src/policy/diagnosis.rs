//! The localhost trap (seed §05): a process inside a network namespace other than the
//! host's — typically a container — connects to 127.0.0.0/8, ::1 (or 0.0.0.0) and is refused,
//! because loopback there is the namespace's own, not the host's where the service
//! listens. Reported once per (namespace, destination) per interval, so a client
//! retrying in a loop produces one diagnosis, not thousands (the interval is
//! `policy.ratio_window`).

use std::{collections::HashMap, net::SocketAddr};

use super::decision::Finding;
use crate::{
    source::event::{ConnectRecord, Outcome},
    table::is_namespace_local,
};

/// How many (namespace, destination) pairs are remembered for rate limiting.
const REMEMBERED: usize = 4096;

/// Detects localhost traps and rate-limits their reports.
#[derive(Debug)]
pub struct LocalhostTraps {
    host_netns: u32,
    interval_ns: u64,
    reported: HashMap<(u32, SocketAddr), u64>,
}

impl LocalhostTraps {
    /// `host_netns` is the inode of connmon's own network namespace (`/proc/self/ns/net`:
    /// the host's, where connmon runs).
    pub fn new(host_netns: u32, interval_ns: u64) -> Self {
        LocalhostTraps {
            host_netns,
            interval_ns,
            reported: HashMap::new(),
        }
    }

    /// The finding for this connect outcome, if it is a trap not reported recently.
    /// `trusted` is the evidence scope's answer for this connect, reported with it.
    pub fn check(&mut self, rec: &ConnectRecord, trusted: bool, now: u64) -> Option<Finding> {
        let netns = rec.who.netns;
        if rec.outcome != Outcome::Refused
            || !is_namespace_local(rec.dst.ip())
            || netns == self.host_netns
            || netns == 0
        {
            return None;
        }
        let key = (netns, rec.dst);
        if self
            .reported
            .get(&key)
            .is_some_and(|&at| now.saturating_sub(at) < self.interval_ns)
        {
            return None;
        }
        if self.reported.len() >= REMEMBERED {
            let interval_ns = self.interval_ns;
            self.reported
                .retain(|_, at| now.saturating_sub(*at) < interval_ns);
            if self.reported.len() >= REMEMBERED {
                self.reported.clear();
            }
        }
        self.reported.insert(key, now);
        Some(Finding::LocalhostTrap {
            dst: rec.dst,
            netns,
            pid: rec.who.pid,
            tgid: rec.who.tgid,
            comm: rec.who.comm,
            cgroup_id: rec.who.cgroup_id,
            origin: rec.who.cgroup.clone(),
            trusted,
        })
    }
}
