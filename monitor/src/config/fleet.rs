//! The `[fleet]` section: which NATS servers carry the fleet's verdicts, how this host
//! is named in them, what it does with the other hosts' verdicts, and how it
//! authenticates. Empty `servers` (the default) turns the fleet off.

use std::{path::PathBuf, time::Duration};

use serde::{Deserialize, Serialize};

use crate::{
    invalid::Invalid,
    policy::config::{format_duration, human_duration},
};

/// What this host does with the other hosts' verdicts.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FleetMode {
    /// Another host's evict is applied here at once (`reason: fleet`, `origin`).
    #[default]
    Share,
    /// A destination is ejected here once `quorum` distinct hosts evicted it within `window`.
    Quorum,
    /// Publish this host's verdicts and show the others'; apply nothing.
    Observe,
}

/// `[fleet]`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FleetConfig {
    /// `nats://host:port` URLs (`tls://` for TLS); empty: the fleet is off.
    pub servers: Vec<String>,
    /// One pool, one fleet: subjects and the KV bucket derive from it.
    pub cluster: String,
    /// This host's name in the fleet; empty: the hostname.
    pub host_id: String,
    pub mode: FleetMode,
    /// `quorum` mode: distinct hosts that must evict a destination within `window`.
    pub quorum: u32,
    #[serde(with = "human_duration")]
    pub window: Duration,
    /// How often this host announces itself (`connmon fleet` lists the hosts).
    #[serde(with = "human_duration")]
    pub heartbeat: Duration,
    /// Verdicts waiting for NATS at most; more are dropped and counted.
    pub queue: usize,
    /// The KV bucket's size bound (current ejections and heartbeats).
    pub max_bytes: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub creds_file: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub nkey_file: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub password: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    /// CA bundle for the servers' certificates (TLS is then required).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_ca: Option<PathBuf>,
    /// Client certificate and key (mutual TLS), both or neither.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_cert: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_key: Option<PathBuf>,
}

impl Default for FleetConfig {
    fn default() -> Self {
        FleetConfig {
            servers: Vec::new(),
            cluster: "default".into(),
            host_id: String::new(),
            mode: FleetMode::Share,
            quorum: 2,
            window: Duration::from_secs(30),
            heartbeat: Duration::from_secs(5),
            queue: 4096,
            max_bytes: 64 << 20,
            creds_file: None,
            nkey_file: None,
            user: None,
            password: None,
            token: None,
            tls_ca: None,
            tls_cert: None,
            tls_key: None,
        }
    }
}

/// A name usable as one NATS subject token and KV key token: letters, digits, `-`, `_`.
pub fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

impl FleetConfig {
    pub fn is_default(&self) -> bool {
        *self == FleetConfig::default()
    }

    pub fn enabled(&self) -> bool {
        !self.servers.is_empty()
    }

