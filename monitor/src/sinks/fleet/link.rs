//! The fleet link task: bus decisions out to NATS, other hosts' verdicts in.
//!
//! Four parts, none of which the pipeline waits for:
//! - the **main loop** reads the bus (own decisions → the bounded outbound queue),
//!   the verdict subscription (→ [`FleetView`] → [`Control::Fleet`], a burst of
//!   verdicts handed over together), the heartbeat timer, and resync results;
//! - the **publisher** drains the outbound queue onto the verdict subject (core
//!   publish, under a timeout; while disconnected it drops and counts);
//! - the **KV writer** puts or deletes each message's key in the bucket, batched and
//!   concurrent, and retries the failed ones;
//! - a **resync** runs after every (re)connect: bucket created if missing, this host's
//!   ejections re-put (from a policy snapshot), the bucket read back.

use std::{
    sync::Arc,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use async_nats::jetstream::{self, kv};
use bytes::Bytes;
use futures_util::{FutureExt as _, StreamExt};
use tokio::sync::{
    broadcast::{self, error::RecvError},
    mpsc, oneshot,
};
use tokio_util::{sync::CancellationToken, task::TaskTracker};

use super::{
    FleetConfig,
    message::{self, FleetMessage, Heartbeat, RemoteEvict, RemoteReinstate},
    view::{Action, FleetView},
};
use crate::{
    bus::{Payload, Published},
    config::Config,
    control::{Control, FleetVerdict},
    policy::{Decision, DestinationState, Evidence, FleetApply, PolicySnapshot, Reason, Trust},
    stats::fleet::{DroppedReason, FleetCounters, IgnoredReason},
};

/// Longest wait for one NATS operation (publish, KV put, KV read).
const NATS_TIMEOUT: Duration = Duration::from_secs(2);
/// Longest wait for the pipeline to take and answer a control command.
const CONTROL_TIMEOUT: Duration = Duration::from_secs(10);
/// Repeated warnings of one kind are written at most this often.
const WARN_EVERY: Duration = Duration::from_secs(10);
/// Longest a whole resync (bucket creation and read) may take before it is retried.
const RESYNC_TIMEOUT: Duration = Duration::from_secs(20);
/// How often a resync is retried while the bucket cannot be reached.
const RESYNC_RETRY: Duration = Duration::from_secs(2);
/// How often failed KV puts and deletes are tried again.
const KV_RETRY: Duration = Duration::from_secs(1);
/// Verdicts taken together from the subject (see the verdict branch of the main loop).
const VERDICT_BATCH: usize = 255;
/// Own ejections re-put concurrently during a resync.
const RESYNC_PUTS_IN_FLIGHT: usize = 64;

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// A warning written at most every [`WARN_EVERY`], with how many were suppressed.
#[derive(Debug, Default)]
struct RateLimited {
    last: Option<Instant>,
    suppressed: u64,
}

impl RateLimited {
    fn warn(&mut self, message: std::fmt::Arguments<'_>) {
        if self.last.is_some_and(|at| at.elapsed() < WARN_EVERY) {
            self.suppressed += 1;
            return;
        }
        let suppressed = std::mem::take(&mut self.suppressed);
        self.last = Some(Instant::now());
        tracing::warn!(suppressed, "fleet: {message}");
    }
}

/// One message for NATS: the verdict subject, then the KV key (put, or delete on None).
#[derive(Debug)]
struct Outbound {
    payload: Bytes,
    key: String,
    put: bool,
}

pub(super) struct Link {
    fleet: FleetConfig,
    host: String,
    control: mpsc::Sender<Control>,
    max_age: Duration,
    /// Whether a trigger outside connmon's own namespace is trusted evidence to share:
    /// not when `policy.evidence.trust = "all"` names no namespace or cgroup (then any
    /// unprivileged user's namespace counts).
    trust_all_unscoped: bool,
    host_netns: u32,
    counters: Arc<FleetCounters>,
}

impl Link {
    pub(super) fn new(
        config: &Config,
        control: mpsc::Sender<Control>,
        counters: Arc<FleetCounters>,
    ) -> Self {
        use std::os::unix::fs::MetadataExt as _;
        let evidence = &config.policy.evidence;
        Link {
            host: config.fleet.host(),
            fleet: config.fleet.clone(),
            control,
            max_age: config.policy.max_ejection.max(Duration::from_secs(60)),
            trust_all_unscoped: evidence.trust == Trust::All
                && evidence.netns.is_empty()
                && evidence.cgroups.is_empty(),
            host_netns: std::fs::metadata("/proc/self/ns/net")
                .map(|m| m.ino() as u32)
                .unwrap_or(0),
            counters,
        }
    }

    pub(super) async fn run(
        self,
        mut events: broadcast::Receiver<Arc<Published>>,
        shutdown: CancellationToken,
        tasks: TaskTracker,
    ) {
        let fleet = &self.fleet;
        let host = self.host.clone();
        let counters = Arc::clone(&self.counters);
        let (connected_tx, mut connected_rx) = mpsc::channel::<()>(4);
        let mut warn_conn = RateLimited::default();
        let options = match fleet.connect_options(&host).await {
            Ok(options) => options,
            Err(e) => {
                tracing::warn!(
                    "fleet: cannot read the credentials ({e}); the fleet is off, connmon works locally"
                );
                return;
            }
        };
        let servers = fleet.servers.join(",");
        let events_warn = Arc::new(std::sync::Mutex::new(RateLimited::default()));
        let ever_connected = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let options = {
            let servers = servers.clone();
            let events_warn = Arc::clone(&events_warn);
            let counters = Arc::clone(&counters);
            options.event_callback(move |event| {
                let connected_tx = connected_tx.clone();
                let servers = servers.clone();
                let events_warn = Arc::clone(&events_warn);
                let counters = Arc::clone(&counters);
                let ever_connected = Arc::clone(&ever_connected);
                async move {
                    match event {
                        async_nats::Event::Connected => {
                            tracing::info!("fleet: connected to {servers}");
                            if ever_connected.swap(true, std::sync::atomic::Ordering::Relaxed) {
                                counters.reconnected();
                            }
                            let _ = connected_tx.try_send(());
                        }
                        other => {
                            if let Ok(mut w) = events_warn.lock() {
                                w.warn(format_args!(
                                    "NATS {servers}: {other}; connmon keeps working locally"
                                ));
                            }
                        }
                    }
                }
            })
        };
        let client = match options.connect(fleet.servers.clone()).await {
            Ok(client) => client,
            Err(e) => {
                tracing::warn!(
                    "fleet: cannot use NATS {servers} ({e}); the fleet is off, connmon works locally"
                );
                return;
            }
        };
        tracing::info!(
            host = %host,
            cluster = %fleet.cluster,
            mode = ?fleet.mode,
            "fleet: started; connecting to {servers} in the background"
        );
        let mut verdicts = match client.subscribe(fleet.verdict_subject("*")).await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(
                    "fleet: cannot subscribe ({e}); the fleet is off, connmon works locally"
                );
                return;
            }
        };
        let js = jetstream::new(client.clone());
        let store: Arc<tokio::sync::RwLock<Option<kv::Store>>> = Arc::default();
        let (out_tx, out_rx) = mpsc::channel::<Outbound>(fleet.queue);
        let (kv_tx, kv_rx) = mpsc::channel::<Outbound>(fleet.queue);
        tasks.spawn(publisher(
            client.clone(),
            fleet.verdict_subject(&host),
            out_rx,
            kv_tx,
            Arc::clone(&counters),
            shutdown.clone(),
        ));
        tasks.spawn(kv_writer(
            client.clone(),
            Arc::clone(&store),
            kv_rx,
            Arc::clone(&counters),
            shutdown.clone(),
            fleet.queue,
        ));
        let (resynced_tx, mut resynced_rx) = mpsc::channel::<Resynced>(2);
        let mut view = FleetView::new(fleet.mode, fleet.quorum, fleet.window, &host);
        let mut heartbeat = tokio::time::interval(fleet.heartbeat);
        heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut warn_queue = RateLimited::default();
        let mut resync_task: Option<tokio::task::JoinHandle<()>> = None;
        loop {
            tokio::select! {
                () = shutdown.cancelled() => break,
                received = events.recv() => match received {
                    Ok(published) => self.on_published(&published, &out_tx, &mut warn_queue),
                    Err(RecvError::Lagged(n)) => {
                        counters.dropped(DroppedReason::Lagged, n);
                        warn_queue.warn(format_args!("fell {n} bus messages behind; their verdicts are not shared"));
                    }
                    Err(RecvError::Closed) => break,
                },
                Some(message) = verdicts.next() => {
                    // What else has arrived is taken with it: the pipeline then applies
                    // the burst together (and saves its state once).
                    let mut actions = Vec::new();
                    self.on_verdict(&message, &mut view, &mut warn_conn, &mut actions);
                    for _ in 0..VERDICT_BATCH {
                        let Some(Some(message)) = verdicts.next().now_or_never() else { break };
                        self.on_verdict(&message, &mut view, &mut warn_conn, &mut actions);
                    }
                    self.act_all(actions).await;
                }
                Some(()) = connected_rx.recv() => {
                    if let Some(task) = resync_task.take() {
                        task.abort();
                    }
                    resync_task = Some(tokio::spawn(resync(
                        js.clone(),
                        self.bucket_config(),
                        Arc::clone(&store),
                        self.own_ejections(),
                        resynced_tx.clone(),
                    )));
                }
                Some(current) = resynced_rx.recv() => {
                    counters.resynced();
                    let actions = view.resync(&current.heartbeats, &current.ejections, now_ms());
                    tracing::info!(
                        entries = current.ejections.len(),
                        hosts = current.heartbeats.len(),
                        own = current.own,
                        elapsed_ms = current.elapsed.as_millis() as u64,
                        actions = actions.len(),
                        "fleet: resynced from the KV bucket"
                    );
                    self.act_all(actions).await;
                }
                _ = heartbeat.tick() => {
                    view.prune(now_ms());
                    if let Some(snapshot) = self.snapshot().await {
                        let beat = FleetMessage::Heartbeat(Heartbeat {
                            v: message::VERSION,
                            host: host.clone(),
                            mode: fleet.mode,
                            ejected: snapshot.ejected as u64,
                            local_outage: snapshot.local_outage,
                            published: counters.snapshot().published,
                            applied: counters.snapshot().applied,
                            dropped: counters.dropped_total(),
                            ts_ms: now_ms(),
                        });
                        let out = Outbound { payload: beat.encode().into(), key: message::heartbeat_key(&host), put: true };
                        // A heartbeat that does not fit is not a verdict: no drop counted.
                        let _ = out_tx.try_send(out);
                    }
                }
            }
        }
        if let Some(task) = resync_task {
            task.abort();
        }
        tracing::info!("fleet link stopped:{}", counters.snapshot().to_text());
        let _ = tokio::time::timeout(NATS_TIMEOUT, client.flush()).await;
    }

    fn bucket_config(&self) -> kv::Config {
        kv::Config {
            bucket: self.fleet.bucket(),
            description: format!(
                "connmon fleet {}: current ejections and heartbeats",
                self.fleet.cluster
            ),
            history: 1,
            max_age: self.max_age,
            max_bytes: i64::try_from(self.fleet.max_bytes).unwrap_or(i64::MAX),
            max_value_size: i32::try_from(message::MAX_MESSAGE_BYTES).unwrap_or(i32::MAX),
            ..kv::Config::default()
        }
    }

    /// A decision of this host's own (never a fleet one: no echo) into the queue.
    fn on_published(
        &self,
        published: &Published,
        out: &mpsc::Sender<Outbound>,
        warn: &mut RateLimited,
    ) {
        let Payload::Decision(decision) = &published.payload else {
            return;
        };
        if decision.is_foreign_local() {
            return;
        }
        let outbound = match decision {
            Decision::Evict(e) if e.reason != Reason::Fleet => {
                let trusted = match &e.trigger {
                    None => true,
                    Some(t) => !self.trust_all_unscoped || t.netns == self.host_netns,
                };
                let m = FleetMessage::of_eviction(e, &self.host, trusted, now_ms());
                Outbound {
                    payload: m.encode().into(),
                    key: message::ejection_key(e.dst, &self.host),
                    put: true,
                }
            }
            Decision::Reinstate(r) if r.origin.is_none() => {
                let m = FleetMessage::Reinstate(RemoteReinstate {
                    v: message::VERSION,
                    host: self.host.clone(),
                    dst: r.dst,
                    ts_ms: now_ms(),
                });
                Outbound {
                    payload: m.encode().into(),
                    key: message::ejection_key(r.dst, &self.host),
                    put: false,
                }
            }
            _ => return,
        };
        if out.try_send(outbound).is_err() {
            self.counters.dropped(DroppedReason::QueueFull, 1);
            warn.warn(format_args!(
                "outbound queue full ({} verdicts): dropping the newest (NATS slow or down)",
                self.fleet.queue
            ));
        }
    }

    /// One message from the verdict subject: counted, through the view, its actions
    /// (and any retraction it caused) added to `actions`.
    fn on_verdict(
        &self,
        message: &async_nats::Message,
        view: &mut FleetView,
        warn: &mut RateLimited,
        actions: &mut Vec<Action>,
    ) {
        let counters = &self.counters;
        match message::decode(&message.payload) {
            Ok(m) if m.host() == self.host => {
                // Our own message back from the subject.
                if !matches!(m, FleetMessage::Heartbeat(_)) {
                    counters.ignored(IgnoredReason::Echo);
                }
            }
            Ok(m) => {
                counters.received();
                match view.on_message(&m, now_ms()) {
                    Ok(action) => actions.push(action),
                    Err(ignored) => {
                        if let Some(reason) = ignored.reason() {
                            counters.ignored(reason);
                        }
                    }
                }
                actions.extend(view.take_retractions());
            }
            Err(message::DecodeError::Echo) => counters.ignored(IgnoredReason::Echo),
            Err(e) => {
                counters.invalid();
                warn.warn(format_args!(
                    "ignored a message on {}: {e}",
                    message.subject
                ));
            }
        }
    }

    /// Carries out several actions: all handed to the pipeline first, then the answers
    /// counted (the pipeline takes queued commands together).
    async fn act_all(&self, actions: Vec<Action>) {
        let mut answers = Vec::with_capacity(actions.len());
        for action in actions {
            let lift = matches!(action, Action::Lift { .. });
            let (reply, answer) = oneshot::channel();
            let command = Control::Fleet {
                verdict: verdict_of(action),
                reply,
            };
            if self.control.send(command).await.is_err() {
                return;
            }
            answers.push((lift, answer));
        }
        for (lift, answer) in answers {
            let answer = tokio::time::timeout(CONTROL_TIMEOUT, answer).await;
            self.count_answer(lift, answer);
        }
    }

    fn count_answer(
        &self,
        lift: bool,
        answer: Result<Result<FleetApply, oneshot::error::RecvError>, tokio::time::error::Elapsed>,
    ) {
        match answer {
            Ok(Ok(FleetApply::Applied)) if lift => self.counters.lifted(),
            Ok(Ok(FleetApply::Applied)) => self.counters.applied(),
            Ok(Ok(FleetApply::AlreadyEjected)) if !lift => {
                self.counters.ignored(IgnoredReason::AlreadyEjected);
            }
            Ok(Ok(FleetApply::Guarded | FleetApply::NoRoom)) => self.counters.guarded(),
            _ => {}
        }
    }

    async fn snapshot(&self) -> Option<PolicySnapshot> {
        let (reply, answer) = oneshot::channel();
        self.control.send(Control::Snapshot { reply }).await.ok()?;
        tokio::time::timeout(CONTROL_TIMEOUT, answer)
            .await
            .ok()?
            .ok()
    }

    /// This host's own ejections in force, as messages to re-put after a reconnect.
    fn own_ejections(&self) -> OwnEjections {
        OwnEjections {
            control: self.control.clone(),
            host: self.host.clone(),
            subject: self.fleet.verdict_subject(&self.host),
        }
    }
}

