//! The HAProxy adapter: connmon's evict/reinstate decisions drive HAProxy server states
//! through its runtime API, so an HAProxy in front of a proxy pool stops sending traffic
//! to a dead node the moment the kernel shows it dead — no code on the user's side.
//!
//! ```toml
//! [[haproxy]]
//! socket = "/run/haproxy/admin.sock"   # a `stats socket … level admin` (or address = "127.0.0.1:9999")
//! backends = ["proxies"]
//! refresh = "30s"                       # how often servers are re-discovered
//! pool_from_haproxy = true              # discovered servers become pool members
//! timeout = "2s"                        # per runtime-API command
//! ```
//!
//! Each `[[haproxy]]` table runs one [`adapter`] task on the agent's task tracker: it
//! reads the event bus, maps an evicted `address:port` to the `backend/server`s
//! `show servers state` lists for it, and sends `set server B/S state maint` (evict) or
//! `state ready` (reinstate). Failures are retried with backoff from a bounded queue
//! ([`pending`]); the pipeline never waits for HAProxy.

pub mod adapter;
pub mod pending;
pub mod runtime_api;
pub mod servers_state;

use serde::Serialize;

use crate::{
    config::{Invalid, haproxy::HaproxyConfig},
    sinks::SinkContext,
};

/// Starts one adapter task per `[[haproxy]]` table. Each subscribes to the bus now, so
/// it misses no decision made after the agent starts.
pub fn start(tables: &[HaproxyConfig], cx: &SinkContext) -> Result<(), Invalid> {
    let delivery = (!tables.is_empty()).then(|| cx.consumer_counters("haproxy"));
    for (index, table) in tables.iter().enumerate() {
        let delivery = delivery.clone().unwrap_or_default();
        let endpoint = table.endpoint(index)?;
        let task = adapter::Adapter::new(table.clone(), endpoint, cx.control.clone(), delivery);
        cx.tasks
            .spawn(task.run(cx.bus.subscribe(), cx.shutdown.clone()));
    }
    Ok(())
}

/// What one adapter did, logged at exit.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct AdapterCounters {
    /// State changes HAProxy accepted (one per destination, whatever its server count).
    pub applied: u64,
    /// Actions given up after every retry.
    pub failed: u64,
    /// Failed attempts that were scheduled again.
    pub retried: u64,
    /// Bus messages missed because the adapter fell behind.
    pub lagged: u64,
    /// Re-applications of the policy's ejections from a snapshot (start, after a lag).
    pub resyncs: u64,
    /// Decisions for destinations that are no server of the configured backends.
    pub not_haproxy: u64,
    /// Decisions dropped because the pending queue was full.
    pub dropped: u64,
    /// Successful and failed `show servers state` rounds.
    pub discoveries: u64,
    pub discovery_failures: u64,
}
