//! NDJSON v1, the pool-controller protocol (docs/protocol.md): one JSON object per line
//! in each direction. This module turns a raw client line into a typed [`Request`] — or
//! into a [`ProtocolError`] with a stable `code` — and renders every server reply.
//!
//! Parsing is layered so that each kind of bad input gets its own code: bytes that are not
//! UTF-8, text that is not JSON, JSON that is not a command object, a command nobody
//! knows, and a known command with wrong or missing arguments. The optional `id` is
//! recovered as early as possible so that even most errors can echo it.

use std::{net::SocketAddr, time::Duration};

use serde::Deserialize;
use serde_json::{Map, Value, json};

use crate::{
    bus::Topic,
    control::PoolOp,
    policy::{PoolEntry, PoolMembership, Role},
};

/// The protocol version in `hello`.
pub const VERSION: u32 = 1;
/// Longest accepted client line, newline excluded.
pub const MAX_LINE_BYTES: usize = 64 * 1024;
/// Longest manual ejection.
pub const MAX_EVICT: Duration = Duration::from_secs(30 * 86_400);
/// Every command, as announced in `hello` to a peer allowed to change state.
pub const COMMANDS: [&str; 6] = [
    "subscribe",
    "snapshot",
    "ping",
    "pool",
    "evict",
    "reinstate",
];
/// Commands that change the engine's state and need a privileged peer.
pub const STATE_CHANGING: [&str; 3] = ["pool", "evict", "reinstate"];

/// Why a line was rejected; `code` is the stable machine-readable part.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProtocolError {
    #[error("the line is not valid UTF-8")]
    InvalidUtf8,
    #[error("the line is not JSON: {0}")]
    InvalidJson(String),
    #[error("{0}")]
    InvalidRequest(String),
    #[error("unknown command {0:?} (known: subscribe, snapshot, ping, pool, evict, reinstate)")]
    UnknownCommand(String),
    #[error("{0}")]
    InvalidArgument(String),
    #[error("the line is longer than {MAX_LINE_BYTES} bytes")]
    LineTooLong,
    #[error(
        "{cmd} changes the agent's state: the peer (uid {uid}, gid {gid}) is neither root nor in agent.allowed_uids/allowed_gids"
    )]
    Forbidden {
        cmd: &'static str,
        uid: u32,
        gid: u32,
    },
    #[error("{0}")]
    Rejected(String),
    #[error("the agent's pipeline did not answer: {0}")]
    Unavailable(&'static str),
}

impl ProtocolError {
    pub fn code(&self) -> &'static str {
        match self {
            ProtocolError::InvalidUtf8 => "invalid_utf8",
            ProtocolError::InvalidJson(_) => "invalid_json",
            ProtocolError::InvalidRequest(_) => "invalid_request",
            ProtocolError::UnknownCommand(_) => "unknown_command",
            ProtocolError::InvalidArgument(_) => "invalid_argument",
            ProtocolError::LineTooLong => "line_too_long",
            ProtocolError::Forbidden { .. } => "forbidden",
            ProtocolError::Rejected(_) => "rejected",
            ProtocolError::Unavailable(_) => "unavailable",
        }
    }
}

/// Subscription filters: `None` means everything.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Filter {
    pub types: Option<Vec<Topic>>,
    pub roles: Option<Vec<Role>>,
}

impl Filter {
    /// Whether a published message of `topic` about a destination of `role` passes.
    /// Messages without a role (stats, `local_outage`) pass any role filter.
    pub fn matches(&self, topic: Topic, role: Option<Role>) -> bool {
        self.types.as_ref().is_none_or(|t| t.contains(&topic))
            && self
                .roles
                .as_ref()
                .is_none_or(|r| role.is_none_or(|role| r.contains(&role)))
    }
}

/// One parsed client command.
#[derive(Debug, Clone, PartialEq)]
pub enum Request {
    Subscribe(Filter),
    Snapshot,
    Ping,
    Pool {
        op: PoolCommand,
        members: Vec<PoolEntry>,
    },
    Evict {
        dst: SocketAddr,
        duration: Option<Duration>,
    },
    Reinstate {
        dst: SocketAddr,
    },
}

