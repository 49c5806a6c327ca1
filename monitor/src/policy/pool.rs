//! Pool membership: which destinations are the pool's members ("proxies") and may be
//! ejected, and which are merely observed ("targets"). Entries come from the `[policy]
//! pool` list and/or a `--pool` file, one per line:
//!
//! ```text
//! 198.51.100.44:8080      # one member
//! [2001:db8::7]:3128      # IPv6 member
//! 10.1.0.0/16:8080        # every address of a network, one port
//! [2001:db8::/48]:3128    # (also written 2001:db8::/48:3128)
//! 10.2.0.0/24             # a network, any port
//! 192.0.2.9               # an address, any port
//! ```
//!
//! With no pool configured at all, every destination is a candidate for ejection (role
//! `proxy`): that is the seed's use, a host whose outgoing connections all go to the
//! pool. A configured but empty pool makes every destination a target.

use std::{
    collections::HashSet,
    fmt,
    net::{IpAddr, SocketAddr},
    str::FromStr,
};

use ipnet::IpNet;
use serde::Serialize;

/// How a pool command changes the membership.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PoolOp {
    Add,
    Remove,
    Replace,
}

/// What a destination is to the pool.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, serde::Deserialize, schemars::JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// A pool member: may be ejected.
    Proxy,
    /// Anything else: tracked and reported, ejected only with `evict_targets`.
    Target,
}

/// One pool line.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PoolEntry {
    /// One address and port.
    Member(SocketAddr),
    /// Every address of a network, on one port or (`None`) any port.
    Network { net: IpNet, port: Option<u16> },
}

impl PoolEntry {
    fn contains(&self, dst: &SocketAddr) -> bool {
        match *self {
            PoolEntry::Member(member) => member == *dst,
            PoolEntry::Network { net, port } => {
                port.is_none_or(|p| p == dst.port()) && net.contains(&dst.ip())
            }
        }
    }
}

impl fmt::Display for PoolEntry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            PoolEntry::Member(member) => write!(f, "{member}"),
            PoolEntry::Network {
                net: IpNet::V6(net),
                port: Some(p),
            } => write!(f, "[{net}]:{p}"),
            PoolEntry::Network { net, port: Some(p) } => write!(f, "{net}:{p}"),
            PoolEntry::Network { net, port: None } => write!(f, "{net}"),
        }
    }
}

impl FromStr for PoolEntry {
    type Err = PoolEntryError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        PoolMembership::parse_entry(text)
    }
}

/// Why one pool entry does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PoolEntryError {
    #[error("expected ADDR:PORT, [V6]:PORT, CIDR:PORT, CIDR or ADDR")]
    Syntax,
    #[error("invalid address {0:?}")]
    Address(String),
    #[error("invalid port {0:?}")]
    Port(String),
    #[error("port 0 is not a destination port")]
    PortZero,
    #[error("invalid prefix length {0:?} (at most 32 for IPv4, 128 for IPv6)")]
    Prefix(String),
}

/// A pool text with bad lines; every bad line is listed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", .lines.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))]
pub struct PoolError {
    pub lines: Vec<BadLine>,
}

/// One bad line of a pool text.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {text:?}: {reason}")]
pub struct BadLine {
    /// 1-based line number.
    pub line: usize,
    pub text: String,
    pub reason: PoolEntryError,
}

/// The configured pool, or its absence.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PoolMembership {
    configured: bool,
    members: HashSet<SocketAddr>,
    networks: Vec<PoolEntry>,
}

impl PoolMembership {
    /// No pool: every destination is a candidate.
    pub fn unconfigured() -> Self {
        PoolMembership::default()
    }

    /// A configured pool of these entries (possibly none).
    pub fn from_entries(entries: impl IntoIterator<Item = PoolEntry>) -> Self {
        let mut pool = PoolMembership {
            configured: true,
            ..PoolMembership::default()
        };
        for entry in entries {
            match entry {
                PoolEntry::Member(member) => {
                    pool.members.insert(member);
                }
                network => {
                    if !pool.networks.contains(&network) {
                        pool.networks.push(network);
                    }
                }
            }
        }
        pool
    }

    /// The entries of a configured pool, members sorted first, then networks in order.
    pub fn entries(&self) -> Vec<PoolEntry> {
        let mut members: Vec<SocketAddr> = self.members.iter().copied().collect();
        members.sort();
        members
            .into_iter()
            .map(PoolEntry::Member)
            .chain(self.networks.iter().copied())
            .collect()
    }

