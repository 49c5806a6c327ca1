//! connmon's kernel side: classic tracepoints that turn every outgoing TCP connect into
//! one outcome record in the `EVENTS` ring buffer.
//!
//! - `sock:inet_sock_set_state` (probes/set_state.rs): CLOSE→SYN_SENT starts an attempt
//!   (in the connecting task's context); SYN_SENT→ESTABLISHED / →CLOSE ends it.
//! - `tcp:tcp_receive_reset` (probes/receive_reset.rs): RST on a pending or established
//!   connection this host opened.
//! - `tcp:tcp_retransmit_skb` (probes/retransmit.rs): SYN retransmits, the early warning
//!   for blackholed destinations.
//! - `sock:inet_sk_error_report` (probes/error_report.rs): the socket error, as a
//!   fallback for when `sk_err` was already consumed at the CLOSE transition.
//!
//! Field offsets are not compiled in: the agent reads them from the tracepoint format
//! files and BTF and writes them into the read-only global `CONFIG` before loading.
#![no_std]
#![no_main]

mod maps;
mod probes;
mod record;

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
