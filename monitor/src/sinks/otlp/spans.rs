//! Connect outcomes and decisions as OpenTelemetry spans.
//!
//! A failed connect becomes one `tcp.connect` span (kind CLIENT, status ERROR) from its
//! SYN to its outcome, both kernel CLOCK_MONOTONIC times mapped to wall-clock time. A
//! connect whose SYN is retransmitted gets its span as soon as the first
//! `syn_retransmit` arrives, so each retransmission becomes a span event at its own time
//! and an eviction for `syn_retransmits` can link to the connect before it ends; such a
//! span is exported whatever the outcome. Other successful connects are sampled by
//! `success_sample_ratio`. `connmon.evict` and `connmon.reinstate` are spans of their
//! own, linked to the connect (or the eviction) behind them.
//!
//! Every map here is bounded: spans waiting for their outcome, and the last span per
//! destination kept for links.

use std::{
    collections::HashMap,
    net::SocketAddr,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use opentelemetry::{
    KeyValue,
    trace::{Link, Span as _, SpanBuilder, SpanContext, SpanKind, Status},
};
use opentelemetry_sdk::trace::{SdkTracer, Span};

use crate::{
    clock::WallClock,
    policy::{
        Role,
        decision::{Eviction, Reinstatement},
    },
    source::{
        cgroup::CgroupOrigin,
        event::{ConnectRecord, Outcome, SynRetransmitRecord},
    },
    table::FailureMode,
};

/// Connects with retransmitted SYNs still waiting for their outcome, at most.
pub const MAX_PENDING: usize = 4096;
/// Destinations remembered for links, at most.
pub const MAX_LINK_TARGETS: usize = 4096;

const ENETUNREACH: u32 = 101;

/// `error.type` of a failed outcome (`errno` tells host from network unreachable).
pub fn error_type(outcome: Outcome, errno: u32) -> Option<&'static str> {
    Some(match outcome {
        Outcome::Established => return None,
        Outcome::Refused => "connection_refused",
        Outcome::Reset => "connection_reset",
        Outcome::Timeout => "timed_out",
        Outcome::Abandoned => "connect_abandoned",
        Outcome::Unreachable if errno == ENETUNREACH => "network_unreachable",
        Outcome::Unreachable => "host_unreachable",
    })
}

pub fn role_str(role: Role) -> &'static str {
    match role {
        Role::Proxy => "proxy",
        Role::Target => "target",
    }
}

pub fn failure_mode_str(mode: FailureMode) -> &'static str {
    match mode {
        FailureMode::Reject => "reject",
        FailureMode::Drop => "drop",
    }
}

fn peer(dst: SocketAddr) -> [KeyValue; 2] {
    [
        KeyValue::new("network.peer.address", dst.ip().to_string()),
        KeyValue::new("network.peer.port", i64::from(dst.port())),
    ]
}

/// Attributes known when the SYN leaves: peer, transport, process.
fn start_attributes(
    dst: SocketAddr,
    who: &crate::source::event::Attribution,
    role: Role,
) -> Vec<KeyValue> {
    let mut attrs = Vec::with_capacity(12);
    attrs.extend(peer(dst));
    attrs.push(KeyValue::new("network.transport", "tcp"));
    // The network layer the packets use: a v4-mapped destination is IPv4 on the wire.
    attrs.push(KeyValue::new(
        "network.type",
        if dst.is_ipv4() { "ipv4" } else { "ipv6" },
    ));
    attrs.push(KeyValue::new("process.pid", i64::from(who.tgid)));
    attrs.push(KeyValue::new(
        "process.executable.name",
        who.comm.as_str().into_owned(),
    ));
    // cgroup v2 id (the inode of the cgroup directory); the agent resolves the path.
    attrs.push(KeyValue::new("connmon.cgroup_id", who.cgroup_id as i64));
    attrs.extend(origin_attributes(who.cgroup.as_deref()));
    attrs.push(KeyValue::new("connmon.netns", i64::from(who.netns)));
    attrs.push(KeyValue::new("connmon.trusted", who.trusted));
    attrs.push(KeyValue::new("connmon.role", role_str(role)));
    attrs
}

