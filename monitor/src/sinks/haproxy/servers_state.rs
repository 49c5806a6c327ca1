//! Parser for HAProxy's `show servers state [<backend>]` answer: how the adapter learns
//! which `backend/server` an evicted `address:port` is.
//!
//! The answer is a version line (`1`), a `# ` header naming the columns, then one line
//! per server, fields separated by spaces. Columns were added over HAProxy releases
//! (1.6 had no `srv_fqdn`/`srv_port`, 2.x added `srvrecord`, `srv_use_ssl`, …), so
//! fields are found by the header's column names, never by position. An error answer
//! (`Can't find backend.`) has no version line and is returned as text.

use std::net::{IpAddr, SocketAddr};

/// `srv_admin_state` bit set by `set server … state maint` (SRV_ADMF_FMAINT in
/// HAProxy's `include/haproxy/server-t.h`).
pub const ADMIN_FORCED_MAINT: u32 = 0x01;

/// One server line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerState {
    pub backend: String,
    pub server: String,
    /// `srv_addr:srv_port`; None when HAProxy has no usable address yet (an unresolved
    /// FQDN prints `-` or `0.0.0.0`) or the port is 0 (forward to the client's port).
    pub addr: Option<SocketAddr>,
    /// `srv_op_state`: 0 stopped, 1 starting, 2 running, 3 stopping.
    pub op_state: u32,
    /// `srv_admin_state`: bit field, [`ADMIN_FORCED_MAINT`] among others.
    pub admin_state: u32,
}

impl ServerState {
    /// Whether an operator or connmon forced this server into maintenance.
    pub fn forced_maint(&self) -> bool {
        self.admin_state & ADMIN_FORCED_MAINT != 0
    }
}

/// Why an answer is not a servers-state table.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ServersStateError {
    /// HAProxy answered with a message instead (e.g. `Can't find backend.`).
    #[error("haproxy answered {0:?}")]
    Refused(String),
    #[error("unsupported servers-state format version {0:?} (expected 1)")]
    Version(String),
    #[error("servers-state answer has no '# ' header line")]
    NoHeader,
    #[error("servers-state header lacks column {0:?}")]
    MissingColumn(&'static str),
    #[error("servers-state line {line}: {reason}: {text:?}")]
    BadLine {
        line: usize,
        text: String,
        reason: String,
    },
}

/// The columns the adapter needs.
const COLUMNS: [&str; 6] = [
    "be_name",
    "srv_name",
    "srv_addr",
    "srv_port",
    "srv_op_state",
    "srv_admin_state",
];

/// Parses a whole answer into its server lines.
pub fn parse(text: &str) -> Result<Vec<ServerState>, ServersStateError> {
    let mut lines = text.lines().enumerate();
    let version = loop {
        match lines.next() {
            Some((_, l)) if l.trim().is_empty() => continue,
            Some((_, l)) => break l.trim(),
            None => return Ok(Vec::new()),
        }
    };
    if version.starts_with('#') {
        return Err(ServersStateError::Version("(missing)".into()));
    }
    if version.parse::<u32>().is_err() {
        return Err(ServersStateError::Refused(text.trim().to_owned()));
    }
    if version != "1" {
        return Err(ServersStateError::Version(version.to_owned()));
    }
    let header = match lines.next() {
        Some((_, l)) => l.strip_prefix('#').ok_or(ServersStateError::NoHeader)?,
        None => return Ok(Vec::new()),
    };
    let names: Vec<&str> = header.split_whitespace().collect();
    let mut index = [0usize; COLUMNS.len()];
    for (slot, column) in index.iter_mut().zip(COLUMNS) {
        *slot = names
            .iter()
            .position(|n| *n == column)
            .ok_or(ServersStateError::MissingColumn(column))?;
    }
    let [be, srv, addr, port, op, admin] = index;
    let mut servers = Vec::new();
    for (i, line) in lines {
        if line.trim().is_empty() || line.starts_with('#') {
            continue;
        }
        let fields: Vec<&str> = line.split_whitespace().collect();
        let bad = |reason: String| ServersStateError::BadLine {
            line: i + 1,
            text: line.to_owned(),
            reason,
        };
        if fields.len() < names.len() {
            return Err(bad(format!(
                "{} fields, the header names {}",
                fields.len(),
                names.len()
            )));
        }
        let number = |col: usize, name: &str| {
            fields[col]
                .parse::<u32>()
                .map_err(|_| bad(format!("{name} is not a number")))
        };
        let port = fields[port]
            .parse::<u16>()
            .map_err(|_| bad("srv_port is not a port".into()))?;
        servers.push(ServerState {
            backend: fields[be].to_owned(),
            server: fields[srv].to_owned(),
            addr: server_addr(fields[addr], port),
            op_state: number(op, "srv_op_state")?,
            admin_state: number(admin, "srv_admin_state")?,
        });
    }
    Ok(servers)
}

