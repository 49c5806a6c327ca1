//! Decoded kernel events: what `monitor-ebpf` pushed through the ring buffer, as typed
//! Rust values. Decoding checks the record length and every enum value; a record that
//! does not fit is an error the reader counts, never a panic.

use std::{
    fmt,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    sync::Arc,
};

use monitor_common::{AF_INET, AF_INET6, ConnectEvent, kind, netns_owner, outcome};
use serde::{Serialize, Serializer};

use super::cgroup::CgroupOrigin;

/// How one outgoing connect attempt ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Established,
    Refused,
    Reset,
    Timeout,
    Abandoned,
    Unreachable,
}

impl Outcome {
    pub const ALL: [Outcome; 6] = [
        Outcome::Established,
        Outcome::Refused,
        Outcome::Reset,
        Outcome::Timeout,
        Outcome::Abandoned,
        Outcome::Unreachable,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Established => "established",
            Outcome::Refused => "refused",
            Outcome::Reset => "reset",
            Outcome::Timeout => "timeout",
            Outcome::Abandoned => "abandoned",
            Outcome::Unreachable => "unreachable",
        }
    }

    pub fn is_failure(self) -> bool {
        self != Outcome::Established
    }

    fn from_raw(raw: u32) -> Option<Self> {
        Some(match raw {
            outcome::ESTABLISHED => Outcome::Established,
            outcome::REFUSED => Outcome::Refused,
            outcome::RESET => Outcome::Reset,
            outcome::TIMEOUT => Outcome::Timeout,
            outcome::ABANDONED => Outcome::Abandoned,
            outcome::UNREACHABLE => Outcome::Unreachable,
            _ => return None,
        })
    }
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A count per outcome, serialized as an object keyed by outcome name.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct OutcomeCounts {
    pub established: u64,
    pub refused: u64,
    pub reset: u64,
    pub timeout: u64,
    pub abandoned: u64,
    pub unreachable: u64,
}

impl OutcomeCounts {
    pub fn from_fn(mut count: impl FnMut(Outcome) -> u64) -> Self {
        OutcomeCounts {
            established: count(Outcome::Established),
            refused: count(Outcome::Refused),
            reset: count(Outcome::Reset),
            timeout: count(Outcome::Timeout),
            abandoned: count(Outcome::Abandoned),
            unreachable: count(Outcome::Unreachable),
        }
    }
}

/// Address family of the socket (a v4-mapped IPv6 socket is `Ipv6` with IPv4 addresses).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Family {
    Ipv4,
    Ipv6,
}

/// A task command name (`comm`): up to 16 bytes, stored inline so decoding allocates nothing.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Comm([u8; 16]);

impl Comm {
    pub fn new(raw: [u8; 16]) -> Self {
        Comm(raw)
    }

    pub fn as_str(&self) -> std::borrow::Cow<'_, str> {
        let len = self.0.iter().position(|&b| b == 0).unwrap_or(self.0.len());
        String::from_utf8_lossy(&self.0[..len])
    }
}

impl From<&str> for Comm {
    fn from(s: &str) -> Self {
        let mut raw = [0u8; 16];
        let n = s.len().min(15);
        raw[..n].copy_from_slice(&s.as_bytes()[..n]);
        Comm(raw)
    }
}

impl fmt::Debug for Comm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.as_str())
    }
}

impl fmt::Display for Comm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.as_str())
    }
}

impl Serialize for Comm {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.as_str())
    }
}

/// Who owns the socket's network namespace, read in the kernel from
/// `net->user_ns->level` when the socket entered SYN_SENT.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum NetnsOwner {
    /// Not known (kernel struct offsets unresolved, or the read failed).
    #[default]
    Unknown,
    /// The initial user namespace: the namespace was created by real root (the host,
    /// Docker, containerd, CRI-O, `ip netns`).
    Initial,
    /// A child user namespace: rootless containers, `unshare -U` — any user can make one.
    Child,
}

impl NetnsOwner {
    fn from_raw(raw: u16) -> Self {
        match raw {
            netns_owner::INITIAL => NetnsOwner::Initial,
            netns_owner::CHILD => NetnsOwner::Child,
            _ => NetnsOwner::Unknown,
        }
    }
}