/// `connmon.cgroup`, `container.id` and `k8s.pod.uid` (OpenTelemetry semantic
/// conventions) as far as the cgroup path tells them.
fn origin_attributes(origin: Option<&CgroupOrigin>) -> Vec<KeyValue> {
    let mut attrs = Vec::new();
    if let Some(origin) = origin {
        attrs.push(KeyValue::new("connmon.cgroup", origin.path.to_string()));
        if let Some(id) = &origin.container {
            attrs.push(KeyValue::new("container.id", id.to_string()));
        }
        if let Some(uid) = &origin.pod_uid {
            attrs.push(KeyValue::new("k8s.pod.uid", uid.to_string()));
        }
    }
    attrs
}

/// Attributes known at the outcome.
fn outcome_attributes(c: &ConnectRecord) -> Vec<KeyValue> {
    let mut attrs = Vec::with_capacity(3);
    if let Some(error) = error_type(c.outcome, c.errno) {
        attrs.push(KeyValue::new("error.type", error));
    }
    if let Some(mode) = FailureMode::of(c.outcome) {
        attrs.push(KeyValue::new(
            "connmon.failure_mode",
            failure_mode_str(mode),
        ));
    }
    attrs.push(KeyValue::new(
        "connmon.syn_retransmits",
        i64::from(c.syn_retransmits),
    ));
    attrs
}

/// Every attribute of a finished `tcp.connect` span.
pub fn connect_attributes(c: &ConnectRecord, role: Role) -> Vec<KeyValue> {
    let mut attrs = start_attributes(c.dst, &c.who, role);
    attrs.extend(outcome_attributes(c));
    attrs
}

/// Attributes of a `connmon.evict` span: the destination and the evidence.
pub fn eviction_attributes(e: &Eviction) -> Vec<KeyValue> {
    let ev = &e.evidence;
    let mut attrs: Vec<KeyValue> = peer(e.dst).into();
    if let Some(netns) = e.netns {
        attrs.push(KeyValue::new("connmon.dst.netns", i64::from(netns)));
    }
    let reason = serde_json::to_value(e.reason)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default();
    attrs.extend([
        KeyValue::new("connmon.role", role_str(e.role)),
        KeyValue::new("connmon.reason", reason),
        KeyValue::new("connmon.evidence.attempts", ev.attempts as i64),
        KeyValue::new("connmon.evidence.refused", ev.refused as i64),
        KeyValue::new("connmon.evidence.timeout", ev.timeout as i64),
        KeyValue::new("connmon.evidence.abandoned", ev.abandoned as i64),
        KeyValue::new("connmon.evidence.reset", ev.reset as i64),
        KeyValue::new("connmon.evidence.unreachable", ev.unreachable as i64),
        KeyValue::new(
            "connmon.evidence.syn_retransmits",
            ev.syn_retransmits as i64,
        ),
        KeyValue::new("connmon.evidence.streak", i64::from(ev.streak)),
        KeyValue::new("connmon.ejection.count", i64::from(e.ejection.count)),
        KeyValue::new(
            "connmon.ejection.duration_ms",
            e.ejection.duration_ms as i64,
        ),
        KeyValue::new("connmon.ejection.until", e.ejection.until.clone()),
    ]);
    if let Some(mode) = e.failure_mode {
        attrs.push(KeyValue::new(
            "connmon.failure_mode",
            failure_mode_str(mode),
        ));
    }
    if let Some(t) = &e.trigger {
        attrs.push(KeyValue::new("connmon.trigger.pid", i64::from(t.pid)));
        attrs.push(KeyValue::new(
            "connmon.trigger.comm",
            t.comm.as_str().into_owned(),
        ));
        attrs.extend(origin_attributes(t.origin.as_deref()));
    }
    if let Some(us) = e.detect_us {
        attrs.push(KeyValue::new("connmon.detect_us", us as i64));
    }
    attrs
}

/// Unix nanoseconds as a `SystemTime` (clamped at the epoch).
pub fn system_time(unix_ns: i128) -> SystemTime {
    UNIX_EPOCH + Duration::from_nanos(u64::try_from(unix_ns.max(0)).unwrap_or(u64::MAX))
}

