//! The fleet's wire format (docs/fleet.md): one JSON object per NATS message, on
//! `connmon.<cluster>.verdict.<host>` and as the values of the KV bucket
//! `connmon_<cluster>` (`e.<destination>.<host>`: an ejection in force; `h.<host>`: the
//! host's last heartbeat).
//!
//! [`decode`] is the only way in for bytes from the network: bounded size, version
//! checked, host a valid token, terms bounded. Unknown fields are ignored, so a newer
//! agent can add some.

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

use super::config::{FleetMode, is_token};
use crate::{
    policy::{Eviction, Evidence, Reason},
    table::FailureMode,
};

/// The format's version (`"v"`).
pub const VERSION: u32 = 1;
/// Larger messages are rejected before parsing.
pub const MAX_MESSAGE_BYTES: usize = 8192;
/// Longest ejection term a remote verdict may ask for.
pub const MAX_TERM_MS: u64 = 7 * 86_400_000;

/// One message.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum FleetMessage {
    Evict(RemoteEvict),
    Reinstate(RemoteReinstate),
    Heartbeat(Heartbeat),
}

/// `{"type":"evict",...}`: `host` ejected `dst` until `until_ms`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RemoteEvict {
    pub v: u32,
    pub host: String,
    pub dst: SocketAddr,
    pub reason: Reason,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure_mode: Option<FailureMode>,
    /// The ejection term: its length, its end (Unix ms) and the destination's count.
    pub duration_ms: u64,
    pub until_ms: u64,
    #[serde(default)]
    pub count: u32,
    /// The destination's counts when it was decided (missing ones read as 0).
    #[serde(default)]
    pub evidence: Evidence,
    /// The evidence came from connects connmon trusts (its evidence scope) or an operator.
    pub trusted: bool,
    /// The host was in a local outage when it decided.
    #[serde(default)]
    pub local_outage: bool,
    /// When it was published (Unix ms).
    pub ts_ms: u64,
}

/// `{"type":"reinstate",...}`: `host` lifted its ejection of `dst`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RemoteReinstate {
    pub v: u32,
    pub host: String,
    pub dst: SocketAddr,
    pub ts_ms: u64,
}

/// `{"type":"heartbeat",...}`: the host is alive; its mode and counts.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Heartbeat {
    pub v: u32,
    pub host: String,
    pub mode: FleetMode,
    /// Destinations ejected on the host now (its own and the fleet's).
    pub ejected: u64,
    pub local_outage: bool,
    /// Own verdicts published, remote verdicts applied, verdicts dropped (queue full or
    /// NATS failing) since the agent started.
    pub published: u64,
    pub applied: u64,
    pub dropped: u64,
    pub ts_ms: u64,
}

impl FleetMessage {
    pub fn host(&self) -> &str {
        match self {
            FleetMessage::Evict(e) => &e.host,
            FleetMessage::Reinstate(r) => &r.host,
            FleetMessage::Heartbeat(h) => &h.host,
        }
    }

    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// This host's eviction as a fleet message.
    pub fn of_eviction(e: &Eviction, host: &str, trusted: bool, now_ms: u64) -> Self {
        let duration_ms = e.ejection.duration_ms;
        FleetMessage::Evict(RemoteEvict {
            v: VERSION,
            host: host.to_owned(),
            dst: e.dst,
            reason: e.reason,
            failure_mode: e.failure_mode,
            duration_ms,
            until_ms: now_ms.saturating_add(duration_ms),
            count: e.ejection.count,
            evidence: e.evidence,
            trusted,
            local_outage: e.local_outage,
            ts_ms: now_ms,
        })
    }
}

/// Why bytes are not a fleet message.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    #[error("message of {0} bytes (at most {MAX_MESSAGE_BYTES})")]
    TooLarge(usize),
    #[error("not a fleet message: {0}")]
    Json(String),
    #[error("unsupported version {0} (this agent speaks {VERSION})")]
    Version(u32),
    #[error("invalid host id {0:?}")]
    Host(String),
    #[error("ejection term of {0} ms (at most {MAX_TERM_MS})")]
    Term(u64),
    #[error("reason `fleet` is never published (echo)")]
    Echo,
}

