//! The agent's own counters, reported as periodic `{"type":"stats",...}` lines and at exit.
//! Nothing is dropped without being counted here.

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
    /// Records that failed to decode.
    pub decode_errors: u64,
    /// The agent's own handshake checks (not in `outcomes`); absent when checks are off.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub probes: Option<crate::policy::checks::ProbeCounts>,
    /// The fleet link's counters (`[fleet]`); absent when the fleet is off.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fleet: Option<fleet::FleetStats>,
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
        format!(
            "stats{}: events={} established={} refused={} reset={} timeout={} abandoned={} unreachable={} syn_retransmits={} lost_events={} untracked={} storage_failed={} decode_errors={}{probes}{fleet}",
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
            self.decode_errors
        )
    }
}