/// Who opened the connection, recorded when the socket entered SYN_SENT.
///
/// The kernel fills everything but `cgroup` (the agent resolves `cgroup_id` to its
/// cgroup v2 path and container, see [`super::cgroup`]) and `trusted` (the policy's
/// evidence scope decides it, see `policy::evidence`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Attribution {
    /// Kernel pid of the connecting thread.
    pub pid: u32,
    /// Kernel tgid: the process id.
    pub tgid: u32,
    pub comm: Comm,
    pub cgroup_id: u64,
    /// Inode number of the socket's network namespace (as in `/proc/PID/ns/net`).
    pub netns: u32,
    /// Who owns that network namespace.
    pub netns_owner: NetnsOwner,
    /// The cgroup v2 path of `cgroup_id` and the container it names, when resolved.
    pub cgroup: Option<Arc<CgroupOrigin>>,
    /// Whether this connect is evidence that may move a verdict.
    pub trusted: bool,
}

impl Attribution {
    /// The cgroup v2 path, if resolved.
    pub fn cgroup_path(&self) -> Option<&str> {
        self.cgroup.as_deref().map(|c| &*c.path)
    }

    /// The container id the cgroup path names, if any.
    pub fn container(&self) -> Option<&str> {
        self.cgroup.as_deref().and_then(|c| c.container.as_deref())
    }

    /// The Kubernetes pod UID the cgroup path names, if any.
    pub fn pod_uid(&self) -> Option<&str> {
        self.cgroup.as_deref().and_then(|c| c.pod_uid.as_deref())
    }

    /// A trusted process `comm` (pid 1) in cgroup 1 and network namespace 1, owned by
    /// the initial user namespace: the connecting process of test and bench records.
    #[doc(hidden)]
    pub fn fixture(comm: &str) -> Self {
        Attribution {
            pid: 1,
            tgid: 1,
            comm: Comm::from(comm),
            cgroup_id: 1,
            netns: 1,
            netns_owner: NetnsOwner::Initial,
            cgroup: None,
            trusted: true,
        }
    }
}

/// The final outcome of one connect attempt.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConnectRecord {
    pub outcome: Outcome,
    /// CLOCK_MONOTONIC nanoseconds when the outcome happened.
    pub ktime_ns: u64,
    /// CLOCK_MONOTONIC nanoseconds when the SYN was sent.
    pub start_ns: u64,
    pub family: Family,
    pub src: SocketAddr,
    pub dst: SocketAddr,
    pub who: Attribution,
    pub syn_retransmits: u32,
    /// `sk_err` at close (ECONNREFUSED, ETIMEDOUT, EHOSTUNREACH, ...), 0 if none.
    pub errno: u32,
}

impl ConnectRecord {
    /// Time from the SYN to the outcome (the handshake time for `established`).
    pub fn duration_us(&self) -> u64 {
        self.ktime_ns.saturating_sub(self.start_ns) / 1_000
    }
}

/// A SYN retransmitted while the socket was still in SYN_SENT.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SynRetransmitRecord {
    pub ktime_ns: u64,
    pub start_ns: u64,
    pub family: Family,
    pub src: SocketAddr,
    pub dst: SocketAddr,
    pub who: Attribution,
    /// How many times the SYN has been retransmitted so far (1 for the first).
    pub retransmits: u32,
}

/// One decoded ring-buffer record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KernelEvent {
    Connect(ConnectRecord),
    SynRetransmit(SynRetransmitRecord),
}

impl KernelEvent {
    pub fn ktime_ns(&self) -> u64 {
        match self {
            KernelEvent::Connect(c) => c.ktime_ns,
            KernelEvent::SynRetransmit(r) => r.ktime_ns,
        }
    }

    pub fn dst(&self) -> SocketAddr {
        match self {
            KernelEvent::Connect(c) => c.dst,
            KernelEvent::SynRetransmit(r) => r.dst,
        }
    }

    pub fn who(&self) -> &Attribution {
        match self {
            KernelEvent::Connect(c) => &c.who,
            KernelEvent::SynRetransmit(r) => &r.who,
        }
    }

    pub fn who_mut(&mut self) -> &mut Attribution {
        match self {
            KernelEvent::Connect(c) => &mut c.who,
            KernelEvent::SynRetransmit(r) => &mut r.who,
        }
    }