/// Parses and checks one message from the network.
pub fn decode(bytes: &[u8]) -> Result<FleetMessage, DecodeError> {
    if bytes.len() > MAX_MESSAGE_BYTES {
        return Err(DecodeError::TooLarge(bytes.len()));
    }
    let message: FleetMessage =
        serde_json::from_slice(bytes).map_err(|e| DecodeError::Json(e.to_string()))?;
    let v = match &message {
        FleetMessage::Evict(e) => e.v,
        FleetMessage::Reinstate(r) => r.v,
        FleetMessage::Heartbeat(h) => h.v,
    };
    if v != VERSION {
        return Err(DecodeError::Version(v));
    }
    if !is_token(message.host()) {
        return Err(DecodeError::Host(message.host().to_owned()));
    }
    if let FleetMessage::Evict(e) = &message {
        if e.duration_ms == 0 || e.duration_ms > MAX_TERM_MS {
            return Err(DecodeError::Term(e.duration_ms));
        }
        if e.reason == Reason::Fleet {
            return Err(DecodeError::Echo);
        }
    }
    Ok(message)
}

/// The KV key of `host`'s ejection of `dst`: `e.<ip with '_' for ':'>_<port>.<host>`.
pub fn ejection_key(dst: SocketAddr, host: &str) -> String {
    format!(
        "e.{}_{}.{host}",
        dst.ip().to_string().replace(':', "_"),
        dst.port()
    )
}

/// The KV key of `host`'s heartbeat.
pub fn heartbeat_key(host: &str) -> String {
    format!("h.{host}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn evict() -> RemoteEvict {
        RemoteEvict {
            v: VERSION,
            host: "a".into(),
            dst: "10.0.0.1:8080".parse().unwrap(),
            reason: Reason::Refused,
            failure_mode: Some(FailureMode::Reject),
            duration_ms: 30_000,
            until_ms: 1_000_030_000,
            count: 1,
            evidence: Evidence {
                attempts: 3,
                refused: 3,
                streak: 3,
                ..Evidence::default()
            },
            trusted: true,
            local_outage: false,
            ts_ms: 1_000_000_000,
        }
    }

    #[test]
    fn messages_round_trip_and_name_their_type() {
        let m = FleetMessage::Evict(evict());
        let bytes = m.encode();
        let text = std::str::from_utf8(&bytes).unwrap();
        assert!(
            text.starts_with("{\"type\":\"evict\",\"v\":1,\"host\":\"a\""),
            "{text}"
        );
        assert!(text.contains("\"failure_mode\":\"reject\""), "{text}");
        assert_eq!(decode(&bytes).unwrap(), m);
        let r = FleetMessage::Reinstate(RemoteReinstate {
            v: 1,
            host: "b-2".into(),
            dst: "[2001:db8::1]:80".parse().unwrap(),
            ts_ms: 5,
        });
        assert_eq!(decode(&r.encode()).unwrap(), r);
    }

    #[test]
    fn bad_messages_are_refused_with_the_reason() {
        let with = |f: &dyn Fn(&mut RemoteEvict)| {
            let mut e = evict();
            f(&mut e);
            decode(&FleetMessage::Evict(e).encode())
        };
        assert_eq!(with(&|e| e.v = 2), Err(DecodeError::Version(2)));
        assert_eq!(
            with(&|e| e.host = "a.b".into()),
            Err(DecodeError::Host("a.b".into()))
        );
        assert_eq!(
            with(&|e| e.host = String::new()),
            Err(DecodeError::Host(String::new()))
        );
        assert_eq!(with(&|e| e.duration_ms = 0), Err(DecodeError::Term(0)));
        assert_eq!(with(&|e| e.reason = Reason::Fleet), Err(DecodeError::Echo));
        assert!(matches!(
            decode(b"{\"type\":\"evict\"}"),
            Err(DecodeError::Json(_))
        ));
        assert!(matches!(decode(b"\xff"), Err(DecodeError::Json(_))));
        assert_eq!(decode(&[b' '; 9000]), Err(DecodeError::TooLarge(9000)));
        let extra =
            br#"{"type":"reinstate","v":1,"host":"a","dst":"1.2.3.4:5","ts_ms":1,"new":true}"#;
        assert!(decode(extra).is_ok(), "unknown fields are ignored");
    }

    #[test]
    fn keys_are_valid_kv_keys() {
        assert_eq!(
            ejection_key("10.0.0.1:8080".parse().unwrap(), "a"),
            "e.10.0.0.1_8080.a"
        );
        assert_eq!(
            ejection_key("[2001:db8::1]:80".parse().unwrap(), "b"),
            "e.2001_db8__1_80.b"
        );
        assert_eq!(heartbeat_key("a"), "h.a");
    }
}
