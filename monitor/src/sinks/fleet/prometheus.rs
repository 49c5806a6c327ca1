//! The fleet link's counters on the Prometheus endpoint (`agent.metrics`), read from
//! the shared [`FleetCounters`] at scrape time (nothing is counted twice):
//!
//! | metric | labels |
//! |---|---|
//! | `connmon_fleet_verdicts_published_total` | — |
//! | `connmon_fleet_messages_received_total` | — |
//! | `connmon_fleet_verdicts_applied_total` | — |
//! | `connmon_fleet_verdicts_lifted_total` | — |
//! | `connmon_fleet_verdicts_guarded_total` | — |
//! | `connmon_fleet_verdicts_ignored_total` | `reason` (untrusted, local_outage, quorum_pending, echo, expired, already_ejected, observe, full) |
//! | `connmon_fleet_verdicts_dropped_total` | `reason` (queue_full, unreachable, lagged) |
//! | `connmon_fleet_messages_invalid_total` | — |
//! | `connmon_fleet_kv_put_failures_total` | — |
//! | `connmon_fleet_kv_put_retries_total` | — |
//! | `connmon_fleet_reconnects_total` | — |
//! | `connmon_fleet_resyncs_total` | — |

use std::sync::Arc;

use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeMetric as _},
    metrics::{MetricType, counter::ConstCounter},
};

use crate::stats::fleet::{DroppedReason, FleetCounters, IgnoredReason};

/// Registered by the Prometheus endpoint when `[fleet]` is on.
#[derive(Debug)]
pub struct FleetCollector(pub Arc<FleetCounters>);

impl Collector for FleetCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let s = self.0.snapshot();
        let plain: [(&str, &str, u64); 10] = [
            (
                "fleet_verdicts_published",
                "Own verdicts (evict, reinstate) handed to NATS",
                s.published,
            ),
            (
                "fleet_messages_received",
                "Valid messages of other hosts (evict, reinstate, heartbeat)",
                s.received,
            ),
            (
                "fleet_verdicts_applied",
                "Other hosts' evicts that ejected a destination here",
                s.applied,
            ),
            (
                "fleet_verdicts_lifted",
                "Fleet ejections lifted here by the fleet",
                s.lifted,
            ),
            (
                "fleet_verdicts_guarded",
                "Other hosts' evicts withheld by max_ejection_percent",
                s.guarded,
            ),
            (
                "fleet_messages_invalid",
                "Fleet messages that failed to decode",
                s.invalid,
            ),
            (
                "fleet_kv_put_failures",
                "KV puts and deletes that failed or timed out (each is retried)",
                s.kv_put_failures,
            ),
            (
                "fleet_kv_put_retries",
                "KV puts and deletes tried again",
                s.kv_put_retries,
            ),
            (
                "fleet_reconnects",
                "Connections to NATS restored after a loss",
                s.reconnects,
            ),
            ("fleet_resyncs", "KV bucket read-backs", s.resyncs),
        ];
        for (name, help, value) in plain {
            let family = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
            ConstCounter::new(value).encode(family)?;
        }
        let ignored = [
            s.ignored.untrusted,
            s.ignored.local_outage,
            s.ignored.quorum_pending,
            s.ignored.echo,
            s.ignored.expired,
            s.ignored.already_ejected,
            s.ignored.observe,
            s.ignored.full,
        ];
        let dropped = [
            s.dropped.queue_full,
            s.dropped.unreachable,
            s.dropped.lagged,
        ];
        let ignored = IgnoredReason::ALL
            .map(IgnoredReason::as_str)
            .into_iter()
            .zip(ignored);
        let dropped = DroppedReason::ALL
            .map(DroppedReason::as_str)
            .into_iter()
            .zip(dropped);
        let by_reason = [
            (
                "fleet_verdicts_ignored",
                IGNORED_HELP,
                ignored.collect::<Vec<_>>(),
            ),
            ("fleet_verdicts_dropped", DROPPED_HELP, dropped.collect()),
        ];
        for (name, help, counts) in by_reason {
            let mut family = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
            for (reason, value) in counts {
                ConstCounter::new(value).encode(family.encode_family(&[("reason", reason)])?)?;
            }
        }
        Ok(())
    }
}

const IGNORED_HELP: &str = "Other hosts' verdicts that changed nothing here, by reason";
const DROPPED_HELP: &str = "Own verdicts that never reached NATS, by reason";

#[cfg(test)]
mod tests {
    use prometheus_client::registry::Registry;

    use super::*;

    #[test]
    fn the_counters_are_served_with_prometheus_names() {
        let counters = Arc::new(FleetCounters::default());
        counters.published();
        counters.ignored(IgnoredReason::QuorumPending);
        counters.dropped(DroppedReason::QueueFull, 2);
        counters.kv_put_failed();
        let mut registry = Registry::with_prefix("connmon");
        registry.register_collector(Box::new(FleetCollector(Arc::clone(&counters))));
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        for line in [
            "connmon_fleet_verdicts_published_total 1",
            "connmon_fleet_verdicts_ignored_total{reason=\"quorum_pending\"} 1",
            "connmon_fleet_verdicts_ignored_total{reason=\"echo\"} 0",
            "connmon_fleet_verdicts_dropped_total{reason=\"queue_full\"} 2",
            "connmon_fleet_kv_put_failures_total 1",
            "connmon_fleet_reconnects_total 0",
        ] {
            assert!(text.contains(line), "missing {line:?} in:\n{text}");
        }
    }
}
