//! The systemd service-manager protocol (`sd_notify(3)`), for `Type=notify` units:
//! `READY=1` once the programs are attached (so `systemctl start` returns when connmon
//! is observing, not when the process exists), `WATCHDOG=1` pings from the pipeline
//! loop (so a stalled pipeline is restarted by `WatchdogSec=`), `STOPPING=1` at exit.
//! Outside systemd (`NOTIFY_SOCKET` unset) every call does nothing.

use std::time::Duration;

use sd_notify::NotifyState;

/// The service manager connmon runs under, if any.
pub(crate) struct ServiceManager {
    /// Half the manager's `WATCHDOG_USEC`, as `sd_watchdog_enabled(3)` recommends.
    watchdog_every: Option<Duration>,
}

impl ServiceManager {
    /// Reads `NOTIFY_SOCKET`, `WATCHDOG_USEC` and `WATCHDOG_PID` (the latter must be
    /// this process, as systemd sets it for the main process).
    pub(crate) fn from_env() -> Self {
        let mut usec = 0;
        let watchdog_every = sd_notify::watchdog_enabled(false, &mut usec)
            .then(|| Duration::from_micros(usec / 2))
            .filter(|d| !d.is_zero());
        Self { watchdog_every }
    }

    /// How often [`Self::watchdog`] must be called, when a watchdog is armed.
    pub(crate) fn watchdog_every(&self) -> Option<Duration> {
        self.watchdog_every
    }

    /// `READY=1` with a status line.
    pub(crate) fn ready(&self, status: &str) {
        self.send(&[NotifyState::Ready, NotifyState::Status(status)]);
    }

    /// `WATCHDOG=1`: the pipeline loop is alive.
    pub(crate) fn watchdog(&self) {
        self.send(&[NotifyState::Watchdog]);
    }

    /// `STOPPING=1`: shutting down on request.
    pub(crate) fn stopping(&self) {
        self.send(&[NotifyState::Stopping]);
    }

    fn send(&self, states: &[NotifyState<'_>]) {
        if let Err(err) = sd_notify::notify(false, states) {
            tracing::warn!(%err, "cannot notify the service manager (NOTIFY_SOCKET)");
        }
    }
}
