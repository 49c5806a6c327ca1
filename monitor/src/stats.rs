//! The agent's own counters, reported as periodic `{"type":"stats",...}` lines and at exit.
//! Nothing is dropped without being counted here.

pub(crate) mod consumers;
pub(crate) mod fleet;

use serde::Serialize;

use crate::source::event::{KernelEvent, Outcome, OutcomeCounts};

/// Running totals kept by the reader.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Counters {
    pub events: u64,
    pub outcomes: [u64; Outcome::ALL.len()],
    pub syn_retransmits: u64,
    pub decode_errors: u64,
}

impl Counters {
    pub(crate) fn outcome_counts(&self) -> OutcomeCounts {
        OutcomeCounts::from_fn(|o| self.outcomes[o as usize])
    }

    pub(crate) fn count(&mut self, event: &KernelEvent) {
        self.events += 1;
        match event {
            KernelEvent::Connect(c) => self.outcomes[c.outcome as usize] += 1,
            KernelEvent::SynRetransmit(_) => self.syn_retransmits += 1,
        }
    }
}

/// One `stats` line.
#[derive(Clone, Debug, Serialize, schemars::JsonSchema)]
pub struct Stats {
    pub r#type: &'static str,
    #[schemars(extend("format" = "date-time"))]
    pub ts: String,
    pub uptime_s: u64,
    /// Records decoded from the ring buffer.
    pub events: u64,
    pub outcomes: OutcomeCounts,
    pub syn_retransmits: u64,
    /// Records the kernel could not write because the ring buffer was full.
    pub lost_events: u64,
    /// Outcomes of connects that started before the agent (not attributed, not reported).
    pub untracked: u64,
    /// Connects whose socket storage the kernel could not allocate: their outcome is
    /// lost (attribution lost, counted).
    pub storage_failed: u64,
    /// Connects whose state went to socket-local storage because the kernel's slot table
    /// and connects hash were full (slower per connect; not lost).
    pub overflow: u64,
    /// Records that failed to decode.
    pub decode_errors: u64,
    /// The agent's own handshake checks (not in `outcomes`); absent when checks are off.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub probes: Option<crate::policy::checks::ProbeCounts>,
    /// The fleet link's counters (`[fleet]`); absent when the fleet is off.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fleet: Option<fleet::FleetStats>,
    /// Each running consumer's delivery counters (socket, otlp, haproxy), by name;
    /// absent when none runs.
    #[serde(skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub consumers: std::collections::BTreeMap<&'static str, consumers::ConsumerStats>,
    /// True on the last line, written at exit.
    #[serde(rename = "final")]
    pub is_final: bool,
}

impl Stats {
    pub fn to_text(&self) -> String {
        let o = &self.outcomes;
        let probes = self.probes.map_or_else(String::new, |p| {
            format!(
                " probes_sent={} probes_established={} probes_failed={} probes_lost={} probes_dropped={}",
                p.sent, p.established, p.failed, p.lost, p.dropped
            )
        });
        let fleet = self.fleet.map_or_else(String::new, |f| f.to_text());
        let consumers: String = self
            .consumers
            .iter()
            .map(|(name, c)| {
                format!(
                    " {name}_sent={} {name}_dropped={} {name}_failed={}",
                    c.sent, c.dropped, c.failed
                )
            })
            .collect();
        format!(
            "stats{}: events={} established={} refused={} reset={} timeout={} abandoned={} unreachable={} syn_retransmits={} lost_events={} untracked={} storage_failed={} overflow={} decode_errors={}{probes}{fleet}{consumers}",
            if self.is_final { " (final)" } else { "" },
            self.events,
            o.established,
            o.refused,
            o.reset,
            o.timeout,
            o.abandoned,
            o.unreachable,
            self.syn_retransmits,
            self.lost_events,
            self.untracked,
            self.storage_failed,
            self.overflow,
            self.decode_errors
        )
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use tokio::sync::mpsc;
    use tokio_util::{sync::CancellationToken, task::TaskTracker};

    use super::*;
    use crate::{
        bus::EventBus,
        clock::WallClock,
        sinks::{Gauges, SinkContext},
        stats::consumers::{ConsumerStats, Consumers},
    };

    fn line(consumers: std::collections::BTreeMap<&'static str, ConsumerStats>) -> Stats {
        Stats {
            r#type: "stats",
            ts: "2026-01-01T00:00:00.000000000Z".into(),
            uptime_s: 1,
            events: 0,
            outcomes: OutcomeCounts::default(),
            syn_retransmits: 0,
            lost_events: 0,
            untracked: 0,
            storage_failed: 0,
            overflow: 0,
            decode_errors: 0,
            probes: None,
            fleet: None,
            consumers,
            is_final: false,
        }
    }

    /// What a consumer counts through its context reaches the `stats` line, in JSON and
    /// as text; with no consumer running the key is absent.
    #[test]
    fn consumer_counters_taken_from_the_context_reach_the_stats_line() {
        let clock = WallClock::from_offset_ns(0);
        let consumers = Arc::new(Consumers::default());
        let cx = SinkContext {
            bus: EventBus::new(16, clock),
            control: mpsc::channel(1).0,
            shutdown: CancellationToken::new(),
            tasks: TaskTracker::new(),
            clock,
            gauges: Arc::new(Gauges::default()),
            fleet: None,
            consumers: Arc::clone(&consumers),
        };
        let none = serde_json::to_value(line(consumers.snapshot())).expect("serializes");
        assert!(
            none.get("consumers").is_none(),
            "no consumer, no key: {none}"
        );

        let socket = cx.consumer_counters("socket");
        let haproxy = cx.consumer_counters("haproxy");
        socket.sent(5);
        socket.dropped(2);
        haproxy.sent(1);
        haproxy.failed(1);
        let stats = line(consumers.snapshot());
        let json = serde_json::to_value(&stats).expect("serializes");
        assert_eq!(
            json["consumers"],
            serde_json::json!({
                "haproxy": {"sent": 1, "dropped": 0, "failed": 1},
                "socket": {"sent": 5, "dropped": 2, "failed": 0},
            }),
            "{json}"
        );
        let text = stats.to_text();
        assert!(
            text.ends_with(
                " haproxy_sent=1 haproxy_dropped=0 haproxy_failed=1 socket_sent=5 socket_dropped=2 socket_failed=0"
            ),
            "{text}"
        );
    }
}
