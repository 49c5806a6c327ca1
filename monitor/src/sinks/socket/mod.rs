//! The pool-controller Unix socket: how proxy managers, scrapers and `connmon watch`
//! consume connmon. It speaks NDJSON v1 ([`protocol`], docs/protocol.md): events as
//! `connmon run` prints them, plus snapshot/pool/evict/reinstate commands that run on the
//! pipeline through the control channel.
//!
//! Lifecycle: the socket is bound before the agent attaches (a path in use is an error
//! then, not later); connections are accepted in a `select!` with the shutdown token;
//! a semaphore caps them at `agent.max_clients`, and no uid may hold more than
//! `agent.max_clients_per_uid` of them (root included), so one local user's churn cannot
//! take every slot from the others; a client over either limit gets one
//! `too_many_clients` error line naming the limit and is closed at once, in the accept
//! loop, without a task or a wait (a refusal must cost less than a connect, or a storm
//! of them piles up open sockets: issue #18 saw 20 000 fds); accept errors (EMFILE…)
//! back off instead of spinning. At shutdown each
//! client gets `{"type":"bye"}` and the socket file is removed — unless another process
//! has replaced it meanwhile.
//!
//! The server — accept loop and every session — runs on a thread of its own with its
//! own (current-thread) Tokio runtime, not on the agent's thread: local clients, however
//! many and however they behave, take CPU from that thread, never from the pipeline
//! that makes the decisions (issue #18: a storm of ~8 600 connections a second used to
//! raise `detect_us` from 0.5 ms to ~7 ms). Sessions reach the pipeline only through
//! the bounded bus and control channel, which work across threads. The one heavy job a
//! session has, rendering a `snapshot` reply, runs on that runtime's blocking pool
//! ([`snapshot_reply::render`]), so the other clients' pings and events keep flowing.
//! The agent's task tracker holds one task that ends when the server thread has
//! finished, so the agent waits for the goodbyes as before. That thread and its
//! renderers run at nice [`SERVER_NICE`]: on a busy host the pipeline gets the CPU first.

pub mod peer;
pub mod protocol;
pub mod session;
pub mod snapshot_reply;