    /// Applies a pool command: add or remove entries, or replace them all. The result is
    /// always a configured pool.
    pub fn apply(&self, op: PoolOp, entries: &[PoolEntry]) -> Self {
        match op {
            PoolOp::Replace => Self::from_entries(entries.iter().copied()),
            PoolOp::Add => {
                Self::from_entries(self.entries().into_iter().chain(entries.iter().copied()))
            }
            PoolOp::Remove => {
                Self::from_entries(self.entries().into_iter().filter(|e| !entries.contains(e)))
            }
        }
    }

    /// Parses a pool file: one entry per line, `#` starts a comment, blank lines ignored.
    pub fn parse(text: &str) -> Result<Self, PoolError> {
        Self::parse_entries(text).map(Self::from_entries)
    }

    /// Parses a pool file into its entries.
    pub fn parse_entries(text: &str) -> Result<Vec<PoolEntry>, PoolError> {
        let mut entries = Vec::new();
        let mut bad = Vec::new();
        for (i, raw) in text.lines().enumerate() {
            let line = raw.split('#').next().unwrap_or_default().trim();
            if line.is_empty() {
                continue;
            }
            match Self::parse_entry(line) {
                Ok(entry) => entries.push(entry),
                Err(reason) => bad.push(BadLine {
                    line: i + 1,
                    text: line.to_owned(),
                    reason,
                }),
            }
        }
        if bad.is_empty() {
            Ok(entries)
        } else {
            Err(PoolError { lines: bad })
        }
    }

    /// Parses one entry.
    pub fn parse_entry(text: &str) -> Result<PoolEntry, PoolEntryError> {
        let text = text.trim();
        let (host, port) = if let Some(inner) = text.strip_prefix('[') {
            let (host, after) = inner.split_once(']').ok_or(PoolEntryError::Syntax)?;
            let port = match after {
                "" => None,
                _ => Some(after.strip_prefix(':').ok_or(PoolEntryError::Syntax)?),
            };
            (host, port)
        } else if let Some((ip, rest)) = text.split_once('/') {
            match rest.split_once(':') {
                Some((prefix, port)) => (&text[..ip.len() + 1 + prefix.len()], Some(port)),
                None => (text, None),
            }
        } else if let Ok(sa) = text.parse::<SocketAddr>() {
            return build(sa.ip(), None, Some(sa.port()));
        } else if text.matches(':').count() == 1 {
            let (host, port) = text.split_once(':').ok_or(PoolEntryError::Syntax)?;
            (host, Some(port))
        } else {
            (text, None)
        };
        let port = port.map(parse_port).transpose()?;
        let (ip, prefix) = match host.split_once('/') {
            Some((ip, prefix)) => {
                let prefix: u8 = prefix
                    .parse()
                    .map_err(|_| PoolEntryError::Prefix(prefix.to_owned()))?;
                (ip, Some(prefix))
            }
            None => (host, None),
        };
        let ip: IpAddr = ip
            .parse()
            .map_err(|_| PoolEntryError::Address(ip.to_owned()))?;
        build(ip, prefix, port)
    }

    /// Whether a pool was configured at all.
    pub fn is_configured(&self) -> bool {
        self.configured
    }

    /// The role of a destination.
    pub fn role(&self, dst: &SocketAddr) -> Role {
        if !self.configured
            || self.members.contains(dst)
            || self.networks.iter().any(|n| n.contains(dst))
        {
            Role::Proxy
        } else {
            Role::Target
        }
    }

