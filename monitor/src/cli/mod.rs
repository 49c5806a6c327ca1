//! The client subcommands — `connmon watch`, `status`, `evict`, `reinstate`, `pool` — that
//! talk to a running agent over its Unix socket (NDJSON v1, docs/protocol.md). They are
//! short-lived and sequential, so they use a blocking `std` socket.

pub mod fleet;
pub mod render;
pub mod top;

use std::{
    io::{BufRead as _, BufReader, IsTerminal as _, Write as _},
    os::unix::net::UnixStream,
    path::{Path, PathBuf},
    time::Duration,
};

use clap::{Args, Subcommand};
use serde_json::Value;

use crate::{
    config::DEFAULT_SOCKET,
    policy::config::parse_duration,
    protocol::{self, Request, Role, Topic},
};

/// Why a client command failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot connect to {0}: no agent is running (start one with connmon run)")]
    NotRunning(PathBuf),
    #[error(
        "cannot connect to {0}: permission denied (the socket is mode 0660: run as root or as a member of agent.socket_group)"
    )]
    PermissionDenied(PathBuf),
    #[error("cannot connect to {path}: {source}")]
    Connect {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("lost the connection to the agent: {0}")]
    Io(#[from] std::io::Error),
    #[error("the agent closed the connection")]
    Closed,
    #[error("the agent sent a line that is not JSON: {0}")]
    Garbled(String),
    #[error("the agent answered {code}: {message}")]
    Agent { code: String, message: String },
}

/// A connection to the agent, past its `hello`.
pub struct Client {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
    pub hello: Value,
    next_id: u64,
}

impl Client {
    pub fn connect(path: &Path) -> Result<Self, ClientError> {
        let stream = UnixStream::connect(path).map_err(|source| match source.kind() {
            std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused => {
                ClientError::NotRunning(path.to_path_buf())
            }
            std::io::ErrorKind::PermissionDenied => {
                ClientError::PermissionDenied(path.to_path_buf())
            }
            _ => ClientError::Connect {
                path: path.to_path_buf(),
                source,
            },
        })?;
        let writer = stream.try_clone()?;
        let mut client = Client {
            reader: BufReader::new(stream),
            writer,
            hello: Value::Null,
            next_id: 1,
        };
        let hello = client.next_message()?.ok_or(ClientError::Closed)?;
        match hello["type"].as_str() {
            Some("hello") => client.hello = hello,
            Some("error") => return Err(agent_error(&hello)),
            _ => return Err(ClientError::Garbled(hello.to_string())),
        }
        Ok(client)
    }

    /// The next message, `None` at end of stream.
    pub fn next_message(&mut self) -> Result<Option<Value>, ClientError> {
        let mut line = String::new();
        if self.reader.read_line(&mut line)? == 0 {
            return Ok(None);
        }
        serde_json::from_str(line.trim_end())
            .map(Some)
            .map_err(|_| ClientError::Garbled(line.trim_end().to_owned()))
    }

    /// Sends a command with a fresh `id` and returns its reply (events in between are
    /// skipped); an `error` reply is an `Err`.
    pub fn request(&mut self, command: &Request) -> Result<Value, ClientError> {
        let id = self.next_id;
        self.next_id += 1;
        let mut line = command.to_line(Some(&Value::from(id)));
        line.push('\n');
        self.writer.write_all(line.as_bytes())?;
        loop {
            let reply = self.next_message()?.ok_or(ClientError::Closed)?;
            if reply["id"] == id {
                return if reply["type"] == "error" {
                    Err(agent_error(&reply))
                } else {
                    Ok(reply)
                };
            }
            if reply["type"] == "bye" {
                return Err(ClientError::Closed);
            }
        }
    }
}

fn agent_error(v: &Value) -> ClientError {
    ClientError::Agent {
        code: v["code"].as_str().unwrap_or("unknown").to_owned(),
        message: v["message"].as_str().unwrap_or_default().to_owned(),
    }
}

