//! The reader's wake-up policy: sleep in epoll while the host is quiet or sees only
//! routine records, poll the ring on a short timer while failures flow.
//!
//! A ring-buffer wake-up is the largest cost per connect (irq_work raised from inside
//! the connecting task, an interrupt and often a VM exit). So the first failure after a
//! quiet period wakes the reader; the reader then sets `READER` = 1 and polls every
//! [`POLL_EVERY`], and the programs write every record with `BPF_RB_NO_WAKEUP` while it
//! does. After [`LINGER`] without a failure it sets `READER` = 0, polls once more (a
//! record reserved before the programs saw 0 is committed by then: programs do not
//! sleep), and goes back to epoll. Detection latency while polling is at most one
//! period; while sleeping, the wake-up is immediate.
//!
//! Routine `established` records do not keep the reader polling: while it sleeps the
//! programs write them without a wake-up and wake it when the ring is a quarter full
//! (or with the next failure), and the agent's batch tick drains them meanwhile. Each
//! poll is a timer interrupt, a context switch into the agent and two syscalls — on a
//! VM the largest item in the agent's profile (`finish_task_switch`), more than all
//! per-record work at 10 000 routine records/s — so a stream of routine connects costs
//! a wake-up per few hundred records instead of 4 000 polls a second.
//!
//! Sparse failures linger less: a wake-up after more than [`LINGER`] asleep (the
//! failures come farther apart than the linger, so polling for the next would end before
//! it anyway) polls only [`SPARSE_LINGER`] — long enough for the rest of that connect's
//! records — unless another failure comes meanwhile. An isolated failure then costs one
//! wake-up and a few polls instead of 80. (Measured with 50 agents on one host, each
//! seeing every connect: the 80 polls per record of every agent were most of their CPU;
//! BENCHMARKS.md, fleet.)
//!
//! While polling, the period follows the drains: a drain that found a failure keeps
//! [`POLL_EVERY`]; after [`CALM_DRAINS`] drains in a row without one the reader polls
//! every [`POLL_ROUTINE`], half the wake-ups for the rest of the linger. The next
//! failure waits at most that long — well inside the detection-latency goal (p99 ≤
//! 1 ms) — and brings the short period back.
//!
//! A flood polls at the long period too: a drain that found [`DENSE_DRAIN`] failures
//! or more (8 000 failures/s at the short period) sets [`POLL_DENSE`]. Each poll is a
//! fixed cost (on this VM a wake-up is worth tens of µs of agent CPU, more than the
//! records it drains), so at a high rate the period, not the records, sets the agent's
//! CPU; the longer period halves it while a failure waits no longer than the first one
//! after calm drains does.

use std::time::{Duration, Instant};

use aya::maps::{Array, MapData};
use nix::sys::{
    time::TimeSpec,
    timerfd::{ClockId, Expiration, TimerFd, TimerFlags, TimerSetTimeFlags},
};
use tokio::io::{Interest, unix::AsyncFd};

/// How often the reader drains the ring while failures flow (bounds the added latency).
pub const POLL_EVERY: Duration = Duration::from_micros(250);
/// How often it drains while the drains find no failure (bounds the latency of the
/// first failure after routine traffic).
pub const POLL_ROUTINE: Duration = Duration::from_micros(500);
/// Drains in a row without a failure before the period becomes [`POLL_ROUTINE`].
pub const CALM_DRAINS: u32 = 4;
/// How often it drains while each drain finds [`DENSE_DRAIN`] failures or more.
pub const POLL_DENSE: Duration = Duration::from_micros(500);
/// Failures in one drain that make the period [`POLL_DENSE`].
pub const DENSE_DRAIN: usize = 2;
/// How long the reader keeps polling after the last failure.
pub const LINGER: Duration = Duration::from_millis(20);
/// How long it polls after a wake-up that ended more than [`LINGER`] asleep, when no
/// further failure comes.
pub const SPARSE_LINGER: Duration = Duration::from_millis(2);

/// The linger of a polling period that starts after `asleep` in epoll (None: the first).
fn linger_after(asleep: Option<Duration>) -> Duration {
    match asleep {
        Some(asleep) if asleep < LINGER => LINGER,
        _ => SPARSE_LINGER,
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// In epoll: a failure that finds the ring empty (or records waiting) wakes the
    /// reader, routine records only a ring a quarter full.
    Sleeping,
    /// Polling on the timer; the programs write without wake-ups. Ends `linger` after
    /// the last failure.
    Polling {
        last_failure: Instant,
        linger: Duration,
    },
    /// `READER` cleared; one more poll, then sleep.
    Leaving,
}

/// A timerfd (the tokio timer wheel has a resolution of 1 ms: too coarse here).
struct Timer(TimerFd);

impl std::os::fd::AsRawFd for Timer {
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        use std::os::fd::AsFd as _;
        self.0.as_fd().as_raw_fd()
    }
}

/// The poll timer and the `READER` flag the programs read.
pub struct ReaderPoll {
    timer: AsyncFd<Timer>,
    flag: Array<MapData, u32>,
    state: State,
    /// Off with `--wakeup-every-event`: the programs then ignore `READER` anyway.
    enabled: bool,
    /// How many times the reader went back to sleep (for the stats line).
    pub sleeps: u64,
    /// When it last went back to sleep.
    asleep_since: Option<Instant>,
    /// The timer's period while polling.
    period: Duration,
    /// Drains in a row without a failure.
    calm: u32,
}

