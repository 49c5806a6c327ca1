//! Detectors: given a destination's record after a failure, does any rule say "eject"?
//! Consecutive refused / unanswered (timeout, abandoned, unreachable) / reset streaks,
//! the failure ratio over a window with a minimum volume, and SYN retransmits of a
//! pending connect. A threshold of 0 turns a detector off.

use super::{config::PolicyConfig, decision::Reason};
use crate::{
    source::event::Outcome,
    table::{Destination, StreakKind},
};

/// A detector fired.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Verdict {
    pub reason: Reason,
    /// The streak reported as evidence.
    pub streak: u32,
}

/// What a SYN retransmit means for its destination.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SynVerdict {
    Nothing,
    Suspect,
    Evict,
}

/// The detector thresholds.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Detectors {
    consecutive_refused: u32,
    /// The `Unanswered` streak's threshold (timeouts, abandoned and unreachable
    /// connects), named as its config key.
    consecutive_timeouts: u32,
    consecutive_resets: u32,
    syn_retransmits: u32,
    failure_ratio: f64,
    ratio_min_attempts: u32,
}

impl Detectors {
    pub fn from_config(config: &PolicyConfig) -> Self {
        Detectors {
            consecutive_refused: config.consecutive_refused,
            consecutive_timeouts: config.consecutive_timeouts,
            consecutive_resets: config.consecutive_resets,
            syn_retransmits: config.syn_retransmits,
            failure_ratio: config.failure_ratio,
            ratio_min_attempts: config.ratio_min_attempts,
        }
    }

    fn threshold(&self, kind: StreakKind) -> u32 {
        match kind {
            StreakKind::Refused => self.consecutive_refused,
            StreakKind::Unanswered => self.consecutive_timeouts,
            StreakKind::Reset => self.consecutive_resets,
        }
    }

    /// Evaluates a destination just after a failed `outcome` was recorded. The streak of
    /// the outcome's own kind is checked first; the other streaks next (one may still be
    /// over its threshold when a guard withheld the ejection it asked for); the ratio last.
    pub fn after_failure<A>(
        &self,
        dest: &Destination<A>,
        outcome: Outcome,
        now: u64,
        slot_ns: u64,
    ) -> Option<Verdict> {
        let current = StreakKind::of(outcome)?;
        let order =
            std::iter::once(current).chain(StreakKind::ALL.into_iter().filter(|&k| k != current));
        for kind in order {
            let threshold = self.threshold(kind);
            let streak = dest.streak(kind);
            if threshold > 0 && streak >= threshold {
                let reason = if kind == current {
                    Reason::of(outcome)?
                } else {
                    match kind {
                        StreakKind::Refused => Reason::Refused,
                        StreakKind::Unanswered => Reason::Timeout,
                        StreakKind::Reset => Reason::Reset,
                    }
                };
                return Some(Verdict { reason, streak });
            }
        }
        let (attempts, failures) = dest.window_totals(now, slot_ns);
        if attempts >= self.ratio_min_attempts
            && f64::from(failures) >= self.failure_ratio * f64::from(attempts)
        {
            return Some(Verdict {
                reason: Reason::FailureRatio,
                streak: dest.streak(current),
            });
        }
        None
    }

    /// Evaluates the `retransmits`-th SYN retransmit of a pending connect.
    pub fn after_syn_retransmit(&self, retransmits: u32) -> SynVerdict {
        if self.syn_retransmits == 0 || retransmits == 0 {
            SynVerdict::Nothing
        } else if retransmits >= self.syn_retransmits {
            SynVerdict::Evict
        } else {
            SynVerdict::Suspect
        }
    }
}