use std::{
    collections::HashMap,
    io::ErrorKind,
    os::unix::fs::{DirBuilderExt as _, FileTypeExt as _, MetadataExt as _, PermissionsExt as _},
    path::{Path, PathBuf},
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use serde_json::Value;
use tokio::{
    net::{UnixListener, UnixStream},
    sync::{OwnedSemaphorePermit, Semaphore},
};
use tokio_util::task::TaskTracker;

use self::{
    peer::{Peer, Permissions},
    session::SessionContext,
};
use crate::{
    config::AgentConfig, log_limit::LogLimiter, sinks::SinkContext,
    stats::consumers::ConsumerCounters,
};

/// Why the socket could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("another connmon is listening on {0} (stop it, or give this one --socket PATH)")]
    InUse(PathBuf),
    #[error("{0} exists and is not a socket; refusing to replace it")]
    NotASocket(PathBuf),
    #[error("cannot create the socket directory {path}: {source}")]
    Directory {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot replace the stale socket {path}: {source}")]
    Stale {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot listen on {path}: {source}")]
    Bind {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot set mode 0660 on {path}: {source}")]
    Mode {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot start the socket server's thread: {0}")]
    Thread(#[source] std::io::Error),
    #[error("agent.socket_group {0:?}: no such group")]
    UnknownGroup(String),
    #[error("agent.socket_group {group:?}: cannot look it up: {source}")]
    GroupLookup {
        group: String,
        #[source]
        source: nix::Error,
    },
    #[error("cannot give {path} to group {group:?}: {source}")]
    Chown {
        path: PathBuf,
        group: String,
        #[source]
        source: nix::Error,
    },
}

/// The server's own counters, in every `snapshot` reply under `"server"`.
#[derive(Debug, Default)]
pub struct ServerStats {
    clients: AtomicU64,
    accepted: AtomicU64,
    refused: AtomicU64,
    /// Bus messages subscribers lost because they read too slowly.
    lagged_messages: AtomicU64,
    lagged_notices: AtomicU64,
    protocol_errors: AtomicU64,
    closed_for_errors: AtomicU64,
    lag_log: Mutex<LagLog>,
    refusal_log: Mutex<Option<LogLimiter>>,
    /// For the `stats` line: event lines queued to subscribers (sent), bus messages
    /// they missed (dropped).
    delivery: Arc<ConsumerCounters>,
}

/// Lag warnings are rate-limited: at most one line a minute, carrying what accumulated.
#[derive(Debug)]
struct LagLog {
    limit: LogLimiter,
    pending: u64,
}

impl Default for LagLog {
    fn default() -> Self {
        LagLog {
            limit: LogLimiter::new(Duration::from_secs(60)),
            pending: 0,
        }
    }
}

impl ServerStats {
    /// An event line went to a subscriber.
    pub fn count_sent(&self) {
        self.delivery.sent(1);
    }

    pub fn count_lagged(&self, missed: u64) {
        self.delivery.dropped(missed);
        self.lagged_messages.fetch_add(missed, Ordering::Relaxed);
        self.lagged_notices.fetch_add(1, Ordering::Relaxed);
        let Ok(mut log) = self.lag_log.lock() else {
            return;
        };
        log.pending += missed;
        if log.limit.allow(Instant::now()).is_some() {
            tracing::warn!(
                missed = log.pending,
                total = self.lagged_messages.load(Ordering::Relaxed),
                "socket subscribers read too slowly and missed events (they were sent `lagged`); raise agent.bus_capacity or read faster"
            );
            log.pending = 0;
        }
    }

    /// Counts a refused client; warns at most once a minute, with how many since.
    fn count_refused(&self, reason: &Refusal) {
        let total = self.refused.fetch_add(1, Ordering::Relaxed) + 1;
        let Ok(mut log) = self.refusal_log.lock() else {
            return;
        };
        let limit = log.get_or_insert_with(|| LogLimiter::new(Duration::from_secs(60)));
        if let Some(held_back) = limit.allow(Instant::now()) {
            tracing::warn!(
                refused_since_last_warning = held_back + 1,
                refused_total = total,
                "refusing socket clients: {}",
                reason.message()
            );
        }
    }

    pub fn count_protocol_error(&self) {
        self.protocol_errors.fetch_add(1, Ordering::Relaxed);
    }

    pub fn count_closed_for_errors(&self) {
        self.closed_for_errors.fetch_add(1, Ordering::Relaxed);
    }

    pub fn to_json(&self) -> Value {
        let n = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let counters = crate::protocol::ServerCounters {
            clients: n(&self.clients),
            accepted: n(&self.accepted),
            refused_clients: n(&self.refused),
            lagged_messages: n(&self.lagged_messages),
            lagged_notices: n(&self.lagged_notices),
            protocol_errors: n(&self.protocol_errors),
            closed_for_errors: n(&self.closed_for_errors),
        };
        serde_json::to_value(counters).expect("counters serialize")
    }
}

/// Binds the socket and starts serving it on its own thread until `shutdown`.
pub async fn start(
    agent: &AgentConfig,
    default_ejection: Duration,
    cx: &SinkContext,
) -> Result<(), ServerError> {
    let SinkContext {
        bus,
        control,
        shutdown,
        tasks,
        ..
    } = cx;
    let BoundSocket { listener, file } = bind(&agent.socket, agent.socket_group.as_deref())?;
    tracing::info!(path = %agent.socket.display(), max_clients = agent.max_clients, max_clients_per_uid = agent.max_clients_per_uid, "listening for pool controllers");
    let ctx = SessionContext {
        bus: bus.clone(),
        control: control.clone(),
        permissions: Arc::new(Permissions {
            allowed_uids: agent.allowed_uids.clone(),
            allowed_gids: agent.allowed_gids.clone(),
        }),
        default_ejection,
        stats: Arc::new(ServerStats {
            delivery: cx.consumer_counters("socket"),
            ..ServerStats::default()
        }),
        shutdown: shutdown.clone(),
    };
    let limits = ClientLimits::new(agent.max_clients, agent.max_clients_per_uid);
    let (done, finished) = tokio::sync::oneshot::channel::<()>();
    std::thread::Builder::new()
        .name("connmon-socket".into())
        .spawn(move || {
            lower_priority();
            let runtime = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .max_blocking_threads(snapshot_reply::RENDERERS)
                .build()
            {
                Ok(runtime) => runtime,
                Err(err) => {
                    tracing::error!(%err, "cannot start the socket server's runtime: no socket clients will be served");
                    return;
                }
            };
            runtime.block_on(async move {
                let listener = match UnixListener::from_std(listener) {
                    Ok(listener) => listener,
                    Err(err) => {
                        tracing::error!(%err, "cannot serve the socket: no socket clients will be served");
                        return;
                    }
                };
                let sessions = TaskTracker::new();
                accept_loop(listener, ctx, limits, sessions.clone()).await;
                sessions.close();
                sessions.wait().await;
            });
            let _ = done.send(());
        })
        .map_err(ServerError::Thread)?;
    // On the agent's tracker: the agent waits for the server thread at exit, and the
    // socket file goes when this task ends or is dropped (an agent that fails later in
    // its start-up drops it with its runtime).
    tasks.spawn(async move {
        let _ = finished.await;
        drop(file);
    });
    Ok(())
}

/// The nice value of the server's thread and of the threads it starts (the snapshot
/// renderers inherit it): when local clients and the pipeline want the same CPU, the
/// pipeline's decisions come first (a 2-core host running the renderers, the sessions
/// and the pipeline at once used to delay an eviction by ~100 ms).
const SERVER_NICE: i32 = 10;

/// Gives the calling thread (only it: Linux keeps the nice value per thread) nice
/// [`SERVER_NICE`]. Raising it needs no privilege; if it fails anyway the server runs
/// at the agent's priority.
fn lower_priority() {
    // SAFETY: setpriority(PRIO_PROCESS, 0, n) only changes the calling thread's nice.
    let failed = unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, SERVER_NICE) } != 0;
    if failed {
        tracing::debug!(err = %std::io::Error::last_os_error(), "cannot lower the socket server's priority");
    }
}

/// The listener and the socket file it owns.
struct BoundSocket {
    listener: std::os::unix::net::UnixListener,
    file: SocketFile,
}

/// The socket's path; the file goes when this is dropped, if it is still ours.
struct SocketFile {
    path: PathBuf,
    inode: u64,
}

impl Drop for SocketFile {
    fn drop(&mut self) {
        match std::fs::symlink_metadata(&self.path) {
            Ok(meta) if meta.ino() == self.inode => {
                if let Err(err) = std::fs::remove_file(&self.path) {
                    tracing::warn!(path = %self.path.display(), %err, "cannot remove the socket file");
                }
            }
            _ => {
                tracing::debug!(path = %self.path.display(), "socket file already gone or replaced")
            }
        }
    }
}

/// Creates the directory (0755), replaces a stale socket, binds, sets 0660 and the group.
fn bind(path: &Path, group: Option<&str>) -> Result<BoundSocket, ServerError> {
    if let Some(dir) = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty() && !d.exists())
    {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(dir)
            .map_err(|source| ServerError::Directory {
                path: dir.to_path_buf(),
                source,
            })?;
    }
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => {
            match std::os::unix::net::UnixStream::connect(path) {
                Ok(_) => return Err(ServerError::InUse(path.to_path_buf())),
                Err(_) => {
                    tracing::info!(path = %path.display(), "replacing a stale socket file (no one listens on it)");
                    std::fs::remove_file(path).map_err(|source| ServerError::Stale {
                        path: path.to_path_buf(),
                        source,
                    })?;
                }
            }
        }
        Ok(_) => return Err(ServerError::NotASocket(path.to_path_buf())),
        Err(e) if e.kind() == ErrorKind::NotFound => {}
        Err(source) => {
            return Err(ServerError::Stale {
                path: path.to_path_buf(),
                source,
            });
        }
    }
    let gid = match group {
        None => None,
        Some(group) => match nix::unistd::Group::from_name(group) {
            Ok(Some(g)) => Some((g.gid, group)),
            Ok(None) => return Err(ServerError::UnknownGroup(group.to_owned())),
            Err(source) => {
                return Err(ServerError::GroupLookup {
                    group: group.to_owned(),
                    source,
                });
            }
        },
    };
    // Bound under a staging name, given its mode and group, then renamed into place: a
    // client never finds the socket with the umask's mode, and clients that wait for
    // the path find it ready.
    let staging = staging_path(path);
    let _ = std::fs::remove_file(&staging);
    let listener = std::os::unix::net::UnixListener::bind(&staging)
        .and_then(|l| l.set_nonblocking(true).map(|()| l))
        .map_err(|source| ServerError::Bind {
            path: path.to_path_buf(),
            source,
        })?;
    let inode = std::fs::symlink_metadata(&staging)
        .map(|m| m.ino())
        .unwrap_or(0);
    let mut bound = BoundSocket {
        listener,
        file: SocketFile {
            path: staging.clone(),
            inode,
        },
    };
    std::fs::set_permissions(&staging, std::fs::Permissions::from_mode(0o660)).map_err(
        |source| ServerError::Mode {
            path: path.to_path_buf(),
            source,
        },
    )?;
    if let Some((gid, group)) = gid {
        nix::unistd::chown(&staging, None, Some(gid)).map_err(|source| ServerError::Chown {
            path: path.to_path_buf(),
            group: group.to_owned(),
            source,
        })?;
    }
    std::fs::rename(&staging, path).map_err(|source| ServerError::Bind {
        path: path.to_path_buf(),
        source,
    })?;
    bound.file.path = path.to_path_buf();
    Ok(bound)
}

/// `DIR/.NAME.new` for `DIR/NAME`.
fn staging_path(path: &Path) -> PathBuf {
    let mut name = std::ffi::OsString::from(".");
    name.push(path.file_name().unwrap_or_default());
    name.push(".new");
    path.with_file_name(name)
}

/// Back-off after a failed accept (e.g. out of file descriptors), doubling up to 1 s.
const ACCEPT_BACKOFF_MIN: Duration = Duration::from_millis(10);
const ACCEPT_BACKOFF_MAX: Duration = Duration::from_secs(1);

async fn accept_loop(
    listener: UnixListener,
    ctx: SessionContext,
    limits: ClientLimits,
    tasks: TaskTracker,
) {
    let mut backoff = ACCEPT_BACKOFF_MIN;
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = ctx.shutdown.cancelled() => break,
        };
        let stream = match accepted {
            Ok((stream, _)) => {
                backoff = ACCEPT_BACKOFF_MIN;
                stream
            }
            Err(err) => {
                tracing::warn!(%err, "accepting a socket client failed; retrying in {backoff:?}");
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = ctx.shutdown.cancelled() => break,
                }
                backoff = (backoff * 2).min(ACCEPT_BACKOFF_MAX);
                continue;
            }
        };
        let peer = match Peer::of(&stream) {
            Ok(peer) => peer,
            Err(err) => {
                tracing::warn!(%err, "cannot read a socket client's credentials; closing it");
                continue;
            }
        };
        let slot = match limits.admit(peer.uid) {
            Ok(slot) => slot,
            Err(refusal) => {
                ctx.stats.count_refused(&refusal);
                refuse(stream, &refusal);
                continue;
            }
        };
        ctx.stats.accepted.fetch_add(1, Ordering::Relaxed);
        ctx.stats.clients.fetch_add(1, Ordering::Relaxed);
        tracing::debug!(uid = peer.uid, gid = peer.gid, pid = ?peer.pid, "socket client connected");
        let session_ctx = ctx.clone();
        tasks.spawn(async move {
            let stats = Arc::clone(&session_ctx.stats);
            session::serve(stream, peer, session_ctx).await;
            stats.clients.fetch_sub(1, Ordering::Relaxed);
            drop(slot);
        });
    }
    drop(listener);
    let lagged = ctx.stats.lagged_messages.load(Ordering::Relaxed);
    if lagged > 0 {
        tracing::info!(
            lagged_messages = lagged,
            "socket subscribers missed events in total (they were told with `lagged`)"
        );
    }
}