/// The pipeline command of a view's action.
fn verdict_of(action: Action) -> FleetVerdict {
    match action {
        Action::Apply {
            dst,
            duration,
            origin,
        } => FleetVerdict::Evict {
            dst,
            duration,
            origin,
        },
        Action::Lift { dst } => FleetVerdict::Reinstate { dst },
    }
}

/// Reads this host's own ejections from the policy when the resync needs them.
struct OwnEjections {
    control: mpsc::Sender<Control>,
    host: String,
    /// This host's verdict subject: hosts that resynced before this one re-put its
    /// ejections learn them from there.
    subject: String,
}

impl OwnEjections {
    async fn read(&self) -> Vec<FleetMessage> {
        let (reply, answer) = oneshot::channel();
        if self
            .control
            .send(Control::Snapshot { reply })
            .await
            .is_err()
        {
            return Vec::new();
        }
        let Ok(Ok(snapshot)) = tokio::time::timeout(CONTROL_TIMEOUT, answer).await else {
            return Vec::new();
        };
        let now = now_ms();
        snapshot
            .destinations
            .iter()
            .filter(|d| d.netns.is_none())
            .filter_map(|d| {
                let own = d.state == DestinationState::Ejected
                    && d.ejection_reason.is_some_and(|r| r != Reason::Fleet);
                let until_ms = d
                    .ejected_until
                    .as_deref()
                    .and_then(|u| chrono::DateTime::parse_from_rfc3339(u).ok())
                    .map(|t| u64::try_from(t.timestamp_millis()).unwrap_or(0))
                    .unwrap_or(0);
                (own && until_ms > now).then(|| {
                    FleetMessage::Evict(RemoteEvict {
                        v: message::VERSION,
                        host: self.host.clone(),
                        dst: d.dst,
                        reason: d.ejection_reason.unwrap_or(Reason::Manual),
                        failure_mode: d.failure_mode,
                        duration_ms: until_ms - now,
                        until_ms,
                        count: d.ejection_count,
                        evidence: Evidence {
                            attempts: d.attempts,
                            ..Evidence::default()
                        },
                        trusted: true,
                        local_outage: snapshot.local_outage,
                        ts_ms: now,
                    })
                })
            })
            .collect()
    }
}