/// A connect seen retransmitting, waiting for its outcome.
struct Pending {
    span: Span,
    start_ns: u64,
}

/// Identifies one connect attempt: its 4-tuple and the moment of its SYN.
type AttemptKey = (SocketAddr, SocketAddr, u64);

/// A small bounded map: at capacity, an arbitrary other entry makes room.
struct LinkTargets(HashMap<SocketAddr, SpanContext>);

impl LinkTargets {
    fn insert(&mut self, dst: SocketAddr, cx: SpanContext) {
        if self.0.len() >= MAX_LINK_TARGETS
            && !self.0.contains_key(&dst)
            && let Some(victim) = self.0.keys().next().copied()
        {
            self.0.remove(&victim);
        }
        self.0.insert(dst, cx);
    }

    fn get(&self, dst: &SocketAddr) -> Option<SpanContext> {
        self.0.get(dst).cloned()
    }
}

/// Turns bus messages into spans on an SDK tracer.
pub struct ConnectSpans {
    tracer: SdkTracer,
    clock: WallClock,
    success_sample_ratio: f64,
    rng: u64,
    pending: HashMap<AttemptKey, Pending>,
    last_connect: LinkTargets,
    last_eviction: LinkTargets,
}

impl ConnectSpans {
    pub fn new(tracer: SdkTracer, clock: WallClock, success_sample_ratio: f64, seed: u64) -> Self {
        ConnectSpans {
            tracer,
            clock,
            success_sample_ratio,
            rng: seed | 1,
            pending: HashMap::new(),
            last_connect: LinkTargets(HashMap::new()),
            last_eviction: LinkTargets(HashMap::new()),
        }
    }

    fn wall(&self, monotonic_ns: u64) -> SystemTime {
        system_time(self.clock.unix_ns(monotonic_ns))
    }

    /// xorshift64*: uniform in [0, 1).
    fn sample(&mut self) -> bool {
        if self.success_sample_ratio <= 0.0 {
            return false;
        }
        self.rng ^= self.rng >> 12;
        self.rng ^= self.rng << 25;
        self.rng ^= self.rng >> 27;
        let x = self.rng.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 11;
        (x as f64 / (1u64 << 53) as f64) < self.success_sample_ratio
    }

    fn start(
        &self,
        dst: SocketAddr,
        who: &crate::source::event::Attribution,
        role: Role,
        start_ns: u64,
    ) -> Span {
        SpanBuilder::from_name("tcp.connect")
            .with_kind(SpanKind::Client)
            .with_start_time(self.wall(start_ns))
            .with_attributes(start_attributes(dst, who, role))
            .start(&self.tracer)
    }

    /// A SYN retransmission: start the connect's span if needed and add the event.
    pub fn on_syn_retransmit(&mut self, r: &SynRetransmitRecord, role: Role) {
        let key = (r.src, r.dst, r.start_ns);
        if !self.pending.contains_key(&key) {
            if self.pending.len() >= MAX_PENDING {
                self.evict_oldest_pending();
            }
            let span = self.start(r.dst, &r.who, role, r.start_ns);
            self.last_connect.insert(r.dst, span.span_context().clone());
            self.pending.insert(
                key,
                Pending {
                    span,
                    start_ns: r.start_ns,
                },
            );
        }
        let at = self.wall(r.ktime_ns);
        if let Some(p) = self.pending.get_mut(&key) {
            p.span.add_event_with_timestamp(
                "syn_retransmit",
                at,
                vec![KeyValue::new(
                    "connmon.syn_retransmits",
                    i64::from(r.retransmits),
                )],
            );
        }
    }

    fn evict_oldest_pending(&mut self) {
        let oldest = self
            .pending
            .iter()
            .min_by_key(|(_, p)| p.start_ns)
            .map(|(k, _)| *k);
        if let Some(key) = oldest
            && let Some(mut p) = self.pending.remove(&key)
        {
            p.span.set_status(Status::error(
                "connmon tracked too many pending connects to wait for this outcome",
            ));
            p.span.end();
        }
    }