/// The two client caps: `agent.max_clients` in all, `agent.max_clients_per_uid` per uid
/// (root counted like any other uid).
struct ClientLimits {
    all: Arc<Semaphore>,
    max: usize,
    per_uid: usize,
    by_uid: Arc<Mutex<HashMap<u32, usize>>>,
}

/// A client's place; given back when dropped.
#[derive(Debug)]
struct Slot {
    _permit: OwnedSemaphorePermit,
    uid: u32,
    by_uid: Arc<Mutex<HashMap<u32, usize>>>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        if let Ok(mut by_uid) = self.by_uid.lock()
            && let Some(n) = by_uid.get_mut(&self.uid)
        {
            *n -= 1;
            if *n == 0 {
                by_uid.remove(&self.uid);
            }
        }
    }
}

/// Why a client was refused.
#[derive(Debug, PartialEq, Eq)]
enum Refusal {
    /// `agent.max_clients` clients are connected.
    Full { max: usize },
    /// This uid holds `agent.max_clients_per_uid` of them.
    Uid { uid: u32, per_uid: usize },
}

impl Refusal {
    fn message(&self) -> String {
        match self {
            Refusal::Full { max } => format!(
                "connmon serves at most {max} clients at once (agent.max_clients); try again later"
            ),
            Refusal::Uid { uid, per_uid } => format!(
                "connmon serves at most {per_uid} clients of one uid at once (agent.max_clients_per_uid) and uid {uid} has {per_uid}; try again later"
            ),
        }
    }
}