    /// `host_id`, or the hostname with every character a token cannot hold as `-`.
    pub fn host(&self) -> String {
        if !self.host_id.is_empty() {
            return self.host_id.clone();
        }
        let name = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_owned())
            .unwrap_or_default();
        let token: String = name
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                    c
                } else {
                    '-'
                }
            })
            .take(64)
            .collect();
        if token.is_empty() {
            "localhost".into()
        } else {
            token
        }
    }

    /// Checks every value; the key in errors is `fleet.<name>`.
    pub fn validate(&self) -> Result<(), Invalid> {
        let invalid = |key: &str, value: String, allowed: &str| {
            Invalid::new(format!("fleet.{key}"), value, allowed)
        };
        for server in &self.servers {
            let scheme_ok = ["nats://", "tls://", "ws://", "wss://"]
                .iter()
                .any(|s| server.starts_with(s));
            if !scheme_ok || server.parse::<async_nats::ServerAddr>().is_err() {
                return Err(invalid(
                    "servers",
                    format!("{server:?}"),
                    "a NATS URL: nats://HOST:PORT or tls://HOST:PORT",
                ));
            }
        }
        if !is_token(&self.cluster) {
            return Err(invalid(
                "cluster",
                format!("{:?}", self.cluster),
                "1 to 64 letters, digits, '-' or '_' (it names NATS subjects and the KV bucket)",
            ));
        }
        if !self.host_id.is_empty() && !is_token(&self.host_id) {
            return Err(invalid(
                "host_id",
                format!("{:?}", self.host_id),
                "empty (the hostname) or 1 to 64 letters, digits, '-' or '_'",
            ));
        }
        if self.quorum < 1 || self.quorum > 1000 {
            return Err(invalid(
                "quorum",
                self.quorum.to_string(),
                "must be between 1 and 1000",
            ));
        }
        if self.window < Duration::from_secs(1) || self.window > Duration::from_secs(86_400) {
            return Err(invalid(
                "window",
                format_duration(self.window),
                "must be between 1s and 24h",
            ));
        }
        if self.heartbeat < Duration::from_millis(100) || self.heartbeat > Duration::from_secs(3600)
        {
            return Err(invalid(
                "heartbeat",
                format_duration(self.heartbeat),
                "must be between 100ms and 1h",
            ));
        }
        if self.queue == 0 || self.queue > 1 << 20 {
            return Err(invalid(
                "queue",
                self.queue.to_string(),
                "must be between 1 and 1048576",
            ));
        }
        if self.max_bytes < 1 << 20 || self.max_bytes > 1 << 34 {
            return Err(invalid(
                "max_bytes",
                self.max_bytes.to_string(),
                "must be between 1 MiB (1048576) and 16 GiB",
            ));
        }
        let methods = [
            self.creds_file.is_some(),
            self.nkey_file.is_some(),
            self.user.is_some() || self.password.is_some(),
            self.token.is_some(),
        ];
        if methods.iter().filter(|m| **m).count() > 1 {
            return Err(invalid(
                "creds_file",
                "(several credentials)".into(),
                "set at most one of creds_file, nkey_file, user + password, token",
            ));
        }
        // Keys that go together: the error names the one missing.
        for ((a, a_set), (b, b_set)) in [
            (
                ("user", self.user.is_some()),
                ("password", self.password.is_some()),
            ),
            (
                ("tls_cert", self.tls_cert.is_some()),
                ("tls_key", self.tls_key.is_some()),
            ),
        ] {
            if a_set != b_set {
                return Err(invalid(
                    if a_set { b } else { a },
                    "(not set)".into(),
                    &format!("{a} and {b} go together"),
                ));
            }
        }
        for (key, path) in [
            ("creds_file", &self.creds_file),
            ("nkey_file", &self.nkey_file),
            ("tls_ca", &self.tls_ca),
            ("tls_cert", &self.tls_cert),
            ("tls_key", &self.tls_key),
        ] {
            if let Some(path) = path
                && !path.is_absolute()
            {
                return Err(invalid(
                    key,
                    format!("{:?}", path.display().to_string()),
                    "must be an absolute path",
                ));
            }
        }
        Ok(())
    }

    /// async-nats options: credentials, TLS, and a client that never blocks the agent
    /// (bounded buffers, retried initial connect, reconnects forever).
    pub async fn connect_options(&self, host: &str) -> std::io::Result<async_nats::ConnectOptions> {
        let mut options = match &self.creds_file {
            Some(path) => async_nats::ConnectOptions::with_credentials_file(path).await?,
            None => async_nats::ConnectOptions::new(),
        };
        if let Some(path) = &self.nkey_file {
            let seed = std::fs::read_to_string(path)?;
            options = options.nkey(seed.trim().to_owned());
        }
        if let (Some(user), Some(password)) = (&self.user, &self.password) {
            options = options.user_and_password(user.clone(), password.clone());
        }
        if let Some(token) = &self.token {
            options = options.token(token.clone());
        }
        if let Some(ca) = &self.tls_ca {
            options = options.add_root_certificates(ca.clone()).require_tls(true);
        }
        if let (Some(cert), Some(key)) = (&self.tls_cert, &self.tls_key) {
            options = options.add_client_certificate(cert.clone(), key.clone());
        }
        Ok(options
            .name(format!("connmon {host}"))
            .connection_timeout(Duration::from_secs(2))
            .request_timeout(Some(Duration::from_secs(2)))
            .client_capacity(self.queue.max(128))
            .subscription_capacity(self.queue.max(128))
            .retry_on_initial_connect())
    }

    /// The subject of this cluster's verdicts from `host` (`*` for every host).
    pub fn verdict_subject(&self, host: &str) -> String {
        format!("connmon.{}.verdict.{host}", self.cluster)
    }

    /// The KV bucket of current ejections and heartbeats.
    pub fn bucket(&self) -> String {
        format!("connmon_{}", self.cluster)
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use crate::config::Config;

    fn err(text: &str) -> String {
        Config::parse(Path::new("x.toml"), text)
            .unwrap()
            .validate()
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn the_fleet_is_off_by_default_and_invalid_values_are_named() {
        let c = Config::parse(Path::new("x.toml"), "").unwrap();
        assert!(!c.fleet.enabled());
        assert!(
            !c.to_toml().contains("[fleet]"),
            "a default fleet is not printed"
        );
        let on = Config::parse(
            Path::new("x.toml"),
            "[fleet]\nservers = [\"nats://127.0.0.1:4222\"]\nhost_id = \"a\"\nmode = \"quorum\"\nuser = \"u\"\npassword = \"p\"\n",
        )
        .unwrap();
        on.validate().unwrap();
        assert_eq!(
            Config::parse(Path::new("x.toml"), &on.to_toml()).unwrap(),
            on
        );
        assert_eq!(
            err("[fleet]\nservers = [\"127.0.0.1:4222\"]\n"),
            "fleet.servers = \"127.0.0.1:4222\": a NATS URL: nats://HOST:PORT or tls://HOST:PORT"
        );
        assert!(
            err("[fleet]\ncluster = \"a.b\"\n").starts_with("fleet.cluster = \"a.b\": 1 to 64")
        );
        assert_eq!(
            err("[fleet]\nquorum = 0\n"),
            "fleet.quorum = 0: must be between 1 and 1000"
        );
        assert_eq!(
            err("[fleet]\nuser = \"u\"\n"),
            "fleet.password = (not set): user and password go together"
        );
        assert!(
            err("[fleet]\ntoken = \"t\"\nuser = \"u\"\npassword = \"p\"\n")
                .contains("at most one of")
        );
        assert_eq!(
            err("[fleet]\ntls_ca = \"ca.pem\"\n"),
            "fleet.tls_ca = \"ca.pem\": must be an absolute path"
        );
    }
}
