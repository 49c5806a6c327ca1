//! The event bus: everything the pipeline emits — connect outcomes, SYN-retransmit
//! warnings, decisions, stats — published once to every subscriber (Unix-socket clients,
//! the HAProxy adapter, the OTLP exporter).
//!
//! It is a bounded `tokio::sync::broadcast` ring: publishing never waits. A subscriber
//! that falls more than [`EventBus::capacity`] messages behind loses the oldest ones and
//! is told how many (`RecvError::Lagged(n)`); it must count and report that. With no
//! subscribers nothing is allocated.

use std::{
    net::SocketAddr,
    sync::{Arc, OnceLock},
};

use tokio::sync::broadcast;

pub mod json;

use crate::{
    clock::WallClock,
    policy::{Decision, Role},
    source::event::{ConnectRecord, KernelEvent, SynRetransmitRecord},
    stats::Stats,
};

/// What a message is about, for subscription filters (on the wire: its `type`).
#[derive(
    Clone,
    Copy,
    Debug,
    PartialEq,
    Eq,
    Hash,
    serde::Serialize,
    serde::Deserialize,
    schemars::JsonSchema,
    strum::IntoStaticStr,
    strum::EnumString,
)]
#[serde(rename_all = "snake_case")]
#[strum(serialize_all = "snake_case")]
pub enum Topic {
    Connect,
    SynRetransmit,
    Evict,
    Reinstate,
    Suspect,
    Diagnosis,
    Stats,
}

impl Topic {
    /// The `type` field of the JSON line.
    pub fn as_str(self) -> &'static str {
        self.into()
    }

    pub fn parse(s: &str) -> Option<Topic> {
        s.parse().ok()
    }
}

/// The structured content of a message.
#[derive(Clone, Debug)]
pub enum Payload {
    Connect(ConnectRecord),
    SynRetransmit(SynRetransmitRecord),
    /// Stamped (`ts`, `detect_us` filled).
    Decision(Decision),
    Stats(Stats),
}

/// One published message: the structured payload plus its JSON line, rendered on first
/// use by whichever subscriber needs it and shared by all.
#[derive(Debug)]
pub struct Published {
    pub topic: Topic,
    /// Role of the destination in the pool (None for stats and destination-less diagnoses).
    pub role: Option<Role>,
    pub dst: Option<SocketAddr>,
    pub payload: Payload,
    /// A kernel event of the agent's own handshake check (`"probe":true`).
    pub probe: bool,
    clock: WallClock,
    json: OnceLock<Arc<str>>,
}

impl Published {
    /// The JSON object, exactly as `connmon run` prints it (no trailing newline).
    pub fn json(&self) -> Arc<str> {
        Arc::clone(self.json.get_or_init(|| {
            let mut buf = Vec::with_capacity(512);
            match &self.payload {
                Payload::Connect(c) => json::connect(
                    &mut buf,
                    c,
                    self.role.unwrap_or(Role::Target),
                    self.probe,
                    &self.clock,
                ),
                Payload::SynRetransmit(r) => json::syn_retransmit(
                    &mut buf,
                    r,
                    self.role.unwrap_or(Role::Target),
                    self.probe,
                    &self.clock,
                ),
                Payload::Decision(d) => json::value(&mut buf, d),
                Payload::Stats(s) => json::value(&mut buf, s),
            }
            String::from_utf8_lossy(&buf).into()
        }))
    }
}

/// The publishing side, owned by the pipeline.
#[derive(Clone, Debug)]
pub struct EventBus {
    tx: broadcast::Sender<Arc<Published>>,
    capacity: usize,
    clock: WallClock,
}

impl EventBus {
    pub fn new(capacity: usize, clock: WallClock) -> Self {
        let (tx, _) = broadcast::channel(capacity.max(1));
        EventBus {
            tx,
            capacity: capacity.max(1),
            clock,
        }
    }