/// `op` of a pool command: the three changes, or a read-only `list`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PoolCommand {
    Change(PoolOp),
    List,
}

impl Request {
    /// The `cmd` name.
    pub fn name(&self) -> &'static str {
        match self {
            Request::Subscribe(_) => "subscribe",
            Request::Snapshot => "snapshot",
            Request::Ping => "ping",
            Request::Pool { .. } => "pool",
            Request::Evict { .. } => "evict",
            Request::Reinstate { .. } => "reinstate",
        }
    }

    /// Whether the command changes the engine's state (and so needs a privileged peer).
    pub fn changes_state(&self) -> bool {
        match self {
            Request::Pool { op, .. } => *op != PoolCommand::List,
            Request::Evict { .. } | Request::Reinstate { .. } => true,
            Request::Subscribe(_) | Request::Snapshot | Request::Ping => false,
        }
    }
}

/// The wire shape of the commands, `id` and `cmd` removed.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SubscribeArgs {
    types: Option<Vec<String>>,
    roles: Option<Vec<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NoArgs {}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PoolArgs {
    op: String,
    #[serde(default)]
    members: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EvictArgs {
    dst: String,
    for_ms: Option<u64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ReinstateArgs {
    dst: String,
}

/// A parsed line: the `id` to echo (if one was found) and the command or why not.
pub struct Parsed {
    pub id: Option<Value>,
    pub request: Result<Request, ProtocolError>,
}

/// Parses one client line (without its newline).
pub fn parse_line(line: &[u8]) -> Parsed {
    let fail = |e| Parsed {
        id: None,
        request: Err(e),
    };
    let Ok(text) = std::str::from_utf8(line) else {
        return fail(ProtocolError::InvalidUtf8);
    };
    let value: Value = match serde_json::from_str(text) {
        Ok(v) => v,
        Err(e) => return fail(ProtocolError::InvalidJson(e.to_string())),
    };
    let Value::Object(mut object) = value else {
        return fail(ProtocolError::InvalidRequest(
            "a command is a JSON object with a \"cmd\" key".into(),
        ));
    };
    let id = object.remove("id").filter(|id| !id.is_null());
    if id
        .as_ref()
        .is_some_and(|id| !(id.is_string() || id.is_number()))
    {
        return fail(ProtocolError::InvalidRequest(
            "\"id\" must be a string or a number".into(),
        ));
    }
    let request = parse_command(object);
    Parsed { id, request }
}

fn parse_command(mut object: Map<String, Value>) -> Result<Request, ProtocolError> {
    let cmd = match object.remove("cmd") {
        Some(Value::String(cmd)) => cmd,
        Some(other) => {
            return Err(ProtocolError::InvalidRequest(format!(
                "\"cmd\" must be a string, not {other}"
            )));
        }
        None => return Err(ProtocolError::InvalidRequest("missing \"cmd\"".into())),
    };
    let args = Value::Object(object);
    match cmd.as_str() {
        "subscribe" => {
            let a: SubscribeArgs = args_of(&cmd, args)?;
            let types = a
                .types
                .map(|t| t.iter().map(|s| parse_topic(s)).collect())
                .transpose()?;
            let roles = a
                .roles
                .map(|r| r.iter().map(|s| parse_role(s)).collect())
                .transpose()?;
            Ok(Request::Subscribe(Filter { types, roles }))
        }
        "snapshot" => args_of::<NoArgs>(&cmd, args).map(|_| Request::Snapshot),
        "ping" => args_of::<NoArgs>(&cmd, args).map(|_| Request::Ping),
        "pool" => {
            let a: PoolArgs = args_of(&cmd, args)?;
            let op = match a.op.as_str() {
                "add" => PoolCommand::Change(PoolOp::Add),
                "remove" => PoolCommand::Change(PoolOp::Remove),
                "replace" => PoolCommand::Change(PoolOp::Replace),
                "list" => PoolCommand::List,
                other => {
                    return Err(ProtocolError::InvalidArgument(format!(
                        "pool: op {other:?} is not one of add, remove, replace, list"
                    )));
                }
            };
            let members = a
                .members
                .iter()
                .map(|m| {
                    PoolMembership::parse_entry(m).map_err(|e| {
                        ProtocolError::InvalidArgument(format!("pool: member {m:?}: {e}"))
                    })
                })
                .collect::<Result<Vec<_>, _>>()?;
            if op == PoolCommand::List && !members.is_empty() {
                return Err(ProtocolError::InvalidArgument(
                    "pool: list takes no \"members\"".into(),
                ));
            }
            if matches!(op, PoolCommand::Change(PoolOp::Add | PoolOp::Remove)) && members.is_empty()
            {
                return Err(ProtocolError::InvalidArgument(
                    "pool: \"members\" must name at least one entry".into(),
                ));
            }
            Ok(Request::Pool { op, members })
        }
        "evict" => {
            let a: EvictArgs = args_of(&cmd, args)?;
            let duration = match a.for_ms {
                Some(0) => {
                    return Err(ProtocolError::InvalidArgument(
                        "evict: for_ms must be at least 1".into(),
                    ));
                }
                Some(ms) if Duration::from_millis(ms) > MAX_EVICT => {
                    return Err(ProtocolError::InvalidArgument(format!(
                        "evict: for_ms must be at most {} (30 days)",
                        MAX_EVICT.as_millis()
                    )));
                }
                Some(ms) => Some(Duration::from_millis(ms)),
                None => None,
            };
            Ok(Request::Evict {
                dst: parse_dst(&cmd, &a.dst)?,
                duration,
            })
        }
        "reinstate" => {
            let a: ReinstateArgs = args_of(&cmd, args)?;
            Ok(Request::Reinstate {
                dst: parse_dst(&cmd, &a.dst)?,
            })
        }
        _ => Err(ProtocolError::UnknownCommand(truncate(&cmd, 64))),
    }
}

fn args_of<T: for<'de> Deserialize<'de>>(cmd: &str, args: Value) -> Result<T, ProtocolError> {
    serde_json::from_value(args).map_err(|e| ProtocolError::InvalidArgument(format!("{cmd}: {e}")))
}

fn parse_topic(s: &str) -> Result<Topic, ProtocolError> {
    Topic::parse(s).ok_or_else(|| {
        ProtocolError::InvalidArgument(format!(
            "subscribe: type {:?} is not one of connect, syn_retransmit, evict, reinstate, suspect, diagnosis, stats",
            truncate(s, 64)
        ))
    })
}

fn parse_role(s: &str) -> Result<Role, ProtocolError> {
    match s {
        "proxy" => Ok(Role::Proxy),
        "target" => Ok(Role::Target),
        _ => Err(ProtocolError::InvalidArgument(format!(
            "subscribe: role {:?} is not one of proxy, target",
            truncate(s, 64)
        ))),
    }
}

/// A destination `ADDR:PORT` / `[V6]:PORT`, v4-mapped IPv6 reported as IPv4 like events.
fn parse_dst(cmd: &str, text: &str) -> Result<SocketAddr, ProtocolError> {
    match PoolMembership::parse_entry(text) {
        Ok(PoolEntry::Member(dst)) => Ok(dst),
        _ => Err(ProtocolError::InvalidArgument(format!(
            "{cmd}: dst {:?} is not ADDR:PORT or [V6]:PORT",
            truncate(text, 64)
        ))),
    }
}

fn truncate(s: &str, max: usize) -> String {
    match s.char_indices().nth(max) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s.to_owned(),
    }
}

/// Renders a reply object with `"type"` first, then `"id"` when the request had one,
/// then the other keys.
pub fn reply(object: Value, id: Option<&Value>) -> String {
    let Value::Object(mut map) = object else {
        return object.to_string();
    };
    let mut fields: Vec<(String, Value)> = Vec::with_capacity(map.len() + 1);
    if let Some(ty) = map.remove("type") {
        fields.push(("type".into(), ty));
    }
    if let Some(id) = id {
        fields.push(("id".into(), id.clone()));
    }
    map.remove("id");
    fields.extend(map);
    let mut out = String::from("{");
    for (i, (key, value)) in fields.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(&Value::String(key.clone()).to_string());
        out.push(':');
        out.push_str(&value.to_string());
    }
    out.push('}');
    out
}

