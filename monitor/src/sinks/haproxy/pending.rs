//! The adapter's queue of HAProxy state changes still to make, one per destination, with
//! retry timing. A plain data structure driven by the caller's clock, so the backoff and
//! coalescing rules are unit-tested without HAProxy or a runtime.
//!
//! Full-policy: a newer action for a destination **replaces** the older one (only the
//! latest decision matters — `maint` then `ready` is just `ready`); a new destination when
//! [`PendingActions::capacity`] are queued is **refused** (the caller counts it as
//! dropped; a later resync from the policy snapshot repairs it).

use std::{
    collections::HashMap,
    net::SocketAddr,
    time::{Duration, Instant},
};

use super::runtime_api::AdminAction;

/// First retry delay; doubled for every further failure of the same action.
pub const FIRST_RETRY: Duration = Duration::from_millis(250);
/// Longest delay between two attempts.
pub const MAX_RETRY: Duration = Duration::from_secs(30);
/// Attempts before an action is given up (about a minute of retrying in all).
pub const MAX_ATTEMPTS: u32 = 9;

/// One queued change.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PendingAction {
    pub action: AdminAction,
    /// Failed attempts so far.
    pub attempts: u32,
    /// Not before this.
    pub due: Instant,
    /// When the decision arrived (a server map older than this may not know the
    /// destination yet).
    pub queued: Instant,
}

/// What [`PendingActions::push`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Queued {
    New,
    /// An older action for the same destination was replaced.
    Replaced,
    /// The queue is full; the action was not queued.
    Full,
}

/// What happens after a failed attempt.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Retry {
    /// Tried again after this delay.
    After(Duration),
    /// [`MAX_ATTEMPTS`] reached: removed from the queue.
    GaveUp,
}

/// The bounded queue.
#[derive(Debug)]
pub struct PendingActions {
    entries: HashMap<SocketAddr, PendingAction>,
    capacity: usize,
}

