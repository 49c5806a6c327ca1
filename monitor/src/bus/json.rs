//! The NDJSON rendering of events, shared by stdout and the event bus so that every
//! consumer sees byte-identical objects. Functions append one object, no newline.

use std::net::SocketAddr;

use serde::Serialize;

use crate::{
    clock::WallClock,
    policy::Role,
    source::event::{Comm, ConnectRecord, Family, Outcome, SynRetransmitRecord},
};

#[derive(Serialize)]
struct ConnectLine<'a> {
    r#type: &'static str,
    outcome: Outcome,
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
    syn_retransmits: u32,
    duration_us: u64,
    errno: u32,
    /// The agent's own handshake check (`checks`); absent for everyone else's connects.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    probe: bool,
}

#[derive(Serialize)]
struct SynRetransmitLine<'a> {
    r#type: &'static str,
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
    retransmits: u32,
    since_syn_us: u64,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    probe: bool,
}

/// `{"type":"connect",...}`.
pub fn connect(buf: &mut Vec<u8>, c: &ConnectRecord, role: Role, clock: &WallClock) {
    connect_line(buf, c, role, false, clock);
}

/// `{"type":"connect",...}`, with `"probe":true` when `probe`.
pub fn connect_line(
    buf: &mut Vec<u8>,
    c: &ConnectRecord,
    role: Role,
    probe: bool,
    clock: &WallClock,
) {
    value(
        buf,
        &ConnectLine {
            r#type: "connect",
            outcome: c.outcome,
            ts: clock.rfc3339(c.ktime_ns),
            ktime_ns: c.ktime_ns,
            src: c.src,
            dst: c.dst,
            netns: c.who.netns,
            role,
            family: c.family,
            pid: c.who.pid,
            tgid: c.who.tgid,
            comm: &c.who.comm,
            cgroup_id: c.who.cgroup_id,
            cgroup: c.who.cgroup_path(),
            container: c.who.container(),
            pod_uid: c.who.pod_uid(),
            trusted: c.who.trusted,
            syn_retransmits: c.syn_retransmits,
            duration_us: c.duration_us(),
            errno: c.errno,
            probe,
        },
    );
}

/// `{"type":"syn_retransmit",...}`.
pub fn syn_retransmit(buf: &mut Vec<u8>, r: &SynRetransmitRecord, role: Role, clock: &WallClock) {
    syn_retransmit_line(buf, r, role, false, clock);
}

/// `{"type":"syn_retransmit",...}`, with `"probe":true` when `probe`.
pub fn syn_retransmit_line(
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
            ts: clock.rfc3339(r.ktime_ns),
            ktime_ns: r.ktime_ns,
            src: r.src,
            dst: r.dst,
            netns: r.who.netns,
            role,
            family: r.family,
            pid: r.who.pid,
            tgid: r.who.tgid,
            comm: &r.who.comm,
            cgroup_id: r.who.cgroup_id,
            cgroup: r.who.cgroup_path(),
            container: r.who.container(),
            pod_uid: r.who.pod_uid(),
            trusted: r.who.trusted,
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
