//! Every consumer's delivery counters, one shape for all: what it delivered (`sent`),
//! lost without trying (`dropped`: it fell behind the bus, a queue was full, the agent
//! stopped) and failed to deliver (`failed`). A consumer takes its counters from
//! [`crate::sinks::SinkContext::consumer_counters`] when it starts; the pipeline reads
//! them all into the `stats` line (`"consumers":{"socket":{...},...}`).

use std::{
    collections::BTreeMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
};

use serde::Serialize;

/// One consumer's counters, written by the consumer.
#[derive(Debug, Default)]
pub struct ConsumerCounters {
    sent: AtomicU64,
    dropped: AtomicU64,
    failed: AtomicU64,
}

impl ConsumerCounters {
    pub fn sent(&self, n: u64) {
        self.sent.fetch_add(n, Ordering::Relaxed);
    }

    pub fn dropped(&self, n: u64) {
        self.dropped.fetch_add(n, Ordering::Relaxed);
    }

    pub fn failed(&self, n: u64) {
        self.failed.fetch_add(n, Ordering::Relaxed);
    }

    pub fn snapshot(&self) -> ConsumerStats {
        ConsumerStats {
            sent: self.sent.load(Ordering::Relaxed),
            dropped: self.dropped.load(Ordering::Relaxed),
            failed: self.failed.load(Ordering::Relaxed),
        }
    }
}

/// One consumer in the `stats` line. What an item is depends on the consumer: an event
/// line (socket), a span or a metrics export (OTLP), a server state change (HAProxy).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, schemars::JsonSchema)]
pub struct ConsumerStats {
    /// Items delivered.
    pub sent: u64,
    /// Items lost without a delivery attempt (the consumer fell behind the bus, its
    /// queue was full, the agent stopped).
    pub dropped: u64,
    /// Items whose delivery failed (given up after retries, where the consumer retries).
    pub failed: u64,
}

/// The consumers that started, by name.
#[derive(Debug, Default)]
pub struct Consumers {
    list: Mutex<Vec<(&'static str, Arc<ConsumerCounters>)>>,
}

impl Consumers {
    /// Lists `counters` under `name` in the `stats` line.
    pub fn register(&self, name: &'static str, counters: Arc<ConsumerCounters>) {
        if let Ok(mut list) = self.list.lock() {
            list.push((name, counters));
        }
    }

    /// Every registered consumer's totals.
    pub fn snapshot(&self) -> BTreeMap<&'static str, ConsumerStats> {
        let Ok(list) = self.list.lock() else {
            return BTreeMap::new();
        };
        list.iter().map(|(name, c)| (*name, c.snapshot())).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registered_counters_reach_the_snapshot_by_name() {
        let consumers = Consumers::default();
        assert!(consumers.snapshot().is_empty(), "nothing registered");
        let socket = Arc::new(ConsumerCounters::default());
        let otlp = Arc::new(ConsumerCounters::default());
        consumers.register("socket", Arc::clone(&socket));
        consumers.register("otlp", Arc::clone(&otlp));
        socket.sent(3);
        socket.dropped(2);
        otlp.failed(1);
        let snapshot = consumers.snapshot();
        assert_eq!(
            snapshot["socket"],
            ConsumerStats {
                sent: 3,
                dropped: 2,
                failed: 0
            }
        );
        assert_eq!(
            snapshot["otlp"],
            ConsumerStats {
                sent: 0,
                dropped: 0,
                failed: 1
            }
        );
        assert_eq!(
            serde_json::to_value(&snapshot).expect("serializes"),
            serde_json::json!({
                "otlp": {"sent": 0, "dropped": 0, "failed": 1},
                "socket": {"sent": 3, "dropped": 2, "failed": 0},
            })
        );
    }
}