    /// A connect outcome: end its span (failures, retransmitted, or sampled successes).
    pub fn on_connect(&mut self, c: &ConnectRecord, role: Role) {
        let pending = self.pending.remove(&(c.src, c.dst, c.start_ns));
        let mut span = match pending {
            Some(p) => p.span,
            None if c.outcome.is_failure() || self.sample() => {
                self.start(c.dst, &c.who, role, c.start_ns)
            }
            None => return,
        };
        span.set_attributes(outcome_attributes(c));
        if let Some(error) = error_type(c.outcome, c.errno) {
            span.set_status(Status::error(error));
            self.last_connect.insert(c.dst, span.span_context().clone());
        }
        span.end_with_timestamp(self.wall(c.ktime_ns));
    }

    /// An eviction: a span from its trigger to its emission, linked to the trigger's connect.
    pub fn on_evict(&mut self, e: &Eviction) {
        let now = SystemTime::now();
        let (start, end) = match (&e.trigger, e.detect_us) {
            (Some(t), Some(us)) => {
                let start = self.wall(t.ktime_ns);
                (start, start + Duration::from_micros(us))
            }
            _ => (now, now),
        };
        let mut builder = SpanBuilder::from_name("connmon.evict")
            .with_kind(SpanKind::Internal)
            .with_start_time(start)
            .with_attributes(eviction_attributes(e));
        if e.trigger.is_some()
            && let Some(cx) = self.last_connect.get(&e.dst)
        {
            builder = builder.with_links(vec![Link::with_context(cx)]);
        }
        let mut span = builder.start(&self.tracer);
        self.last_eviction
            .insert(e.dst, span.span_context().clone());
        span.end_with_timestamp(end);
    }

    /// A reinstatement: a span covering the ejection, linked to the eviction's span.
    pub fn on_reinstate(&mut self, r: &Reinstatement, role: Option<Role>) {
        let end = SystemTime::now();
        let start = end
            .checked_sub(Duration::from_millis(r.ejected_ms))
            .unwrap_or(end);
        let mut attrs: Vec<KeyValue> = peer(r.dst).into();
        if let Some(netns) = r.netns {
            attrs.push(KeyValue::new("connmon.dst.netns", i64::from(netns)));
        }
        if let Some(role) = role {
            attrs.push(KeyValue::new("connmon.role", role_str(role)));
        }
        attrs.push(KeyValue::new("connmon.ejected_ms", r.ejected_ms as i64));
        let mut builder = SpanBuilder::from_name("connmon.reinstate")
            .with_kind(SpanKind::Internal)
            .with_start_time(start)
            .with_attributes(attrs);
        if let Some(cx) = self.last_eviction.get(&r.dst) {
            builder = builder.with_links(vec![Link::with_context(cx)]);
        }
        builder.start(&self.tracer).end_with_timestamp(end);
    }

    /// At exit: end the spans still waiting for an outcome, saying so.
    pub fn finish(&mut self) {
        for (_, mut p) in self.pending.drain() {
            p.span
                .set_status(Status::error("connmon stopped before the outcome"));
            p.span.end();
        }
    }

