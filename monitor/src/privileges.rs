//! Least privilege: which capabilities `connmon run` needs, checked before anything is
//! loaded so that a missing one is named instead of surfacing as an `EPERM` from deep
//! inside the loader.
//!
//! On Linux >= 5.8 the set is (measured on 6.18 with `setpriv`, see README "Least
//! privilege"):
//! - `CAP_BPF`: create the maps (`BPF_MAP_CREATE`) and load the programs;
//! - `CAP_PERFMON`: the tracing programs (`tp_btf`, `fentry`) read kernel memory.
//!
//! tracefs is not needed: the programs are BTF-enabled tracepoints, attached by BTF id,
//! and the field offsets come from `/sys/kernel/btf/vmlinux` (world-readable).
//!
//! `CAP_SYS_ADMIN` also stands in for `CAP_BPF` and `CAP_PERFMON` (the kernel's
//! `bpf_capable()`/`perfmon_capable()`), and is the only way on kernels older than 5.8,
//! which know neither. Locked memory is not a capability question: kernels >= 5.11
//! charge BPF memory to the memory cgroup, older ones to `RLIMIT_MEMLOCK` (the systemd
//! unit sets `LimitMEMLOCK=infinity`).

use std::fmt;

/// A Linux capability, by its number in `<linux/capability.h>`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Capability(u8);

impl Capability {
    pub(crate) const SYS_ADMIN: Self = Self(21);
    pub(crate) const PERFMON: Self = Self(38);
    pub(crate) const BPF: Self = Self(39);

    pub(crate) fn name(self) -> &'static str {
        match self.0 {
            21 => "CAP_SYS_ADMIN",
            38 => "CAP_PERFMON",
            39 => "CAP_BPF",
            _ => "CAP_?",
        }
    }
}

impl fmt::Display for Capability {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A capability set as the kernel shows it (`CapEff:` in `/proc/self/status`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct CapSet(u64);

impl CapSet {
    #[cfg(test)]
    pub(crate) fn from_bits(bits: u64) -> Self {
        Self(bits)
    }

    #[cfg(test)]
    pub(crate) fn of(caps: &[Capability]) -> Self {
        Self(caps.iter().fold(0, |bits, c| bits | 1 << c.0))
    }

    pub(crate) fn has(self, cap: Capability) -> bool {
        self.0 & (1 << cap.0) != 0
    }

    /// The effective set of the calling process.
    pub(crate) fn effective() -> Result<Self, PrivilegeError> {
        let status = std::fs::read_to_string("/proc/self/status").map_err(PrivilegeError::Proc)?;
        Self::parse_status(&status).ok_or(PrivilegeError::NoCapEff)
    }

    /// The `CapEff:` line of a `/proc/PID/status` text.
    pub(crate) fn parse_status(status: &str) -> Option<Self> {
        status
            .lines()
            .find_map(|l| l.strip_prefix("CapEff:"))
            .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
            .map(Self)
    }
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum PrivilegeError {
    #[error("cannot read /proc/self/status: {0}")]
    Proc(#[source] std::io::Error),
    #[error("/proc/self/status has no CapEff line")]
    NoCapEff,
    #[error(
        "missing {}: {} (grant them, e.g. `AmbientCapabilities=` in the systemd unit, `setpriv --ambient-caps`, or a container's `capabilities.add`; README \"Least privilege\")",
        .missing.iter().map(|m| m.cap.name()).collect::<Vec<_>>().join(", "),
        .missing.iter().map(|m| format!("{} {}", m.cap, m.why)).collect::<Vec<_>>().join("; ")
    )]
    Missing { missing: Vec<Missing> },
}

/// One capability connmon lacks, and what it is needed for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Missing {
    pub cap: Capability,
    pub why: String,
}

/// Decides which capabilities are missing for `connmon run`. `bpf_caps_known` is false
/// on kernels older than 5.8 (`/proc/sys/kernel/cap_last_cap` < 39), where only
/// `CAP_SYS_ADMIN` permits BPF and perf.
pub(crate) fn check(effective: CapSet, bpf_caps_known: bool) -> Result<(), PrivilegeError> {
    let admin = effective.has(Capability::SYS_ADMIN);
    let mut missing = Vec::new();
    if !admin {
        if !bpf_caps_known {
            missing.push(Missing {
                cap: Capability::SYS_ADMIN,
                why: "is needed to load eBPF programs on kernels older than 5.8, which have no CAP_BPF/CAP_PERFMON".into(),
            });
        } else {
            if !effective.has(Capability::BPF) {
                missing.push(Missing {
                    cap: Capability::BPF,
                    why: "creates the eBPF maps and loads the programs".into(),
                });
            }
            if !effective.has(Capability::PERFMON) {
                missing.push(Missing {
                    cap: Capability::PERFMON,
                    why: "lets the tracing programs (tp_btf, fentry) read kernel memory".into(),
                });
            }
        }
    }
    if missing.is_empty() {
        Ok(())
    } else {
        Err(PrivilegeError::Missing { missing })
    }
}

/// Whether the running kernel knows `CAP_BPF` (added in 5.8, number 39).
pub(crate) fn kernel_knows_cap_bpf() -> bool {
    std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")
        .ok()
        .and_then(|s| s.trim().parse::<u8>().ok())
        .is_none_or(|last| last >= Capability::BPF.0)
}

/// [`check`] for this process on this host.
pub(crate) fn check_current() -> Result<(), PrivilegeError> {
    check(CapSet::effective()?, kernel_knows_cap_bpf())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn missing(result: Result<(), PrivilegeError>) -> Vec<&'static str> {
        match result {
            Ok(()) => Vec::new(),
            Err(PrivilegeError::Missing { missing }) => {
                missing.iter().map(|m| m.cap.name()).collect()
            }
            Err(other) => panic!("unexpected error: {other}"),
        }
    }

    #[test]
    fn root_has_everything() {
        // A root shell's CapEff on 6.18 (all 41 capabilities).
        let caps = CapSet::parse_status("Name:\tbash\nCapEff:\t000001ffffffffff\n").unwrap();
        assert_eq!(missing(check(caps, true)), Vec::<&str>::new());
    }

    #[test]
    fn bpf_and_perfmon_suffice() {
        let caps = CapSet::of(&[Capability::BPF, Capability::PERFMON]);
        assert_eq!(missing(check(caps, true)), Vec::<&str>::new());
    }

    #[test]
    fn each_missing_capability_is_named() {
        let caps = CapSet::of(&[Capability::BPF]);
        assert_eq!(missing(check(caps, true)), ["CAP_PERFMON"]);
        let caps = CapSet::of(&[Capability::PERFMON]);
        assert_eq!(missing(check(caps, true)), ["CAP_BPF"]);
        assert_eq!(
            missing(check(CapSet::from_bits(0), true)),
            ["CAP_BPF", "CAP_PERFMON"]
        );
    }

    #[test]
    fn old_kernels_need_sys_admin() {
        let caps = CapSet::of(&[Capability::BPF, Capability::PERFMON]);
        assert_eq!(missing(check(caps, false)), ["CAP_SYS_ADMIN"]);
        let caps = CapSet::of(&[Capability::SYS_ADMIN]);
        assert_eq!(missing(check(caps, false)), Vec::<&str>::new());
    }

    #[test]
    fn the_message_names_each_capability_and_its_use() {
        let err = check(CapSet::from_bits(0), true).unwrap_err();
        let text = err.to_string();
        assert!(
            text.starts_with("missing CAP_BPF, CAP_PERFMON: CAP_BPF creates the eBPF maps"),
            "{text}"
        );
    }
}