/// `--socket`, shared by every client subcommand.
#[derive(Args, Clone, Debug)]
pub struct SocketArg {
    /// The agent's socket.
    #[arg(long, global = true, default_value = DEFAULT_SOCKET)]
    pub socket: PathBuf,
}

/// `connmon watch`.
#[derive(Args, Debug)]
pub struct WatchArgs {
    #[command(flatten)]
    pub socket: SocketArg,
    /// Only these message types (comma-separated): connect, syn_retransmit, evict,
    /// reinstate, suspect, diagnosis, stats [default: all].
    #[arg(long, value_delimiter = ',', value_parser = wire_name::<Topic>)]
    pub types: Vec<Topic>,
    /// Only destinations of these roles (comma-separated): proxy, target [default: both].
    #[arg(long, value_delimiter = ',', value_parser = wire_name::<Role>)]
    pub roles: Vec<Role>,
    /// Exit after this many events.
    #[arg(long)]
    pub count: Option<u64>,
    /// Print NDJSON even on a terminal.
    #[arg(long)]
    pub json: bool,
}

/// A protocol enum from its name on the wire (`syn_retransmit`, `proxy`).
fn wire_name<T: serde::de::DeserializeOwned>(name: &str) -> Result<T, String> {
    serde_json::from_value(Value::String(name.to_owned())).map_err(|e| e.to_string())
}

/// `connmon status`.
#[derive(Args, Debug)]
pub struct StatusArgs {
    #[command(flatten)]
    pub socket: SocketArg,
    /// Print the snapshot as one JSON object instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Sort destinations by this column, largest first [default: by address].
    #[arg(long, value_enum)]
    pub sort: Option<top::SortKey>,
    /// Only pool members (role proxy).
    #[arg(long)]
    pub proxies_only: bool,
    /// Only destinations that failed or are not healthy.
    #[arg(long)]
    pub failing_only: bool,
}

/// `connmon evict`.
#[derive(Args, Debug)]
pub struct EvictArgs {
    #[command(flatten)]
    pub socket: SocketArg,
    /// The destination, ADDR:PORT or [V6]:PORT.
    pub dst: String,
    /// How long (e.g. 30s, 5m) [default: policy.base_ejection].
    #[arg(long = "for", value_parser = parse_duration)]
    pub duration: Option<Duration>,
}

/// `connmon reinstate`.
#[derive(Args, Debug)]
pub struct ReinstateArgs {
    #[command(flatten)]
    pub socket: SocketArg,
    /// The destination, ADDR:PORT or [V6]:PORT.
    pub dst: String,
}

/// `connmon pool`.
#[derive(Args, Debug)]
pub struct PoolArgs {
    #[command(flatten)]
    pub socket: SocketArg,
    #[command(subcommand)]
    pub op: PoolSubcommand,
}

#[derive(Subcommand, Debug)]
pub enum PoolSubcommand {
    /// Add members (ADDR:PORT, [V6]:PORT, CIDR:PORT, CIDR, ADDR).
    Add {
        #[arg(required = true)]
        members: Vec<String>,
    },
    /// Remove members (exactly as listed by `pool list`).
    Remove {
        #[arg(required = true)]
        members: Vec<String>,
    },
    /// Replace the whole pool.
    Replace { members: Vec<String> },
    /// Print the pool, one entry per line.
    List,
}

