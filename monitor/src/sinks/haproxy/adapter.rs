//! One HAProxy adapter task: bus decisions in, `set server … state` commands out.
//!
//! - **Discovery.** `show servers state <backend>` for every configured backend maps each
//!   `address:port` to its `backend/server`s. It is re-read every `refresh`, before acting
//!   on a destination the last map (older than the decision) does not know, and after
//!   HAProxy refused a command (a server was renamed or removed). A server connmon put in
//!   MAINT that HAProxy shows out of MAINT again (HAProxy restarted) gets MAINT again.
//! - **Actions.** Evict → `maint`, reinstate → `ready`, queued per destination in
//!   [`PendingActions`] (the newest replaces the older) and sent one command per
//!   connection. A reinstate only touches servers connmon put in MAINT, so an operator's
//!   own MAINT is left alone.
//! - **Failures** never reach the pipeline: this task owns its bus receiver. A transport
//!   failure (socket missing, HAProxy restarting, timeout) counts one failed attempt for
//!   every due action and backs them all off; a refusal (`No such server.`) backs off that
//!   one. Warnings are rate-limited; everything is counted in [`AdapterCounters`].
//! - **Resync.** At start and after the bus reports a lag (at most once a second), the
//!   policy's current ejections are read from a [`Control::Snapshot`] and re-applied, so
//!   HAProxy matches connmon's state (ejections restored from the state file included).
//! - **Pool.** With `pool_from_haproxy`, discovered servers are added to the pool with
//!   [`PoolOp::Add`] and removed with [`PoolOp::Remove`] when they leave HAProxy — only
//!   the members this adapter added, never entries from the config or the pool file.

use std::{
    collections::{BTreeSet, HashMap, HashSet},
    net::SocketAddr,
    sync::Arc,
    time::{Duration, Instant},
};

use tokio::sync::{
    broadcast::{self, error::RecvError},
    mpsc, oneshot,
};
use tokio_util::sync::CancellationToken;

use super::{
    AdapterCounters, HaproxyConfig,
    pending::{PendingActions, Queued, Retry},
    runtime_api::{AdminAction, ApiError, Endpoint, RuntimeApi},
    servers_state::ServerState,
};
use crate::{
    bus::{Payload, Published, Topic},
    control::{Control, PoolOp},
    policy::{DestinationState, PolicySnapshot, PoolEntry},
    stats::consumers::ConsumerCounters,
};

/// Destinations with an action queued at most (see [`PendingActions`] for the policy).
const PENDING_CAPACITY: usize = 4096;
/// Longest wait for the pipeline to take and answer a control command.
const CONTROL_TIMEOUT: Duration = Duration::from_secs(10);
/// Repeated warnings of one kind are written at most this often (with a suppressed count).
const WARN_EVERY: Duration = Duration::from_secs(10);
/// Resyncs after lags are at most this frequent (each reads the whole policy snapshot).
const RESYNC_EVERY: Duration = Duration::from_secs(1);
/// An unchanged discovered pool is still re-sent every this many refreshes, so members a
/// SIGHUP pool reload dropped come back.
const POOL_RESYNC_EVERY: u32 = 10;

/// A server of a configured backend, as last discovered.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct ServerRef {
    backend: String,
    server: String,
    forced_maint: bool,
}

impl ServerRef {
    fn name(&self) -> String {
        format!("{}/{}", self.backend, self.server)
    }
}

#[derive(Debug, thiserror::Error)]
enum ControlError {
    #[error("the pipeline has stopped")]
    Closed,
    #[error("the pipeline did not answer within {CONTROL_TIMEOUT:?}")]
    Timeout,
}

/// Warns at most once per [`WARN_EVERY`], counting what it held back.
type WarnLimiter = crate::log_limit::LogLimiter;

/// The pool members this adapter manages.
#[derive(Debug, Default)]
struct PoolSync {
    /// Members this adapter added (and may remove).
    owned: BTreeSet<SocketAddr>,
    /// The discovered set last sent, and refreshes since.
    synced: Option<BTreeSet<SocketAddr>>,
    refreshes_since: u32,
}