    /// A failed connect or a SYN-retransmit warning: what detection waits for (the
    /// kernel wakes the reader for these; routine `established` outcomes are batched).
    pub fn is_failure(&self) -> bool {
        match self {
            KernelEvent::Connect(c) => c.outcome.is_failure(),
            KernelEvent::SynRetransmit(_) => true,
        }
    }
}

/// A refused IPv4 connect to `dst` by pid 1 (`x`), for tests of downstream stages.
#[cfg(test)]
pub(crate) fn refused_to(dst: SocketAddr) -> KernelEvent {
    KernelEvent::Connect(ConnectRecord {
        outcome: Outcome::Refused,
        ktime_ns: 2_000,
        start_ns: 1_000,
        family: Family::Ipv4,
        src: SocketAddr::from(([127, 0, 0, 1], 1000)),
        dst,
        who: Attribution::fixture("x"),
        syn_retransmits: 0,
        errno: 111,
    })
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    #[error("record is {got} bytes, expected at least {want}")]
    Short { got: usize, want: usize },
    #[error("unknown event kind {0}")]
    Kind(u32),
    #[error("unknown outcome {0}")]
    Outcome(u32),
    #[error("unknown address family {0}")]
    Family(u16),
}

/// Decodes one ring-buffer record.
pub fn decode(bytes: &[u8]) -> Result<KernelEvent, DecodeError> {
    let want = size_of::<ConnectEvent>();
    if bytes.len() < want {
        return Err(DecodeError::Short {
            got: bytes.len(),
            want,
        });
    }
    // SAFETY: the length is checked above; ConnectEvent is plain old data, and
    // read_unaligned makes no assumption about the buffer's alignment.
    let raw: ConnectEvent = unsafe { bytes.as_ptr().cast::<ConnectEvent>().read_unaligned() };
    decode_raw(&raw)
}

/// Decodes an already-copied record.
pub fn decode_raw(raw: &ConnectEvent) -> Result<KernelEvent, DecodeError> {
    let (family, src_ip, dst_ip) = match raw.family {
        AF_INET => (Family::Ipv4, ipv4(&raw.saddr), ipv4(&raw.daddr)),
        AF_INET6 => (Family::Ipv6, ipv6(&raw.saddr), ipv6(&raw.daddr)),
        other => return Err(DecodeError::Family(other)),
    };
    let src = SocketAddr::new(src_ip, raw.sport);
    let dst = SocketAddr::new(dst_ip, raw.dport);
    let who = Attribution {
        pid: raw.pid,
        tgid: raw.tgid,
        comm: Comm(raw.comm),
        cgroup_id: raw.cgroup_id,
        netns: raw.netns,
        netns_owner: NetnsOwner::from_raw(raw.netns_owner),
        cgroup: None,
        trusted: false,
    };
    match raw.kind {
        kind::OUTCOME => Ok(KernelEvent::Connect(ConnectRecord {
            outcome: Outcome::from_raw(raw.outcome).ok_or(DecodeError::Outcome(raw.outcome))?,
            ktime_ns: raw.ktime_ns,
            start_ns: raw.start_ns,
            family,
            src,
            dst,
            who,
            syn_retransmits: raw.syn_retransmits,
            errno: raw.errno,
        })),
        kind::SYN_RETRANSMIT => Ok(KernelEvent::SynRetransmit(SynRetransmitRecord {
            ktime_ns: raw.ktime_ns,
            start_ns: raw.start_ns,
            family,
            src,
            dst,
            who,
            retransmits: raw.syn_retransmits,
        })),
        other => Err(DecodeError::Kind(other)),
    }
}

fn ipv4(raw: &[u8; 16]) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(raw[0], raw[1], raw[2], raw[3]))
}