/// A KV put (or delete) of one outbound message.
async fn kv_apply(kv: &kv::Store, out: &Outbound) -> Result<(), String> {
    let op = async {
        if out.put {
            kv.put(&out.key, out.payload.clone())
                .await
                .map(drop)
                .map_err(|e| e.to_string())
        } else {
            kv.delete(&out.key).await.map_err(|e| e.to_string())
        }
    };
    match tokio::time::timeout(NATS_TIMEOUT, op).await {
        Ok(result) => result,
        Err(_) => Err("timed out".into()),
    }
}

fn connected(client: &async_nats::Client) -> bool {
    client.connection_state() == async_nats::connection::State::Connected
}

/// Drains the outbound queue onto the verdict subject (what other hosts act on, so it
/// never waits for the bucket) and hands each message on to the [`kv_writer`].
async fn publisher(
    client: async_nats::Client,
    subject: String,
    mut queue: mpsc::Receiver<Outbound>,
    kv: mpsc::Sender<Outbound>,
    counters: Arc<FleetCounters>,
    shutdown: CancellationToken,
) {
    let mut warn = RateLimited::default();
    loop {
        let out = tokio::select! {
            () = shutdown.cancelled() => break,
            out = queue.recv() => match out { Some(out) => out, None => break },
        };
        let is_verdict = !out.key.starts_with("h.");
        if !connected(&client) {
            if is_verdict {
                counters.dropped(DroppedReason::Unreachable, 1);
                warn.warn(format_args!(
                    "NATS unreachable: verdicts are dropped (counted) until it is back"
                ));
            }
            // The bucket still gets it, later: as the newest operation on its key it
            // supersedes a put the writer kept for a retry (a reinstate made while NATS
            // was down must not be undone by a stale evict put after the resync).
            forward_to_bucket(&kv, out, &counters);
            continue;
        }
        let published = tokio::time::timeout(
            NATS_TIMEOUT,
            client.publish(subject.clone(), out.payload.clone()),
        )
        .await;
        if !matches!(published, Ok(Ok(()))) {
            if is_verdict {
                counters.dropped(DroppedReason::Unreachable, 1);
            }
            warn.warn(format_args!("publishing on {subject} failed"));
            forward_to_bucket(&kv, out, &counters);
            continue;
        }
        if is_verdict {
            counters.published();
        }
        forward_to_bucket(&kv, out, &counters);
    }
}

