//! Types shared by the eBPF programs (`monitor-ebpf`) and the agent (`monitor`).
//!
//! Everything here crosses the kernel/user boundary byte for byte, so every struct is
//! `#[repr(C)]` with explicit padding and a compile-time size check: a layout change on
//! one side that is not made on the other fails the build instead of corrupting events.
#![no_std]

/// What a ring-buffer record reports ([`ConnectEvent::kind`]).
pub mod kind {
    /// The final outcome of one outgoing connect attempt.
    pub const OUTCOME: u32 = 1;
    /// A SYN was retransmitted while the socket was still in SYN_SENT (early warning).
    pub const SYN_RETRANSMIT: u32 = 2;
}

/// The outcome of a connect attempt ([`ConnectEvent::outcome`]).
pub mod outcome {
    /// SYN_SENT → ESTABLISHED.
    pub const ESTABLISHED: u32 = 1;
    /// SYN_SENT → CLOSE with ECONNREFUSED: a RST (or ICMP port unreachable) answered the SYN.
    pub const REFUSED: u32 = 2;
    /// RST received on an established connection this host opened.
    pub const RESET: u32 = 3;
    /// SYN_SENT → CLOSE with ETIMEDOUT: the kernel gave up retransmitting the SYN.
    pub const TIMEOUT: u32 = 4;
    /// SYN_SENT → CLOSE with no error: the application closed a pending connect.
    pub const ABANDONED: u32 = 5;
    /// SYN_SENT → CLOSE with any other error (EHOSTUNREACH, ENETUNREACH, ...), from ICMP.
    pub const UNREACHABLE: u32 = 6;
}

/// errno values the classification looks at (include/uapi/asm-generic/errno.h).
pub mod errno {
    pub const ECONNRESET: u32 = 104;
    pub const ETIMEDOUT: u32 = 110;
    pub const ECONNREFUSED: u32 = 111;
}

/// The outcome of a connect that left SYN_SENT for CLOSE, from the socket error
/// (`errno`: captured where the kernel raised it, else `sk->sk_err` at that moment) and
/// whether `tcp_receive_reset` fired while it was pending.
///
/// ECONNREFUSED comes from a RST (`tcp_reset()`) or an ICMP port unreachable; ETIMEDOUT
/// from `tcp_write_err()` after the last SYN retransmit; no error means the application
/// closed the socket itself; anything else (EHOSTUNREACH, ENETUNREACH, ...) came from an
/// ICMP error or a failed neighbour resolution.
#[inline(always)]
pub const fn classify_close(errno: u32, rst_seen: bool) -> u32 {
    match errno {
        errno::ECONNREFUSED => outcome::REFUSED,
        errno::ETIMEDOUT => outcome::TIMEOUT,
        0 if rst_seen => outcome::REFUSED,
        0 => outcome::ABANDONED,
        _ => outcome::UNREACHABLE,
    }
}

/// Linux TCP states as they appear in `inet_sock_set_state` (include/net/tcp_states.h).
pub mod tcp_state {
    pub const ESTABLISHED: i32 = 1;
    pub const SYN_SENT: i32 = 2;
    pub const CLOSE: i32 = 7;
}

/// Who owns a socket's network namespace ([`ConnectEvent::netns_owner`]): the user
/// namespace that created it, as `struct user_namespace.level` of `net->user_ns`.
pub mod netns_owner {
    /// Not read (kernel struct offsets unresolved, or the read failed).
    pub const UNKNOWN: u16 = 0;
    /// The initial user namespace (level 0): created by real root — the host, Docker,
    /// containerd, CRI-O, `ip netns`.
    pub const INITIAL: u16 = 1;
    /// A child user namespace (level > 0): rootless containers, `unshare -U`. Anyone can
    /// create one and be "root" inside it.
    pub const CHILD: u16 = 2;
}

pub const AF_INET: u16 = 2;
pub const AF_INET6: u16 = 10;
pub const IPPROTO_TCP: u16 = 6;

/// One record in the `EVENTS` ring buffer.
///
/// Attribution (`pid`, `tgid`, `comm`, `cgroup_id`, `netns`) is what the kernel saw when
/// the socket entered SYN_SENT, in the context of the connecting task. Outcomes that the
/// kernel decides in softirq or timer context (RSTs, SYN timeouts) would otherwise carry
/// pid 0 or an unrelated task.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConnectEvent {
    /// `bpf_ktime_get_ns()` (CLOCK_MONOTONIC) when the event was produced.
    pub ktime_ns: u64,
    /// `bpf_ktime_get_ns()` when the socket entered SYN_SENT.
    pub start_ns: u64,
    pub cgroup_id: u64,
    /// Source address: the first 4 bytes for AF_INET, all 16 for AF_INET6.
    pub saddr: [u8; 16],
    pub daddr: [u8; 16],
    /// Task command name, NUL padded.
    pub comm: [u8; 16],
    /// Kernel pid of the connecting task (the thread id).
    pub pid: u32,
    /// Kernel tgid of the connecting task (the process id).
    pub tgid: u32,
    /// Inode number of the socket's network namespace (0 if unknown).
    pub netns: u32,
    /// One of [`kind`].
    pub kind: u32,
    /// One of [`outcome`] for [`kind::OUTCOME`], 0 otherwise.
    pub outcome: u32,
    /// `sk->sk_err` when the socket closed (positive errno), 0 if none.
    pub errno: u32,
    /// SYN retransmissions seen for this attempt so far.
    pub syn_retransmits: u32,
    /// [`AF_INET`] or [`AF_INET6`].
    pub family: u16,
    /// Ports in host byte order; `sport` may be 0 if the kernel had not chosen one yet.
    pub sport: u16,
    pub dport: u16,
    /// Who owns the socket's network namespace, one of [`netns_owner`]: read in the
    /// kernel (`net->user_ns->level`) when the socket entered SYN_SENT.
    pub netns_owner: u16,
    pub _pad: [u8; 4],
}