/// `connmon watch`: subscribe and print events until interrupted (or `--count`).
pub fn watch(args: &WatchArgs) -> anyhow::Result<()> {
    let mut client = Client::connect(&args.socket.socket)?;
    let subscribe = protocol::Subscribe {
        types: (!args.types.is_empty()).then(|| args.types.clone()),
        roles: (!args.roles.is_empty()).then(|| args.roles.clone()),
    };
    client.request(&Request::Subscribe(subscribe))?;
    let pretty = !args.json && std::io::stdout().is_terminal();
    let palette = crate::sinks::text::Palette::new(crate::sinks::text::colour_wanted(pretty));
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    let mut seen = 0u64;
    while args.count.is_none_or(|n| seen < n) {
        let Some(msg) = client.next_message()? else {
            anyhow::bail!("the agent closed the connection");
        };
        match msg["type"].as_str() {
            Some("bye") => {
                eprintln!("connmon: the agent shut down");
                return Ok(());
            }
            Some("lagged") if !pretty => {
                eprintln!(
                    "connmon: missed {} events (reading too slowly)",
                    msg["missed"]
                );
            }
            _ => {}
        }
        if msg.get("id").is_some() {
            continue;
        }
        let line = if pretty {
            render::pretty(&msg, &palette)
        } else {
            msg.to_string()
        };
        // A closed pipe (`connmon watch | head`) ends the watch quietly.
        if writeln!(out, "{line}").and_then(|()| out.flush()).is_err() {
            return Ok(());
        }
        if msg["type"] != "lagged" {
            seen += 1;
        }
    }
    Ok(())
}

/// `connmon status`.
pub fn status(args: &StatusArgs) -> anyhow::Result<()> {
    let mut client = Client::connect(&args.socket.socket)?;
    let mut snapshot = client.request(&Request::Snapshot(protocol::Snapshot {}))?;
    if let Value::Object(map) = &mut snapshot {
        map.remove("id");
    }
    let view = top::View {
        sort: args.sort.unwrap_or(top::SortKey::Destination),
        proxies_only: args.proxies_only,
        failing_only: args.failing_only,
    };
    let mut rows = top::filter(&snapshot, &view);
    if let Some(key) = args.sort {
        top::sort(&mut rows, key);
    }
    let selected: Vec<Value> = rows.into_iter().cloned().collect();
    snapshot["destinations"] = Value::Array(selected);
    if args.json {
        println!("{snapshot}");
    } else {
        print!("{}", render::status_table(&snapshot));
    }
    Ok(())
}

/// `connmon evict`.
pub fn evict(args: &EvictArgs) -> anyhow::Result<()> {
    let mut client = Client::connect(&args.socket.socket)?;
    let command = protocol::Evict {
        dst: args.dst.clone(),
        for_ms: args.duration.map(|d| d.as_millis().max(1) as u64),
    };
    let reply = client.request(&Request::Evict(command))?;
    println!("evicted {}", reply["dst"].as_str().unwrap_or(&args.dst));
    Ok(())
}

/// `connmon reinstate`.
pub fn reinstate(args: &ReinstateArgs) -> anyhow::Result<()> {
    let mut client = Client::connect(&args.socket.socket)?;
    let dst = args.dst.clone();
    let reply = client.request(&Request::Reinstate(protocol::Reinstate { dst }))?;
    println!("reinstated {}", reply["dst"].as_str().unwrap_or(&args.dst));
    Ok(())
}

/// `connmon pool add|remove|replace|list`: prints the resulting pool.
pub fn pool(args: &PoolArgs) -> anyhow::Result<()> {
    let mut client = Client::connect(&args.socket.socket)?;
    let members = |members: &Vec<String>| protocol::PoolMembers {
        members: members.clone(),
    };
    let command = match &args.op {
        PoolSubcommand::Add { members: m } => protocol::Pool::Add(members(m)),
        PoolSubcommand::Remove { members: m } => protocol::Pool::Remove(members(m)),
        PoolSubcommand::Replace { members: m } => protocol::Pool::Replace(members(m)),
        PoolSubcommand::List => protocol::Pool::List(protocol::PoolList::default()),
    };
    let reply = client.request(&Request::Pool(command))?;
    for entry in reply["pool"].as_array().into_iter().flatten() {
        println!("{}", entry.as_str().unwrap_or_default());
    }
    Ok(())
}
