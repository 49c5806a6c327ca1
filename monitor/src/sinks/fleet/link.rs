//! The fleet link task: bus decisions out to NATS, other hosts' verdicts in.
//!
//! Three parts, none of which the pipeline waits for:
//! - the **main loop** reads the bus (own decisions → the bounded outbound queue),
//!   the verdict subscription (→ [`FleetView`] → [`Control::Fleet`]), the heartbeat
//!   timer, and resync results;
//! - the **publisher** drains the outbound queue into NATS (core publish, then the KV
//!   put or delete), each operation under a timeout; while disconnected it drops and
//!   counts;
//! - a **resync** runs after every (re)connect: bucket created if missing, this host's
//!   ejections re-put (from a policy snapshot), the bucket's ejections read back.

use std::{
    sync::Arc,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use async_nats::jetstream::{self, kv};
use bytes::Bytes;
use futures_util::StreamExt;
use tokio::sync::{
    broadcast::{self, error::RecvError},
    mpsc, oneshot,
};
use tokio_util::{sync::CancellationToken, task::TaskTracker};

use super::{
    FleetConfig, FleetCounters,
    message::{self, FleetMessage, Heartbeat, RemoteEvict, RemoteReinstate},
    view::{Action, FleetView},
};
use crate::{
    bus::{Payload, Published},
    config::Config,
    control::{Control, FleetVerdict},
    policy::{Decision, DestinationState, FleetApply, PolicySnapshot, Reason, Trust},
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

pub struct Link {
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
    pub fn new(config: &Config, control: mpsc::Sender<Control>) -> Self {
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
            counters: Arc::default(),
        }
    }

    pub async fn run(
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
        let options = {
            let servers = servers.clone();
            let events_warn = Arc::clone(&events_warn);
            options.event_callback(move |event| {
                let connected_tx = connected_tx.clone();
                let servers = servers.clone();
                let events_warn = Arc::clone(&events_warn);
                async move {
                    match event {
                        async_nats::Event::Connected => {
                            tracing::info!("fleet: connected to {servers}");
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
        tasks.spawn(publisher(
            client.clone(),
            fleet.verdict_subject(&host),
            Arc::clone(&store),
            out_rx,
            Arc::clone(&counters),
            shutdown.clone(),
        ));
        let (resynced_tx, mut resynced_rx) = mpsc::channel::<Vec<RemoteEvict>>(2);
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
                        FleetCounters::add(&counters.lagged, n);
                        FleetCounters::add(&counters.dropped, n);
                        warn_queue.warn(format_args!("fell {n} bus messages behind; their verdicts are not shared"));
                    }
                    Err(RecvError::Closed) => break,
                },
                Some(message) = verdicts.next() => {
                    match message::decode(&message.payload) {
                        Ok(m) => {
                            FleetCounters::add(&counters.received, u64::from(m.host() != host));
                            let action = view.on_message(&m, now_ms());
                            if let Ok(action) = action {
                                self.act(action).await;
                            }
                        }
                        Err(e) => {
                            FleetCounters::add(&counters.invalid, 1);
                            warn_conn.warn(format_args!("ignored a message on {}: {e}", message.subject));
                        }
                    }
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
                    FleetCounters::add(&counters.resyncs, 1);
                    let actions = view.resync(&current, now_ms());
                    tracing::info!(entries = current.len(), actions = actions.len(), "fleet: resynced from the KV bucket");
                    for action in actions {
                        self.act(action).await;
                    }
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
                            published: FleetCounters::get(&counters.published),
                            applied: FleetCounters::get(&counters.applied),
                            dropped: FleetCounters::get(&counters.dropped),
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
        let c = &counters;
        tracing::info!(
            published = FleetCounters::get(&c.published),
            dropped = FleetCounters::get(&c.dropped),
            received = FleetCounters::get(&c.received),
            applied = FleetCounters::get(&c.applied),
            guarded = FleetCounters::get(&c.guarded),
            invalid = FleetCounters::get(&c.invalid),
            lagged = FleetCounters::get(&c.lagged),
            resyncs = FleetCounters::get(&c.resyncs),
            "fleet link stopped"
        );
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
            FleetCounters::add(&self.counters.dropped, 1);
            warn.warn(format_args!(
                "outbound queue full ({} verdicts): dropping the newest (NATS slow or down)",
                self.fleet.queue
            ));
        }
    }

    /// Carries out what the view decided, on the pipeline.
    async fn act(&self, action: Action) {
        let verdict = match action {
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
        };
        let (reply, answer) = oneshot::channel();
        if self
            .control
            .send(Control::Fleet { verdict, reply })
            .await
            .is_err()
        {
            return;
        }
        match tokio::time::timeout(CONTROL_TIMEOUT, answer).await {
            Ok(Ok(FleetApply::Applied)) => FleetCounters::add(&self.counters.applied, 1),
            Ok(Ok(FleetApply::Guarded)) => FleetCounters::add(&self.counters.guarded, 1),
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
                let message = (own && until_ms > now).then(|| {
                    FleetMessage::Evict(RemoteEvict {
                        v: message::VERSION,
                        host: self.host.clone(),
                        dst: d.dst,
                        reason: d.ejection_reason.unwrap_or(Reason::Manual),
                        failure_mode: d.failure_mode,
                        duration_ms: until_ms - now,
                        until_ms,
                        count: d.ejection_count,
                        evidence: message::EvidenceSummary {
                            attempts: d.attempts,
                            ..message::EvidenceSummary::default()
                        },
                        trusted: true,
                        local_outage: snapshot.local_outage,
                        ts_ms: now,
                    })
                });
                message
            })
            .collect()
    }
}

/// Drains the outbound queue into NATS.
async fn publisher(
    client: async_nats::Client,
    subject: String,
    store: Arc<tokio::sync::RwLock<Option<kv::Store>>>,
    mut queue: mpsc::Receiver<Outbound>,
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
        if client.connection_state() != async_nats::connection::State::Connected {
            if is_verdict {
                FleetCounters::add(&counters.dropped, 1);
                warn.warn(format_args!(
                    "NATS unreachable: verdicts are dropped (counted) until it is back"
                ));
            }
            continue;
        }
        let published = tokio::time::timeout(
            NATS_TIMEOUT,
            client.publish(subject.clone(), out.payload.clone()),
        )
        .await;
        if !matches!(published, Ok(Ok(()))) {
            if is_verdict {
                FleetCounters::add(&counters.dropped, 1);
            }
            warn.warn(format_args!("publishing on {subject} failed"));
            continue;
        }
        if is_verdict {
            FleetCounters::add(&counters.published, 1);
        }
        let Some(kv) = store.read().await.clone() else {
            continue;
        };
        let stored = if out.put {
            tokio::time::timeout(NATS_TIMEOUT, kv.put(&out.key, out.payload))
                .await
                .map(|r| r.map(drop).map_err(|e| e.to_string()))
        } else {
            tokio::time::timeout(NATS_TIMEOUT, kv.delete(&out.key))
                .await
                .map(|r| r.map_err(|e| e.to_string()))
        };
        match stored {
            Ok(Ok(())) => {}
            Ok(Err(e)) => warn.warn(format_args!("KV {} {}: {e}", kv.name, out.key)),
            Err(_) => warn.warn(format_args!("KV {} {}: timed out", kv.name, out.key)),
        }
    }
}

/// After a (re)connect: bucket, own ejections re-put, the fleet's read back. Retried
/// until it succeeds (the server may still be starting JetStream).
async fn resync(
    js: jetstream::Context,
    bucket: kv::Config,
    store: Arc<tokio::sync::RwLock<Option<kv::Store>>>,
    own: OwnEjections,
    done: mpsc::Sender<Vec<RemoteEvict>>,
) {
    let mut warn = RateLimited::default();
    loop {
        match tokio::time::timeout(RESYNC_TIMEOUT, resync_once(&js, &bucket, &store, &own)).await {
            Ok(Ok(current)) => {
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

async fn resync_once(
    js: &jetstream::Context,
    bucket: &kv::Config,
    store: &tokio::sync::RwLock<Option<kv::Store>>,
    own: &OwnEjections,
) -> Result<Vec<RemoteEvict>, String> {
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
    let mut mine = std::collections::HashSet::new();
    for m in own.read().await {
        let FleetMessage::Evict(e) = &m else { continue };
        let key = message::ejection_key(e.dst, &own.host);
        kv.put(&key, m.encode().into())
            .await
            .map_err(|e| e.to_string())?;
        let _ = js
            .client()
            .publish(own.subject.clone(), m.encode().into())
            .await;
        mine.insert(key);
    }
    let suffix = format!(".{}", own.host);
    let mut keys = kv.keys().await.map_err(|e| e.to_string())?;
    let mut names = Vec::new();
    while let Some(key) = keys.next().await {
        let key = key.map_err(|e| e.to_string())?;
        if !key.starts_with("e.") {
            continue;
        }
        if key.ends_with(&suffix) && !mine.contains(&key) {
            // Reinstated here while NATS was away: deleted, and said on the subject.
            if let Some(bytes) = kv.get(key.clone()).await.map_err(|e| e.to_string())?
                && let Ok(FleetMessage::Evict(e)) = message::decode(&bytes)
            {
                let r = FleetMessage::Reinstate(RemoteReinstate {
                    v: message::VERSION,
                    host: own.host.clone(),
                    dst: e.dst,
                    ts_ms: now_ms(),
                });
                let _ = js
                    .client()
                    .publish(own.subject.clone(), r.encode().into())
                    .await;
            }
            kv.delete(&key).await.map_err(|e| e.to_string())?;
        } else {
            names.push(key);
        }
    }
    let mut current = Vec::with_capacity(names.len());
    for key in names {
        if let Some(bytes) = kv.get(key).await.map_err(|e| e.to_string())?
            && let Ok(FleetMessage::Evict(e)) = message::decode(&bytes)
        {
            current.push(e);
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