impl PendingActions {
    pub fn new(capacity: usize) -> Self {
        PendingActions {
            entries: HashMap::new(),
            capacity: capacity.max(1),
        }
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Queues `action` for `dst`, due now, replacing whatever was queued for it.
    pub fn push(&mut self, dst: SocketAddr, action: AdminAction, now: Instant) -> Queued {
        let fresh = PendingAction {
            action,
            attempts: 0,
            due: now,
            queued: now,
        };
        if let Some(entry) = self.entries.get_mut(&dst) {
            *entry = fresh;
            return Queued::Replaced;
        }
        if self.entries.len() >= self.capacity {
            return Queued::Full;
        }
        self.entries.insert(dst, fresh);
        Queued::New
    }

    pub fn get(&self, dst: &SocketAddr) -> Option<&PendingAction> {
        self.entries.get(dst)
    }

    pub fn remove(&mut self, dst: &SocketAddr) -> Option<PendingAction> {
        self.entries.remove(dst)
    }

    /// Destinations whose action is due at `now`, earliest first.
    pub fn due(&self, now: Instant) -> Vec<SocketAddr> {
        let mut due: Vec<(Instant, SocketAddr)> = self
            .entries
            .iter()
            .filter(|(_, p)| p.due <= now)
            .map(|(dst, p)| (p.due, *dst))
            .collect();
        due.sort();
        due.into_iter().map(|(_, dst)| dst).collect()
    }

    /// When the next action falls due.
    pub fn next_due(&self) -> Option<Instant> {
        self.entries.values().map(|p| p.due).min()
    }

    /// Records a failed attempt of `dst`'s action: schedules the next one with
    /// exponential backoff, or gives up after [`MAX_ATTEMPTS`].
    pub fn failed(&mut self, dst: &SocketAddr, now: Instant) -> Retry {
        let Some(entry) = self.entries.get_mut(dst) else {
            return Retry::GaveUp;
        };
        entry.attempts += 1;
        if entry.attempts >= MAX_ATTEMPTS {
            self.entries.remove(dst);
            return Retry::GaveUp;
        }
        let delay = backoff(entry.attempts);
        entry.due = now + delay;
        Retry::After(delay)
    }

    /// Makes every queued action due at `now` (HAProxy is reachable again), keeping
    /// attempt counts.
    pub fn expedite(&mut self, now: Instant) {
        for entry in self.entries.values_mut() {
            entry.due = entry.due.min(now);
        }
    }

    /// Destinations with an action queued, in no particular order.
    pub fn destinations(&self) -> impl Iterator<Item = (&SocketAddr, &PendingAction)> {
        self.entries.iter()
    }
}

/// Delay after the `attempts`-th failure: 250 ms, 500 ms, 1 s, … up to [`MAX_RETRY`].
pub fn backoff(attempts: u32) -> Duration {
    let factor = 1u32
        .checked_shl(attempts.saturating_sub(1))
        .unwrap_or(u32::MAX);
    FIRST_RETRY.saturating_mul(factor).min(MAX_RETRY)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    #[test]
    fn a_newer_action_replaces_the_older_and_resets_its_attempts() {
        let t0 = Instant::now();
        let mut q = PendingActions::new(4);
        assert_eq!(q.push(addr(1), AdminAction::Maint, t0), Queued::New);
        assert_eq!(q.failed(&addr(1), t0), Retry::After(FIRST_RETRY));
        let t1 = t0 + Duration::from_millis(100);
        assert_eq!(q.push(addr(1), AdminAction::Ready, t1), Queued::Replaced);
        let p = q.get(&addr(1)).unwrap();
        assert_eq!(
            (p.action, p.attempts, p.due, p.queued),
            (AdminAction::Ready, 0, t1, t1)
        );
        assert_eq!(q.len(), 1);
    }

    #[test]
    fn the_queue_is_bounded_but_known_destinations_still_update() {
        let t0 = Instant::now();
        let mut q = PendingActions::new(2);
        q.push(addr(1), AdminAction::Maint, t0);
        q.push(addr(2), AdminAction::Maint, t0);
        assert_eq!(q.push(addr(3), AdminAction::Maint, t0), Queued::Full);
        assert_eq!(q.push(addr(2), AdminAction::Ready, t0), Queued::Replaced);
        assert_eq!(q.len(), 2);
    }

    #[test]
    fn retries_back_off_exponentially_then_give_up() {
        let t0 = Instant::now();
        let mut q = PendingActions::new(4);
        q.push(addr(1), AdminAction::Maint, t0);
        let mut delays = Vec::new();
        let mut now = t0;
        while let Retry::After(d) = q.failed(&addr(1), now) {
            assert!(q.due(now).is_empty(), "not due before its delay");
            now += d;
            assert_eq!(q.due(now), vec![addr(1)]);
            delays.push(d.as_millis());
        }
        assert_eq!(delays, vec![250, 500, 1000, 2000, 4000, 8000, 16000, 30000]);
        assert!(q.is_empty(), "given up actions leave the queue");
        assert_eq!(backoff(40), MAX_RETRY);
    }

    #[test]
    fn due_actions_come_earliest_first() {
        let t0 = Instant::now();
        let mut q = PendingActions::new(4);
        q.push(addr(1), AdminAction::Maint, t0);
        q.push(addr(2), AdminAction::Maint, t0 + Duration::from_millis(1));
        q.failed(&addr(1), t0);
        assert_eq!(q.due(t0 + Duration::from_millis(1)), vec![addr(2)]);
        assert_eq!(q.due(t0 + Duration::from_secs(1)), vec![addr(2), addr(1)]);
        assert_eq!(q.next_due(), Some(t0 + Duration::from_millis(1)));
        q.expedite(t0 + Duration::from_millis(2));
        assert_eq!(q.due(t0 + Duration::from_millis(2)), vec![addr(2), addr(1)]);
    }
}