/// Hands a message to the [`kv_writer`]. When its queue is full the bucket lags far
/// behind: this host's ejections are re-put at the next resync.
fn forward_to_bucket(kv: &mpsc::Sender<Outbound>, out: Outbound, counters: &FleetCounters) {
    if kv.try_send(out).is_err() {
        counters.kv_put_failed();
    }
}

/// KV operations in flight at most.
const KV_IN_FLIGHT: usize = 256;

/// Writes the messages into the KV bucket: whatever is queued is taken as one batch
/// (the newest operation per key wins) and written concurrently, so the bucket keeps up
/// with a burst of verdicts instead of paying one round trip each. A failed put or
/// delete is counted and kept for a retry every [`KV_RETRY`] (the newest per key, at
/// most `max_pending` keys; the next resync re-puts this host's ejections anyway).
async fn kv_writer(
    client: async_nats::Client,
    store: Arc<tokio::sync::RwLock<Option<kv::Store>>>,
    mut queue: mpsc::Receiver<Outbound>,
    counters: Arc<FleetCounters>,
    shutdown: CancellationToken,
    max_pending: usize,
) {
    let mut warn = RateLimited::default();
    let mut pending: std::collections::HashMap<String, Outbound> = std::collections::HashMap::new();
    let mut retry = tokio::time::interval(KV_RETRY);
    retry.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let mut batch: std::collections::HashMap<String, Outbound> =
            std::collections::HashMap::new();
        tokio::select! {
            () = shutdown.cancelled() => break,
            _ = retry.tick(), if !pending.is_empty() => {
                if !connected(&client) || store.read().await.is_none() {
                    continue;
                }
                for (key, out) in pending.drain() {
                    counters.kv_put_retried();
                    batch.insert(key, out);
                }
            }
            out = queue.recv() => match out {
                Some(out) => {
                    pending.remove(&out.key);
                    batch.insert(out.key.clone(), out);
                }
                None => break,
            },
        }
        while batch.len() < 4 * KV_IN_FLIGHT {
            let Ok(out) = queue.try_recv() else { break };
            // A newer operation on the key supersedes a pending retry.
            pending.remove(&out.key);
            batch.insert(out.key.clone(), out);
        }
        let kv = store.read().await.clone();
        let Some(kv) = kv.filter(|_| connected(&client)) else {
            for (key, out) in batch {
                if pending.len() < max_pending || pending.contains_key(&key) {
                    pending.insert(key, out);
                }
            }
            continue;
        };
        let mut in_flight = futures_util::stream::FuturesUnordered::new();
        let mut ops = batch.into_values();
        loop {
            while in_flight.len() < KV_IN_FLIGHT {
                let Some(out) = ops.next() else { break };
                let kv = kv.clone();
                in_flight.push(async move {
                    let result = kv_apply(&kv, &out).await;
                    (out, result)
                });
            }
            let Some((out, result)) = in_flight.next().await else {
                break;
            };
            if let Err(e) = result {
                counters.kv_put_failed();
                warn.warn(format_args!("KV {} {}: {e} (retrying)", kv.name, out.key));
                if pending.len() < max_pending {
                    pending.insert(out.key.clone(), out);
                }
            }
        }
    }
}