/// `{"type":"hello",...}`: the first line of every connection.
pub fn hello(may_change_state: bool) -> String {
    let capabilities: Vec<&str> = COMMANDS
        .iter()
        .copied()
        .filter(|c| may_change_state || !STATE_CHANGING.contains(c))
        .collect();
    let hello = json!({
        "type": "hello",
        "v": VERSION,
        "version": env!("CARGO_PKG_VERSION"),
        "capabilities": capabilities,
        "max_line_bytes": MAX_LINE_BYTES,
    });
    reply(hello, None)
}

/// `{"type":"error","code":...,"message":...}`.
pub fn error(err: &ProtocolError, id: Option<&Value>) -> String {
    reply(
        json!({"type": "error", "code": err.code(), "message": err.to_string()}),
        id,
    )
}

/// An error that is not about one line (the connection is being refused or closed).
pub fn connection_error(code: &str, message: &str) -> String {
    reply(
        json!({"type": "error", "code": code, "message": message}),
        None,
    )
}

/// `{"type":"lagged","missed":N}`.
pub fn lagged(missed: u64) -> String {
    reply(json!({"type": "lagged", "missed": missed}), None)
}

/// `{"type":"bye","reason":"shutdown"}`.
pub fn bye() -> String {
    reply(json!({"type": "bye", "reason": "shutdown"}), None)
}

