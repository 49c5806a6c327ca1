//! The probe table: every kernel hook connmon uses, in one list that set-up iterates
//! (feature check, tracepoint offsets, load and attach, the start-up log line).
//!
//! Adding a probe = one file under `monitor-ebpf/src/probes/` + one entry in [`PROBES`]
//! (and, if it reads a new tracepoint's fields, their slots in
//! `monitor_common::ProbeConfig`). Detaching is dropping the loaded object: every
//! program attached from this table goes with it.

use monitor_common::ProbeConfig;

use super::tracefs::{Format, TracefsError};

/// Where a program is attached.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Hook {
    /// A classic tracepoint (`<tracefs>/events/<category>/<name>`): needs tracefs for its
    /// record layout.
    TracePoint {
        category: &'static str,
        name: &'static str,
    },
}

impl Hook {
    /// The BPF program type this hook needs, how to name it, and since when Linux has it
    /// (for the feature check's error message).
    pub const fn program_type(&self) -> (aya::programs::ProgramType, &'static str, &'static str) {
        match self {
            Hook::TracePoint { .. } => (
                aya::programs::ProgramType::TracePoint,
                "BPF tracepoint programs (BPF_PROG_TYPE_TRACEPOINT)",
                "Linux 4.7, CONFIG_BPF_EVENTS",
            ),
        }
    }
}

impl std::fmt::Display for Hook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Hook::TracePoint { category, name } => write!(f, "{category}:{name}"),
        }
    }
}

/// What the running kernel does, as far as the choice of probes is concerned.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KernelFacts {
    /// The kernel raises the socket error before the CLOSE transition (no
    /// `tcp_done_with_error()`): the error must be remembered from the error report.
    pub error_before_close: bool,
}

/// Whether a probe is attached on the running kernel.
#[derive(Clone, Copy, Debug)]
pub enum Need {
    /// Always: connmon cannot work without it (a missing hook is a start-up error).
    Required,
    /// Only where it contributes: programs that cannot are not attached (their runs
    /// would cost every connect for nothing).
    When(fn(&KernelFacts) -> bool),
}

/// One kernel hook.
pub struct Probe {
    /// The eBPF program's function name in `monitor-ebpf/src/probes/`.
    pub program: &'static str,
    pub hook: Hook,
    /// Writes the offsets of this hook's record fields into the programs' configuration.
    pub offsets: fn(&Format, &mut ProbeConfig) -> Result<(), TracefsError>,
    pub need: Need,
}

impl Probe {
    /// Whether this probe is attached on a kernel with these facts.
    pub fn wanted(&self, facts: &KernelFacts) -> bool {
        match self.need {
            Need::Required => true,
            Need::When(f) => f(facts),
        }
    }
}

/// Every probe connmon knows, in attach order.
pub const PROBES: &[Probe] = &[
    Probe {
        program: "inet_sock_set_state",
        hook: Hook::TracePoint {
            category: "sock",
            name: "inet_sock_set_state",
        },
        offsets: |f, c| {
            c.set_state = f.tuple()?;
            c.set_state_skaddr = f.offset("skaddr", 8)?;
            c.set_state_oldstate = f.offset("oldstate", 4)?;
            c.set_state_newstate = f.offset("newstate", 4)?;
            c.set_state_protocol = f.offset("protocol", 2)?;
            Ok(())
        },
        need: Need::Required,
    },
    Probe {
        program: "tcp_receive_reset",
        hook: Hook::TracePoint {
            category: "tcp",
            name: "tcp_receive_reset",
        },
        offsets: |f, c| {
            c.receive_reset = f.tuple()?;
            c.receive_reset_skaddr = f.offset("skaddr", 8)?;
            Ok(())
        },
        need: Need::Required,
    },
    Probe {
        program: "tcp_retransmit_skb",
        hook: Hook::TracePoint {
            category: "tcp",
            name: "tcp_retransmit_skb",
        },
        offsets: |f, c| {
            c.retransmit = f.tuple()?;
            c.retransmit_skaddr = f.offset("skaddr", 8)?;
            c.retransmit_state = f.offset("state", 4)?;
            Ok(())
        },
        need: Need::Required,
    },
    Probe {
        program: "inet_sk_error_report",
        hook: Hook::TracePoint {
            category: "sock",
            name: "inet_sk_error_report",
        },
        offsets: |f, c| {
            c.error_report = f.tuple()?;
            c.error_report_error = f.offset("error", 4)?;
            c.error_report_protocol = f.offset("protocol", 2)?;
            Ok(())
        },
        need: Need::When(|k| k.error_before_close),
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
    fn error_report_is_attached_only_where_it_contributes() {
        let names = |facts| wanted(&facts).map(|p| p.program).collect::<Vec<_>>();
        let modern = names(KernelFacts {
            error_before_close: false,
        });
        let old = names(KernelFacts {
            error_before_close: true,
        });
        assert!(!modern.contains(&"inet_sk_error_report"), "{modern:?}");
        assert!(old.contains(&"inet_sk_error_report"), "{old:?}");
        assert!(modern.contains(&"inet_sock_set_state"), "{modern:?}");
    }
}