    /// Members named by address and port: known to the ejection guard before any traffic.
    pub fn members(&self) -> &HashSet<SocketAddr> {
        &self.members
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.members.len() + self.networks.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

fn parse_port(text: &str) -> Result<u16, PoolEntryError> {
    match text.parse::<u16>() {
        Ok(0) => Err(PoolEntryError::PortZero),
        Ok(p) => Ok(p),
        Err(_) => Err(PoolEntryError::Port(text.to_owned())),
    }
}

/// Canonicalises (v4-mapped IPv6 → IPv4, host bits cleared) and builds an entry.
fn build(ip: IpAddr, prefix: Option<u8>, port: Option<u16>) -> Result<PoolEntry, PoolEntryError> {
    if port == Some(0) {
        return Err(PoolEntryError::PortZero);
    }
    let (ip, prefix) = match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => match prefix {
                None => (IpAddr::V4(v4), None),
                Some(p) if p >= 96 => (IpAddr::V4(v4), Some(p - 96)),
                Some(p) => (ip, Some(p)),
            },
            None => (ip, prefix),
        },
        IpAddr::V4(_) => (ip, prefix),
    };
    let net = match prefix {
        Some(prefix) => IpNet::new(ip, prefix)
            .map_err(|_| PoolEntryError::Prefix(prefix.to_string()))?
            .trunc(),
        None => IpNet::from(ip),
    };
    match port {
        Some(port) if net.prefix_len() == net.max_prefix_len() => {
            Ok(PoolEntry::Member(SocketAddr::new(ip, port)))
        }
        _ => Ok(PoolEntry::Network { net, port }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sa(text: &str) -> SocketAddr {
        text.parse().expect("test address")
    }

    #[test]
    fn parses_every_entry_form() {
        let text = "\
# pool of proxies
198.51.100.44:8080
[2001:db8::7]:3128   # v6 member

10.1.0.0/16:8080
[2001:db8::/48]:3128
2001:db8:1::/48:443
10.2.0.5/24
192.0.2.9
::ffff:203.0.113.1
[::ffff:203.0.113.2]:80
";
        let pool = PoolMembership::parse(text).expect("valid pool");
        assert_eq!(pool.len(), 9);
        for proxy in [
            "198.51.100.44:8080",
            "[2001:db8::7]:3128",
            "10.1.200.3:8080",
            "[2001:db8:0:ffff::1]:3128",
            "[2001:db8:1::9]:443",
            "10.2.0.77:1",
            "192.0.2.9:65535",
            "203.0.113.2:80",
            "203.0.113.1:22",
        ] {
            assert_eq!(pool.role(&sa(proxy)), Role::Proxy, "{proxy}");
        }
        for target in [
            "198.51.100.44:8081",
            "10.1.200.3:8081",
            "[2001:db8:1::9]:80",
            "10.2.1.1:80",
            "192.0.2.10:80",
        ] {
            assert_eq!(pool.role(&sa(target)), Role::Target, "{target}");
        }
        assert!(pool.members().contains(&sa("198.51.100.44:8080")));
        assert!(
            pool.members().contains(&sa("203.0.113.2:80")),
            "v4-mapped canonicalised"
        );
        assert_eq!(pool.members().len(), 3);
    }

    #[test]
    fn full_length_prefix_with_port_is_a_member() {
        assert_eq!(
            PoolMembership::parse_entry("10.0.0.1/32:80"),
            Ok(PoolEntry::Member(sa("10.0.0.1:80")))
        );
        assert_eq!(
            "10.0.0.9/8".parse::<PoolEntry>().map(|e| e.to_string()),
            Ok("10.0.0.0/8".to_owned())
        );
    }

    #[test]
    fn bad_lines_name_line_number_and_text() {
        let text = "10.0.0.1:80\n10.0.0.300:80\n\n# fine\n10.0.0.0/33\n[::1:80\n10.0.0.1:0\n10.0.0.1:http\nhost.example:80\n";
        let err = PoolMembership::parse(text).expect_err("bad lines");
        let lines: Vec<usize> = err.lines.iter().map(|l| l.line).collect();
        assert_eq!(lines, [2, 5, 6, 7, 8, 9]);
        let message = err.to_string();
        assert!(
            message.starts_with("line 2: \"10.0.0.300:80\": invalid address"),
            "{message}"
        );
        for named in [
            "line 5: \"10.0.0.0/33\": invalid prefix length",
            "line 7: \"10.0.0.1:0\": port 0",
            "line 8: \"10.0.0.1:http\": invalid port",
        ] {
            assert!(message.contains(named), "{message}");
        }
    }

    #[test]
    fn unconfigured_pool_makes_everything_a_candidate_and_empty_pool_nothing() {
        let dst = sa("192.0.2.1:443");
        assert_eq!(PoolMembership::unconfigured().role(&dst), Role::Proxy);
        let empty = PoolMembership::parse("# nothing yet\n").expect("valid");
        assert!(empty.is_configured());
        assert_eq!(empty.role(&dst), Role::Target);
    }
}
