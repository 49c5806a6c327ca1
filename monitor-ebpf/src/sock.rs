//! Reading a `struct sock` handed to a `tp_btf`/`fentry` program, and connmon's state for
//! it ([`CONNECTS`], with socket-local storage, [`SOCKETS`], as the overflow).
//!
//! The hooks receive the kernel's own `struct sock *` (a BTF pointer), so there is no
//! trace record to assemble: the few fields needed are read at the offsets the agent
//! resolved from the running kernel's BTF (`ProbeConfig`). Rust eBPF has no CO-RE field
//! relocations, hence offsets handed over at load time.

use core::{ffi::c_void, ptr};

use aya_ebpf::{
    bindings::BPF_SK_STORAGE_GET_F_CREATE,
    helpers::{bpf_probe_read_kernel, generated::bpf_sk_storage_get},
};
use monitor_common::{AF_INET, AF_INET6, counter};

use crate::maps::{Attempt, CONNECTS, OVERFLOWED, SOCKETS, TupleKey, conf, count, phase};

/// A `struct sock *` as the hook received it (kept as a pointer: the socket-storage
/// helpers accept only the unmodified BTF pointer).
#[derive(Clone, Copy)]
pub struct Sock(pub *mut c_void);

impl Sock {
    /// Reads a `T` at byte offset `off` of the socket: a direct load through the BTF
    /// pointer, which the verifier checks against `struct sock`'s BTF (the offset is a
    /// known constant: `CONFIG` is a frozen read-only map) and turns into an
    /// exception-handled load — no helper call.
    #[inline(always)]
    pub fn read<T: Copy>(self, off: u32) -> Result<T, i32> {
        // SAFETY: see above; the fields read are naturally aligned in `struct sock`.
        Ok(unsafe { core::ptr::read(self.0.cast::<u8>().add(off as usize).cast::<T>()) })
    }

    /// Reads a `T` at byte offset `off` with `bpf_probe_read_kernel`: for fields past
    /// `struct sock` (in `struct inet_sock`), which the verifier does not let a direct
    /// load through a `struct sock *` reach. (Measured: converting the pointer with
    /// `bpf_skc_to_tcp_sock()` and loading directly costs ~40 ns more per connect here.)
    #[inline(always)]
    fn read_outside<T>(self, off: u32) -> Result<T, i32> {
        let at = (self.0 as u64 + u64::from(off)) as *const T;
        // SAFETY: bpf_probe_read_kernel tolerates bad pointers (returns an error).
        unsafe { bpf_probe_read_kernel(at) }.map_err(|e| e as i32)
    }

    /// `sk->sk_protocol`.
    #[inline(always)]
    pub fn protocol(self) -> Result<u16, i32> {
        self.read::<u16>(conf!(sk_protocol))
    }

    /// `sk->__sk_common.skc_state` (the TCP state, before the transition being traced).
    #[inline(always)]
    pub fn state(self) -> Result<u8, i32> {
        self.read::<u8>(conf!(skc_state))
    }

    /// `sk->sk_err` (a positive errno, or 0).
    #[inline(always)]
    pub fn err(self) -> u32 {
        self.read::<i32>(conf!(sk_err)).unwrap_or(0).unsigned_abs()
    }

    /// Whether the application shut the socket down itself (`sk_shutdown` is set by
    /// `tcp_close()` before the CLOSE transition, and by `tcp_done()` only after it).
    /// None when the offset is unknown.
    #[inline(always)]
    pub fn closed_by_application(self) -> Option<bool> {
        if conf!(has_shutdown) == 0 {
            return None;
        }
        // SHUTDOWN_MASK (RCV_SHUTDOWN | SEND_SHUTDOWN), include/net/sock.h.
        self.read::<u8>(conf!(sk_shutdown)).ok().map(|s| s & 3 != 0)
    }

    /// Family, ports (host order) and addresses, as `sock:inet_sock_set_state` reports
    /// them: the source port from `inet_sk(sk)->inet_sport`, which (unlike
    /// `skc_num`) is still set on the transition into CLOSE.
    #[inline(always)]
    pub fn tuple(self) -> Result<TupleKey, i32> {
        let mut key = TupleKey {
            saddr: [0; 16],
            daddr: [0; 16],
            sport: u16::from_be(self.read_outside::<u16>(conf!(inet_sport))?),
            dport: u16::from_be(self.read::<u16>(conf!(skc_dport))?),
            family: self.read::<u16>(conf!(skc_family))?,
            _pad: 0,
        };
        if key.family == AF_INET {
            let s = self.read::<[u8; 4]>(conf!(skc_rcv_saddr))?;
            let d = self.read::<[u8; 4]>(conf!(skc_daddr))?;
            key.saddr[..4].copy_from_slice(&s);
            key.daddr[..4].copy_from_slice(&d);
        } else if key.family == AF_INET6 && conf!(has_ipv6) != 0 {
            key.saddr = self.read::<[u8; 16]>(conf!(skc_v6_rcv_saddr))?;
            key.daddr = self.read::<[u8; 16]>(conf!(skc_v6_daddr))?;
        } else {
            return Err(-1);
        }
        Ok(key)
    }

