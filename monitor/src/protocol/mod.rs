//! The messages of NDJSON v1, the pool-controller protocol (docs/protocol.md), as typed
//! serde values shared by the socket server, the `connmon` client subcommands and the
//! tests. One type per message, mini-redis style (`src/cmd/*.rs`): a request is one
//! variant of [`Request`], tagged by `"cmd"`; a reply is one of the structs below, tagged
//! by `"type"` when it is rendered. docs/schemas is generated from these types
//! ([`schema`]; `connmon generate-assets --schemas DIR`), so the documentation cannot
//! drift from what the server parses.
//!
//! The types carry the wire shape only. What serde cannot say — a `dst` that parses as
//! `ADDR:PORT`, at least one member for `add` — the server checks after parsing, with
//! the same error codes as always.

pub mod schema;
mod source_types;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

pub use crate::{bus::Topic, policy::Role};

/// The protocol version in `hello`.
pub const VERSION: u32 = 1;
/// Longest accepted client line, newline excluded.
pub const MAX_LINE_BYTES: usize = 64 * 1024;
/// Longest manual ejection, in milliseconds (30 days).
pub const MAX_EVICT_MS: u64 = 30 * 86_400_000;

/// `ip:port`; IPv6 as `[addr]:port`.
const DST_PATTERN: &str = r"^(\d{1,3}(\.\d{1,3}){3}|\[[0-9A-Fa-f:.]+\]):\d{1,5}$";

/// One client request, tagged by `"cmd"`. The optional `"id"` is not part of it: the
/// server takes it off first, so that even a request that does not parse gets its `id`
/// back (clients add it with [`Request::to_line`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "snake_case")]
pub enum Request {
    Subscribe(Subscribe),
    Snapshot(Snapshot),
    Ping(Ping),
    Pool(Pool),
    Evict(Evict),
    Reinstate(Reinstate),
}

/// Every command, in the order `hello` announces them.
pub const COMMANDS: [Command; 6] = [
    Command::Subscribe,
    Command::Snapshot,
    Command::Ping,
    Command::Pool,
    Command::Evict,
    Command::Reinstate,
];

/// A command's name (`"cmd"`), as listed in `hello`'s `capabilities`.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Serialize,
    Deserialize,
    JsonSchema,
    strum::IntoStaticStr,
    strum::EnumString,
)]
#[serde(rename_all = "snake_case")]
#[strum(serialize_all = "snake_case")]
pub enum Command {
    Subscribe,
    Snapshot,
    Ping,
    Pool,
    Evict,
    Reinstate,
}

impl Command {
    pub fn as_str(self) -> &'static str {
        self.into()
    }

    pub fn parse(name: &str) -> Option<Command> {
        name.parse().ok()
    }

    /// Whether every use of the command changes the engine's state (`pool` only does
    /// for add/remove/replace: see [`Request::changes_state`]).
    pub fn changes_state(self) -> bool {
        matches!(self, Command::Pool | Command::Evict | Command::Reinstate)
    }
}

impl Request {
    pub fn command(&self) -> Command {
        match self {
            Request::Subscribe(_) => Command::Subscribe,
            Request::Snapshot(_) => Command::Snapshot,
            Request::Ping(_) => Command::Ping,
            Request::Pool(_) => Command::Pool,
            Request::Evict(_) => Command::Evict,
            Request::Reinstate(_) => Command::Reinstate,
        }
    }

    /// Whether the request changes the engine's state (and so needs a privileged peer).
    pub fn changes_state(&self) -> bool {
        match self {
            Request::Pool(Pool::List(_)) => false,
            other => other.command().changes_state(),
        }
    }

    /// The request as one line (without its newline), with `id` when given.
    pub fn to_line(&self, id: Option<&serde_json::Value>) -> String {
        let mut value = serde_json::to_value(self).expect("requests serialize");
        if let (Some(id), serde_json::Value::Object(map)) = (id, &mut value) {
            map.insert("id".into(), id.clone());
        }
        value.to_string()
    }
}

/// Start (or re-filter) the event stream. Omitted types/roles: all.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Subscribe {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub types: Option<Vec<Topic>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub roles: Option<Vec<Role>>,
}

/// The current ejections and per-destination statistics.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Snapshot {}

/// Liveness check; answered by `pong`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Ping {}

/// The pool, by `"op"`. add/remove/replace need a privileged peer; add and remove need
/// at least one member. `list` is read-only and takes no members.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Pool {
    Add(PoolMembers),
    Remove(PoolMembers),
    Replace(PoolMembers),
    List(PoolList),
}

/// The members a pool change names.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PoolMembers {
    /// As in a pool file: ADDR:PORT, [V6]:PORT, CIDR:PORT, CIDR or ADDR.
    #[serde(default)]
    pub members: Vec<String>,
}

