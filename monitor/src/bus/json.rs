//! The NDJSON rendering of events, shared by stdout and the event bus so that every
//! consumer sees byte-identical objects. Functions append one object, no newline.

use std::net::SocketAddr;

use serde::Serialize;

use crate::{
    clock::WallClock,
    policy::Role,
    source::event::{Attribution, Comm, ConnectRecord, Family, Outcome, SynRetransmitRecord},
};

#[derive(Serialize, schemars::JsonSchema)]
pub(crate) struct ConnectLine<'a> {
    r#type: &'static str,
    outcome: Outcome,
    #[serde(flatten)]
    who: Seen<'a>,
    syn_retransmits: u32,
    duration_us: u64,
    errno: u32,
    /// The agent's own handshake check (`checks`); absent for everyone else's connects.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    probe: bool,
}

#[derive(Serialize, schemars::JsonSchema)]
pub(crate) struct SynRetransmitLine<'a> {
    r#type: &'static str,
    #[serde(flatten)]
    who: Seen<'a>,
    retransmits: u32,
    since_syn_us: u64,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    probe: bool,
}

/// What every kernel event line says: when, between which addresses, from which
/// process.
#[derive(Serialize, schemars::JsonSchema)]
struct Seen<'a> {
    #[schemars(extend("format" = "date-time"))]
    ts: String,
    ktime_ns: u64,
    src: SocketAddr,
    dst: SocketAddr,
    netns: u32,
    role: Role,
    family: Family,
    pid: u32,
    tgid: u32,
    comm: &'a Comm,
    cgroup_id: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    cgroup: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    container: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pod_uid: Option<&'a str>,
    trusted: bool,
}

impl<'a> Seen<'a> {
    fn new(
        ktime_ns: u64,
        src: SocketAddr,
        dst: SocketAddr,
        family: Family,
        who: &'a Attribution,
        role: Role,
        clock: &WallClock,
    ) -> Self {
        Seen {
            ts: clock.rfc3339(ktime_ns),
            ktime_ns,
            src,
            dst,
            netns: who.netns,
            role,
            family,
            pid: who.pid,
            tgid: who.tgid,
            comm: &who.comm,
            cgroup_id: who.cgroup_id,
            cgroup: who.cgroup_path(),
            container: who.container(),
            pod_uid: who.pod_uid(),
            trusted: who.trusted,
        }
    }
}

/// `{"type":"connect",...}`, with `"probe":true` when `probe`.
///
/// Written field by field rather than through serde: it runs once per event on the
/// hot path, and serde's flattened `Seen` goes through a map serializer that escapes
/// every key (the largest item in the agent's profile at 10 000 refused connects/s).
/// The bytes are those of [`ConnectLine`] (the documented schema); a test holds them
/// equal.
pub fn connect(buf: &mut Vec<u8>, c: &ConnectRecord, role: Role, probe: bool, clock: &WallClock) {
    buf.extend_from_slice(b"{\"type\":\"connect\",\"outcome\":\"");
    buf.extend_from_slice(c.outcome.as_str().as_bytes());
    buf.extend_from_slice(b"\",");
    seen(buf, c.ktime_ns, c.src, c.dst, c.family, &c.who, role, clock);
    buf.extend_from_slice(b",\"syn_retransmits\":");
    number(buf, u64::from(c.syn_retransmits));
    buf.extend_from_slice(b",\"duration_us\":");
    number(buf, c.duration_us());
    buf.extend_from_slice(b",\"errno\":");
    number(buf, u64::from(c.errno));
    if probe {
        buf.extend_from_slice(b",\"probe\":true");
    }
    buf.push(b'}');
}

