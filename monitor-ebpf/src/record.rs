//! Writing `ConnectEvent`s into the ring buffer, and the socket's network namespace.

use aya_ebpf::{
    bindings::{BPF_RB_AVAIL_DATA, BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP, BPF_RB_RING_SIZE},
    helpers::bpf_ktime_get_ns,
};
use monitor_common::{ConnectEvent, counter, netns_owner};

use crate::{
    maps::{Attempt, EVENTS, READER, TupleKey, UNWOKEN, conf, count},
    sock::Sock,
};

/// The socket's network namespace: the inode number `sk->__sk_common.skc_net.net->ns.inum`
/// (0 if unknown) and who owns it (`monitor_common::netns_owner`), from
/// `net->user_ns->level`: 0 only for the initial user namespace. Offsets come from BTF.
///
/// Read in the kernel, from the socket itself: user space could only look the
/// namespace up by inode afterwards, when the process (and the namespace) may be gone,
/// and a process cannot lie about the namespace its socket lives in.
///
/// Direct loads, no helper calls: `skc_net.net` is a `struct net *` in `struct sock`'s
/// BTF, so the verifier types the loaded pointer as `struct net` and lets the program
/// load `ns.inum` and `user_ns` from it (exception-handled loads), and the same again for
/// `struct user_namespace`.
#[inline(always)]
pub fn netns_of(sk: Sock) -> (u32, u32) {
    if conf!(has_netns) == 0 {
        return (0, u32::from(netns_owner::UNKNOWN));
    }
    let Ok(net) = sk.read::<*const u8>(conf!(sock_common_skc_net)) else {
        return (0, u32::from(netns_owner::UNKNOWN));
    };
    if net.is_null() {
        return (0, u32::from(netns_owner::UNKNOWN));
    }
    // SAFETY: a BTF-typed kernel pointer; the verifier checks the offset against
    // `struct net` and the load cannot fault the kernel.
    let inum = unsafe { core::ptr::read(net.add(conf!(net_ns_inum) as usize).cast::<u32>()) };
    (inum, u32::from(owner_of(net)))
}

/// `net->user_ns->level` as one of `monitor_common::netns_owner`.
#[inline(always)]
fn owner_of(net: *const u8) -> u16 {
    if conf!(has_netns_owner) == 0 {
        return netns_owner::UNKNOWN;
    }
    // SAFETY: as in `netns_of`: `net->user_ns` is a `struct user_namespace *` in BTF.
    let user_ns =
        unsafe { core::ptr::read(net.add(conf!(net_user_ns) as usize).cast::<*const u8>()) };
    if user_ns.is_null() {
        return netns_owner::UNKNOWN;
    }
    // SAFETY: as above.
    match unsafe { core::ptr::read(user_ns.add(conf!(user_ns_level) as usize).cast::<i32>()) } {
        0 => netns_owner::INITIAL,
        _ => netns_owner::CHILD,
    }
}

/// How urgently the reader must see a record.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Wakeup {
    /// Failures and warnings: wake the reader now (also flushes any batched records).
    Now,
    /// Routine records: no wake-up while the ring buffer is less than a quarter full;
    /// the reader's periodic drain picks them up. Past a quarter, wake it: a burst of
    /// routine records must not overflow the ring before the next drain.
    Batched,
}

/// Writes one record; a full ring buffer is counted as a lost event, never silent.
///
/// Wake-up policy: while the reader polls (`READER`), no record wakes it, except when
/// the ring is more than a quarter full. While it sleeps, the first failure wakes it
/// (which makes it poll) and routine records are batched.
#[inline(always)]
pub fn emit(
    kind: u32,
    outcome: u32,
    errno: u32,
    tuple: &TupleKey,
    attempt: &Attempt,
    wakeup: Wakeup,
) {
    let every = conf!(wakeup_established) != 0;
    let batched = wakeup == Wakeup::Batched && !every;
    if batched {
        // Before the reserve: a failure that reads 0 here was reserved ahead of us.
        set_unwoken(1);
    }
    let Some(mut slot) = EVENTS.reserve::<ConnectEvent>(0) else {
        count(counter::LOST_EVENTS);
        return;
    };
    // SAFETY: no preconditions.
    let now = unsafe { bpf_ktime_get_ns() };
    slot.write(ConnectEvent {
        ktime_ns: now,
        start_ns: attempt.start_ns,
        cgroup_id: attempt.cgroup_id,
        saddr: tuple.saddr,
        daddr: tuple.daddr,
        comm: attempt.comm,
        pid: attempt.pid,
        tgid: attempt.tgid,
        netns: attempt.netns,
        kind,
        outcome,
        errno,
        syn_retransmits: attempt.syn_retransmits,
        family: tuple.family,
        sport: tuple.sport,
        dport: tuple.dport,
        netns_owner: attempt.netns_owner as u16,
        _pad: [0; 4],
    });
    // Read after the reserve: the agent clears `READER` and then polls once more, so a
    // record reserved before it saw 0 is drained by that last poll.
    let polling = !every && reader_polling();
    let flags = if every {
        // The kernel wakes the reader when it had consumed everything before this record.
        0
    } else if (polling || batched)
        && EVENTS.query(u64::from(BPF_RB_AVAIL_DATA))
            > EVENTS.query(u64::from(BPF_RB_RING_SIZE)) / 4
    {
        // A burst must not overflow the ring before the next poll or drain.
        set_unwoken(0);
        BPF_RB_FORCE_WAKEUP
    } else if polling || batched {
        BPF_RB_NO_WAKEUP
    } else if unwoken() != 0 {
        // Records written without a wake-up are waiting: the reader must come now.
        set_unwoken(0);
        BPF_RB_FORCE_WAKEUP
    } else {
        // The kernel wakes the reader if it has consumed everything before this record;
        // if not, it is awake already (or woken for an earlier record) and will drain
        // this one too.
        0
    };
    slot.submit(u64::from(flags));
}

fn reader_polling() -> bool {
    READER.get(0).is_some_and(|p| *p != 0)
}

fn unwoken() -> u32 {
    UNWOKEN.get(0).copied().unwrap_or(0)
}

fn set_unwoken(value: u32) {
    if let Some(flag) = UNWOKEN.get_ptr_mut(0) {
        // SAFETY: a plain aligned store into a map value; a lost race costs at most one
        // extra wake-up or one batch interval of delay, never an event.
        unsafe { core::ptr::write_volatile(flag, value) };
    }
}
