//! Verified reinstatement (`checks.verify_before_reinstate`): an expired ejection of a
//! pool member waits for one of the agent's own probes ([`super::checks`]); a success
//! reinstates it (early, before expiry, too), a failure ejects it again.

use std::net::SocketAddr;

use super::{Decision, EjectionPolicy, Reason, Role, Trigger, checks, detector::Verdict};
use crate::table::{DestinationKey, FailureMode};

/// What a probe's outcome did to an ejected destination.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProbeVerdict {
    /// It succeeded: reinstated (`"verified":true`, `"early":true` before expiry).
    Reinstated,
    /// A verification failed: ejected again at once with count n+1.
    Reejected,
    /// A verification failed during a local outage: the host, not the member, is the
    /// likely culprit. Still ejected, verify again later.
    Inconclusive,
    /// Nothing changed (an early probe failed, or the destination is not ejected).
    Nothing,
}

impl EjectionPolicy {
    /// Turns verified reinstatement on or off (start, SIGHUP). Turning it off reinstates
    /// every ejection that was waiting for its probe, as connmon without checks would.
    pub fn set_verify_before_reinstate(&mut self, on: bool, now: u64, out: &mut Vec<Decision>) {
        self.verify_before_reinstate = on;
        if !on {
            self.verifications.clear();
            let waiting: Vec<DestinationKey> = self.verifying.iter().copied().collect();
            for dst in waiting {
                self.reinstate(dst, now, out);
            }
        }
    }

    /// Reinstates, unverified, the verifications that can no longer be probed because
    /// the destination left the pool (call after [`EjectionPolicy::set_pool`]).
    pub fn release_unprobeable(&mut self, now: u64, out: &mut Vec<Decision>) {
        let gone: Vec<DestinationKey> = self
            .verifying
            .iter()
            .filter(|dst| self.role(dst) != Role::Proxy)
            .copied()
            .collect();
        for dst in gone {
            self.reinstate(dst, now, out);
        }
    }

    /// Expired ejections whose verification probe is due, since the last call. Only
    /// pool members are verified, and another namespace's loopback never is one, so
    /// these are host destinations: plain addresses the agent can connect to.
    pub fn take_verifications(&mut self) -> Vec<SocketAddr> {
        std::mem::take(&mut self.verifications)
            .into_iter()
            .map(|key| key.addr)
            .collect()
    }

    /// The outcome of one of the agent's own probes to `ended.dst`. A success reinstates
    /// an ejected destination (verified; early if its ejection had not expired yet); a
    /// failed verification re-ejects it at once with count n+1 — unless the host is in
    /// a local outage, when its own probes prove nothing about the member. A probe of a
    /// destination that is not ejected changes nothing here: the caller feeds its
    /// outcome to [`EjectionPolicy::on_connect`] as evidence like any other connect.
    pub fn on_probe_result(
        &mut self,
        ended: &checks::ProbeEnded,
        trigger: Option<Trigger>,
        now: u64,
        out: &mut Vec<Decision>,
    ) -> ProbeVerdict {
        let dst = DestinationKey::host(ended.dst);
        if !self.is_ejected(&ended.dst) {
            return ProbeVerdict::Nothing;
        }
        if ended.succeeded() {
            self.reinstate_as(dst, now, true, out);
            return ProbeVerdict::Reinstated;
        }
        if !self.verifying.contains(&dst) {
            return ProbeVerdict::Nothing;
        }
        if self.outage.active() {
            return ProbeVerdict::Inconclusive;
        }
        let reason = ended
            .outcome
            .and_then(Reason::of)
            .unwrap_or(Reason::Timeout);
        if let Some(dest) = self.table.get_mut(dst) {
            dest.note_failure_mode(match reason {
                Reason::Refused | Reason::Reset => FailureMode::Reject,
                _ => FailureMode::Drop,
            });
        }
        let verdict = Verdict { reason, streak: 1 };
        self.eject(dst, verdict, trigger, None, now, out);
        ProbeVerdict::Reejected
    }
}
