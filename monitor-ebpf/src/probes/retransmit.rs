//! `tcp_retransmit_skb` as a BTF tracepoint, fired by `__tcp_retransmit_skb()` with
//! `(sk, skb, ...)` (timer context, pid 0).
//!
//! A retransmission while the socket is in SYN_SENT means the SYN went unanswered: the
//! first sign of a blackholed destination, long before the kernel or the application
//! gives up. Each one is counted on the attempt and reported as `syn_retransmit`.
//! Retransmits on other sockets cost one read of the socket's state.

use aya_ebpf::{macros::btf_tracepoint, programs::BtfTracePointContext};
use monitor_common::{kind, tcp_state};

use crate::{
    maps::phase,
    record::{Wakeup, emit},
    sock::Sock,
};

#[btf_tracepoint(function = "tcp_retransmit_skb")]
pub fn tcp_retransmit_skb(ctx: BtfTracePointContext) -> u32 {
    match try_tcp_retransmit_skb(&ctx) {
        Ok(()) => 0,
        Err(_) => 1,
    }
}

fn try_tcp_retransmit_skb(ctx: &BtfTracePointContext) -> Result<(), i32> {
    let sk = Sock(ctx.arg(0));
    if i32::from(sk.state()?) != tcp_state::SYN_SENT {
        return Ok(());
    }
    let Some(tracked) = sk.attempt().filter(|t| t.slot.phase == phase::PENDING) else {
        return Ok(());
    };
    tracked.slot.syn_retransmits += 1;
    let attempt = *tracked.slot;
    let tuple = sk.tuple()?;
    emit(kind::SYN_RETRANSMIT, 0, 0, &tuple, &attempt, Wakeup::Now);
    Ok(())
}