    /// The key of this socket in [`CONNECTS`]: its address.
    #[inline(always)]
    fn key(self) -> u64 {
        self.0 as u64
    }

    /// connmon's state for this socket, if it has any: its [`CONNECTS`] entry, else
    /// (only once the hash has overflowed) its socket-local storage.
    #[inline(always)]
    pub fn attempt(self) -> Option<Tracked> {
        if let Some(value) = CONNECTS.get_ptr_mut(self.key()) {
            // SAFETY: a pointer into a preallocated hash element, valid for the rest of
            // the program run; connmon's programs are its only writers, and the fields
            // they race on are plain counters and flags. (A concurrent delete returns
            // the element to a free list: the worst case is a stale read, never a fault.)
            return unsafe { value.as_mut() }.map(|slot| Tracked {
                slot,
                in_storage: false,
            });
        }
        if !overflowed() {
            return None;
        }
        self.storage(0).map(|slot| Tracked {
            slot,
            in_storage: true,
        })
    }

    /// Starts tracking this socket with `attempt`: into [`CONNECTS`], or, when the hash is
    /// full, into the socket's storage (created). False when neither could hold it
    /// (counted by the caller).
    #[inline(always)]
    pub fn track(self, attempt: &Attempt) -> bool {
        // BPF_ANY: a reconnect of the same socket replaces its old entry.
        if CONNECTS.insert(self.key(), attempt, 0).is_ok() {
            return true;
        }
        count(counter::OVERFLOW);
        set_overflowed();
        match self.storage(u64::from(BPF_SK_STORAGE_GET_F_CREATE)) {
            Some(slot) => {
                *slot = *attempt;
                true
            }
            None => false,
        }
    }

    /// Stops tracking this socket (its outcome is reported, or it left ESTABLISHED):
    /// deletes its [`CONNECTS`] entry, or marks its storage done.
    #[inline(always)]
    pub fn untrack(self, tracked: Tracked) {
        if tracked.in_storage {
            tracked.slot.phase = phase::DONE;
        } else {
            // An error (already deleted by a concurrent run) leaves nothing to do.
            let _ = CONNECTS.remove(self.key());
        }
    }

    /// Forgets an established connection that leaves ESTABLISHED, if connmon opened it
    /// (one hash delete; a miss for server-side sockets).
    #[inline(always)]
    pub fn untrack_established(self) {
        if CONNECTS.remove(self.key()).is_ok() || !overflowed() {
            return;
        }
        if let Some(slot) = self.storage(0) {
            slot.phase = phase::DONE;
        }
    }

    #[inline(always)]
    fn storage(self, flags: u64) -> Option<&'static mut Attempt> {
        let map = ptr::from_ref(&SOCKETS).cast_mut().cast::<c_void>();
        // SAFETY: `self.0` is the hook's BTF `struct sock *`, which the verifier checks;
        // the helper returns NULL or a pointer to this socket's value, valid for the
        // rest of the program run.
        let value = unsafe { bpf_sk_storage_get(map, self.0, ptr::null_mut(), flags) };
        // SAFETY: as above; values are only touched by connmon's programs, and the
        // fields they race on are plain counters and flags.
        unsafe { value.cast::<Attempt>().as_mut() }
    }
}

/// connmon's state for one socket, and where it lives.
pub struct Tracked {
    pub slot: &'static mut Attempt,
    /// In the socket's storage (the overflow), not in [`CONNECTS`].
    in_storage: bool,
}

#[inline(always)]
fn overflowed() -> bool {
    OVERFLOWED.get(0).is_some_and(|f| *f != 0)
}

#[inline(always)]
fn set_overflowed() {
    if let Some(flag) = OVERFLOWED.get_ptr_mut(0) {
        // SAFETY: a plain aligned store into a map value; it only ever goes 0 -> 1.
        unsafe { core::ptr::write_volatile(flag, 1) };
    }
}