impl ClientLimits {
    fn new(max: usize, per_uid: usize) -> Self {
        ClientLimits {
            all: Arc::new(Semaphore::new(max)),
            max,
            per_uid,
            by_uid: Arc::default(),
        }
    }

    /// A slot for a client of `uid`, or why not.
    fn admit(&self, uid: u32) -> Result<Slot, Refusal> {
        let mut by_uid = self
            .by_uid
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let held = by_uid.get(&uid).copied().unwrap_or(0);
        if held >= self.per_uid {
            return Err(Refusal::Uid {
                uid,
                per_uid: self.per_uid,
            });
        }
        let permit = Arc::clone(&self.all)
            .try_acquire_owned()
            .map_err(|_| Refusal::Full { max: self.max })?;
        by_uid.insert(uid, held + 1);
        Ok(Slot {
            _permit: permit,
            uid,
            by_uid: Arc::clone(&self.by_uid),
        })
    }
}

/// Tells a client over a limit why and closes it, here and now: one non-blocking write
/// of one short line into the fresh socket's empty buffer (if even that does not fit,
/// the client goes without it), then close. Nothing is spawned and nothing waits, so a
/// storm of refused connects never holds more than the one being refused.
fn refuse(stream: UnixStream, refusal: &Refusal) {
    let mut line = protocol::connection_error(
        crate::protocol::ErrorCode::TooManyClients,
        &refusal.message(),
    );
    line.push('\n');
    if let Ok(mut stream) = stream.into_std() {
        use std::io::Write as _;
        let _ = stream.write(line.as_bytes());
        let _ = stream.shutdown(std::net::Shutdown::Write);
    }
}

