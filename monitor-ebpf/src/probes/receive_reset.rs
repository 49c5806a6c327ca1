//! `tcp_receive_reset` as a BTF tracepoint, fired by `tcp_reset()` with `(sk)` before
//! the socket is closed.
//!
//! In SYN_SENT the RST means ECONNREFUSED; the outcome is emitted by the SYN_SENT→CLOSE
//! transition that follows, so here we only mark the attempt. On an established
//! connection this host opened, the RST ends it: outcome `reset`.

use aya_ebpf::{macros::btf_tracepoint, programs::BtfTracePointContext};
use monitor_common::{errno, kind, outcome, tcp_state};

use crate::{
    maps::phase,
    record::{Wakeup, emit},
    sock::Sock,
};

#[btf_tracepoint(function = "tcp_receive_reset")]
pub fn tcp_receive_reset(ctx: BtfTracePointContext) -> u32 {
    match try_tcp_receive_reset(&ctx) {
        Ok(()) => 0,
        Err(_) => 1,
    }
}

fn try_tcp_receive_reset(ctx: &BtfTracePointContext) -> Result<(), i32> {
    let sk = Sock(ctx.arg(0));
    let Some(tracked) = sk.attempt() else {
        return Ok(());
    };
    match tracked.slot.phase {
        phase::PENDING => {
            tracked.slot.rst = 1;
            Ok(())
        }
        // Only while ESTABLISHED, as the outcome's name says (a RST during the close
        // handshake is not reported).
        phase::ESTABLISHED if i32::from(sk.state()?) == tcp_state::ESTABLISHED => {
            let attempt = *tracked.slot;
            sk.untrack(tracked);
            let tuple = sk.tuple()?;
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
        _ => Ok(()),
    }
}
