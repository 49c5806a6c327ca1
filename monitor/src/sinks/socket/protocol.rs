//! The server's side of NDJSON v1 (docs/protocol.md): turns a raw client line into an
//! [`Action`] — or into a [`ProtocolError`] with a stable `code` — and renders every
//! server line. The messages themselves are the typed ones of [`crate::protocol`].
//!
//! Parsing is layered so that each kind of bad input gets its own code: bytes that are not
//! UTF-8, text that is not JSON, JSON that is not a command object, a command nobody
//! knows, and a known command with wrong or missing arguments (serde's error, or a check
//! serde cannot make, such as a `dst` that is no address). The optional `id` is
//! recovered as early as possible so that even most errors can echo it.

use std::{net::SocketAddr, time::Duration};

use serde_json::{Map, Value};

pub use crate::protocol::{MAX_LINE_BYTES, VERSION};
use crate::{
    bus::Topic,
    control::PoolOp,
    policy::{PoolEntry, PoolMembership, Role},
    protocol::{
        self, Bye, ByeReason, COMMANDS, Command, ErrorCode, Hello, Lagged, Pool, Reply, Request,
        Success,
    },
};

/// Longest manual ejection.
pub const MAX_EVICT: Duration = Duration::from_millis(protocol::MAX_EVICT_MS);

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
    pub fn code(&self) -> ErrorCode {
        match self {
            ProtocolError::InvalidUtf8 => ErrorCode::InvalidUtf8,
            ProtocolError::InvalidJson(_) => ErrorCode::InvalidJson,
            ProtocolError::InvalidRequest(_) => ErrorCode::InvalidRequest,
            ProtocolError::UnknownCommand(_) => ErrorCode::UnknownCommand,
            ProtocolError::InvalidArgument(_) => ErrorCode::InvalidArgument,
            ProtocolError::LineTooLong => ErrorCode::LineTooLong,
            ProtocolError::Forbidden { .. } => ErrorCode::Forbidden,
            ProtocolError::Rejected(_) => ErrorCode::Rejected,
            ProtocolError::Unavailable(_) => ErrorCode::Unavailable,
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

/// A request, checked and in the engine's terms.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    Subscribe(Filter),
    Snapshot,
    Ping,
    Pool {
        op: PoolOp,
        members: Vec<PoolEntry>,
    },
    PoolList,
    Evict {
        dst: SocketAddr,
        duration: Option<Duration>,
    },
    Reinstate {
        dst: SocketAddr,
    },
}

impl Action {
    /// The `cmd` name.
    pub fn name(&self) -> &'static str {
        self.command().as_str()
    }

    fn command(&self) -> Command {
        match self {
            Action::Subscribe(_) => Command::Subscribe,
            Action::Snapshot => Command::Snapshot,
            Action::Ping => Command::Ping,
            Action::Pool { .. } | Action::PoolList => Command::Pool,
            Action::Evict { .. } => Command::Evict,
            Action::Reinstate { .. } => Command::Reinstate,
        }
    }

    /// Whether the command changes the engine's state (and so needs a privileged peer).
    pub fn changes_state(&self) -> bool {
        !matches!(self, Action::PoolList) && self.command().changes_state()
    }
}

