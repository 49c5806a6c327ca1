//! connmon.toml: one file for the agent and the policy, overridden by flags.
//!
//! ```toml
//! [agent]
//! output = "json"                       # or "text"; default: json unless stdout is a TTY
//! events = "all"          # stdout: all, failures, decisions or none
//! ring_buffer_bytes = 1048576
//! batch_interval = "100ms"
//! stats_interval = "10s"
//! wakeup_every_event = false
//! pool_file = "/etc/connmon/pool.txt"   # one member per line, reloaded on SIGHUP
//! state_file = "/var/lib/connmon/state.json"
//! bus_capacity = 16384                  # per-subscriber backlog before `lagged`
//! socket = "/run/connmon/connmon.sock"  # pool-controller socket (docs/protocol.md)
//! socket_group = "connmon"              # group of the 0660 socket (default: root's)
//! max_clients = 64
//! max_clients_per_uid = 32              # of them at most per uid, root included
//! allowed_uids = [1000]                 # besides root: may send pool/evict/reinstate
//! allowed_gids = []
//! metrics = "127.0.0.1:9464"            # Prometheus /metrics endpoint (default: off)
//! metrics_destinations = 100            # destinations with their own series on /metrics
//!
//! [policy]                              # see policy::config::PolicyConfig
//! consecutive_refused = 1
//! pool = ["198.51.100.0/24:8080"]
//!
//! [checks]                              # see policy::checks::ChecksConfig
//! verify_before_reinstate = true
//! idle_after = "0s"
//! ```
//!
//! Every value is checked once, before anything is loaded ([`Config::validate`] makes
//! the [`ValidConfig`] the agent runs with); an error names the key, the value and what
//! is allowed ([`Invalid`]). This module owns the sections' plain data; the consumers
//! import it, never the reverse.

pub mod fleet;
pub mod haproxy;
pub mod otlp;

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    time::Duration,
};

use serde::{Deserialize, Serialize};

pub use crate::invalid::Invalid;
use crate::{
    policy::{
        PoolEntry,
        checks::ChecksConfig,
        config::{PolicyConfig, human_duration},
    },
    source::kernel::validate_ring_buffer_bytes,
};

/// Where the config file is read from when `--config` is not given (if it exists).
pub const DEFAULT_CONFIG: &str = "/etc/connmon/connmon.toml";
pub const DEFAULT_STATE_FILE: &str = "/var/lib/connmon/state.json";
/// The pool-controller socket when neither `--socket` nor `agent.socket` names one.
pub const DEFAULT_SOCKET: &str = "/run/connmon/connmon.sock";

/// The whole file.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub agent: AgentConfig,
    pub policy: PolicyConfig,
    /// `[checks]`: the agent's own handshake checks (see policy::checks).
    pub checks: ChecksConfig,
    /// `[[haproxy]]` tables: HAProxy runtime APIs driven by evict/reinstate.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub haproxy: Vec<haproxy::HaproxyConfig>,
    /// `[otlp]`: OpenTelemetry export (see [`otlp`]).
    pub otlp: otlp::OtlpConfig,
    /// `[fleet]`: verdicts shared over NATS JetStream (see sinks::fleet); off by default.
    #[serde(skip_serializing_if = "fleet::FleetConfig::is_default")]
    pub fleet: fleet::FleetConfig,
}

/// Which records reach stdout (`--events`, `agent.events`); the socket and OTLP
/// consumers keep their own filters. Stats lines are written whatever this says.
#[derive(
    Clone,
    Copy,
    Debug,
    Default,
    PartialEq,
    Eq,
    clap::ValueEnum,
    serde::Deserialize,
    serde::Serialize,
)]
#[serde(rename_all = "lowercase")]
pub enum EventsFilter {
    /// Every kernel event and every decision.
    #[default]
    All,
    /// Failed connects, resets and SYN retransmits (not routine `established`
    /// outcomes), and decisions.
    Failures,
    /// Policy decisions only.
    Decisions,
    /// Nothing but stats lines.
    None,
}

