//! `sock:inet_sk_error_report`, fired by `sk_error_report()` when a socket error is
//! raised (ECONNREFUSED, ETIMEDOUT, EHOSTUNREACH, ...).
//!
//! The record has no socket address, only the 4-tuple, and on current kernels
//! (`tcp_done_with_error()`, 6.10+) it comes after the CLOSE transition, where the
//! outcome is already decided from `sk_err`. On older kernels it comes first and the woken
//! application may consume `sk_err` before the CLOSE transition reads it; remembering the
//! error by tuple keeps those outcomes classified correctly.

use aya_ebpf::{helpers::bpf_ktime_get_ns, macros::tracepoint, programs::TracePointContext};
use monitor_common::IPPROTO_TCP;

use crate::{
    maps::{REPORTED_ERRORS, ReportedError, conf},
    record::read_tuple,
};

#[tracepoint]
pub fn inet_sk_error_report(ctx: TracePointContext) -> u32 {
    match try_inet_sk_error_report(&ctx) {
        Ok(()) => 0,
        Err(_) => 1,
    }
}

fn try_inet_sk_error_report(ctx: &TracePointContext) -> Result<(), i32> {
    if conf!(error_fallback) == 0 {
        return Ok(());
    }
    // SAFETY: bpf_probe_read_kernel at offsets from the format file.
    let (protocol, error) = unsafe {
        (
            ctx.read_at::<u16>(conf!(error_report_protocol) as usize)?,
            ctx.read_at::<i32>(conf!(error_report_error) as usize)?,
        )
    };
    if protocol != IPPROTO_TCP || error == 0 {
        return Ok(());
    }
    let tuple = read_tuple(ctx, &conf!(error_report))?;
    let reported = ReportedError {
        // SAFETY: no preconditions.
        ktime_ns: unsafe { bpf_ktime_get_ns() },
        errno: error.unsigned_abs(),
        _pad: 0,
    };
    REPORTED_ERRORS.insert(&tuple, &reported, 0)
}