/// A parsed line: the `id` to echo (if one was found) and the command or why not.
pub struct Parsed {
    pub id: Option<Value>,
    pub request: Result<Action, ProtocolError>,
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

fn parse_command(object: Map<String, Value>) -> Result<Action, ProtocolError> {
    let cmd = match object.get("cmd") {
        Some(Value::String(cmd)) => cmd,
        Some(other) => {
            return Err(ProtocolError::InvalidRequest(format!(
                "\"cmd\" must be a string, not {other}"
            )));
        }
        None => return Err(ProtocolError::InvalidRequest("missing \"cmd\"".into())),
    };
    let Some(command) = Command::parse(cmd) else {
        return Err(ProtocolError::UnknownCommand(truncate(cmd, 64)));
    };
    let cmd = command.as_str();
    let invalid = |message: String| ProtocolError::InvalidArgument(format!("{cmd}: {message}"));
    let request: Request =
        serde_json::from_value(Value::Object(object)).map_err(|e| invalid(e.to_string()))?;
    Ok(match request {
        Request::Subscribe(s) => Action::Subscribe(Filter {
            types: s.types,
            roles: s.roles,
        }),
        Request::Snapshot(_) => Action::Snapshot,
        Request::Ping(_) => Action::Ping,
        Request::Pool(Pool::List(list)) => {
            if !list.members.is_empty() {
                return Err(invalid("list takes no \"members\"".into()));
            }
            Action::PoolList
        }
        Request::Pool(change) => {
            let (op, members) = match change {
                Pool::Add(m) => (PoolOp::Add, m.members),
                Pool::Remove(m) => (PoolOp::Remove, m.members),
                Pool::Replace(m) => (PoolOp::Replace, m.members),
                Pool::List(_) => unreachable!("answered above"),
            };
            if op != PoolOp::Replace && members.is_empty() {
                return Err(invalid("\"members\" must name at least one entry".into()));
            }
            let members = members
                .iter()
                .map(|m| {
                    PoolMembership::parse_entry(m)
                        .map_err(|e| invalid(format!("member {m:?}: {e}")))
                })
                .collect::<Result<Vec<_>, _>>()?;
            Action::Pool { op, members }
        }
        Request::Evict(e) => {
            let duration = match e.for_ms {
                Some(0) => return Err(invalid("for_ms must be at least 1".into())),
                Some(ms) if ms > protocol::MAX_EVICT_MS => {
                    return Err(invalid(format!(
                        "for_ms must be at most {} (30 days)",
                        protocol::MAX_EVICT_MS
                    )));
                }
                ms => ms.map(Duration::from_millis),
            };
            Action::Evict {
                dst: parse_dst(cmd, &e.dst)?,
                duration,
            }
        }
        Request::Reinstate(r) => Action::Reinstate {
            dst: parse_dst(cmd, &r.dst)?,
        },
    })
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

/// Renders a typed reply (see [`reply`]).
pub fn render(message: &impl Reply, id: Option<&Value>) -> String {
    reply(message.to_value(), id)
}

/// `{"type":"hello",...}`: the first line of every connection.
pub fn hello(may_change_state: bool) -> String {
    let hello = Hello {
        v: VERSION,
        version: env!("CARGO_PKG_VERSION").into(),
        capabilities: COMMANDS
            .into_iter()
            .filter(|c| may_change_state || !c.changes_state())
            .collect(),
        max_line_bytes: MAX_LINE_BYTES as u64,
    };
    render(&hello, None)
}

/// `{"type":"error","code":...,"message":...}`.
pub fn error(err: &ProtocolError, id: Option<&Value>) -> String {
    connection_error_with_id(err.code(), &err.to_string(), id)
}

/// An error that is not about one line (the connection is being refused or closed).
pub fn connection_error(code: ErrorCode, message: &str) -> String {
    connection_error_with_id(code, message, None)
}

fn connection_error_with_id(code: ErrorCode, message: &str, id: Option<&Value>) -> String {
    let error = protocol::Error {
        code,
        message: message.into(),
    };
    render(&error, id)
}

/// `{"type":"lagged","missed":N}`.
pub fn lagged(missed: u64) -> String {
    render(&Lagged { missed }, None)
}

/// `{"type":"bye","reason":"shutdown"}`.
pub fn bye() -> String {
    render(
        &Bye {
            reason: ByeReason::Shutdown,
        },
        None,
    )
}

/// The types and roles a subscription ended up with, for its `ok`.
pub fn subscribed(filter: &Filter, id: Option<&Value>) -> String {
    let types = match &filter.types {
        Some(t) => t.clone(),
        None => protocol::ALL_TOPICS.into(),
    };
    let roles = match &filter.roles {
        Some(r) => r.clone(),
        None => vec![Role::Proxy, Role::Target],
    };
    render(
        &Success::Subscribe(protocol::Subscribed { types, roles }),
        id,
    )
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn code(line: &[u8]) -> String {
        let code = parse_line(line).request.unwrap_err().code();
        serde_json::to_value(code)
            .unwrap()
            .as_str()
            .unwrap()
            .to_owned()
    }

    #[test]
    fn commands_parse_with_their_id() {
        let p = parse_line(br#"{"cmd":"ping","id":7}"#);
        assert_eq!(p.id, Some(json!(7)));
        assert_eq!(p.request.unwrap(), Action::Ping);
        let p = parse_line(
            br#"{"id":"a","cmd":"subscribe","types":["evict","reinstate"],"roles":["proxy"]}"#,
        );
        assert_eq!(p.id, Some(json!("a")));
        assert_eq!(
            p.request.unwrap(),
            Action::Subscribe(Filter {
                types: Some(vec![Topic::Evict, Topic::Reinstate]),
                roles: Some(vec![Role::Proxy])
            })
        );
        assert_eq!(
            parse_line(br#"{"cmd":"evict","dst":"[::ffff:10.0.0.1]:80","for_ms":5000}"#)
                .request
                .unwrap(),
            Action::Evict {
                dst: "10.0.0.1:80".parse().unwrap(),
                duration: Some(Duration::from_secs(5))
            }
        );
        assert_eq!(
            parse_line(br#"{"cmd":"pool","op":"add","members":["10.0.0.0/24:8080","10.0.0.9:1"]}"#)
                .request
                .unwrap(),
            Action::Pool {
                op: PoolOp::Add,
                members: vec![
                    "10.0.0.0/24:8080".parse().unwrap(),
                    "10.0.0.9:1".parse().unwrap()
                ]
            }
        );
        // `pool list` has its own action (it used to reach the pipeline as an empty
        // add), and the encoding clients have always sent still means it.
        for line in [
            &br#"{"cmd":"pool","op":"list"}"#[..],
            br#"{"cmd":"pool","op":"list","members":[]}"#,
        ] {
            let list = parse_line(line).request.unwrap();
            assert_eq!(list, Action::PoolList);
            assert!(!list.changes_state());
        }
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