#[cfg(test)]
mod tests {
    use std::io::Read as _;

    use super::*;

    #[test]
    fn no_uid_holds_more_than_its_share_and_slots_come_back() {
        let limits = ClientLimits::new(3, 2);
        let a = limits.admit(1000).expect("first of uid 1000");
        let b = limits.admit(1000).expect("second of uid 1000");
        let refusal = limits.admit(1000).expect_err("third of uid 1000");
        assert_eq!(
            refusal,
            Refusal::Uid {
                uid: 1000,
                per_uid: 2
            }
        );
        assert_eq!(
            refusal.message(),
            "connmon serves at most 2 clients of one uid at once (agent.max_clients_per_uid) and uid 1000 has 2; try again later"
        );
        // Root is counted like anyone else, and the total cap still holds.
        let root = limits.admit(0).expect("root while slots are free");
        assert_eq!(limits.admit(0).err(), Some(Refusal::Full { max: 3 }));
        assert_eq!(
            Refusal::Full { max: 3 }.message(),
            "connmon serves at most 3 clients at once (agent.max_clients); try again later"
        );
        drop(a);
        let again = limits.admit(1000).expect("uid 1000's slot came back");
        drop((b, root, again));
        assert!(
            limits.by_uid.lock().unwrap().is_empty(),
            "no uid left counted"
        );
        assert_eq!(limits.all.available_permits(), 3);
    }

    fn open_fds() -> usize {
        std::fs::read_dir("/proc/self/fd").map_or(0, Iterator::count)
    }

