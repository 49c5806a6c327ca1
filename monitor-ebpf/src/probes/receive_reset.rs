//! `tcp:tcp_receive_reset`, fired by `tcp_reset()` before the socket is closed.
//!
//! In SYN_SENT the RST means ECONNREFUSED; the outcome is emitted by the SYN_SENT→CLOSE
//! transition that follows, so here we only mark the attempt. On an established
//! connection this host opened, the RST ends it: outcome `reset`.

use aya_ebpf::{macros::tracepoint, programs::TracePointContext};
use monitor_common::{errno, kind, outcome};

use crate::{
    maps::{ESTABLISHED, INFLIGHT, conf},
    record::{Wakeup, emit, read_tuple},
};

#[tracepoint]
pub fn tcp_receive_reset(ctx: TracePointContext) -> u32 {
    match try_tcp_receive_reset(&ctx) {
        Ok(()) => 0,
        Err(_) => 1,
    }
}

fn try_tcp_receive_reset(ctx: &TracePointContext) -> Result<(), i32> {
    // SAFETY: bpf_probe_read_kernel at the offset from the format file.
    let skaddr = unsafe { ctx.read_at::<u64>(conf!(receive_reset_skaddr) as usize) }?;
    if let Some(pending) = INFLIGHT.get_ptr_mut(&skaddr) {
        // SAFETY: the pointer comes from a successful map lookup.
        unsafe { (*pending).rst = 1 };
        return Ok(());
    }
    // SAFETY: the value is copied out before the entry is removed.
    let Some(attempt) = (unsafe { ESTABLISHED.get(&skaddr) }).copied() else {
        return Ok(());
    };
    let _ = ESTABLISHED.remove(&skaddr);
    let tuple = read_tuple(ctx, &conf!(receive_reset))?;
    // `tcp_reset()` sets sk_err to ECONNRESET right after this tracepoint.
    emit(
        kind::OUTCOME,
        outcome::RESET,
        errno::ECONNRESET,
        &tuple,
        &attempt,
        Wakeup::Now,
    );
    Ok(())
}