/// The fields of [`Seen`], in its order, without braces.
#[expect(clippy::too_many_arguments, reason = "the fields of Seen")]
fn seen(
    buf: &mut Vec<u8>,
    ktime_ns: u64,
    src: SocketAddr,
    dst: SocketAddr,
    family: Family,
    who: &Attribution,
    role: Role,
    clock: &WallClock,
) {
    buf.extend_from_slice(b"\"ts\":\"");
    clock.write_rfc3339(ktime_ns, buf);
    buf.extend_from_slice(b"\",\"ktime_ns\":");
    number(buf, ktime_ns);
    // Socket addresses are digits, dots, colons, brackets and `%`: nothing to escape.
    buf.extend_from_slice(b",\"src\":\"");
    socket_addr(buf, src);
    buf.extend_from_slice(b"\",\"dst\":\"");
    socket_addr(buf, dst);
    buf.extend_from_slice(b"\",\"netns\":");
    number(buf, u64::from(who.netns));
    buf.extend_from_slice(match role {
        Role::Proxy => b",\"role\":\"proxy\"",
        Role::Target => b",\"role\":\"target\"",
    });
    buf.extend_from_slice(match family {
        Family::Ipv4 => b",\"family\":\"ipv4\"",
        Family::Ipv6 => b",\"family\":\"ipv6\"",
    });
    buf.extend_from_slice(b",\"pid\":");
    number(buf, u64::from(who.pid));
    buf.extend_from_slice(b",\"tgid\":");
    number(buf, u64::from(who.tgid));
    buf.extend_from_slice(b",\"comm\":");
    string(buf, &who.comm.as_str());
    buf.extend_from_slice(b",\"cgroup_id\":");
    number(buf, who.cgroup_id);
    for (key, value) in [
        (&b",\"cgroup\":"[..], who.cgroup_path()),
        (&b",\"container\":"[..], who.container()),
        (&b",\"pod_uid\":"[..], who.pod_uid()),
    ] {
        if let Some(value) = value {
            buf.extend_from_slice(key);
            string(buf, value);
        }
    }
    buf.extend_from_slice(if who.trusted {
        b",\"trusted\":true"
    } else {
        b",\"trusted\":false"
    });
}

/// A JSON number, as serde_json writes it (its `itoa`, two digits a step: a digit
/// loop of divisions was 4 % of the agent's samples).
fn number(buf: &mut Vec<u8>, n: u64) {
    value(buf, &n);
}

/// `addr` as its `Display` writes it. IPv4 (loopback and most traffic) is written
/// directly: through `core::fmt` the two addresses were half of a line's rendering
/// time; IPv6 (compression, scope ids, v4-mapped forms) keeps `Display`.
fn socket_addr(buf: &mut Vec<u8>, addr: SocketAddr) {
    match addr {
        SocketAddr::V4(a) => {
            for (i, octet) in a.ip().octets().into_iter().enumerate() {
                if i > 0 {
                    buf.push(b'.');
                }
                number(buf, u64::from(octet));
            }
            buf.push(b':');
            number(buf, u64::from(a.port()));
        }
        SocketAddr::V6(a) => {
            use std::io::Write as _;
            let _ = write!(buf, "{a}");
        }
    }
}

/// A JSON string, escaped as serde_json escapes it.
fn string(buf: &mut Vec<u8>, s: &str) {
    value(buf, s);
}

/// [`connect`] through serde and [`ConnectLine`]: the reference its bytes must equal.
#[cfg(test)]
fn connect_serde(buf: &mut Vec<u8>, c: &ConnectRecord, role: Role, probe: bool, clock: &WallClock) {
    value(
        buf,
        &ConnectLine {
            r#type: "connect",
            outcome: c.outcome,
            who: Seen::new(c.ktime_ns, c.src, c.dst, c.family, &c.who, role, clock),
            syn_retransmits: c.syn_retransmits,
            duration_us: c.duration_us(),
            errno: c.errno,
            probe,
        },
    );
}

/// `{"type":"syn_retransmit",...}`, with `"probe":true` when `probe`.
pub fn syn_retransmit(
    buf: &mut Vec<u8>,
    r: &SynRetransmitRecord,
    role: Role,
    probe: bool,
    clock: &WallClock,
) {
    value(
        buf,
        &SynRetransmitLine {
            r#type: "syn_retransmit",
            who: Seen::new(r.ktime_ns, r.src, r.dst, r.family, &r.who, role, clock),
            retransmits: r.retransmits,
            since_syn_us: r.ktime_ns.saturating_sub(r.start_ns) / 1_000,
            probe,
        },
    );
}