/// HAProxy prints IPv6 without brackets (`::1`) and keeps v4-mapped addresses as written
/// (`::ffff:127.0.0.5`); connmon reports a v4-mapped destination as IPv4, so it is
/// canonicalised the same way.
fn server_addr(text: &str, port: u16) -> Option<SocketAddr> {
    let ip: IpAddr = text
        .trim_start_matches('[')
        .trim_end_matches(']')
        .parse()
        .ok()?;
    let ip = ip.to_canonical();
    (port != 0 && !ip.is_unspecified()).then(|| SocketAddr::new(ip, port))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Captured from HAProxy 2.6.12 (Debian 12) with `proxies/closed` set to maint.
    const CAPTURED: &str = include_str!("testdata/servers_state_2.6.txt");
    /// Captured from HAProxy 2.6.12: `show servers state nope`.
    const NO_SUCH_BACKEND: &str = include_str!("testdata/no_such_backend_2.6.txt");

    #[test]
    fn parses_a_captured_answer_by_column_name() {
        let servers = parse(CAPTURED).unwrap();
        let got: Vec<(&str, &str, Option<SocketAddr>, u32, u32)> = servers
            .iter()
            .map(|s| {
                (
                    s.backend.as_str(),
                    s.server.as_str(),
                    s.addr,
                    s.op_state,
                    s.admin_state,
                )
            })
            .collect();
        assert_eq!(
            got,
            vec![
                (
                    "proxies",
                    "up",
                    Some("127.0.0.1:18081".parse().unwrap()),
                    2,
                    0
                ),
                (
                    "proxies",
                    "closed",
                    Some("127.0.0.1:18082".parse().unwrap()),
                    0,
                    1
                ),
                (
                    "proxies",
                    "bh",
                    Some("10.200.0.2:80".parse().unwrap()),
                    2,
                    0
                ),
                ("proxies", "v6", Some("[::1]:3128".parse().unwrap()), 2, 0),
                (
                    "proxies",
                    "mapped",
                    Some("127.0.0.5:81".parse().unwrap()),
                    2,
                    0
                ),
            ]
        );
        assert!(servers[1].forced_maint() && !servers[0].forced_maint());
    }

    #[test]
    fn an_error_answer_is_returned_as_text() {
        assert_eq!(
            parse(NO_SUCH_BACKEND),
            Err(ServersStateError::Refused("Can't find backend.".into()))
        );
        assert_eq!(
            parse("Permission denied\n\n"),
            Err(ServersStateError::Refused("Permission denied".into()))
        );
    }

    #[test]
    fn columns_are_found_wherever_the_header_puts_them() {
        // An older (1.8-like) column set, reordered: only the header says where fields are.
        let text = "1\n# srv_port srv_name be_id be_name srv_admin_state srv_addr srv_op_state\n8080 a 3 web 1 2001:db8::7 2\n0 b 3 web 0 10.0.0.1 2\n80 c 3 web 0 - 0\n";
        let servers = parse(text).unwrap();
        assert_eq!(servers[0].addr, Some("[2001:db8::7]:8080".parse().unwrap()));
        assert_eq!(
            (
                servers[0].backend.as_str(),
                servers[0].server.as_str(),
                servers[0].admin_state
            ),
            ("web", "a", 1)
        );
        assert_eq!(
            servers[1].addr, None,
            "port 0 cannot be matched to a destination"
        );
        assert_eq!(servers[2].addr, None, "no address yet");
    }

    #[test]
    fn malformed_answers_are_clear_errors() {
        assert_eq!(
            parse("2\n# be_name\n"),
            Err(ServersStateError::Version("2".into()))
        );
        assert_eq!(
            parse("1\nbe_name srv_name\n"),
            Err(ServersStateError::NoHeader)
        );
        assert_eq!(
            parse("1\n# be_name srv_name srv_addr srv_port srv_op_state\n"),
            Err(ServersStateError::MissingColumn("srv_admin_state"))
        );
        let header = "1\n# be_name srv_name srv_addr srv_port srv_op_state srv_admin_state\n";
        assert!(matches!(
            parse(&format!("{header}web a 10.0.0.1 80 2\n")),
            Err(ServersStateError::BadLine { line: 3, .. })
        ));
        assert!(matches!(
            parse(&format!("{header}web a 10.0.0.1 99999 2 0\n")),
            Err(ServersStateError::BadLine { .. })
        ));
        assert!(matches!(
            parse(&format!("{header}web a 10.0.0.1 80 x 0\n")),
            Err(ServersStateError::BadLine { .. })
        ));
        assert_eq!(parse(""), Ok(Vec::new()));
        assert_eq!(parse(header), Ok(Vec::new()), "an empty backend");
    }
}