/// The state of one adapter task.
pub struct Adapter {
    config: HaproxyConfig,
    api: RuntimeApi,
    control: mpsc::Sender<Control>,
    servers: HashMap<SocketAddr, Vec<ServerRef>>,
    /// When the last successful discovery started.
    discovered_at: Option<Instant>,
    /// The last discovery failed (the next success sends pending actions at once).
    discovery_failing: bool,
    refresh_due: Instant,
    /// Destinations whose servers connmon put in MAINT (and so will set READY).
    maint_applied: HashSet<SocketAddr>,
    pending: PendingActions,
    pool: PoolSync,
    counters: AdapterCounters,
    /// The same for the `stats` line (shared by every adapter): applied (sent), lagged
    /// and queue-full (dropped), given up (failed).
    delivery: Arc<ConsumerCounters>,
    /// A lag was seen: resync from a snapshot (at most once per [`RESYNC_EVERY`]).
    resync_wanted: bool,
    last_resync: Option<Instant>,
    action_warn: WarnLimiter,
    discovery_warn: WarnLimiter,
    drop_warn: WarnLimiter,
    lag_warn: WarnLimiter,
}

impl Adapter {
    pub fn new(
        config: HaproxyConfig,
        endpoint: Endpoint,
        control: mpsc::Sender<Control>,
        delivery: Arc<ConsumerCounters>,
    ) -> Self {
        let api = RuntimeApi::new(endpoint, config.timeout);
        Adapter {
            config,
            api,
            control,
            servers: HashMap::new(),
            discovered_at: None,
            discovery_failing: false,
            refresh_due: Instant::now(),
            maint_applied: HashSet::new(),
            pending: PendingActions::new(PENDING_CAPACITY),
            pool: PoolSync::default(),
            counters: AdapterCounters::default(),
            delivery,
            resync_wanted: false,
            last_resync: None,
            action_warn: WarnLimiter::new(WARN_EVERY),
            discovery_warn: WarnLimiter::new(WARN_EVERY),
            drop_warn: WarnLimiter::new(WARN_EVERY),
            lag_warn: WarnLimiter::new(WARN_EVERY),
        }
    }

    /// Runs until `shutdown`, then logs the counters.
    pub async fn run(
        mut self,
        mut events: broadcast::Receiver<Arc<Published>>,
        shutdown: CancellationToken,
    ) {
        tracing::info!(
            endpoint = %self.api.endpoint(),
            backends = ?self.config.backends,
            pool_from_haproxy = self.config.pool_from_haproxy,
            "haproxy adapter started"
        );
        let started = async {
            // A failure is logged and retried by the refresh timer and the actions.
            let _ = self.refresh().await;
            self.resync("start").await;
        };
        let stopped_early = tokio::select! {
            biased;
            _ = shutdown.cancelled() => true,
            _ = started => false,
        };
        if !stopped_early {
            self.serve(&mut events, &shutdown).await;
        }
        let c = &self.counters;
        tracing::info!(
            endpoint = %self.api.endpoint(),
            applied = c.applied,
            failed = c.failed,
            retried = c.retried,
            lagged = c.lagged,
            resyncs = c.resyncs,
            not_haproxy = c.not_haproxy,
            dropped = c.dropped,
            pending = self.pending.len(),
            discoveries = c.discoveries,
            discovery_failures = c.discovery_failures,
            "haproxy adapter stopped"
        );
    }

