//! The reader's wake-up policy: sleep in epoll while the host is quiet, poll the ring on
//! a short timer while records flow.
//!
//! A ring-buffer wake-up is the largest cost per connect (irq_work raised from inside
//! the connecting task, an interrupt and often a VM exit). So the first record after a
//! quiet period wakes the reader; the reader then sets `READER` = 1 and polls every
//! [`POLL_EVERY`], and the programs write every record with `BPF_RB_NO_WAKEUP` while it
//! does. After [`LINGER`] without a record it sets `READER` = 0, polls once more (a
//! record reserved before the programs saw 0 is committed by then: programs do not
//! sleep), and goes back to epoll. Detection latency while polling is at most one
//! period; while sleeping, the wake-up is immediate.

use std::time::{Duration, Instant};

use aya::maps::{Array, MapData};
use nix::sys::{
    time::TimeSpec,
    timerfd::{ClockId, Expiration, TimerFd, TimerFlags, TimerSetTimeFlags},
};
use tokio::io::{Interest, unix::AsyncFd};

/// How often the reader drains the ring while polling (bounds the added latency).
pub const POLL_EVERY: Duration = Duration::from_micros(250);
/// How long the reader keeps polling after the last record.
pub const LINGER: Duration = Duration::from_millis(20);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// In epoll: records that find the ring empty wake the reader.
    Sleeping,
    /// Polling on the timer; the programs write without wake-ups.
    Polling { last_record: Instant },
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
        let _ = guard.get_inner().0.wait();
        guard.clear_ready();
        Ok(())
    }

    /// After a drain of `records` records (`tick`: the drain of a poll period): start,
    /// keep or stop polling.
    pub fn after_drain(&mut self, records: usize, tick: bool) -> anyhow::Result<()> {
        if !self.enabled {
            return Ok(());
        }
        let now = Instant::now();
        match self.state {
            State::Sleeping if records > 0 => {
                self.flag.set(0, 1, 0)?;
                self.timer.get_ref().0.set(
                    Expiration::Interval(TimeSpec::from_duration(POLL_EVERY)),
                    TimerSetTimeFlags::empty(),
                )?;
                self.state = State::Polling { last_record: now };
            }
            State::Sleeping => {}
            State::Leaving if records > 0 => {
                // Traffic resumed during the last poll: keep polling.
                self.flag.set(0, 1, 0)?;
                self.state = State::Polling { last_record: now };
            }
            State::Leaving if !tick => {}
            State::Polling { .. } if records > 0 => {
                self.state = State::Polling { last_record: now };
            }
            State::Polling { last_record } if now.duration_since(last_record) >= LINGER => {
                self.flag.set(0, 0, 0)?;
                self.state = State::Leaving;
            }
            State::Polling { .. } => {}
            State::Leaving => {
                self.timer.get_ref().0.unset()?;
                self.state = State::Sleeping;
                self.sleeps += 1;
            }
        }
        Ok(())
    }
}