/// The types and roles a subscription ended up with, for its `ok`.
pub fn subscribed(filter: &Filter, id: Option<&Value>) -> String {
    let types: Vec<&str> = match &filter.types {
        Some(t) => t.iter().map(|t| t.as_str()).collect(),
        None => [
            "connect",
            "syn_retransmit",
            "evict",
            "reinstate",
            "suspect",
            "diagnosis",
            "stats",
        ]
        .into(),
    };
    let roles: Vec<&str> = match &filter.roles {
        Some(r) => r
            .iter()
            .map(|r| if *r == Role::Proxy { "proxy" } else { "target" })
            .collect(),
        None => vec!["proxy", "target"],
    };
    reply(
        json!({"type": "ok", "cmd": "subscribe", "types": types, "roles": roles}),
        id,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn code(line: &[u8]) -> &'static str {
        parse_line(line).request.unwrap_err().code()
    }

    #[test]
    fn commands_parse_with_their_id() {
        let p = parse_line(br#"{"cmd":"ping","id":7}"#);
        assert_eq!(p.id, Some(json!(7)));
        assert_eq!(p.request.unwrap(), Request::Ping);
        let p = parse_line(
            br#"{"id":"a","cmd":"subscribe","types":["evict","reinstate"],"roles":["proxy"]}"#,
        );
        assert_eq!(p.id, Some(json!("a")));
        assert_eq!(
            p.request.unwrap(),
            Request::Subscribe(Filter {
                types: Some(vec![Topic::Evict, Topic::Reinstate]),
                roles: Some(vec![Role::Proxy])
            })
        );
        assert_eq!(
            parse_line(br#"{"cmd":"evict","dst":"[::ffff:10.0.0.1]:80","for_ms":5000}"#)
                .request
                .unwrap(),
            Request::Evict {
                dst: "10.0.0.1:80".parse().unwrap(),
                duration: Some(Duration::from_secs(5))
            }
        );
        assert_eq!(
            parse_line(br#"{"cmd":"pool","op":"add","members":["10.0.0.0/24:8080","10.0.0.9:1"]}"#)
                .request
                .unwrap(),
            Request::Pool {
                op: PoolCommand::Change(PoolOp::Add),
                members: vec![
                    "10.0.0.0/24:8080".parse().unwrap(),
                    "10.0.0.9:1".parse().unwrap()
                ]
            }
        );
        assert!(
            !parse_line(br#"{"cmd":"pool","op":"list"}"#)
                .request
                .unwrap()
                .changes_state()
        );
        assert!(
            parse_line(br#"{"cmd":"reinstate","dst":"1.2.3.4:5"}"#)
                .request
                .unwrap()
                .changes_state()
        );
    }

    #[test]
    fn each_kind_of_bad_input_has_its_code() {
        assert_eq!(code(b"\xff\xfe{}"), "invalid_utf8");
        assert_eq!(code(b"{\"cmd\":"), "invalid_json");
        assert_eq!(code(b"[1,2]"), "invalid_request");
        assert_eq!(code(b"{}"), "invalid_request");
        assert_eq!(code(br#"{"cmd":5}"#), "invalid_request");
        assert_eq!(code(br#"{"cmd":"ping","id":{"x":1}}"#), "invalid_request");
        assert_eq!(code(br#"{"cmd":"launch"}"#), "unknown_command");
        assert_eq!(code(br#"{"cmd":"evict","dst":80}"#), "invalid_argument");
        assert_eq!(
            code(br#"{"cmd":"evict","dst":"nowhere"}"#),
            "invalid_argument"
        );
        assert_eq!(
            code(br#"{"cmd":"evict","dst":"1.2.3.4:5","for_ms":-1}"#),
            "invalid_argument"
        );
        assert_eq!(
            code(br#"{"cmd":"evict","dst":"1.2.3.4:5","for_ms":0}"#),
            "invalid_argument"
        );
        assert_eq!(
            code(br#"{"cmd":"subscribe","types":"evict"}"#),
            "invalid_argument"
        );
        assert_eq!(
            code(br#"{"cmd":"subscribe","types":["evictions"]}"#),
            "invalid_argument"
        );
        assert_eq!(code(br#"{"cmd":"ping","extra":1}"#), "invalid_argument");
        assert_eq!(
            code(br#"{"cmd":"pool","op":"shuffle"}"#),
            "invalid_argument"
        );
        assert_eq!(
            code(br#"{"cmd":"pool","op":"add","members":[]}"#),
            "invalid_argument"
        );
        assert_eq!(
            code(br#"{"cmd":"pool","op":"add","members":["x"]}"#),
            "invalid_argument"
        );
        assert_eq!(
            code(br#"{"cmd":"pool","op":"list","members":["10.0.0.1:80"]}"#),
            "invalid_argument"
        );
    }

    #[test]
    fn the_id_is_echoed_even_on_argument_errors() {
        let p = parse_line(br#"{"cmd":"nope","id":3}"#);
        let line = error(&p.request.unwrap_err(), p.id.as_ref());
        let v: Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["id"], 3);
        assert_eq!(v["type"], "error");
        assert_eq!(v["code"], "unknown_command");
        assert!(
            line.starts_with(r#"{"type":"error","id":3,"code":"unknown_command","message":"#),
            "{line}"
        );
        assert_eq!(lagged(5), r#"{"type":"lagged","missed":5}"#);
        assert_eq!(bye(), r#"{"type":"bye","reason":"shutdown"}"#);
    }

    #[test]
    fn filters_pass_roleless_messages() {
        let f = Filter {
            types: Some(vec![Topic::Evict, Topic::Stats]),
            roles: Some(vec![Role::Proxy]),
        };
        assert!(f.matches(Topic::Evict, Some(Role::Proxy)));
        assert!(!f.matches(Topic::Evict, Some(Role::Target)));
        assert!(!f.matches(Topic::Connect, Some(Role::Proxy)));
        assert!(f.matches(Topic::Stats, None));
        assert!(Filter::default().matches(Topic::Connect, Some(Role::Target)));
    }

    #[test]
    fn hello_lists_only_what_the_peer_may_do() {
        let v: Value = serde_json::from_str(&hello(false)).unwrap();
        assert_eq!(v["type"], "hello");
        assert_eq!(v["v"], 1);
        assert_eq!(v["capabilities"], json!(["subscribe", "snapshot", "ping"]));
        let v: Value = serde_json::from_str(&hello(true)).unwrap();
        assert_eq!(v["capabilities"].as_array().unwrap().len(), 6);
    }
}
