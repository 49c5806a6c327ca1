//! `inet_sock_set_state` as a BTF tracepoint (`tp_btf`), fired by
//! `inet_sk_state_store()`/`inet_sk_set_state()` with `(sk, oldstate, newstate)`.
//!
//! - CLOSE→SYN_SENT (`tcp_v4_connect`/`tcp_v6_connect`, in the connecting task): record
//!   who connects, and when, in the socket's `CONNECTS` entry.
//! - SYN_SENT→ESTABLISHED (`tcp_finish_connect`): outcome `established`; the entry stays
//!   (a RST on the connection is reported as `reset`, attributed).
//! - SYN_SENT→CLOSE (`tcp_done`, or `tcp_close` of a pending socket): `refused`,
//!   `timeout`, `unreachable` or `abandoned`, from the RST flag and the socket error; the
//!   entry is deleted.
//! - ESTABLISHED→anything: the entry, if any, is deleted (one hash delete).
//! - Every other transition (server-side handshakes, the close handshake) returns at
//!   once, before any memory read or map access.

use aya_ebpf::{
    helpers::{
        bpf_get_current_cgroup_id, bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_ktime_get_ns,
    },
    macros::btf_tracepoint,
    programs::BtfTracePointContext,
};
use monitor_common::{IPPROTO_TCP, classify_close, counter, kind, outcome, tcp_state};

use crate::{
    maps::{Attempt, count, phase},
    record::{Wakeup, emit, netns_of},
    sock::Sock,
};

#[btf_tracepoint(function = "inet_sock_set_state")]
pub fn inet_sock_set_state(ctx: BtfTracePointContext) -> u32 {
    match try_inet_sock_set_state(&ctx) {
        Ok(()) => 0,
        Err(_) => 1,
    }
}

fn try_inet_sock_set_state(ctx: &BtfTracePointContext) -> Result<(), i32> {
    let oldstate: i32 = ctx.arg(1);
    let newstate: i32 = ctx.arg(2);
    match (oldstate, newstate) {
        (tcp_state::CLOSE, tcp_state::SYN_SENT) => start_attempt(Sock(ctx.arg(0))),
        (tcp_state::SYN_SENT, tcp_state::ESTABLISHED) => finish_attempt(Sock(ctx.arg(0)), true),
        (tcp_state::SYN_SENT, tcp_state::CLOSE) => finish_attempt(Sock(ctx.arg(0)), false),
        (tcp_state::ESTABLISHED, _) => {
            Sock(ctx.arg(0)).untrack_established();
            Ok(())
        }
        (tcp_state::SYN_SENT, _) => {
            // Simultaneous open (SYN_SENT→SYN_RECV): no outcome is reported for it, as
            // before; the entry must not outlive the attempt.
            let sk = Sock(ctx.arg(0));
            if let Some(tracked) = sk.attempt() {
                sk.untrack(tracked);
            }
            Ok(())
        }
        _ => Ok(()),
    }
}

fn start_attempt(sk: Sock) -> Result<(), i32> {
    if sk.protocol()? != IPPROTO_TCP {
        return Ok(());
    }
    let pid_tgid = bpf_get_current_pid_tgid();
    let (netns, netns_owner) = netns_of(sk);
    let attempt = Attempt {
        // SAFETY: no preconditions.
        start_ns: unsafe { bpf_ktime_get_ns() },
        // SAFETY: no preconditions.
        cgroup_id: unsafe { bpf_get_current_cgroup_id() },
        comm: bpf_get_current_comm().unwrap_or([0; 16]),
        pid: pid_tgid as u32,
        tgid: (pid_tgid >> 32) as u32,
        netns,
        syn_retransmits: 0,
        rst: 0,
        netns_owner,
        phase: phase::PENDING,
        captured_errno: 0,
    };
    if !sk.track(&attempt) {
        // The hash is full and the kernel could not allocate the overflow storage
        // (memory, or the socket's optmem limit): this attempt's outcome will be lost —
        // counted, never silent.
        count(counter::STORAGE_FAILED);
    }
    Ok(())
}

fn finish_attempt(sk: Sock, established: bool) -> Result<(), i32> {
    let Some(tracked) = sk.attempt().filter(|t| t.slot.phase == phase::PENDING) else {
        count(counter::UNTRACKED);
        return Ok(());
    };
    if established {
        tracked.slot.phase = phase::ESTABLISHED;
        let attempt = *tracked.slot;
        let tuple = sk.tuple()?;
        emit(
            kind::OUTCOME,
            outcome::ESTABLISHED,
            0,
            &tuple,
            &attempt,
            Wakeup::Batched,
        );
        return Ok(());
    }
    // Copied before the delete: a deleted hash element may be reused at once.
    let attempt = *tracked.slot;
    sk.untrack(tracked);
    let tuple = sk.tuple()?;
    // The error captured where the kernel raised it comes first: `sk_err` may already
    // have been consumed by an application woken before this transition.
    let errno = if attempt.captured_errno != 0 {
        attempt.captured_errno
    } else {
        sk.err()
    };
    let mut result = classify_close(errno, attempt.rst != 0);
    if result == outcome::ABANDONED && sk.closed_by_application() == Some(false) {
        // The kernel closed it on an error that the application consumed before any
        // hook could read it: a failure, not an abandoned connect.
        count(counter::ERROR_CONSUMED);
        result = outcome::UNREACHABLE;
    }
    emit(kind::OUTCOME, result, errno, &tuple, &attempt, Wakeup::Now);
    Ok(())
}