/// Any serializable object (decisions, stats).
pub fn value<T: Serialize + ?Sized>(buf: &mut Vec<u8>, v: &T) {
    // Serializing plain structs into a Vec cannot fail; never leave half an object.
    let len = buf.len();
    if serde_json::to_writer(&mut *buf, v).is_err() {
        buf.truncate(len);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::source::{
        cgroup::CgroupOrigin,
        event::{NetnsOwner, Outcome},
    };

    fn record(src: &str, dst: &str, comm: &[u8], cgroup: Option<&str>) -> ConnectRecord {
        let mut raw = [0u8; 16];
        raw[..comm.len()].copy_from_slice(comm);
        ConnectRecord {
            outcome: Outcome::Refused,
            ktime_ns: 1_000_057_000,
            start_ns: 1_000_000_000,
            family: if src.starts_with('[') {
                Family::Ipv6
            } else {
                Family::Ipv4
            },
            src: src.parse().unwrap(),
            dst: dst.parse().unwrap(),
            who: Attribution {
                pid: 123,
                tgid: 120,
                comm: Comm::new(raw),
                cgroup_id: u64::MAX,
                netns: 4_026_531_840,
                netns_owner: NetnsOwner::Child,
                cgroup: cgroup.map(|p| Arc::new(CgroupOrigin::from_path(p))),
                trusted: false,
            },
            syn_retransmits: 2,
            errno: 111,
        }
    }

    #[test]
    fn numbers_and_addresses_are_written_as_serde_and_display_write_them() {
        for n in [0, 1, 9, 10, 99, 255, 65_535, 4_026_531_840, u64::MAX] {
            let mut fast = Vec::new();
            number(&mut fast, n);
            assert_eq!(fast, serde_json::to_vec(&n).unwrap(), "number {n}");
        }
        for addr in [
            "0.0.0.0:0",
            "127.0.0.1:33850",
            "255.255.255.255:65535",
            "10.20.0.100:8",
            "[::1]:1",
            "[fe80::1%7]:443",
            "[::ffff:1.2.3.4]:9",
        ] {
            let addr: SocketAddr = addr.parse().unwrap();
            let mut fast = Vec::new();
            socket_addr(&mut fast, addr);
            assert_eq!(String::from_utf8(fast).unwrap(), addr.to_string());
        }
    }

    #[test]
    fn hand_written_connect_lines_equal_the_serde_schema_bytes() {
        let clock = WallClock::from_offset_ns(1_764_000_000_000_000_000);
        let docker = format!("/system.slice/docker-{}.scope", "ab".repeat(32));
        let pod = "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod0f1e2d3c_4b5a_6978_8796_a5b4c3d2e1f0.slice/cri-containerd-0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef.scope";
        let mut records = [
            record("127.0.0.1:33850", "127.0.0.2:40002", b"python3", None),
            record(
                "[::1]:1",
                "[fe80::1%7]:443",
                b"a\"b\\c\n\x01\x7f",
                Some(&docker),
            ),
            record("10.0.0.1:0", "10.0.0.2:65535", b"\xff\xfeoops", Some(pod)),
            record(
                "[::ffff:1.2.3.4]:9",
                "[2001:db8::1]:80",
                b"0123456789abcdef",
                Some("/user.slice/\"odd\" \u{e9}"),
            ),
        ];
        records[1].outcome = Outcome::Established;
        records[1].who.trusted = true;
        records[2].outcome = Outcome::Timeout;
        records[2].start_ns = u64::MAX;
        for (i, c) in records.iter().enumerate() {
            for role in [Role::Proxy, Role::Target] {
                for probe in [false, true] {
                    let (mut fast, mut reference) = (b"x".to_vec(), b"x".to_vec());
                    connect(&mut fast, c, role, probe, &clock);
                    connect_serde(&mut reference, c, role, probe, &clock);
                    assert_eq!(
                        String::from_utf8_lossy(&fast),
                        String::from_utf8_lossy(&reference),
                        "record {i}, {role:?}, probe {probe}: the hand-written line differs from the schema's"
                    );
                }
            }
        }
    }
}
