//! `sock:inet_sock_set_state`, fired by `inet_sk_state_store()`/`tcp_set_state()`.
//!
//! - CLOSE→SYN_SENT (`tcp_v4_connect`/`tcp_v6_connect`, in the connecting task): record
//!   who connects, and when.
//! - SYN_SENT→ESTABLISHED (`tcp_finish_connect`): outcome `established`.
//! - SYN_SENT→CLOSE (`tcp_done`, or `tcp_close` of a pending socket): `refused`,
//!   `timeout`, `unreachable` or `abandoned`, from the RST flag and `sk_err`.
//! - ESTABLISHED→anything: the connection this host opened is over; forget it.

use aya_ebpf::{
    helpers::{
        bpf_get_current_cgroup_id, bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_ktime_get_ns,
    },
    macros::tracepoint,
    programs::TracePointContext,
};
use monitor_common::{IPPROTO_TCP, classify_close, kind, outcome, tcp_state};

use crate::{
    maps::{Attempt, ESTABLISHED, INFLIGHT, REPORTED_ERRORS, conf, count},
    record::{Wakeup, emit, netns_of, read_tuple, sk_err_of},
};

#[tracepoint]
pub fn inet_sock_set_state(ctx: TracePointContext) -> u32 {
    match try_inet_sock_set_state(&ctx) {
        Ok(()) => 0,
        Err(_) => 1,
    }
}

fn try_inet_sock_set_state(ctx: &TracePointContext) -> Result<(), i32> {
    // SAFETY: read_at is bpf_probe_read_kernel at offsets from the format file.
    let (protocol, oldstate, newstate, skaddr) = unsafe {
        (
            ctx.read_at::<u16>(conf!(set_state_protocol) as usize)?,
            ctx.read_at::<i32>(conf!(set_state_oldstate) as usize)?,
            ctx.read_at::<i32>(conf!(set_state_newstate) as usize)?,
            ctx.read_at::<u64>(conf!(set_state_skaddr) as usize)?,
        )
    };
    if protocol != IPPROTO_TCP {
        return Ok(());
    }
    match (oldstate, newstate) {
        (tcp_state::CLOSE, tcp_state::SYN_SENT) => start_attempt(skaddr),
        (tcp_state::SYN_SENT, tcp_state::ESTABLISHED) => finish_attempt(ctx, skaddr, true),
        (tcp_state::SYN_SENT, tcp_state::CLOSE) => finish_attempt(ctx, skaddr, false),
        (tcp_state::ESTABLISHED, _) => {
            let _ = ESTABLISHED.remove(&skaddr);
            Ok(())
        }
        _ => Ok(()),
    }
}

fn start_attempt(skaddr: u64) -> Result<(), i32> {
    let pid_tgid = bpf_get_current_pid_tgid();
    let (netns, netns_owner) = netns_of(skaddr);
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
    };
    INFLIGHT.insert(&skaddr, &attempt, 0)
}

fn finish_attempt(ctx: &TracePointContext, skaddr: u64, established: bool) -> Result<(), i32> {
    // SAFETY: the value is copied out before the entry is removed.
    let Some(attempt) = (unsafe { INFLIGHT.get(&skaddr) }).copied() else {
        count(monitor_common::counter::UNTRACKED);
        return Ok(());
    };
    let _ = INFLIGHT.remove(&skaddr);
    let tuple = read_tuple(ctx, &conf!(set_state))?;
    if established {
        emit(
            kind::OUTCOME,
            outcome::ESTABLISHED,
            0,
            &tuple,
            &attempt,
            Wakeup::Batched,
        );
        return ESTABLISHED.insert(&skaddr, &attempt, 0);
    }
    let mut errno = sk_err_of(skaddr);
    if errno == 0 && conf!(error_fallback) != 0 {
        // SAFETY: the value is copied out before the entry is removed.
        if let Some(reported) = unsafe { REPORTED_ERRORS.get(&tuple) }.copied() {
            let _ = REPORTED_ERRORS.remove(&tuple);
            if reported.ktime_ns >= attempt.start_ns {
                errno = reported.errno;
            }
        }
    }
    let result = classify_close(errno, attempt.rst != 0);
    emit(kind::OUTCOME, result, errno, &tuple, &attempt, Wakeup::Now);
    Ok(())
}
