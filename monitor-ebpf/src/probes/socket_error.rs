//! Capturing a pending connect's socket error where the kernel raises it, before the
//! application can be woken and consume it (`getsockopt(SO_ERROR)` clears `sk_err`).
//!
//! - `fentry/tcp_done_with_error(sk, err)` (6.10+, and distribution backports such as
//!   Debian's 6.1): the error is the argument, read before the kernel even stores it in
//!   `sk_err` — race-free against an application that busy-polls `SO_ERROR`.
//! - `fentry/sk_error_report(sk)`: on entry `sk_err` is set and the application not yet
//!   woken (the wake-up is inside). Covers the paths that raise the error before the
//!   CLOSE transition (`tcp_v4_err()` on kernels without `tcp_done_with_error()`).
//!
//! - `tp_btf/inet_sk_error_report(sk)`: the fallback where `fentry` cannot attach (no
//!   BPF trampolines, or a kernel that refuses them). The tracepoint fires at the end of
//!   `sk_error_report()`, right after the wake-up, with `sk_err` still set: on kernels
//!   whose `tcp_v4_err()`/`tcp_write_err()` report the error before `tcp_done()` it is
//!   read there, microseconds before the CLOSE transition.
//!
//! All three only run when a socket error is raised, never on a routine connect. The
//! SYN_SENT→CLOSE transition prefers the captured error over `sk_err`.

use aya_ebpf::{
    macros::{btf_tracepoint, fentry},
    programs::{BtfTracePointContext, FEntryContext},
};

use crate::{
    maps::{Attempt, phase},
    sock::Sock,
};

#[fentry(function = "tcp_done_with_error")]
pub fn tcp_done_with_error(ctx: FEntryContext) -> u32 {
    let err: i32 = ctx.arg(1);
    if let Some(slot) = pending(Sock(ctx.arg(0))) {
        slot.captured_errno = err.unsigned_abs();
    }
    0
}

#[fentry(function = "sk_error_report")]
pub fn sk_error_report(ctx: FEntryContext) -> u32 {
    let sk = Sock(ctx.arg(0));
    if let Some(slot) = pending(sk) {
        slot.captured_errno = sk.err();
    }
    0
}

#[btf_tracepoint(function = "inet_sk_error_report")]
pub fn inet_sk_error_report(ctx: BtfTracePointContext) -> u32 {
    let sk = Sock(ctx.arg(0));
    if let Some(slot) = pending(sk) {
        slot.captured_errno = sk.err();
    }
    0
}

/// The storage of a pending connect that has no error captured yet (the first error
/// raised wins), or None for every other socket.
#[inline(always)]
fn pending(sk: Sock) -> Option<&'static mut Attempt> {
    sk.attempt()
        .map(|t| t.slot)
        .filter(|a| a.phase == phase::PENDING && a.captured_errno == 0)
}