/// `pool list`: the pool as it is.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PoolList {
    /// Accepted for compatibility (list never took members): must be empty.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 0))]
    pub members: Vec<String>,
}

/// Manual ejection; for_ms defaults to policy.base_ejection. Needs a privileged peer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Evict {
    /// ip:port; IPv6 as [addr]:port
    #[schemars(regex(pattern = DST_PATTERN))]
    pub dst: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = MAX_EVICT_MS))]
    pub for_ms: Option<u64>,
}

/// Manual reinstatement. Needs a privileged peer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Reinstate {
    /// ip:port; IPv6 as [addr]:port
    #[schemars(regex(pattern = DST_PATTERN))]
    pub dst: String,
}

/// Every message type a subscriber can ask for, in the order `ok` lists them.
pub const ALL_TOPICS: [Topic; 7] = [
    Topic::Connect,
    Topic::SynRetransmit,
    Topic::Evict,
    Topic::Reinstate,
    Topic::Suspect,
    Topic::Diagnosis,
    Topic::Stats,
];

/// A server message and its `"type"`.
pub trait Reply: Serialize {
    const TYPE: &'static str;

    /// The message as a JSON object with `"type"` set.
    fn to_value(&self) -> serde_json::Value {
        let mut value = serde_json::to_value(self).expect("replies serialize");
        if let serde_json::Value::Object(map) = &mut value {
            map.insert("type".into(), Self::TYPE.into());
        }
        value
    }
}

/// First line of every accepted connection. capabilities lists the commands this peer
/// may use.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Hello {
    /// The protocol version (this document: 1).
    #[schemars(extend("const" = 1))]
    pub v: u32,
    /// The agent's version.
    pub version: String,
    pub capabilities: Vec<Command>,
    /// The longest line the server accepts (newline excluded).
    pub max_line_bytes: u64,
}

impl Reply for Hello {
    const TYPE: &'static str = "hello";
}

/// Success, by the `cmd` it answers: subscribe (types, roles in effect), pool (the
/// resulting pool), evict/reinstate (dst).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "cmd", rename_all = "snake_case")]
pub enum Success {
    Subscribe(Subscribed),
    Pool(PoolIs),
    Evict(Target),
    Reinstate(Target),
}

impl Reply for Success {
    const TYPE: &'static str = "ok";
}

/// The filters in effect.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Subscribed {
    pub types: Vec<Topic>,
    pub roles: Vec<Role>,
}

/// The resulting pool, entries as `list` prints them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PoolIs {
    pub pool: Vec<String>,
}

/// The destination a command acted on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Target {
    /// ip:port; IPv6 as [addr]:port
    #[schemars(regex(pattern = DST_PATTERN))]
    pub dst: String,
}

/// A request (or the connection) failed; `code` is the stable machine-readable part.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Error {
    pub code: ErrorCode,
    pub message: String,
}

impl Reply for Error {
    const TYPE: &'static str = "error";
}

/// Every error `code`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    InvalidUtf8,
    InvalidJson,
    InvalidRequest,
    UnknownCommand,
    InvalidArgument,
    LineTooLong,
    Forbidden,
    Rejected,
    Unavailable,
    TooManyErrors,
    TooManyClients,
}

/// The answer to `ping`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Pong {}

impl Reply for Pong {
    const TYPE: &'static str = "pong";
}

/// The subscriber read too slowly: this many bus messages (of any type) were dropped for
/// it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Lagged {
    #[schemars(range(min = 1))]
    pub missed: u64,
}

impl Reply for Lagged {
    const TYPE: &'static str = "lagged";
}

/// The agent is shutting down; the connection closes next.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Bye {
    pub reason: ByeReason,
}

impl Reply for Bye {
    const TYPE: &'static str = "bye";
}

/// `{"type":"snapshot",...}`: the policy at one moment and the socket server's
/// counters (the socket streams it without building this value; it gives the schema).
#[derive(Debug, Clone, PartialEq, Serialize, JsonSchema)]
pub struct SnapshotMessage {
    #[serde(flatten)]
    pub policy: crate::policy::PolicySnapshot,
    pub server: ServerCounters,
}

/// The socket server's counters, `"server"` in a snapshot.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, JsonSchema)]
pub struct ServerCounters {
    /// Connections open now.
    pub clients: u64,
    /// Connections accepted since start.
    pub accepted: u64,
    /// Connections refused because the most clients were connected.
    pub refused_clients: u64,
    /// Bus messages subscribers lost because they read too slowly.
    pub lagged_messages: u64,
    /// `lagged` notices sent.
    pub lagged_notices: u64,
    /// Requests answered with an error.
    pub protocol_errors: u64,
    /// Connections closed for too many errors.
    pub closed_for_errors: u64,
}

