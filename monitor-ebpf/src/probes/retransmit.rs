//! `tcp:tcp_retransmit_skb`, fired by `__tcp_retransmit_skb()` (timer context, pid 0).
//!
//! A retransmission while the socket is in SYN_SENT means the SYN went unanswered: the
//! first sign of a blackholed destination, long before the kernel or the application
//! gives up. Each one is counted on the attempt and reported as `syn_retransmit`.

use aya_ebpf::{macros::tracepoint, programs::TracePointContext};
use monitor_common::{kind, tcp_state};

use crate::{
    maps::{INFLIGHT, conf},
    record::{Wakeup, emit, read_tuple},
};

#[tracepoint]
pub fn tcp_retransmit_skb(ctx: TracePointContext) -> u32 {
    match try_tcp_retransmit_skb(&ctx) {
        Ok(()) => 0,
        Err(_) => 1,
    }
}

fn try_tcp_retransmit_skb(ctx: &TracePointContext) -> Result<(), i32> {
    // SAFETY: bpf_probe_read_kernel at offsets from the format file.
    let (state, skaddr) = unsafe {
        (
            ctx.read_at::<i32>(conf!(retransmit_state) as usize)?,
            ctx.read_at::<u64>(conf!(retransmit_skaddr) as usize)?,
        )
    };
    if state != tcp_state::SYN_SENT {
        return Ok(());
    }
    let Some(pending) = INFLIGHT.get_ptr_mut(&skaddr) else {
        return Ok(());
    };
    // SAFETY: the pointer comes from a successful map lookup; the copy is taken after the
    // increment so the record carries the new count.
    let attempt = unsafe {
        (*pending).syn_retransmits += 1;
        *pending
    };
    let tuple = read_tuple(ctx, &conf!(retransmit))?;
    emit(kind::SYN_RETRANSMIT, 0, 0, &tuple, &attempt, Wakeup::Now);
    Ok(())
}
