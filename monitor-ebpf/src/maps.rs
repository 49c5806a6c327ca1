//! Maps shared by the probes, and the read-only configuration global.

use aya_ebpf::{
    macros::map,
    maps::{Array, LruHashMap, PerCpuArray, RingBuf},
};
use monitor_common::{ProbeConfig, counter};

/// Offsets and switches written by the agent before load (see `monitor_common::ProbeConfig`).
#[unsafe(no_mangle)]
pub static CONFIG: ProbeConfig = unsafe { core::mem::zeroed() };

/// Reads one field of [`CONFIG`]; volatile so the compiler cannot fold the zero default
/// that the agent overrides at load time.
macro_rules! conf {
    ($($field:tt).+) => {
        $crate::maps::read_config(&raw const $crate::maps::CONFIG.$($field).+)
    };
}

#[inline(always)]
pub fn read_config<T: Copy>(field: *const T) -> T {
    // SAFETY: `field` points into the immutable global CONFIG.
    unsafe { core::ptr::read_volatile(field) }
}
pub(crate) use conf;

/// Outcome and early-warning records for the agent. The agent sizes it at load time
/// (`--ring-buffer-bytes`); this is only the default.
#[map]
pub static EVENTS: RingBuf = RingBuf::with_byte_size(1024 * 1024, 0);

/// 1 while records written without a wake-up (batched `established` outcomes) may be
/// waiting in `EVENTS`: the next failure then forces a wake-up instead of relying on
/// the kernel's "consumer caught up" check, which does not fire behind them.
#[map]
pub static UNWOKEN: Array<u32> = Array::with_max_entries(1, 0);

/// Whether the reader is polling the ring on a short timer (written by the agent: 1 while
/// it polls, 0 while it sleeps in epoll). While it polls, every record is written with
/// BPF_RB_NO_WAKEUP: the ring-buffer wake-up (irq_work from inside the connecting task)
/// is the largest cost per connect, and a polling reader does not need it.
#[map]
pub static READER: Array<u32> = Array::with_max_entries(1, 0);

/// Per-CPU counters, indexed by `monitor_common::counter`.
#[map]
pub static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(counter::COUNT, 0);

/// A connect attempt as recorded when the socket entered SYN_SENT.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Attempt {
    pub start_ns: u64,
    pub cgroup_id: u64,
    pub comm: [u8; 16],
    pub pid: u32,
    pub tgid: u32,
    pub netns: u32,
    pub syn_retransmits: u32,
    /// 1 once a RST arrived while in SYN_SENT.
    pub rst: u32,
    /// One of `monitor_common::netns_owner`.
    pub netns_owner: u32,
}

/// The TCP 4-tuple, for hooks that carry no socket address.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct TupleKey {
    pub saddr: [u8; 16],
    pub daddr: [u8; 16],
    pub sport: u16,
    pub dport: u16,
    pub family: u16,
    pub _pad: u16,
}

/// Pending connects, keyed by socket address (`skaddr`). LRU so that sockets whose end
/// we never see cannot fill it.
#[map]
pub static INFLIGHT: LruHashMap<u64, Attempt> = LruHashMap::with_max_entries(65536, 0);

/// Established connections this host opened, keyed by socket address, so that a later
/// RST is reported as `reset` with the attribution of the connect.
#[map]
pub static ESTABLISHED: LruHashMap<u64, Attempt> = LruHashMap::with_max_entries(65536, 0);

/// A socket error reported by `sock:inet_sk_error_report`, with when it happened.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct ReportedError {
    pub ktime_ns: u64,
    pub errno: u32,
    pub _pad: u32,
}

/// Errors from `sock:inet_sk_error_report` by 4-tuple; consulted when `sk_err` reads 0 at
/// the CLOSE transition (older kernels report the error before closing, and the woken
/// application may already have consumed `sk_err`).
#[map]
pub static REPORTED_ERRORS: LruHashMap<TupleKey, ReportedError> =
    LruHashMap::with_max_entries(4096, 0);

#[inline(always)]
pub fn count(index: u32) {
    if let Some(slot) = COUNTERS.get_ptr_mut(index) {
        // SAFETY: a per-CPU slot is only touched by programs on this CPU, which do not nest
        // for tracepoints.
        unsafe { *slot += 1 };
    }
}