    pub fn pending_len(&self) -> usize {
        self.pending.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::event::{Attribution, Comm, Family};

    fn record(outcome: Outcome, dst: &str, errno: u32) -> ConnectRecord {
        ConnectRecord {
            outcome,
            ktime_ns: 5_000_000,
            start_ns: 1_000_000,
            family: Family::Ipv6,
            src: "10.0.0.1:40000".parse().unwrap(),
            dst: dst.parse().unwrap(),
            who: Attribution {
                pid: 77,
                tgid: 70,
                comm: Comm::from("scraper"),
                cgroup_id: 1234,
                netns: 9,
                netns_owner: crate::source::event::NetnsOwner::Initial,
                cgroup: None,
                trusted: true,
            },
            syn_retransmits: 2,
            errno,
        }
    }

    fn as_map(attrs: &[KeyValue]) -> Vec<(String, String)> {
        attrs
            .iter()
            .map(|kv| (kv.key.as_str().to_owned(), kv.value.to_string()))
            .collect()
    }

    #[test]
    fn error_types_follow_the_outcome_and_errno() {
        assert_eq!(
            error_type(Outcome::Refused, 111),
            Some("connection_refused")
        );
        assert_eq!(error_type(Outcome::Reset, 104), Some("connection_reset"));
        assert_eq!(error_type(Outcome::Timeout, 110), Some("timed_out"));
        assert_eq!(error_type(Outcome::Abandoned, 0), Some("connect_abandoned"));
        assert_eq!(
            error_type(Outcome::Unreachable, 113),
            Some("host_unreachable")
        );
        assert_eq!(
            error_type(Outcome::Unreachable, 101),
            Some("network_unreachable")
        );
        assert_eq!(error_type(Outcome::Established, 0), None);
    }

    #[test]
    fn connect_attributes_are_exactly_the_documented_set() {
        // A v4-mapped destination is reported as IPv4 by the source, so network.type is ipv4.
        let attrs = as_map(&connect_attributes(
            &record(Outcome::Refused, "127.0.0.1:9", 111),
            Role::Proxy,
        ));
        let want: Vec<(String, String)> = [
            ("network.peer.address", "127.0.0.1"),
            ("network.peer.port", "9"),
            ("network.transport", "tcp"),
            ("network.type", "ipv4"),
            ("process.pid", "70"),
            ("process.executable.name", "scraper"),
            ("connmon.cgroup_id", "1234"),
            ("connmon.netns", "9"),
            ("connmon.trusted", "true"),
            ("connmon.role", "proxy"),
            ("error.type", "connection_refused"),
            ("connmon.failure_mode", "reject"),
            ("connmon.syn_retransmits", "2"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        assert_eq!(attrs, want);
        let attrs = as_map(&connect_attributes(
            &record(Outcome::Timeout, "[2001:db8::1]:443", 110),
            Role::Target,
        ));
        assert!(attrs.contains(&("network.type".into(), "ipv6".into())));
        assert!(attrs.contains(&("network.peer.address".into(), "2001:db8::1".into())));
        assert!(attrs.contains(&("connmon.failure_mode".into(), "drop".into())));
        assert!(attrs.contains(&("connmon.role".into(), "target".into())));
        let ok = as_map(&connect_attributes(
            &record(Outcome::Established, "127.0.0.1:80", 0),
            Role::Target,
        ));
        assert!(
            !ok.iter()
                .any(|(k, _)| k == "error.type" || k == "connmon.failure_mode"),
            "{ok:?}"
        );
    }

    #[test]
    fn containers_and_pods_use_the_semantic_convention_names() {
        let id = "ab".repeat(32);
        let mut rec = record(Outcome::Refused, "10.0.0.9:80", 111);
        rec.who.trusted = false;
        rec.who.cgroup = Some(std::sync::Arc::new(CgroupOrigin::from_path(&format!(
            "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod1b2c3d4e_5f60_7182_93a4_b5c6d7e8f901.slice/cri-containerd-{id}.scope"
        ))));
        let attrs = as_map(&connect_attributes(&rec, Role::Proxy));
        let get = |k: &str| {
            attrs
                .iter()
                .find(|(key, _)| key == k)
                .map(|(_, v)| v.clone())
        };
        assert_eq!(get("container.id"), Some(id));
        assert_eq!(
            get("k8s.pod.uid").as_deref(),
            Some("1b2c3d4e-5f60-7182-93a4-b5c6d7e8f901")
        );
        assert!(
            get("connmon.cgroup").is_some_and(|p| p.starts_with("/kubepods.slice/")),
            "{attrs:?}"
        );
        assert_eq!(get("connmon.trusted").as_deref(), Some("false"));
    }

    #[test]
    fn kernel_times_map_to_wall_clock() {
        let clock = WallClock::from_offset_ns(1_700_000_000_000_000_000);
        let t = system_time(clock.unix_ns(1_500));
        assert_eq!(
            t.duration_since(UNIX_EPOCH).unwrap().as_nanos(),
            1_700_000_000_000_001_500
        );
        assert_eq!(system_time(-5), UNIX_EPOCH);
    }
}