    /// How many messages a subscriber may fall behind before it loses some.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Arc<Published>> {
        self.tx.subscribe()
    }

    pub fn has_subscribers(&self) -> bool {
        self.tx.receiver_count() > 0
    }

    fn publish(&self, topic: Topic, role: Option<Role>, dst: Option<SocketAddr>, payload: Payload) {
        self.publish_as(topic, role, dst, payload, false);
    }

    fn publish_as(
        &self,
        topic: Topic,
        role: Option<Role>,
        dst: Option<SocketAddr>,
        payload: Payload,
        probe: bool,
    ) {
        if !self.has_subscribers() {
            return;
        }
        let msg = Published {
            topic,
            role,
            dst,
            payload,
            probe,
            clock: self.clock,
            json: OnceLock::new(),
        };
        // Err only means every subscriber left in the meantime.
        let _ = self.tx.send(Arc::new(msg));
    }

    pub fn event(&self, event: &KernelEvent, role: Role) {
        self.kernel_event(event, role, false);
    }

    /// A kernel event of the agent's own probe: published with `"probe":true`.
    pub fn probe_event(&self, event: &KernelEvent, role: Role) {
        self.kernel_event(event, role, true);
    }

    fn kernel_event(&self, event: &KernelEvent, role: Role, probe: bool) {
        // Checked before the record is cloned: with no subscriber (the common case) an
        // event costs the bus nothing.
        if !self.has_subscribers() {
            return;
        }
        let (topic, dst, payload) = match event {
            KernelEvent::Connect(c) => (Topic::Connect, c.dst, Payload::Connect(c.clone())),
            KernelEvent::SynRetransmit(r) => (
                Topic::SynRetransmit,
                r.dst,
                Payload::SynRetransmit(r.clone()),
            ),
        };
        self.publish_as(topic, Some(role), Some(dst), payload, probe);
    }

    /// A stamped decision; `role` is the destination's role, if it has one.
    pub fn decision(&self, decision: &Decision, role: Option<Role>) {
        let topic = match decision {
            Decision::Evict(_) => Topic::Evict,
            Decision::Reinstate(_) => Topic::Reinstate,
            Decision::Suspect(_) => Topic::Suspect,
            Decision::Diagnosis(_) => Topic::Diagnosis,
        };
        if self.has_subscribers() {
            self.publish(
                topic,
                role,
                decision.dst(),
                Payload::Decision(decision.clone()),
            );
        }
    }

    pub fn stats(&self, stats: &Stats) {
        if self.has_subscribers() {
            self.publish(Topic::Stats, None, None, Payload::Stats(stats.clone()));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::event::refused_to;

    fn refused() -> KernelEvent {
        refused_to(SocketAddr::from(([127, 0, 0, 1], 9)))
    }

    #[test]
    fn subscribers_get_the_same_json_as_stdout() {
        let clock = WallClock::from_offset_ns(0);
        let bus = EventBus::new(4, clock);
        let mut rx = bus.subscribe();
        bus.event(&refused(), Role::Proxy);
        let msg = rx.try_recv().unwrap();
        assert_eq!(msg.topic, Topic::Connect);
        let mut stdout = Vec::new();
        let KernelEvent::Connect(c) = refused() else {
            unreachable!()
        };
        json::connect(&mut stdout, &c, Role::Proxy, false, &clock);
        assert_eq!(msg.json().as_bytes(), stdout.as_slice());
    }

    #[test]
    fn a_slow_subscriber_learns_how_many_it_missed_and_publishing_never_waits() {
        let bus = EventBus::new(4, WallClock::from_offset_ns(0));
        let mut rx = bus.subscribe();
        for _ in 0..10 {
            bus.event(&refused(), Role::Proxy);
        }
        assert_eq!(
            rx.try_recv().unwrap_err(),
            broadcast::error::TryRecvError::Lagged(6)
        );
        assert!(rx.try_recv().is_ok());
    }

    #[test]
    fn nothing_is_published_without_subscribers() {
        let bus = EventBus::new(4, WallClock::from_offset_ns(0));
        bus.event(&refused(), Role::Proxy);
        let mut rx = bus.subscribe();
        assert!(rx.try_recv().is_err());
    }
}