/// What a resync read back.
#[derive(Debug, Default)]
struct Resynced {
    heartbeats: Vec<Heartbeat>,
    ejections: Vec<RemoteEvict>,
    /// This host's own ejections re-put.
    own: usize,
    elapsed: Duration,
}

/// After a (re)connect: bucket, own ejections re-put, the fleet's read back. Retried
/// until it succeeds (the server may still be starting JetStream).
async fn resync(
    js: jetstream::Context,
    bucket: kv::Config,
    store: Arc<tokio::sync::RwLock<Option<kv::Store>>>,
    own: OwnEjections,
    done: mpsc::Sender<Resynced>,
) {
    let mut warn = RateLimited::default();
    loop {
        let started = Instant::now();
        match tokio::time::timeout(RESYNC_TIMEOUT, resync_once(&js, &bucket, &store, &own)).await {
            Ok(Ok(mut current)) => {
                current.elapsed = started.elapsed();
                let _ = done.send(current).await;
                return;
            }
            Ok(Err(e)) => warn.warn(format_args!("KV bucket {}: {e}; retrying", bucket.bucket)),
            Err(_) => warn.warn(format_args!(
                "KV bucket {}: timed out; retrying",
                bucket.bucket
            )),
        }
        tokio::time::sleep(RESYNC_RETRY).await;
    }
}