/// Why the connection closes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ByeReason {
    Shutdown,
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn parse(v: serde_json::Value) -> Result<Request, serde_json::Error> {
        serde_json::from_value(v)
    }

    #[test]
    fn requests_round_trip_through_their_wire_shape() {
        let requests = [
            Request::Subscribe(Subscribe {
                types: Some(vec![Topic::Evict, Topic::SynRetransmit]),
                roles: Some(vec![Role::Proxy]),
            }),
            Request::Subscribe(Subscribe::default()),
            Request::Snapshot(Snapshot {}),
            Request::Ping(Ping {}),
            Request::Pool(Pool::Add(PoolMembers {
                members: vec!["10.0.0.0/24:80".into()],
            })),
            Request::Pool(Pool::Replace(PoolMembers::default())),
            Request::Pool(Pool::List(PoolList::default())),
            Request::Evict(Evict {
                dst: "10.0.0.1:80".into(),
                for_ms: Some(5),
            }),
            Request::Reinstate(Reinstate {
                dst: "[::1]:80".into(),
            }),
        ];
        for r in requests {
            let line = r.to_line(Some(&json!(3)));
            let mut v: serde_json::Value = serde_json::from_str(&line).unwrap();
            assert_eq!(v["id"], 3, "{line}");
            v.as_object_mut().unwrap().remove("id");
            assert_eq!(parse(v).unwrap(), r, "{line}");
        }
        assert_eq!(
            Request::Pool(Pool::List(PoolList::default())).to_line(None),
            r#"{"cmd":"pool","op":"list"}"#
        );
        assert_eq!(Request::Ping(Ping {}).to_line(None), r#"{"cmd":"ping"}"#);
    }

    #[test]
    fn pool_list_has_its_own_variant_and_the_old_encodings_still_parse() {
        // `list` as every client has always sent it, and with the empty member list it
        // used to accept.
        for v in [
            json!({"cmd": "pool", "op": "list"}),
            json!({"cmd": "pool", "op": "list", "members": []}),
        ] {
            let r = parse(v.clone()).unwrap();
            assert!(matches!(r, Request::Pool(Pool::List(_))), "{v}");
            assert!(!r.changes_state());
        }
        assert!(
            parse(json!({"cmd": "pool", "op": "add", "members": ["1.2.3.4:5"]}))
                .unwrap()
                .changes_state()
        );
        // A replace without members empties the pool, as before.
        assert_eq!(
            parse(json!({"cmd": "pool", "op": "replace"})).unwrap(),
            Request::Pool(Pool::Replace(PoolMembers::default()))
        );
    }

    #[test]
    fn unknown_keys_and_wrong_shapes_do_not_parse() {
        for v in [
            json!({"cmd": "ping", "extra": 1}),
            json!({"cmd": "snapshot", "x": null}),
            json!({"cmd": "subscribe", "types": "evict"}),
            json!({"cmd": "subscribe", "types": ["evictions"]}),
            json!({"cmd": "subscribe", "roles": ["pool"]}),
            json!({"cmd": "pool", "op": "shuffle"}),
            json!({"cmd": "pool", "op": "add", "members": [1]}),
            json!({"cmd": "pool", "op": "add", "extra": []}),
            json!({"cmd": "evict"}),
            json!({"cmd": "evict", "dst": 80}),
            json!({"cmd": "evict", "dst": "1.2.3.4:5", "for_ms": -1}),
            json!({"cmd": "reinstate", "dst": "1.2.3.4:5", "for_ms": 1}),
        ] {
            assert!(parse(v.clone()).is_err(), "{v} parsed");
        }
    }

    #[test]
    fn replies_render_with_their_type() {
        assert_eq!(
            Lagged { missed: 5 }.to_value(),
            json!({"type": "lagged", "missed": 5})
        );
        assert_eq!(
            Success::Evict(Target {
                dst: "1.2.3.4:5".into()
            })
            .to_value(),
            json!({"type": "ok", "cmd": "evict", "dst": "1.2.3.4:5"})
        );
        let hello = Hello {
            v: VERSION,
            version: "0".into(),
            capabilities: COMMANDS.to_vec(),
            max_line_bytes: 1,
        };
        let capabilities: Vec<&str> = "subscribe snapshot ping pool evict reinstate"
            .split(' ')
            .collect();
        assert_eq!(hello.to_value()["capabilities"], json!(capabilities));
        let back: Hello = serde_json::from_value({
            let mut v = hello.to_value();
            v.as_object_mut().unwrap().remove("type");
            v
        })
        .unwrap();
        assert_eq!(back, hello);
    }
}
