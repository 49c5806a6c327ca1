//! The `[[haproxy]]` tables: the HAProxy runtime APIs that the adapter
//! (`sinks::haproxy`) drives with evict/reinstate decisions.
//!
//! ```toml
//! [[haproxy]]
//! socket = "/run/haproxy/admin.sock"   # a `stats socket … level admin` (or address = "127.0.0.1:9999")
//! backends = ["proxies"]
//! refresh = "30s"                       # how often servers are re-discovered
//! pool_from_haproxy = true              # discovered servers become pool members
//! timeout = "2s"                        # per runtime-API command
//! ```

use std::{fmt, net::SocketAddr, path::PathBuf, time::Duration};

use serde::{Deserialize, Serialize};

use crate::{
    invalid::Invalid,
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
    pub fn endpoint(&self, index: usize) -> Result<Endpoint, Invalid> {
        let key = |name: &str| format!("haproxy[{index}].{name}");
        match (&self.socket, &self.address) {
            (Some(path), None) if !path.as_os_str().is_empty() => Ok(Endpoint::Unix(path.clone())),
            (None, Some(address)) => address.parse::<SocketAddr>().map(Endpoint::Tcp).map_err(|_| Invalid {
                key: key("address"),
                value: format!("{address:?}"),
                allowed: "must be IP:PORT (e.g. \"127.0.0.1:9999\" or \"[::1]:9999\")".into(),
            }),
            (socket, address) => Err(Invalid {
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
    pub fn validate(&self, index: usize) -> Result<(), Invalid> {
        let key = |name: &str| format!("haproxy[{index}].{name}");
        self.endpoint(index)?;
        if self.backends.is_empty() {
            return Err(Invalid {
                key: key("backends"),
                value: "[]".into(),
                allowed: "must name at least one backend".into(),
            });
        }
        if let Some(bad) = self.backends.iter().find(|b| !is_valid_name(b)) {
            return Err(Invalid {
                key: key("backends"),
                value: format!("{bad:?}"),
                allowed: "a backend name: letters, digits, '-', '_', '.', ':'".into(),
            });
        }
        if self.refresh < Duration::from_secs(1) || self.refresh > Duration::from_secs(3600) {
            return Err(Invalid {
                key: key("refresh"),
                value: format_duration(self.refresh),
                allowed: "must be between 1s and 1h".into(),
            });
        }
        if self.timeout < Duration::from_millis(100) || self.timeout > Duration::from_secs(60) {
            return Err(Invalid {
                key: key("timeout"),
                value: format_duration(self.timeout),
                allowed: "must be between 100ms and 60s".into(),
            });
        }
        Ok(())
    }
}

/// Checks every `[[haproxy]]` table.
pub fn validate(tables: &[HaproxyConfig]) -> Result<(), Invalid> {
    tables
        .iter()
        .enumerate()
        .try_for_each(|(i, t)| t.validate(i))
}

/// Where the runtime API listens.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Endpoint {
    Unix(PathBuf),
    Tcp(SocketAddr),
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Endpoint::Unix(path) => write!(f, "{}", path.display()),
            Endpoint::Tcp(addr) => write!(f, "tcp://{addr}"),
        }
    }
}

/// Whether `name` can be put on a runtime-API command line as a backend or server name:
/// HAProxy's own name characters (letters, digits, `-`, `_`, `.`, `:`), so a name can
/// never split or inject a command (`;`, spaces, newlines).
pub fn is_valid_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'))
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::config::Config;

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