impl ReaderPoll {
    pub fn new(flag: Array<MapData, u32>, enabled: bool) -> anyhow::Result<Self> {
        let timer = Timer(TimerFd::new(
            ClockId::CLOCK_MONOTONIC,
            TimerFlags::TFD_NONBLOCK | TimerFlags::TFD_CLOEXEC,
        )?);
        // SAFETY: the timerfd is owned by the `Timer` inside the AsyncFd, which
        // deregisters it before dropping (closing) it.
        let timer = unsafe { AsyncFd::register_with_interest(timer, Interest::READABLE) }
            .map_err(|e| anyhow::anyhow!("registering the poll timer with tokio: {e}"))?;
        Ok(ReaderPoll {
            timer,
            flag,
            state: State::Sleeping,
            enabled,
            sleeps: 0,
            asleep_since: None,
            period: POLL_EVERY,
            calm: 0,
        })
    }

    /// Whether the timer is running (the caller awaits [`Self::tick`] only then).
    pub fn active(&self) -> bool {
        self.state != State::Sleeping
    }

    /// Waits for the next poll period.
    pub async fn tick(&self) -> std::io::Result<()> {
        let mut guard = self.timer.readable().await?;
        // Reading the expiration count re-arms readiness; EAGAIN means a spurious wake.
        // (The interval timer keeps expiring either way, but `AsyncFd` is
        // edge-triggered: an unread count never makes a new edge, so the reader would
        // not be woken again.)
        let _ = guard.get_inner().0.wait();
        guard.clear_ready();
        Ok(())
    }

    /// The period the drains so far call for (`failures`: in the latest drain).
    fn wanted_period(&mut self, failures: usize) -> Duration {
        if failures > 0 {
            self.calm = 0;
        } else {
            self.calm = self.calm.saturating_add(1);
        }
        if failures >= DENSE_DRAIN {
            return POLL_DENSE;
        }
        period_after(self.calm)
    }

    /// Sets the timer to `period` (a no-op when it runs at that period already, unless
    /// `start`).
    fn arm(&mut self, period: Duration, start: bool) -> anyhow::Result<()> {
        if start || period != self.period {
            self.timer.get_ref().0.set(
                Expiration::Interval(TimeSpec::from_duration(period)),
                TimerSetTimeFlags::empty(),
            )?;
            self.period = period;
        }
        Ok(())
    }

    /// After a drain that found `failures` failures or warnings (`tick`: the drain of
    /// a poll period): start, keep or stop polling, at the period the drains call for.
    pub fn after_drain(&mut self, failures: usize, tick: bool) -> anyhow::Result<()> {
        if !self.enabled {
            return Ok(());
        }
        let now = Instant::now();
        let period = self.wanted_period(failures);
        if matches!(self.state, State::Polling { .. }) {
            self.arm(period, false)?;
        }
        match self.state {
            // Routine records alone (the kernel batches them while the reader sleeps and
            // wakes it when the ring is a quarter full) are drained without polling.
            State::Sleeping if failures > 0 => {
                self.flag.set(0, 1, 0)?;
                self.arm(period, true)?;
                self.state = State::Polling {
                    last_failure: now,
                    linger: linger_after(self.asleep_since.map(|at| now.duration_since(at))),
                };
            }
            State::Sleeping => {}
            State::Leaving if failures > 0 => {
                // Failures resumed during the last poll: keep polling.
                self.flag.set(0, 1, 0)?;
                self.arm(period, false)?;
                self.state = State::Polling {
                    last_failure: now,
                    linger: LINGER,
                };
            }
            State::Leaving if !tick => {}
            State::Polling { .. } if failures > 0 => {
                // A failure while polling: failures are dense, the full linger.
                self.state = State::Polling {
                    last_failure: now,
                    linger: LINGER,
                };
            }
            State::Polling {
                last_failure,
                linger,
            } if now.duration_since(last_failure) >= linger => {
                self.flag.set(0, 0, 0)?;
                self.state = State::Leaving;
            }
            State::Polling { .. } => {}
            State::Leaving => {
                self.timer.get_ref().0.unset()?;
                self.state = State::Sleeping;
                self.sleeps += 1;
                self.asleep_since = Some(now);
            }
        }
        Ok(())
    }
}

/// The poll period after `calm` drains in a row without a failure.
fn period_after(calm: u32) -> Duration {
    if calm >= CALM_DRAINS {
        POLL_ROUTINE
    } else {
        POLL_EVERY
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failure_brings_the_short_period_and_calm_drains_the_long_one() {
        assert_eq!(period_after(0), POLL_EVERY);
        assert_eq!(period_after(CALM_DRAINS - 1), POLL_EVERY);
        assert_eq!(period_after(CALM_DRAINS), POLL_ROUTINE);
        assert_eq!(period_after(u32::MAX), POLL_ROUTINE);
        // The first failure after routine traffic waits at most one long period: well
        // inside the detection-latency goal (p99 <= 1 ms), with room for the drain.
        assert!(POLL_ROUTINE <= Duration::from_micros(500) && POLL_EVERY < POLL_ROUTINE);
        // A flood waits no longer than that either.
        assert!(POLL_DENSE <= POLL_ROUTINE && DENSE_DRAIN > 1);
    }

    #[test]
    fn only_a_wake_up_after_a_long_sleep_lingers_briefly() {
        assert_eq!(linger_after(None), SPARSE_LINGER);
        assert_eq!(linger_after(Some(Duration::from_millis(50))), SPARSE_LINGER);
        assert_eq!(linger_after(Some(LINGER)), SPARSE_LINGER);
        assert_eq!(linger_after(Some(Duration::from_millis(5))), LINGER);
        assert!(SPARSE_LINGER >= 4 * POLL_EVERY && SPARSE_LINGER < LINGER);
    }
}