/// An IPv6 address; a v4-mapped one (`::ffff:a.b.c.d`, an IPv6 socket talking to an IPv4
/// peer) becomes the IPv4 address so that one node has one destination key.
fn ipv6(raw: &[u8; 16]) -> IpAddr {
    let v6 = Ipv6Addr::from(*raw);
    match v6.to_ipv4_mapped() {
        Some(v4) => IpAddr::V4(v4),
        None => IpAddr::V6(v6),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw_event() -> ConnectEvent {
        let mut comm = [0u8; 16];
        comm[..7].copy_from_slice(b"python3");
        let mut saddr = [0u8; 16];
        saddr[..4].copy_from_slice(&[127, 0, 0, 1]);
        let mut daddr = [0u8; 16];
        daddr[..4].copy_from_slice(&[127, 0, 0, 2]);
        ConnectEvent {
            ktime_ns: 2_000_057_000,
            start_ns: 2_000_000_000,
            cgroup_id: 42,
            saddr,
            daddr,
            comm,
            pid: 123,
            tgid: 120,
            netns: 4026531840,
            kind: kind::OUTCOME,
            outcome: outcome::REFUSED,
            errno: 111,
            syn_retransmits: 0,
            family: AF_INET,
            sport: 33850,
            dport: 40002,
            netns_owner: netns_owner::CHILD,
            _pad: [0; 4],
        }
    }

    fn bytes_of(ev: &ConnectEvent) -> Vec<u8> {
        // SAFETY: ConnectEvent is repr(C) plain old data with explicit padding.
        unsafe {
            std::slice::from_raw_parts(
                (ev as *const ConnectEvent).cast::<u8>(),
                size_of::<ConnectEvent>(),
            )
        }
        .to_vec()
    }

    #[test]
    fn decodes_an_ipv4_refused_outcome() {
        let KernelEvent::Connect(c) = decode(&bytes_of(&raw_event())).unwrap() else {
            panic!("expected a connect outcome")
        };
        assert_eq!(c.outcome, Outcome::Refused);
        assert_eq!(c.src.to_string(), "127.0.0.1:33850");
        assert_eq!(c.dst.to_string(), "127.0.0.2:40002");
        assert_eq!(c.who.comm.as_str(), "python3");
        assert_eq!((c.who.pid, c.who.tgid, c.who.cgroup_id), (123, 120, 42));
        assert_eq!(c.duration_us(), 57);
        assert_eq!(c.errno, 111);
        assert_eq!(c.who.netns_owner, NetnsOwner::Child);
        assert!(
            !c.who.trusted,
            "trust is decided by the policy, never by decoding"
        );
    }

    #[test]
    fn ipv6_is_bracketed_and_v4_mapped_becomes_ipv4() {
        let mut ev = raw_event();
        ev.family = AF_INET6;
        ev.saddr = Ipv6Addr::LOCALHOST.octets();
        ev.daddr = Ipv6Addr::LOCALHOST.octets();
        let KernelEvent::Connect(c) = decode(&bytes_of(&ev)).unwrap() else {
            panic!()
        };
        assert_eq!(c.dst.to_string(), "[::1]:40002");
        assert_eq!(c.family, Family::Ipv6);

        ev.daddr = Ipv4Addr::new(10, 1, 2, 3).to_ipv6_mapped().octets();
        let KernelEvent::Connect(c) = decode(&bytes_of(&ev)).unwrap() else {
            panic!()
        };
        assert_eq!(c.dst.to_string(), "10.1.2.3:40002");
        assert_eq!(c.family, Family::Ipv6);
    }

    #[test]
    fn short_or_unknown_records_are_errors() {
        let bytes = bytes_of(&raw_event());
        assert_eq!(
            decode(&bytes[..50]),
            Err(DecodeError::Short { got: 50, want: 112 })
        );
        let mut ev = raw_event();
        ev.kind = 9;
        assert_eq!(decode(&bytes_of(&ev)), Err(DecodeError::Kind(9)));
        let mut ev = raw_event();
        ev.outcome = 77;
        assert_eq!(decode(&bytes_of(&ev)), Err(DecodeError::Outcome(77)));
        let mut ev = raw_event();
        ev.family = 1;
        assert_eq!(decode(&bytes_of(&ev)), Err(DecodeError::Family(1)));
    }

    #[test]
    fn syn_retransmit_carries_its_count() {
        let mut ev = raw_event();
        ev.kind = kind::SYN_RETRANSMIT;
        ev.outcome = 0;
        ev.syn_retransmits = 2;
        let KernelEvent::SynRetransmit(r) = decode(&bytes_of(&ev)).unwrap() else {
            panic!()
        };
        assert_eq!(r.retransmits, 2);
    }

    #[test]
    fn comm_stops_at_nul_and_truncates() {
        assert_eq!(Comm::from("curl").as_str(), "curl");
        assert_eq!(Comm::from("a-very-long-command-name").as_str().len(), 15);
    }
}