/// How the agent renders its stdout lines.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum OutputFormat {
    /// One JSON object per line.
    Json,
    /// Aligned columns for a terminal.
    Text,
}

/// A [`Config`] whose every value was checked, made once by [`Config::validate`] (in
/// `main`, from the file and the flags) and handed to the agent, which gives each
/// consumer its own section. Read it as a `Config` (it derefs to one).
#[derive(Clone, Debug)]
pub struct ValidConfig {
    config: Config,
    /// `policy.pool`, parsed.
    pool: Vec<PoolEntry>,
}

impl ValidConfig {
    /// The `policy.pool` entries (the pool file is read by the agent).
    pub fn pool_entries(&self) -> &[PoolEntry] {
        &self.pool
    }
}

impl std::ops::Deref for ValidConfig {
    type Target = Config;

    fn deref(&self) -> &Config {
        &self.config
    }
}

/// The `[agent]` section.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AgentConfig {
    /// None: json when stdout is not a terminal, text otherwise.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub output: Option<OutputFormat>,
    /// Which records reach stdout: all, failures, decisions or none.
    pub events: EventsFilter,
    pub ring_buffer_bytes: u32,
    #[serde(with = "human_duration")]
    pub batch_interval: Duration,
    #[serde(with = "human_duration")]
    pub stats_interval: Duration,
    pub wakeup_every_event: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pool_file: Option<PathBuf>,
    pub state_file: PathBuf,
    /// Messages a bus subscriber (socket client, exporter) may fall behind before it
    /// loses the oldest and is told how many.
    pub bus_capacity: usize,
    /// The pool-controller Unix socket (see `server`).
    pub socket: PathBuf,
    /// Group owning the socket (mode 0660); None: root's group.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub socket_group: Option<String>,
    /// Socket clients served at once; more are refused with an error line.
    pub max_clients: usize,
    /// Socket clients of one uid (root included) served at once: one user's connection
    /// churn cannot take every slot from the others. Above `max_clients` it changes
    /// nothing.
    pub max_clients_per_uid: usize,
    /// Peers (besides root) allowed to send pool/evict/reinstate, by uid or primary gid.
    pub allowed_uids: Vec<u32>,
    pub allowed_gids: Vec<u32>,
    /// The Prometheus endpoint (`/metrics`, see `sinks::prometheus`); None: off.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub metrics: Option<SocketAddr>,
    /// Destinations with their own series on `/metrics`: pool members first, then the
    /// most failing; bounds the endpoint's cardinality.
    pub metrics_destinations: usize,
}

