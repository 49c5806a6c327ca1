//! connmon's kernel side: BTF-enabled tracepoints (`tp_btf`) and two `fentry` hooks that
//! turn every outgoing TCP connect into one outcome record in the `EVENTS` ring buffer.
//! Per-connect state lives in a preallocated hash keyed by the socket (`CONNECTS`), with
//! the socket's own storage (`SOCKETS`) as the overflow when the hash is full.
//!
//! - `inet_sock_set_state` (probes/set_state.rs): CLOSE→SYN_SENT starts an attempt
//!   (in the connecting task's context); SYN_SENT→ESTABLISHED / →CLOSE ends it.
//! - `tcp_receive_reset` (probes/receive_reset.rs): RST on a pending or established
//!   connection this host opened.
//! - `tcp_retransmit_skb` (probes/retransmit.rs): SYN retransmits, the early warning
//!   for blackholed destinations.
//! - `fentry/tcp_done_with_error`, `fentry/sk_error_report` (probes/socket_error.rs):
//!   the socket error, captured before the application can be woken and consume it.
//!
//! Kernel struct offsets are not compiled in: the agent reads them from the running
//! kernel's BTF and writes them into the read-only global `CONFIG` before loading.
#![no_std]
#![no_main]

mod maps;
mod probes;
mod record;
mod sock;

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