const _: () = assert!(core::mem::size_of::<ConnectEvent>() == 112);

/// Kernel struct offsets (from the running kernel's BTF) and settings, handed to the
/// programs as the read-only global `CONFIG`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ProbeConfig {
    /// `offsetof(struct sock, sk_err)`.
    pub sk_err: u32,
    /// `offsetof(struct sock, sk_protocol)`.
    pub sk_protocol: u32,
    /// `struct sock_common` members (at offset 0 of `struct sock`).
    pub skc_state: u32,
    pub skc_family: u32,
    pub skc_daddr: u32,
    pub skc_rcv_saddr: u32,
    pub skc_dport: u32,
    pub skc_v6_daddr: u32,
    pub skc_v6_rcv_saddr: u32,
    /// 0 when the kernel has no IPv6 socket fields (CONFIG_IPV6=n).
    pub has_ipv6: u32,
    /// `offsetof(struct inet_sock, inet_sport)`.
    pub inet_sport: u32,
    /// `offsetof(struct sock, sk_shutdown)` (byte-aligned); `has_shutdown == 0` when
    /// BTF does not place it on a byte boundary.
    pub sk_shutdown: u32,
    pub has_shutdown: u32,
    /// `offsetof(struct sock_common, skc_net) + offsetof(possible_net_t, net)` and
    /// `offsetof(struct net, ns) + offsetof(struct ns_common, inum)`; `has_netns == 0`
    /// when they could not be resolved.
    pub sock_common_skc_net: u32,
    pub net_ns_inum: u32,
    pub has_netns: u32,
    /// `offsetof(struct net, user_ns)` and `offsetof(struct user_namespace, level)`;
    /// `has_netns_owner == 0` when they could not be resolved.
    pub net_user_ns: u32,
    pub user_ns_level: u32,
    pub has_netns_owner: u32,
    /// 1: wake the reader for every event; 0: routine `established` outcomes are
    /// submitted with BPF_RB_NO_WAKEUP and picked up by the reader's periodic drain.
    pub wakeup_established: u32,
}

const _: () = assert!(core::mem::size_of::<ProbeConfig>() == 4 * 20);

/// Index of the counters in the per-CPU `COUNTERS` array.
pub mod counter {
    /// Ring-buffer reserve failed: the event was lost.
    pub const LOST_EVENTS: u32 = 0;
    /// An outcome was seen for a socket with no pending attempt in its storage (its
    /// connect started before the agent).
    pub const UNTRACKED: u32 = 1;
    /// The connects hash was full and the kernel could not allocate socket storage
    /// (the overflow) when a connect started: that attempt's outcome is lost (counted).
    pub const STORAGE_FAILED: u32 = 2;
    /// A pending connect closed by the kernel (not by the application) with no error
    /// left in `sk_err` and none captured: the application consumed it first
    /// (`SO_ERROR`), and no hook ran before it could (no fentry on this kernel).
    /// Reported as `unreachable` with errno 0.
    pub const ERROR_CONSUMED: u32 = 3;
    /// A connect started while the preallocated connects hash was full: its state went
    /// to socket-local storage instead (slower, ~0.8 µs more per connect; not lost).
    pub const OVERFLOW: u32 = 4;
    pub const COUNT: u32 = 5;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn close_classification() {
        assert_eq!(classify_close(111, true), outcome::REFUSED);
        assert_eq!(
            classify_close(111, false),
            outcome::REFUSED,
            "ICMP port unreachable"
        );
        assert_eq!(
            classify_close(0, true),
            outcome::REFUSED,
            "RST seen, sk_err already consumed"
        );
        assert_eq!(classify_close(110, false), outcome::TIMEOUT);
        assert_eq!(classify_close(0, false), outcome::ABANDONED);
        assert_eq!(
            classify_close(113, false),
            outcome::UNREACHABLE,
            "EHOSTUNREACH"
        );
        assert_eq!(
            classify_close(101, false),
            outcome::UNREACHABLE,
            "ENETUNREACH"
        );
    }
}

#[cfg(feature = "user")]
mod user {
    // SAFETY: all fields are plain integers or byte arrays and the padding is explicit.
    unsafe impl aya::Pod for super::ConnectEvent {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::ProbeConfig {}
}