    /// The main loop: bus messages, then due work, until `shutdown` or the bus closes.
    async fn serve(
        &mut self,
        events: &mut broadcast::Receiver<Arc<Published>>,
        shutdown: &CancellationToken,
    ) {
        loop {
            let wake = [
                Some(self.refresh_due),
                self.pending.next_due(),
                self.resync_at(),
            ]
            .into_iter()
            .flatten()
            .min()
            .unwrap_or(self.refresh_due);
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => break,
                message = events.recv() => match message {
                    // Other messages need no work unless some is due (a busy bus must
                    // not starve the timers).
                    Ok(published) => {
                        if !self.on_published(&published) && Instant::now() < wake {
                            continue;
                        }
                    }
                    Err(RecvError::Lagged(missed)) => {
                        self.counters.lagged += missed;
                        self.delivery.dropped(missed);
                        self.resync_wanted = true;
                        if let Some(suppressed) = self.lag_warn.allow(Instant::now()) {
                            tracing::warn!(missed, total = self.counters.lagged, suppressed, "haproxy adapter fell behind the event bus; resyncing from the policy snapshot");
                        }
                    }
                    Err(RecvError::Closed) => break,
                },
                _ = tokio::time::sleep_until(wake.into()) => {}
            }
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => break,
                _ = self.work() => {}
            }
        }
    }

    /// Takes one bus message; true if it queued work.
    fn on_published(&mut self, published: &Published) -> bool {
        let now = Instant::now();
        // Another network namespace's loopback is not this host's server of that address.
        if let Payload::Decision(d) = &published.payload
            && d.is_foreign_local()
        {
            return false;
        }
        match (published.topic, published.dst) {
            (Topic::Evict, Some(dst)) => {
                self.queue(dst, AdminAction::Maint, now);
                true
            }
            (Topic::Reinstate, Some(dst)) => {
                self.reinstate(dst, now);
                true
            }
            _ => false,
        }
    }

    fn queue(&mut self, dst: SocketAddr, action: AdminAction, now: Instant) {
        if self.pending.push(dst, action, now) == Queued::Full {
            self.counters.dropped += 1;
            self.delivery.dropped(1);
            if let Some(suppressed) = self.drop_warn.allow(now) {
                tracing::warn!(%dst, action = action.as_str(), capacity = self.pending.capacity(), dropped = self.counters.dropped, suppressed, "haproxy action queue full; action dropped (the next resync repairs it)");
            }
        }
    }

    /// READY only for servers connmon put in MAINT (or may have: a MAINT that was
    /// attempted); a MAINT that never reached HAProxy is simply cancelled.
    fn reinstate(&mut self, dst: SocketAddr, now: Instant) {
        let applied = self.maint_applied.contains(&dst);
        match self.pending.get(&dst) {
            Some(p) if p.action == AdminAction::Maint && p.attempts == 0 && !applied => {
                self.pending.remove(&dst);
            }
            Some(_) => self.queue(dst, AdminAction::Ready, now),
            None if applied => self.queue(dst, AdminAction::Ready, now),
            None => {}
        }
    }

    /// When a wanted resync may run (at most one per [`RESYNC_EVERY`]).
    fn resync_at(&self) -> Option<Instant> {
        self.resync_wanted.then(|| {
            self.last_resync
                .map_or_else(Instant::now, |last| last + RESYNC_EVERY)
        })
    }

    /// Resyncs and re-discovers when due, then sends every due action.
    async fn work(&mut self) {
        if self.resync_at().is_some_and(|at| Instant::now() >= at) {
            self.resync("lagged").await;
        }
        if Instant::now() >= self.refresh_due {
            let _ = self.refresh().await;
        }
        let due = self.pending.due(Instant::now());
        for (i, dst) in due.iter().enumerate() {
            let Some(pending) = self.pending.get(dst).copied() else {
                continue;
            };
            match self.apply(*dst, pending.action, pending.queued).await {
                Ok(Some(servers)) => {
                    self.pending.remove(dst);
                    self.counters.applied += 1;
                    self.delivery.sent(1);
                    match pending.action {
                        AdminAction::Maint => self.maint_applied.insert(*dst),
                        AdminAction::Ready => self.maint_applied.remove(dst),
                    };
                    tracing::info!(%dst, servers = %servers.join(","), state = pending.action.as_str(), "haproxy server state set");
                }
                Ok(None) => {
                    self.pending.remove(dst);
                    self.counters.not_haproxy += 1;
                    tracing::debug!(%dst, backends = ?self.config.backends, "not a server of the configured haproxy backends");
                }
                Err(err) if err.is_transport() => {
                    // The endpoint is down: every action due now failed this round.
                    for other in &due[i..] {
                        self.failed(*other, &err);
                    }
                    break;
                }
                Err(err) => {
                    self.failed(*dst, &err);
                    self.refresh_due = Instant::now();
                }
            }
        }
    }

    fn failed(&mut self, dst: SocketAddr, err: &ApiError) {
        let Some(action) = self.pending.get(&dst).map(|p| p.action) else {
            return;
        };
        let now = Instant::now();
        match self.pending.failed(&dst, now) {
            Retry::After(delay) => {
                self.counters.retried += 1;
                if let Some(suppressed) = self.action_warn.allow(now) {
                    tracing::warn!(%dst, state = action.as_str(), retry_in = ?delay, suppressed, "haproxy action failed, will retry: {err}");
                }
            }
            Retry::GaveUp => {
                self.counters.failed += 1;
                self.delivery.failed(1);
                tracing::error!(%dst, state = action.as_str(), failed = self.counters.failed, "haproxy action given up after {} attempts: {err}", super::pending::MAX_ATTEMPTS);
            }
        }
    }

    /// Sets every server of `dst` to `action`; `Ok(None)` if `dst` is no server of the
    /// configured backends according to a discovery newer than the decision.
    async fn apply(
        &mut self,
        dst: SocketAddr,
        action: AdminAction,
        queued: Instant,
    ) -> Result<Option<Vec<String>>, ApiError> {
        if !self.servers.contains_key(&dst) && self.discovered_at.is_none_or(|at| at < queued) {
            self.refresh().await?;
        }
        let Some(servers) = self.servers.get(&dst).cloned() else {
            return Ok(None);
        };
        for server in &servers {
            self.api
                .set_server_state(&server.backend, &server.server, action)
                .await?;
        }
        Ok(Some(servers.iter().map(ServerRef::name).collect()))
    }

    /// Reads `show servers state` of every configured backend and rebuilds the map.
    async fn refresh(&mut self) -> Result<(), ApiError> {
        let started = Instant::now();
        self.refresh_due = started + self.config.refresh;
        let mut found: Vec<ServerState> = Vec::new();
        let mut refused = None;
        for backend in self.config.backends.clone() {
            match self.api.show_servers_state(&backend).await {
                Ok(servers) => found.extend(servers),
                Err(err) if !err.is_transport() => {
                    if let Some(suppressed) = self.discovery_warn.allow(Instant::now()) {
                        tracing::warn!(
                            backend,
                            suppressed,
                            "haproxy backend not discovered: {err}"
                        );
                    }
                    refused = Some(err);
                }
                Err(err) => {
                    self.discovery_failed(&err);
                    return Err(err);
                }
            }
        }
        if let Some(err) = refused.filter(|_| found.is_empty()) {
            self.discovery_failed(&err);
            return Err(err);
        }
        self.counters.discoveries += 1;
        if self.discovery_failing {
            self.discovery_failing = false;
            tracing::info!(endpoint = %self.api.endpoint(), pending = self.pending.len(), "haproxy reachable again; sending pending actions now");
            self.pending.expedite(Instant::now());
        }
        self.discovered_at = Some(started);
        let mut servers: HashMap<SocketAddr, Vec<ServerRef>> = HashMap::new();
        for s in found {
            let Some(addr) = s.addr else { continue };
            let forced_maint = s.forced_maint();
            servers.entry(addr).or_default().push(ServerRef {
                backend: s.backend,
                server: s.server,
                forced_maint,
            });
        }
        for refs in servers.values_mut() {
            refs.sort();
        }
        let names = |map: &HashMap<SocketAddr, Vec<ServerRef>>| -> BTreeSet<(SocketAddr, String)> {
            map.iter()
                .flat_map(|(a, refs)| refs.iter().map(|r| (*a, r.name())))
                .collect()
        };
        if names(&servers) != names(&self.servers) || self.counters.discoveries == 1 {
            tracing::info!(
                endpoint = %self.api.endpoint(),
                servers = names(&servers).len(),
                addresses = servers.len(),
                "haproxy servers discovered"
            );
        }
        self.servers = servers;
        self.reconcile();
        if self.config.pool_from_haproxy {
            let discovered: BTreeSet<SocketAddr> = self.servers.keys().copied().collect();
            if let Err(err) = self.sync_pool(discovered).await {
                tracing::warn!("could not update the pool from haproxy: {err}");
            }
        }
        Ok(())
    }

    fn discovery_failed(&mut self, err: &ApiError) {
        self.counters.discovery_failures += 1;
        self.discovery_failing = true;
        if let Some(suppressed) = self.discovery_warn.allow(Instant::now()) {
            tracing::warn!(
                failures = self.counters.discovery_failures,
                suppressed,
                "cannot discover haproxy servers (retrying every {:?} and before each action): {err}",
                self.config.refresh
            );
        }
    }

    /// After a discovery: servers connmon put in MAINT that HAProxy no longer shows in
    /// MAINT (a restart loses runtime state) get MAINT again; destinations HAProxy no
    /// longer has are forgotten.
    fn reconcile(&mut self) {
        let now = Instant::now();
        self.maint_applied
            .retain(|dst| self.servers.contains_key(dst));
        let lost: Vec<SocketAddr> = self
            .maint_applied
            .iter()
            .filter(|dst| self.pending.get(dst).is_none())
            .filter(|dst| {
                self.servers
                    .get(dst)
                    .is_some_and(|refs| refs.iter().any(|r| !r.forced_maint))
            })
            .copied()
            .collect();
        for dst in lost {
            tracing::info!(%dst, "haproxy no longer has this ejected server in MAINT (restarted?); setting it again");
            self.queue(dst, AdminAction::Maint, now);
        }
    }

    /// Makes HAProxy match the policy's current ejections.
    async fn resync(&mut self, reason: &'static str) {
        self.resync_wanted = false;
        self.last_resync = Some(Instant::now());
        let snapshot = match self.snapshot().await {
            Ok(snapshot) => snapshot,
            Err(err) => {
                tracing::warn!(reason, "cannot resync haproxy with the policy: {err}");
                return;
            }
        };
        self.counters.resyncs += 1;
        let now = Instant::now();
        let ejected: HashSet<SocketAddr> = snapshot
            .destinations
            .iter()
            .filter(|d| d.state == DestinationState::Ejected && d.netns.is_none())
            .map(|d| d.dst)
            .filter(|dst| self.discovered_at.is_none() || self.servers.contains_key(dst))
            .collect();
        let mut queued = 0usize;
        for dst in &ejected {
            let in_place = self.maint_applied.contains(dst) && self.pending.get(dst).is_none();
            let queued_already = self
                .pending
                .get(dst)
                .is_some_and(|p| p.action == AdminAction::Maint);
            if !in_place && !queued_already {
                self.queue(*dst, AdminAction::Maint, now);
                queued += 1;
            }
        }
        let stale: Vec<SocketAddr> = self
            .maint_applied
            .iter()
            .copied()
            .chain(
                self.pending
                    .destinations()
                    .filter(|(_, p)| p.action == AdminAction::Maint)
                    .map(|(dst, _)| *dst),
            )
            .filter(|dst| !ejected.contains(dst))
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        for dst in stale {
            self.reinstate(dst, now);
            queued += 1;
        }
        tracing::info!(
            reason,
            ejected = ejected.len(),
            queued,
            "haproxy resynced with the policy's ejections"
        );
    }

    async fn snapshot(&self) -> Result<PolicySnapshot, ControlError> {
        let (reply, answer) = oneshot::channel();
        self.command(Control::Snapshot { reply }, answer).await
    }

    /// Adds `members` to or removes them from the agent's pool.
    async fn pool_command(
        &self,
        op: PoolOp,
        members: &[SocketAddr],
    ) -> Result<Vec<PoolEntry>, ControlError> {
        let members = members.iter().copied().map(PoolEntry::Member).collect();
        let (reply, answer) = oneshot::channel();
        self.command(Control::Pool { op, members, reply }, answer)
            .await
    }

    async fn command<T>(
        &self,
        command: Control,
        answer: oneshot::Receiver<T>,
    ) -> Result<T, ControlError> {
        tokio::time::timeout(CONTROL_TIMEOUT, self.control.send(command))
            .await
            .map_err(|_| ControlError::Timeout)?
            .map_err(|_| ControlError::Closed)?;
        tokio::time::timeout(CONTROL_TIMEOUT, answer)
            .await
            .map_err(|_| ControlError::Timeout)?
            .map_err(|_| ControlError::Closed)
    }

    /// Adds discovered servers missing from the pool and removes the ones this adapter
    /// added that HAProxy no longer has.
    async fn sync_pool(&mut self, discovered: BTreeSet<SocketAddr>) -> Result<(), ControlError> {
        let unchanged = self.pool.synced.as_ref() == Some(&discovered);
        if unchanged && self.pool.refreshes_since < POOL_RESYNC_EVERY {
            self.pool.refreshes_since += 1;
            return Ok(());
        }
        if discovered.is_empty() && self.pool.owned.is_empty() {
            self.pool.synced = Some(discovered);
            return Ok(());
        }
        let (reply, answer) = oneshot::channel();
        let current = self.command(Control::PoolList { reply }, answer).await?;
        let in_pool: BTreeSet<SocketAddr> = current
            .iter()
            .filter_map(|e| match e {
                PoolEntry::Member(m) => Some(*m),
                PoolEntry::Network { .. } => None,
            })
            .collect();
        let added: Vec<SocketAddr> = discovered.difference(&in_pool).copied().collect();
        if !added.is_empty() {
            self.pool_command(PoolOp::Add, &added).await?;
            self.pool.owned.extend(added.iter().copied());
        }
        let removed: Vec<SocketAddr> = self.pool.owned.difference(&discovered).copied().collect();
        if !removed.is_empty() {
            self.pool_command(PoolOp::Remove, &removed).await?;
            for a in &removed {
                self.pool.owned.remove(a);
            }
        }
        if !added.is_empty() || !removed.is_empty() {
            tracing::info!(added = ?added, removed = ?removed, members = discovered.len(), "pool updated from haproxy");
        }
        self.pool.synced = Some(discovered);
        self.pool.refreshes_since = 0;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repeated_warnings_are_held_back_and_counted() {
        let t0 = Instant::now();
        let mut limiter = WarnLimiter::new(WARN_EVERY);
        assert_eq!(limiter.allow(t0), Some(0));
        assert_eq!(limiter.allow(t0 + Duration::from_secs(1)), None);
        assert_eq!(limiter.allow(t0 + Duration::from_secs(2)), None);
        assert_eq!(limiter.allow(t0 + WARN_EVERY), Some(2));
    }
}
