//! Maps shared by the probes, and the read-only configuration global.

use aya_ebpf::{
    btf_maps::SkStorage,
    macros::{btf_map, map},
    maps::{Array, HashMap, PerCpuArray, RingBuf},
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

/// A connect attempt, kept in [`CONNECTS`] (or, when that is full, in the socket's own
/// storage, [`SOCKETS`]) from the moment the socket entered SYN_SENT.
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
    /// One of [`phase`].
    pub phase: u32,
    /// The socket error captured where the kernel raised it (`tcp_done_with_error()`'s
    /// argument, or `sk_err` on entry to `sk_error_report()`), before the application
    /// could be woken and consume it with `SO_ERROR`; 0 if none.
    pub captured_errno: u32,
}

/// Where a tracked socket is ([`Attempt::phase`]).
pub mod phase {
    /// In SYN_SENT: the outcome is pending.
    pub const PENDING: u32 = 1;
    /// Established by this host's connect: a RST now ends it as `reset`.
    pub const ESTABLISHED: u32 = 2;
    /// Outcome reported; nothing more to say about this socket. Only seen in overflow
    /// storage ([`super::SOCKETS`]): its element is not deleted (the kernel frees it with
    /// the socket, and a delete costs more than a store). [`super::CONNECTS`] entries are
    /// deleted instead.
    pub const DONE: u32 = 3;
}

/// The TCP 4-tuple of a socket, as written into records.
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

/// How many connects [`CONNECTS`] holds at once (pending ones, and established ones until
/// they leave ESTABLISHED). Preallocated: ~120 bytes an entry, ~8 MiB.
pub const CONNECTS_CAPACITY: u32 = 65_536;

/// Per-connect state of the sockets this host is connecting (SYN_SENT) or connected
/// (ESTABLISHED, for a later reset), keyed by the `struct sock *`. A preallocated hash
/// (no `BPF_F_NO_PREALLOC`): an insert takes an element from a per-CPU free list, with no
/// allocation in the connecting task — socket-local storage's first element on a new
/// socket costs a `kmalloc` with memcg charge, ~0.8 µs a connect here. The entry is
/// deleted when the connect resolves (or, established, when the socket leaves
/// ESTABLISHED). When the hash is full, the attempt goes to [`SOCKETS`] instead: no
/// capacity cliff, only the slower path past 65 536 sockets at once.
#[map]
pub static CONNECTS: HashMap<u64, Attempt> = HashMap::with_max_entries(CONNECTS_CAPACITY, 0);

/// 1 once any attempt went to [`SOCKETS`] (the overflow): until then, a socket missing
/// from [`CONNECTS`] is not looked up in its storage.
#[map]
pub static OVERFLOWED: Array<u32> = Array::with_max_entries(1, 0);

/// Overflow for [`CONNECTS`]: per-connect state in socket-local storage
/// (`BPF_MAP_TYPE_SK_STORAGE`, usable from `tp_btf`/`fentry` programs since Linux 5.11),
/// no capacity limit; the kernel frees it with the socket. A BTF map: the kernel
/// requires BTF key/value types for socket storage.
///
/// aya-ebpf's `SkStorage` wrapper only takes a `SockAddrContext`; the helpers are called
/// directly with the BTF `struct sock *` of the hook instead (`sock.rs`).
#[btf_map]
pub static SOCKETS: SkStorage<Attempt> = SkStorage::new();

#[inline(always)]
pub fn count(index: u32) {
    if let Some(slot) = COUNTERS.get_ptr_mut(index) {
        // SAFETY: a per-CPU slot is only touched by programs on this CPU, which do not nest
        // for tracepoints.
        unsafe { *slot += 1 };
    }
}
