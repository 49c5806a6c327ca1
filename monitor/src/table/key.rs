//! The destination key: what the table, the policy, the state file and every decision
//! name a destination by.
//!
//! A routable address is one destination wherever the connect came from. A
//! namespace-local address — loopback (127.0.0.0/8, `::1`) or unspecified (`0.0.0.0`,
//! `::`, which the kernel connects to the local host) — is a different destination in
//! each network namespace: `127.0.0.1:8080` inside a container is that container's own
//! loopback, not the host's. Such a destination seen from connmon's own namespace (the
//! host's) keeps `netns: None`, exactly like a routable one, so pool members,
//! `connmon evict 127.0.0.1:P` and state files mean what they always meant; seen from
//! any other namespace it carries that namespace's inode.

use std::{
    fmt,
    net::{IpAddr, SocketAddr},
};

use serde::Serialize;

/// One destination. See the module documentation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct DestinationKey {
    /// `ip:port`.
    #[serde(rename = "dst")]
    pub addr: SocketAddr,
    /// The network namespace (inode) of a namespace-local address seen from a
    /// namespace other than connmon's own; `None` otherwise.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub netns: Option<u32>,
}

impl DestinationKey {
    /// A destination in connmon's own namespace (or a routable one).
    pub const fn host(addr: SocketAddr) -> Self {
        DestinationKey { addr, netns: None }
    }

    /// The key of `addr` connected to from network namespace `netns`, where connmon
    /// runs in `host_netns`. An unknown namespace (0) is taken as the host's.
    pub fn of(addr: SocketAddr, netns: u32, host_netns: u32) -> Self {
        let foreign = netns != 0 && netns != host_netns;
        DestinationKey {
            addr,
            netns: (foreign && is_namespace_local(addr.ip())).then_some(netns),
        }
    }

    /// Whether this is another namespace's own loopback.
    pub fn is_foreign_local(&self) -> bool {
        self.netns.is_some()
    }
}

/// Whether connecting to `ip` stays inside the connecting task's network namespace.
pub(crate) fn is_namespace_local(ip: IpAddr) -> bool {
    ip.is_loopback() || ip.is_unspecified()
}

impl From<SocketAddr> for DestinationKey {
    fn from(addr: SocketAddr) -> Self {
        DestinationKey::host(addr)
    }
}

impl From<&SocketAddr> for DestinationKey {
    fn from(addr: &SocketAddr) -> Self {
        DestinationKey::host(*addr)
    }
}

impl From<&DestinationKey> for DestinationKey {
    fn from(key: &DestinationKey) -> Self {
        *key
    }
}

/// `127.0.0.1:8080`, or `127.0.0.1:8080 netns:4026532301` for another namespace's.
impl fmt::Display for DestinationKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.netns {
            None => write!(f, "{}", self.addr),
            Some(netns) => write!(f, "{} netns:{netns}", self.addr),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOST: u32 = 4026531840;
    const CONTAINER: u32 = 4026532301;

    #[test]
    fn only_namespace_local_addresses_from_other_namespaces_are_split() {
        let lo: SocketAddr = "127.0.0.1:8080".parse().unwrap();
        let lo6: SocketAddr = "[::1]:8080".parse().unwrap();
        let any: SocketAddr = "0.0.0.0:8080".parse().unwrap();
        let routable: SocketAddr = "198.51.100.7:8080".parse().unwrap();
        assert_eq!(DestinationKey::of(lo, HOST, HOST), DestinationKey::host(lo));
        assert_eq!(
            DestinationKey::of(lo, CONTAINER, HOST).netns,
            Some(CONTAINER)
        );
        assert_eq!(
            DestinationKey::of(lo6, CONTAINER, HOST).netns,
            Some(CONTAINER)
        );
        assert_eq!(
            DestinationKey::of(any, CONTAINER, HOST).netns,
            Some(CONTAINER)
        );
        assert_eq!(
            DestinationKey::of(routable, CONTAINER, HOST),
            DestinationKey::host(routable),
            "a routable address is one destination from everywhere"
        );
        assert_eq!(
            DestinationKey::of(lo, 0, HOST),
            DestinationKey::host(lo),
            "unknown namespace"
        );
        assert_ne!(
            DestinationKey::of(lo, CONTAINER, HOST),
            DestinationKey::of(lo, CONTAINER + 1, HOST)
        );
    }

    #[test]
    fn displays_and_serializes_the_namespace_next_to_the_address() {
        let lo: SocketAddr = "127.0.0.1:8080".parse().unwrap();
        let key = DestinationKey::of(lo, CONTAINER, HOST);
        assert_eq!(key.to_string(), "127.0.0.1:8080 netns:4026532301");
        assert_eq!(
            serde_json::to_string(&key).unwrap(),
            r#"{"dst":"127.0.0.1:8080","netns":4026532301}"#
        );
        assert_eq!(
            serde_json::to_string(&DestinationKey::host(lo)).unwrap(),
            r#"{"dst":"127.0.0.1:8080"}"#
        );
    }
}