/// Every current value of the bucket (last per key, deletes skipped), read by one
/// ordered consumer rather than one request per key: 10 000 keys take one stream
/// read, not 10 000 round trips. The resync and `connmon fleet` read it so.
pub(crate) async fn read_bucket(kv: &kv::Store) -> Result<Vec<(String, Bytes)>, String> {
    let status = kv.status().await.map_err(|e| e.to_string())?;
    let mut values = Vec::new();
    if status.values() == 0 {
        return Ok(values);
    }
    let mut watch = kv
        .watch_with_history(">")
        .await
        .map_err(|e| e.to_string())?;
    loop {
        let entry = match tokio::time::timeout(NATS_TIMEOUT, watch.next()).await {
            Ok(Some(entry)) => entry.map_err(|e| e.to_string())?,
            Ok(None) => break,
            Err(_) => return Err("timed out reading the bucket".into()),
        };
        let last = entry.delta == 0;
        if entry.operation == kv::Operation::Put {
            values.push((entry.key, entry.value));
        }
        if last {
            break;
        }
    }
    Ok(values)
}

async fn resync_once(
    js: &jetstream::Context,
    bucket: &kv::Config,
    store: &tokio::sync::RwLock<Option<kv::Store>>,
    own: &OwnEjections,
) -> Result<Resynced, String> {
    let kv = match js.get_key_value(bucket.bucket.clone()).await {
        Ok(kv) => kv,
        Err(_) => {
            // The stream a KV bucket is, created directly: `create_key_value` first
            // reads the account info, whose 2.10 fields Debian's nats-server 2.9 lacks.
            js.get_or_create_stream(kv_stream_config(bucket))
                .await
                .map_err(|e| format!("cannot create it: {e}"))?;
            js.get_key_value(bucket.bucket.clone())
                .await
                .map_err(|e| format!("cannot open it: {e}"))?
        }
    };
    *store.write().await = Some(kv.clone());
    let mine: Vec<(String, FleetMessage)> = own
        .read()
        .await
        .into_iter()
        .filter_map(|m| match &m {
            FleetMessage::Evict(e) => Some((message::ejection_key(e.dst, &own.host), m)),
            _ => None,
        })
        .collect();
    let client = js.client();
    let mut in_flight = futures_util::stream::FuturesUnordered::new();
    for (key, m) in &mine {
        if in_flight.len() >= RESYNC_PUTS_IN_FLIGHT
            && let Some(put) = in_flight.next().await
        {
            put?;
        }
        let (kv, client, subject) = (kv.clone(), client.clone(), own.subject.clone());
        let (key, bytes): (String, Bytes) = (key.clone(), m.encode().into());
        in_flight.push(async move {
            kv.put(key, bytes.clone())
                .await
                .map_err(|e| e.to_string())?;
            let _ = client.publish(subject, bytes).await;
            Ok::<(), String>(())
        });
    }
    while let Some(put) = in_flight.next().await {
        put?;
    }
    let mine: std::collections::HashSet<&str> = mine.iter().map(|(k, _)| k.as_str()).collect();
    let suffix = format!(".{}", own.host);
    let mut current = Resynced {
        own: mine.len(),
        ..Resynced::default()
    };
    for (key, bytes) in read_bucket(&kv).await? {
        let decoded = message::decode(&bytes);
        if key.starts_with("h.") {
            if let Ok(FleetMessage::Heartbeat(h)) = decoded {
                current.heartbeats.push(h);
            }
            continue;
        }
        if !key.starts_with("e.") {
            continue;
        }
        if key.ends_with(&suffix) && !mine.contains(key.as_str()) {
            // Reinstated here while NATS was away: deleted, and said on the subject.
            if let Ok(FleetMessage::Evict(e)) = decoded {
                let r = FleetMessage::Reinstate(RemoteReinstate {
                    v: message::VERSION,
                    host: own.host.clone(),
                    dst: e.dst,
                    ts_ms: now_ms(),
                });
                let _ = client.publish(own.subject.clone(), r.encode().into()).await;
            }
            kv.delete(&key).await.map_err(|e| e.to_string())?;
        } else if let Ok(FleetMessage::Evict(e)) = decoded {
            current.ejections.push(e);
        }
    }
    Ok(current)
}

/// The JetStream stream of a KV bucket, as async-nats' `create_key_value` builds it
/// (history as the per-subject limit, rollups allowed, deletes through markers only).
fn kv_stream_config(bucket: &kv::Config) -> jetstream::stream::Config {
    jetstream::stream::Config {
        name: format!("KV_{}", bucket.bucket),
        description: Some(bucket.description.clone()),
        subjects: vec![format!("$KV.{}.>", bucket.bucket)],
        max_messages_per_subject: bucket.history.max(1),
        max_bytes: bucket.max_bytes,
        max_age: bucket.max_age,
        max_message_size: bucket.max_value_size,
        storage: jetstream::stream::StorageType::File,
        allow_rollup: true,
        deny_delete: true,
        deny_purge: false,
        allow_direct: true,
        num_replicas: 1,
        discard: jetstream::stream::DiscardPolicy::New,
        ..jetstream::stream::Config::default()
    }
}
