//! Ejections and reinstatements ordered from outside the detectors: by hand (the
//! socket's `evict`/`reinstate`, the CLI) and by other hosts (`[fleet]` verdicts). They
//! count like any ejection (a later automatic one backs off further).

use std::{sync::Arc, time::Duration};

use super::{Decision, EjectionPolicy, Reason, detector::Verdict, guard::allowed_ejections, nanos};
use crate::table::DestinationKey;

/// What [`EjectionPolicy::evict_fleet`] did with another host's verdict.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FleetApply {
    /// Ejected here, `reason: fleet`.
    Applied,
    /// Already ejected here (by this host's own evidence or an earlier fleet verdict).
    AlreadyEjected,
    /// Withheld: `max_ejection_percent` of the pool is already out.
    Guarded,
    /// The destination table has no room for it.
    NoRoom,
}

impl EjectionPolicy {
    /// Ejects a destination by hand for `duration`, bypassing the detectors and guards
    /// but counting like any ejection (a later automatic ejection backs off further).
    /// Returns false when the table has no room for it.
    pub fn evict_manual(
        &mut self,
        dst: impl Into<DestinationKey>,
        duration: Duration,
        now: u64,
        out: &mut Vec<Decision>,
    ) -> bool {
        let dst = dst.into();
        let Some((_, created)) = self.table.entry(dst, now) else {
            return false;
        };
        if created {
            self.adopt(dst);
        }
        let verdict = Verdict {
            reason: Reason::Manual,
            streak: 0,
        };
        self.eject(dst, verdict, None, Some(nanos(duration).max(1)), now, out)
    }

    /// Lifts an ejection by hand; the destination enters probation as after an expiry.
    /// Returns false when it was not ejected.
    pub fn reinstate_manual(
        &mut self,
        dst: impl Into<DestinationKey>,
        now: u64,
        out: &mut Vec<Decision>,
    ) -> bool {
        self.reinstate(dst.into(), now, out)
    }

    /// Applies another host's eviction (`[fleet]`): ejected for `duration` with
    /// `reason: fleet` and `origin`, unless already ejected or `max_ejection_percent`
    /// of the pool is out (the guard holds for the fleet's verdicts too). A local
    /// outage does not withhold it: the evidence is the other host's.
    pub fn evict_fleet(
        &mut self,
        dst: impl Into<DestinationKey>,
        duration: Duration,
        origin: Arc<str>,
        now: u64,
        out: &mut Vec<Decision>,
    ) -> FleetApply {
        let dst = dst.into();
        if self
            .table
            .get(dst)
            .is_some_and(|d| d.annotation.ejected.is_some())
        {
            return FleetApply::AlreadyEjected;
        }
        let Some((_, created)) = self.table.entry(dst, now) else {
            return FleetApply::NoRoom;
        };
        if created {
            self.adopt(dst);
        }
        let allowed = allowed_ejections(self.known_members(), self.config.max_ejection_percent);
        if self.ejected() >= allowed {
            return FleetApply::Guarded;
        }
        let verdict = Verdict {
            reason: Reason::Fleet,
            streak: 0,
        };
        let start = out.len();
        if !self.eject(dst, verdict, None, Some(nanos(duration).max(1)), now, out) {
            return FleetApply::NoRoom;
        }
        self.fleet_origins.insert(dst, Arc::clone(&origin));
        if let Some(Decision::Evict(e)) = out.get_mut(start) {
            e.origin = Some(origin);
        }
        FleetApply::Applied
    }

    /// Lifts an ejection that is another host's verdict (`reason: fleet`); this
    /// host's own ejections stay. Returns false when there was none.
    pub fn reinstate_fleet(
        &mut self,
        dst: impl Into<DestinationKey>,
        now: u64,
        out: &mut Vec<Decision>,
    ) -> bool {
        let dst = dst.into();
        self.fleet_origins.contains_key(&dst) && self.reinstate(dst, now, out)
    }
}
