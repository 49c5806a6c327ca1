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

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use runtime_api::Endpoint;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tokio_util::{sync::CancellationToken, task::TaskTracker};

use crate::{
    bus::EventBus,
    config::{Config, ConfigFileError},
    control::Control,
    policy::config::{format_duration, human_duration},
};

/// One `[[haproxy]]` table.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HaproxyConfig {
    /// The runtime API's Unix socket (`stats socket PATH level admin`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub socket: Option<PathBuf>,
    /// Or its TCP address (`stats socket ipv4@127.0.0.1:9999 level admin`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
    /// Backends whose servers connmon manages.
    pub backends: Vec<String>,
    /// How often `show servers state` is re-read.
    #[serde(default = "default_refresh", with = "human_duration")]
    pub refresh: Duration,
    /// Discovered servers become pool members (added and removed as HAProxy's change).
    #[serde(default)]
    pub pool_from_haproxy: bool,
    /// Limit for one runtime-API exchange (connect, command, answer).
    #[serde(default = "default_timeout", with = "human_duration")]
    pub timeout: Duration,
}

fn default_refresh() -> Duration {
    Duration::from_secs(30)
}

fn default_timeout() -> Duration {
    Duration::from_secs(2)
}

impl HaproxyConfig {
    /// Where the runtime API is; the table must have been validated.
    pub fn endpoint(&self, index: usize) -> Result<Endpoint, ConfigFileError> {
        let key = |name: &str| format!("haproxy[{index}].{name}");
        match (&self.socket, &self.address) {
            (Some(path), None) if !path.as_os_str().is_empty() => Ok(Endpoint::Unix(path.clone())),
            (None, Some(address)) => address.parse::<SocketAddr>().map(Endpoint::Tcp).map_err(|_| ConfigFileError::Invalid {
                key: key("address"),
                value: format!("{address:?}"),
                allowed: "must be IP:PORT (e.g. \"127.0.0.1:9999\" or \"[::1]:9999\")".into(),
            }),
            (socket, address) => Err(ConfigFileError::Invalid {
                key: key("socket"),
                value: match (socket, address) {
                    (Some(s), Some(a)) => format!("{:?} with address = {a:?}", s.display().to_string()),
                    (Some(s), None) => format!("{:?}", s.display().to_string()),
                    _ => "(not set)".into(),
                },
                allowed: "set exactly one of `socket` (the path of HAProxy's `stats socket … level admin`) or `address` (IP:PORT)".into(),
            }),
        }
    }

    /// Checks every value of table `index`.
    pub fn validate(&self, index: usize) -> Result<(), ConfigFileError> {
        let key = |name: &str| format!("haproxy[{index}].{name}");
        self.endpoint(index)?;
        if self.backends.is_empty() {
            return Err(ConfigFileError::Invalid {
                key: key("backends"),
                value: "[]".into(),
                allowed: "must name at least one backend".into(),
            });
        }
        if let Some(bad) = self
            .backends
            .iter()
            .find(|b| !runtime_api::is_valid_name(b))
        {
            return Err(ConfigFileError::Invalid {
                key: key("backends"),
                value: format!("{bad:?}"),
                allowed: "a backend name: letters, digits, '-', '_', '.', ':'".into(),
            });
        }
        if self.refresh < Duration::from_secs(1) || self.refresh > Duration::from_secs(3600) {
            return Err(ConfigFileError::Invalid {
                key: key("refresh"),
                value: format_duration(self.refresh),
                allowed: "must be between 1s and 1h".into(),
            });
        }
        if self.timeout < Duration::from_millis(100) || self.timeout > Duration::from_secs(60) {
            return Err(ConfigFileError::Invalid {
                key: key("timeout"),
                value: format_duration(self.timeout),
                allowed: "must be between 100ms and 60s".into(),
            });
        }
        Ok(())
    }
}

/// Checks every `[[haproxy]]` table.
pub fn validate(tables: &[HaproxyConfig]) -> Result<(), ConfigFileError> {
    tables
        .iter()
        .enumerate()
        .try_for_each(|(i, t)| t.validate(i))
}

