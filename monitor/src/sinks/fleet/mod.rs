//! The fleet: one verdict for the whole scraping fleet, over NATS JetStream.
//!
//! ```toml
//! [fleet]
//! servers = ["nats://127.0.0.1:4222"]   # empty = fleet off (default)
//! cluster = "default"                   # subjects and the KV bucket derive from it
//! host_id = ""                          # default: the hostname
//! mode = "share"                        # "share" | "quorum" | "observe"
//! quorum = 2                            # quorum mode: hosts that must agree within `window`
//! window = "30s"
//! # creds_file / nkey_file / user + password / token; tls_ca, tls_cert, tls_key
//! ```
//!
//! Every agent publishes its own evict and reinstate decisions on
//! `connmon.<cluster>.verdict.<host>` and keeps its ejections in force in the KV bucket
//! `connmon_<cluster>` (history 1, max age = `policy.max_ejection`, `max_bytes`), so an
//! agent that starts or reconnects reads the fleet's current ejections from it. Other
//! hosts' verdicts go through the [`view::FleetView`] (mode, quorum, outage and trust
//! guards) and, when it says so, into the pipeline as a [`Control::Fleet`] command:
//! ejected with `"reason":"fleet"`, `"origin":"<host>"`, so socket subscribers and
//! HAProxy see them like local decisions. Fleet decisions are never re-published.
//!
//! NATS never holds the pipeline: decisions reach the link through the bus (a lagging
//! link is told how many it missed), wait in a bounded queue (full: the newest is
//! dropped and counted), and are dropped and counted while NATS is unreachable; on
//! every (re)connect the link re-puts this host's ejections and re-reads the bucket. A
//! failed KV put is counted and retried (the newest operation per key wins). Warnings
//! are rate-limited. The counters (`crate::stats::fleet`) reach the `stats` line and
//! the Prometheus endpoint. Message format: docs/fleet.md.

/// The `[fleet]` section lives with the other sections (config never imports a consumer).
pub use crate::config::fleet as config;
mod link;
pub mod message;
pub mod prometheus;
pub mod view;

pub use config::{FleetConfig, FleetMode};
pub(crate) use link::read_bucket;

use crate::config::Config;

/// Starts the fleet link when `[fleet] servers` names any. It never fails the start:
/// an unreachable or refusing server is a warning and the agent works locally.
pub fn start(config: &Config, cx: &super::SinkContext) -> Result<(), crate::invalid::Invalid> {
    if !config.fleet.enabled() {
        return Ok(());
    }
    let counters = cx.fleet.clone().unwrap_or_default();
    let link = link::Link::new(config, cx.control.clone(), counters);
    let events = cx.bus.subscribe();
    cx.tasks
        .spawn(link.run(events, cx.shutdown.clone(), cx.tasks.clone()));
    Ok(())
}
