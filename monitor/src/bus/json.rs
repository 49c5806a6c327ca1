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
pub fn connect(buf: &mut Vec<u8>, c: &ConnectRecord, role: Role, probe: bool, clock: &WallClock) {
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