    /// Issue #18: connections that open and close as fast as four threads can, while
    /// every slot is taken. Each refusal used to be a task of its own that kept the
    /// socket open until the current-thread runtime came round to it; the accept loop
    /// admitted them faster than they ended, and the agent's open sockets grew to its
    /// file limit (19 808 in a 6 s storm, with `max_clients` sessions stuck behind
    /// them: every controller was refused). Refused inline, the server holds the held
    /// slot, the one being refused and nothing more; a refused client still reads why.
    #[test]
    fn a_storm_of_refused_connects_holds_no_sockets() {
        let dir = std::env::temp_dir().join(format!("connmon-storm-{}", std::process::id()));
        let path = dir.join("c.sock");
        let _ = std::fs::remove_dir_all(&dir);
        let BoundSocket { listener, file } = bind(&path, None).expect("bind");
        let shutdown = tokio_util::sync::CancellationToken::new();
        let (control, _control_rx) = tokio::sync::mpsc::channel(1);
        let ctx = SessionContext {
            bus: crate::bus::EventBus::new(16, crate::clock::WallClock::from_offset_ns(0)),
            control,
            permissions: Arc::default(),
            default_ejection: Duration::from_secs(1),
            stats: Arc::default(),
            shutdown: shutdown.clone(),
        };
        let stats = Arc::clone(&ctx.stats);
        let server = std::thread::spawn({
            let shutdown = shutdown.clone();
            move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("runtime");
                rt.block_on(async move {
                    let listener = UnixListener::from_std(listener).expect("listener");
                    let tasks = TaskTracker::new();
                    accept_loop(listener, ctx, ClientLimits::new(1, 1), tasks.clone()).await;
                    tasks.close();
                    tasks.wait().await;
                });
                drop(shutdown);
            }
        });
        let mut holder = std::os::unix::net::UnixStream::connect(&path).expect("holder");
        let mut hello = [0u8; 16];
        holder.read_exact(&mut hello).expect("the holder's hello");
        let baseline = open_fds();
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let churners: Vec<_> = (0..4)
            .map(|_| {
                let (path, stop) = (path.clone(), Arc::clone(&stop));
                std::thread::spawn(move || {
                    let mut n = 0u64;
                    while !stop.load(Ordering::Relaxed) {
                        if std::os::unix::net::UnixStream::connect(&path).is_ok() {
                            n += 1;
                        }
                    }
                    n
                })
            })
            .collect();
        let started = Instant::now();
        let mut peak = baseline;
        while started.elapsed() < Duration::from_millis(1500) {
            peak = peak.max(open_fds());
            std::thread::sleep(Duration::from_millis(5));
        }
        stop.store(true, Ordering::Relaxed);
        let connects: u64 = churners
            .into_iter()
            .map(|t| t.join().expect("churner"))
            .sum();
        let mut refused = std::os::unix::net::UnixStream::connect(&path).expect("one more");
        let mut line = String::new();
        refused.read_to_string(&mut line).expect("the refusal");
        shutdown.cancel();
        server.join().expect("server thread");
        drop(file);
        let _ = std::fs::remove_dir_all(&dir);
        assert!(
            line.starts_with(r#"{"type":"error","code":"too_many_clients""#)
                && line.contains("at most 1 clients"),
            "a refused client is told why: {line}"
        );
        let refused_count = stats.refused.load(Ordering::Relaxed);
        assert!(
            refused_count > 100,
            "the storm was refused ({refused_count} of {connects} connects)"
        );
        // The test's own: the holder, the listener, the churners' four in flight, a few
        // of the test harness's; the server's: the held session and the one refused.
        assert!(
            peak <= baseline + 16,
            "open sockets grew from {baseline} to {peak} during {connects} refused connects"
        );
    }

    #[test]
    fn a_stale_socket_is_replaced_a_live_one_is_an_error_and_the_file_goes_on_drop() {
        let dir = std::env::temp_dir().join(format!("connmon-server-{}", std::process::id()));
        let path = dir.join("sub").join("c.sock");
        {
            let stale = std::os::unix::net::UnixListener::bind({
                std::fs::create_dir_all(path.parent().unwrap()).unwrap();
                &path
            })
            .unwrap();
            drop(stale);
        }
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let bound = bind(&path, None).unwrap();
            let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o660);
            let err = bind(&path, None)
                .err()
                .expect("a live socket must be refused")
                .to_string();
            assert_eq!(
                err,
                format!(
                    "another connmon is listening on {} (stop it, or give this one --socket PATH)",
                    path.display()
                )
            );
            drop(bound);
            assert!(!path.exists(), "socket file removed on drop");
            assert!(matches!(
                bind(&path, Some("no-such-group-connmon")),
                Err(ServerError::UnknownGroup(_))
            ));
        });
        std::fs::write(&path, "x").unwrap();
        assert!(matches!(
            rt.block_on(async { bind(&path, None) }),
            Err(ServerError::NotASocket(_))
        ));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