/// Starts one adapter task per `[[haproxy]]` table. Each subscribes to the bus now, so
/// it misses no decision made after the agent starts.
pub fn spawn(
    config: &Config,
    bus: &EventBus,
    control: &mpsc::Sender<Control>,
    shutdown: &CancellationToken,
    tasks: &TaskTracker,
) -> Result<(), ConfigFileError> {
    for (index, table) in config.haproxy.iter().enumerate() {
        table.validate(index)?;
        let task = adapter::Adapter::new(table.clone(), table.endpoint(index)?, control.clone());
        let events = bus.subscribe();
        let shutdown = shutdown.clone();
        tasks.spawn(task.run(events, shutdown));
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

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    fn parse(text: &str) -> Config {
        Config::parse(Path::new("x.toml"), text).unwrap()
    }

    #[test]
    fn tables_parse_with_defaults_and_round_trip() {
        let c = parse(
            "[[haproxy]]\nsocket = \"/run/haproxy/admin.sock\"\nbackends = [\"proxies\"]\npool_from_haproxy = true\n\n[[haproxy]]\naddress = \"127.0.0.1:9999\"\nbackends = [\"a\", \"b\"]\nrefresh = \"5s\"\n",
        );
        c.validate().unwrap();
        assert_eq!(c.haproxy.len(), 2);
        assert_eq!(c.haproxy[0].refresh, Duration::from_secs(30));
        assert_eq!(c.haproxy[0].timeout, Duration::from_secs(2));
        assert!(c.haproxy[0].pool_from_haproxy && !c.haproxy[1].pool_from_haproxy);
        assert_eq!(
            c.haproxy[0].endpoint(0).unwrap(),
            Endpoint::Unix("/run/haproxy/admin.sock".into())
        );
        assert_eq!(
            c.haproxy[1].endpoint(1).unwrap(),
            Endpoint::Tcp("127.0.0.1:9999".parse().unwrap())
        );
        assert_eq!(parse(&c.to_toml()), c);
    }

    #[test]
    fn invalid_tables_name_key_value_and_what_is_allowed() {
        let err = |text: &str| parse(text).validate().unwrap_err().to_string();
        assert_eq!(
            err("[[haproxy]]\nbackends = [\"p\"]\n"),
            "haproxy[0].socket = (not set): set exactly one of `socket` (the path of HAProxy's `stats socket … level admin`) or `address` (IP:PORT)"
        );
        assert!(
            err("[[haproxy]]\nsocket = \"/s\"\naddress = \"127.0.0.1:1\"\nbackends = [\"p\"]\n")
                .starts_with(
                    "haproxy[0].socket = \"/s\" with address = \"127.0.0.1:1\": set exactly one"
                )
        );
        assert_eq!(
            err("[[haproxy]]\naddress = \"localhost\"\nbackends = [\"p\"]\n"),
            "haproxy[0].address = \"localhost\": must be IP:PORT (e.g. \"127.0.0.1:9999\" or \"[::1]:9999\")"
        );
        assert_eq!(
            err("[[haproxy]]\nsocket = \"/s\"\nbackends = []\n"),
            "haproxy[0].backends = []: must name at least one backend"
        );
        assert_eq!(
            err(
                "[[haproxy]]\nsocket = \"/s\"\nbackends = [\"p\"]\n[[haproxy]]\nsocket = \"/s\"\nbackends = [\"a;shutdown\"]\n"
            ),
            "haproxy[1].backends = \"a;shutdown\": a backend name: letters, digits, '-', '_', '.', ':'"
        );
        assert_eq!(
            err("[[haproxy]]\nsocket = \"/s\"\nbackends = [\"p\"]\nrefresh = \"10ms\"\n"),
            "haproxy[0].refresh = 10ms: must be between 1s and 1h"
        );
        assert_eq!(
            err("[[haproxy]]\nsocket = \"/s\"\nbackends = [\"p\"]\ntimeout = \"5m\"\n"),
            "haproxy[0].timeout = 5m: must be between 100ms and 60s"
        );
        let unknown = Config::parse(
            Path::new("x.toml"),
            "[[haproxy]]\nsocket = \"/s\"\nbackend = [\"p\"]\n",
        )
        .unwrap_err()
        .to_string();
        assert!(unknown.contains("backend"), "{unknown}");
    }
}
