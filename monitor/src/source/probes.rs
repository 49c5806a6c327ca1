//! The probe table: every kernel hook connmon uses, in one list that set-up iterates
//! (feature check, load and attach, the start-up log line).
//!
//! Every hook is BTF-based — `tp_btf` (BTF-enabled tracepoints: the program gets the
//! kernel's `struct sock *` directly, no trace record is assembled, no tracefs needed)
//! or `fentry` — so that the programs can use socket-local storage, which the kernel
//! allows from these program types only (since Linux 5.11).
//!
//! Adding a probe = one file under `monitor-ebpf/src/probes/` + one entry in [`PROBES`].
//! Detaching is dropping the loaded object: every program attached from this table goes
//! with it.

/// Where a program is attached.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Hook {
    /// A BTF-enabled tracepoint (`tp_btf/<name>`, typedef `btf_trace_<name>` in BTF).
    BtfTracePoint { name: &'static str },
    /// The entry of a kernel function (`fentry/<function>`, a BPF trampoline).
    FEntry { function: &'static str },
}

impl std::fmt::Display for Hook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Hook::BtfTracePoint { name } => write!(f, "tp_btf/{name}"),
            Hook::FEntry { function } => write!(f, "fentry/{function}"),
        }
    }
}

/// What the running kernel has, as far as the choice of probes is concerned: read from
/// its BTF, never from its version number (distributions backport).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KernelFacts {
    /// `tcp_done_with_error()` exists (6.10+, Debian 6.1.0-57).
    pub tcp_done_with_error: bool,
    /// `sk_error_report()` exists (5.12+).
    pub sk_error_report: bool,
    /// The BTF-enabled tracepoint `inet_sk_error_report` exists (5.15+).
    pub inet_sk_error_report: bool,
}

/// Whether a probe is attached on the running kernel.
#[derive(Clone, Copy, Debug)]
pub enum Need {
    /// Always: connmon cannot work without it (a missing hook is a start-up error).
    Required,
    /// Only where the kernel has what it hooks. It improves classification but is not
    /// essential: if attaching fails (e.g. no BPF trampolines on this architecture),
    /// the agent warns and goes on without it.
    Optional(fn(&KernelFacts) -> bool),
    /// Like `Optional`, but only when the program `instead_of` (listed earlier in
    /// [`PROBES`]) is not attached: not wanted on this kernel, or its attach failed.
    Fallback {
        instead_of: &'static str,
        has: fn(&KernelFacts) -> bool,
    },
}

/// One kernel hook.
pub struct Probe {
    /// The eBPF program's function name in `monitor-ebpf/src/probes/`.
    pub program: &'static str,
    pub hook: Hook,
    pub need: Need,
}

impl Probe {
    /// Whether this probe is attached on a kernel with these facts.
    pub fn wanted(&self, facts: &KernelFacts) -> bool {
        match self.need {
            Need::Required => true,
            Need::Optional(f) | Need::Fallback { has: f, .. } => f(facts),
        }
    }
}

/// Every probe connmon knows, in attach order.
///
/// The two hooks at `sk_error_report()` are for kernels without `tcp_done_with_error()`,
/// whose error paths report the error (waking the application) before the CLOSE
/// transition. Where `tcp_done_with_error()` exists, it sets `sk_err`, then makes the
/// CLOSE transition (where connmon reads `sk_err`), and reports the error only after it:
/// a hook at the report would cost 100–200 ns per connect and add nothing.
pub const PROBES: &[Probe] = &[
    Probe {
        program: "inet_sock_set_state",
        hook: Hook::BtfTracePoint {
            name: "inet_sock_set_state",
        },
        need: Need::Required,
    },
    Probe {
        program: "tcp_receive_reset",
        hook: Hook::BtfTracePoint {
            name: "tcp_receive_reset",
        },
        need: Need::Required,
    },
    Probe {
        program: "tcp_retransmit_skb",
        hook: Hook::BtfTracePoint {
            name: "tcp_retransmit_skb",
        },
        need: Need::Required,
    },
    Probe {
        program: "tcp_done_with_error",
        hook: Hook::FEntry {
            function: "tcp_done_with_error",
        },
        need: Need::Optional(|k| k.tcp_done_with_error),
    },
    Probe {
        program: "sk_error_report",
        hook: Hook::FEntry {
            function: "sk_error_report",
        },
        need: Need::Optional(|k| k.sk_error_report && !k.tcp_done_with_error),
    },
    Probe {
        program: "inet_sk_error_report",
        hook: Hook::BtfTracePoint {
            name: "inet_sk_error_report",
        },
        need: Need::Fallback {
            instead_of: "sk_error_report",
            has: |k| k.inet_sk_error_report && !k.tcp_done_with_error,
        },
    },
];

/// The probes attached on a kernel with these facts.
pub fn wanted(facts: &KernelFacts) -> impl Iterator<Item = &'static Probe> + '_ {
    PROBES.iter().filter(|p| p.wanted(facts))
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;

    #[test]
    fn program_names_and_hooks_are_unique() {
        let programs: HashSet<_> = PROBES.iter().map(|p| p.program).collect();
        let hooks: HashSet<_> = PROBES.iter().map(|p| p.hook).collect();
        assert_eq!(programs.len(), PROBES.len(), "a program is listed twice");
        assert_eq!(hooks.len(), PROBES.len(), "a hook is listed twice");
    }

    #[test]
    fn error_capture_hooks_follow_what_the_kernel_has() {
        let names = |facts| wanted(&facts).map(|p| p.program).collect::<Vec<_>>();
        let none = names(KernelFacts::default());
        assert_eq!(
            none,
            [
                "inet_sock_set_state",
                "tcp_receive_reset",
                "tcp_retransmit_skb"
            ]
        );
        let all = names(KernelFacts {
            tcp_done_with_error: true,
            sk_error_report: true,
            inet_sk_error_report: true,
        });
        assert!(all.contains(&"tcp_done_with_error"), "{all:?}");
        // With tcp_done_with_error the CLOSE transition already sees sk_err.
        assert!(!all.contains(&"sk_error_report"), "{all:?}");
        assert!(!all.contains(&"inet_sk_error_report"), "{all:?}");
        let older = names(KernelFacts {
            tcp_done_with_error: false,
            sk_error_report: true,
            inet_sk_error_report: true,
        });
        assert!(older.contains(&"sk_error_report"), "{older:?}");
        // Wanted where the kernel has it; attached only if fentry/sk_error_report is not.
        assert!(older.contains(&"inet_sk_error_report"), "{older:?}");
        let fallback = PROBES
            .iter()
            .position(|p| p.program == "inet_sk_error_report")
            .expect("fallback listed");
        let Need::Fallback { instead_of, .. } = PROBES[fallback].need else {
            panic!("inet_sk_error_report is not a fallback");
        };
        let primary = PROBES
            .iter()
            .position(|p| p.program == instead_of)
            .expect("the fallback's primary is listed");
        assert!(primary < fallback, "a fallback must come after its primary");
    }
}