impl Default for AgentConfig {
    fn default() -> Self {
        AgentConfig {
            output: None,
            events: EventsFilter::All,
            ring_buffer_bytes: 1024 * 1024,
            batch_interval: Duration::from_millis(100),
            stats_interval: Duration::from_secs(10),
            wakeup_every_event: false,
            pool_file: None,
            state_file: PathBuf::from(DEFAULT_STATE_FILE),
            bus_capacity: 16_384,
            socket: PathBuf::from(DEFAULT_SOCKET),
            socket_group: None,
            max_clients: 64,
            max_clients_per_uid: 32,
            allowed_uids: Vec::new(),
            allowed_gids: Vec::new(),
            metrics: None,
            metrics_destinations: 100,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigFileError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("config file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error(transparent)]
    Invalid(#[from] Invalid),
}

impl Config {
    /// Parses TOML text (`path` only names the file in errors).
    pub fn parse(path: &Path, text: &str) -> Result<Self, ConfigFileError> {
        toml::from_str(text).map_err(|e| ConfigFileError::Parse {
            path: path.to_path_buf(),
            message: e.to_string().trim_end().to_owned(),
        })
    }

    /// Reads `path`, or the default file if it exists, or the defaults.
    pub fn load(path: Option<&Path>) -> Result<Self, ConfigFileError> {
        let (path, required) = match path {
            Some(p) => (p, true),
            None => (Path::new(DEFAULT_CONFIG), false),
        };
        match std::fs::read_to_string(path) {
            Ok(text) => Self::parse(path, &text),
            Err(e) if !required && e.kind() == std::io::ErrorKind::NotFound => {
                Ok(Config::default())
            }
            Err(source) => Err(ConfigFileError::Read {
                path: path.to_path_buf(),
                source,
            }),
        }
    }

    /// Checks every value, once: the [`ValidConfig`] the agent runs with.
    pub fn validate(&self) -> Result<ValidConfig, Invalid> {
        let a = &self.agent;
        validate_ring_buffer_bytes(a.ring_buffer_bytes).map_err(|allowed| {
            Invalid::new("agent.ring_buffer_bytes", a.ring_buffer_bytes, allowed)
        })?;
        if a.batch_interval.is_zero() || a.batch_interval > Duration::from_secs(10) {
            return Err(Invalid::new(
                "agent.batch_interval",
                crate::policy::config::format_duration(a.batch_interval),
                "must be between 1ms and 10s",
            ));
        }
        if a.bus_capacity == 0 || a.bus_capacity > 1 << 20 {
            return Err(Invalid::new(
                "agent.bus_capacity",
                a.bus_capacity,
                "must be between 1 and 1048576",
            ));
        }
        validate_socket(a)?;
        if a.metrics_destinations > 10_000 {
            return Err(Invalid::new(
                "agent.metrics_destinations",
                a.metrics_destinations,
                "must be between 0 and 10000",
            ));
        }
        let pool = self.policy.check()?;
        self.checks.validate()?;
        haproxy::validate(&self.haproxy)?;
        self.otlp.validate()?;
        self.fleet.validate()?;
        Ok(ValidConfig {
            config: self.clone(),
            pool,
        })
    }

    /// The effective configuration as TOML (`connmon run --print-config`).
    pub fn to_toml(&self) -> String {
        toml::to_string(self).unwrap_or_else(|e| format!("# cannot render configuration: {e}\n"))
    }
}

/// The socket keys: an absolute path short enough for `sun_path`, a sane client cap,
/// a plausible group name.
fn validate_socket(a: &AgentConfig) -> Result<(), Invalid> {
    let invalid = |key: &str, value: String, allowed: &str| Invalid::new(key, value, allowed);
    let path = a.socket.as_os_str();
    // sun_path holds 107 bytes; the socket is bound as `.NAME.new` before its rename.
    if !a.socket.is_absolute() || path.len() > 100 {
        return Err(invalid(
            "agent.socket",
            format!("{:?}", a.socket.display().to_string()),
            "must be an absolute path of at most 100 bytes",
        ));
    }
    if a.max_clients == 0 || a.max_clients > 4096 {
        return Err(invalid(
            "agent.max_clients",
            a.max_clients.to_string(),
            "must be between 1 and 4096",
        ));
    }
    if a.max_clients_per_uid == 0 || a.max_clients_per_uid > 4096 {
        return Err(invalid(
            "agent.max_clients_per_uid",
            a.max_clients_per_uid.to_string(),
            "must be between 1 and 4096",
        ));
    }
    if let Some(group) = a
        .socket_group
        .as_ref()
        .filter(|g| g.is_empty() || g.contains(['/', ':', '\n', '\0']))
    {
        return Err(invalid(
            "agent.socket_group",
            format!("{group:?}"),
            "must be a group name",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A configuration that parses.
    fn parsed(text: &str) -> Config {
        Config::parse(Path::new("x"), text).expect("parses")
    }

    /// The error a configuration that parses but does not validate gives.
    fn rejected(text: &str) -> String {
        parsed(text).validate().expect_err("invalid").to_string()
    }

    #[test]
    fn empty_file_is_the_defaults_and_round_trips() {
        let c = parsed("");
        assert_eq!(c, Config::default());
        c.validate().unwrap();
        let again = parsed(&c.to_toml());
        assert_eq!(again, c);
    }

    #[test]
    fn sections_override_defaults() {
        let c = parsed(
            "[agent]\noutput = \"text\"\nring_buffer_bytes = 2097152\nstate_file = \"/tmp/s.json\"\n[policy]\nbase_ejection = \"1s\"\npool = [\"127.0.0.1:8080\"]\n",
        );
        assert_eq!(c.agent.output, Some(OutputFormat::Text));
        assert_eq!(c.agent.ring_buffer_bytes, 2 << 20);
        assert_eq!(c.policy.base_ejection, Duration::from_secs(1));
        assert_eq!(c.agent.stats_interval, Duration::from_secs(10));
        c.validate().unwrap();
    }

    #[test]
    fn unknown_keys_name_the_key() {
        let err = Config::parse(
            Path::new("/etc/c.toml"),
            "[agent]\nring_bufer_bytes = 4096\n",
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.starts_with("config file /etc/c.toml:") && err.contains("ring_bufer_bytes"),
            "{err}"
        );
    }

    #[test]
    fn invalid_values_name_key_value_and_what_is_allowed() {
        assert_eq!(
            rejected("[agent]\nring_buffer_bytes = 5000\n"),
            "agent.ring_buffer_bytes = 5000: ring buffer size 5000 must be a power of two and at least 4096 bytes (e.g. 262144)"
        );
        assert_eq!(
            rejected("[policy]\nfailure_ratio = 1.5\n"),
            "policy.failure_ratio = 1.5: must be between 0 and 1 (greater than 0)"
        );
        let c = parsed("[policy]\npool = [\"not-an-address\"]\n");
        assert!(
            c.validate()
                .unwrap_err()
                .to_string()
                .starts_with("policy.pool[0] = \"not-an-address\"")
        );
    }

    #[test]
    fn checks_section_parses_and_errors_name_the_checks_key() {
        let c = parsed("[checks]\nidle_after = \"30s\"\nmax_per_second = 10\n");
        assert_eq!(c.checks.idle_after, Duration::from_secs(30));
        assert!(c.checks.verify_before_reinstate, "default on");
        c.validate().unwrap();
        assert_eq!(
            rejected("[checks]\nmax_in_flight = 0\n"),
            "checks.max_in_flight = 0: must be between 1 and 65536"
        );
        let err = Config::parse(Path::new("x"), "[checks]\nforced_off = true\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("unknown field"), "not a file key: {err}");
    }

    #[test]
    fn socket_keys_parse_and_are_checked() {
        let c = parsed(
            "[agent]\nsocket = \"/tmp/c.sock\"\nsocket_group = \"connmon\"\nmax_clients = 8\nallowed_uids = [1000]\nallowed_gids = [27]\n",
        );
        assert_eq!(c.agent.socket, PathBuf::from("/tmp/c.sock"));
        assert_eq!(c.agent.socket_group.as_deref(), Some("connmon"));
        assert_eq!(
            (
                c.agent.max_clients,
                c.agent.allowed_uids.as_slice(),
                c.agent.allowed_gids.as_slice()
            ),
            (8, &[1000][..], &[27][..])
        );
        c.validate().unwrap();
        assert_eq!(
            Config::default().agent.socket,
            PathBuf::from(DEFAULT_SOCKET)
        );
        assert_eq!(
            rejected("[agent]\nsocket = \"relative.sock\"\n"),
            "agent.socket = \"relative.sock\": must be an absolute path of at most 100 bytes"
        );
        assert_eq!(
            rejected("[agent]\nmax_clients = 0\n"),
            "agent.max_clients = 0: must be between 1 and 4096"
        );
        let c = parsed("[agent]\nmax_clients_per_uid = 0\n");
        assert_eq!(
            c.validate().unwrap_err().to_string(),
            "agent.max_clients_per_uid = 0: must be between 1 and 4096"
        );
        assert_eq!(Config::default().agent.max_clients_per_uid, 32);
    }

    #[test]
    fn a_missing_explicit_file_is_an_error_but_a_missing_default_is_not() {
        let err = Config::load(Some(Path::new("/nonexistent/connmon.toml")))
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("cannot read config file /nonexistent/connmon.toml"),
            "{err}"
        );
    }
}
