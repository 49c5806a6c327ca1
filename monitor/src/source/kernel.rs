//! Loading and attaching the eBPF programs, and the handles the reader needs: the ring
//! buffer (registered with tokio) and the per-CPU counters.
//!
//! Dropping a [`KernelSource`] detaches every program and frees the maps.

use std::path::Path;

use anyhow::{Context as _, bail};
use aya::{
    Btf, Ebpf, EbpfLoader,
    maps::{MapData, PerCpuArray, RingBuf},
    programs::{BtfTracePoint, FEntry, Program},
};
use monitor_common::{ProbeConfig, counter};
use tokio::io::{Interest, unix::AsyncFd};

use super::{
    btf, features,
    poll::ReaderPoll,
    probes::{self, Hook, KernelFacts, Need},
};

/// The eBPF object built by `build.rs` (empty when built with AYA_BUILD_SKIP=1).
static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/monitor"));

/// Settings for the kernel side.
#[derive(Clone, Debug)]
pub struct SourceOptions {
    /// Size of the `EVENTS` ring buffer in bytes: a power of two, a multiple of the page size.
    pub ring_buffer_bytes: u32,
    /// Wake the reader for every event instead of batching `established` outcomes.
    pub wakeup_every_event: bool,
}

/// What was found or done while setting up, for the start-up log line.
#[derive(Debug)]
pub struct SourceInfo {
    pub netns_resolved: bool,
    /// The owner of each socket's network namespace is read (`net->user_ns->level`).
    pub netns_owner_resolved: bool,
    /// The hooks attached, from the probe table (`tp_btf/name`, `fentry/function`).
    pub attached: Vec<String>,
    /// Optional hooks the kernel has but that failed to attach (with why).
    pub skipped: Vec<String>,
}

/// The attached programs and the maps the agent reads.
pub struct KernelSource {
    /// Kept alive: dropping it detaches the programs.
    _ebpf: Ebpf,
    pub ring: AsyncFd<RingBuf<MapData>>,
    /// The reader's wake-up policy (epoll while quiet, a timer while records flow).
    pub poll: ReaderPoll,
    counters: PerCpuArray<MapData, u64>,
    pub info: SourceInfo,
}

/// Kernel-side counters, summed over CPUs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KernelCounters {
    /// Records the ring buffer had no room for.
    pub lost_events: u64,
    /// Outcomes for sockets whose connect was not seen (opened before the agent started).
    pub untracked: u64,
    /// Connects whose socket storage could not be allocated: their outcome is lost.
    pub storage_failed: u64,
    /// Connects that found the slot table and the connects hash full and went to
    /// socket-local storage (slower, not lost).
    pub overflow: u64,
}

/// The kernel function that, since 6.10 (and in distribution kernels that backported
/// it, such as Debian's 6.1.0-57), raises a socket error and closes the socket; its
/// `err` argument is captured before anything can consume `sk_err`.
pub const TCP_DONE_WITH_ERROR: &str = "tcp_done_with_error";

/// The kernel function that wakes the application for a socket error (5.12+).
pub const SK_ERROR_REPORT: &str = "sk_error_report";

/// The tracepoint at the end of `sk_error_report()` (5.15+): the fallback where
/// `fentry/sk_error_report` cannot attach.
pub const INET_SK_ERROR_REPORT: &str = "inet_sk_error_report";

/// Checks the ring buffer size the kernel will accept.
pub fn validate_ring_buffer_bytes(bytes: u32) -> Result<(), String> {
    let page = 4096;
    if !bytes.is_power_of_two() || bytes < page {
        return Err(format!(
            "ring buffer size {bytes} must be a power of two and at least {page} bytes (e.g. 262144)"
        ));
    }
    Ok(())
}

impl KernelSource {
    /// Resolves offsets from BTF, loads and attaches the programs of the probe table.
    pub fn attach(opts: &SourceOptions) -> anyhow::Result<Self> {
        if EBPF_OBJECT.is_empty() {
            bail!(
                "this connmon binary was built without its eBPF programs (AYA_BUILD_SKIP=1); build it with `cargo xtask build`"
            );
        }
        validate_ring_buffer_bytes(opts.ring_buffer_bytes).map_err(anyhow::Error::msg)?;
        features::check()?;
        let kernel_btf = btf::KernelBtf::open(Path::new(btf::VMLINUX))?;
        let facts = KernelFacts {
            tcp_done_with_error: kernel_btf.has_function(TCP_DONE_WITH_ERROR),
            sk_error_report: kernel_btf.has_function(SK_ERROR_REPORT),
            inet_sk_error_report: kernel_btf.has_tracepoint(INET_SK_ERROR_REPORT),
        };
        let kernel = kernel_btf.kernel_offsets()?;
        let mut config = ProbeConfig {
            sk_err: kernel.sock_sk_err,
            sk_protocol: kernel.sock_sk_protocol,
            skc_state: kernel.skc_state,
            skc_family: kernel.skc_family,
            skc_daddr: kernel.skc_daddr,
            skc_rcv_saddr: kernel.skc_rcv_saddr,
            skc_dport: kernel.skc_dport,
            inet_sport: kernel.inet_sport,
            wakeup_established: u32::from(opts.wakeup_every_event),
            ..ProbeConfig::default()
        };
        if let Some(shutdown) = kernel.sock_sk_shutdown {
            config.sk_shutdown = shutdown;
            config.has_shutdown = 1;
        }
        if let Some((daddr, saddr)) = kernel.skc_v6 {
            config.skc_v6_daddr = daddr;
            config.skc_v6_rcv_saddr = saddr;
            config.has_ipv6 = 1;
        }
        let netns_resolved = resolved(
            kernel.sock_common_skc_net.zip(kernel.net_ns_inum),
            "kernel BTF lacks sock_common.skc_net.net or net.ns.inum: netns will be reported as 0",
            |(net, inum)| {
                config.sock_common_skc_net = net;
                config.net_ns_inum = inum;
                config.has_netns = 1;
            },
        );
        let netns_owner_resolved = resolved(
            (kernel.net_user_ns.zip(kernel.user_ns_level)).filter(|_| netns_resolved),
            "kernel BTF lacks net.user_ns or user_namespace.level: namespace ownership is unknown, \
             so only connects from connmon's own network namespace count as evidence under trust = \"rootful\"",
            |(user_ns, level)| {
                config.net_user_ns = user_ns;
                config.user_ns_level = level;
                config.has_netns_owner = 1;
            },
        );

        let mut ebpf = EbpfLoader::new()
            .override_global("CONFIG", &config, true)
            .map_max_entries("EVENTS", opts.ring_buffer_bytes)
            .load(EBPF_OBJECT)
            .context("loading the eBPF programs (is this run as root?)")?;
        // aya's own parse of the kernel BTF, for the programs' attach points.
        let aya_btf = Btf::from_sys_fs().context("reading kernel BTF for the attach points")?;

        let mut attached = Vec::new();
        let mut skipped = Vec::new();
        let mut attached_programs = Vec::new();
        for probe in probes::wanted(&facts) {
            let program = probe.program;
            if let Need::Fallback { instead_of, .. } = probe.need
                && attached_programs.contains(&instead_of)
            {
                continue;
            }
            let program_mut = ebpf
                .program_mut(program)
                .with_context(|| format!("program {program} missing from the eBPF object"))?;
            match (attach_one(program_mut, probe.hook, &aya_btf), probe.need) {
                (Ok(()), _) => {
                    attached.push(probe.hook.to_string());
                    attached_programs.push(program);
                }
                (Err(e), Need::Required) => return Err(e),
                (Err(e), Need::Optional(_) | Need::Fallback { .. }) => {
                    tracing::warn!(
                        hook = %probe.hook,
                        "optional hook not attached ({e:#}): socket errors are read at the CLOSE transition only"
                    );
                    skipped.push(format!("{} ({e:#})", probe.hook));
                }
            }
        }

        let ring = RingBuf::try_from(ebpf.take_map("EVENTS").context("map EVENTS missing")?)?;
        // SAFETY: the ring buffer's fd stays open for as long as `ring` lives inside the
        // AsyncFd, which deregisters it before dropping it.
        let ring = unsafe { AsyncFd::register_with_interest(ring, Interest::READABLE) }
            .map_err(|e| anyhow::anyhow!("registering the ring buffer with tokio: {e}"))?;
        let counters =
            PerCpuArray::try_from(ebpf.take_map("COUNTERS").context("map COUNTERS missing")?)?;
        let reader =
            aya::maps::Array::try_from(ebpf.take_map("READER").context("map READER missing")?)?;
        let poll = ReaderPoll::new(reader, !opts.wakeup_every_event)?;
        Ok(KernelSource {
            _ebpf: ebpf,
            ring,
            poll,
            counters,
            info: SourceInfo {
                netns_resolved,
                netns_owner_resolved,
                attached,
                skipped,
            },
        })
    }

    /// Reads the per-CPU counters.
    pub fn counters(&self) -> anyhow::Result<KernelCounters> {
        let sum =
            |index: u32| -> anyhow::Result<u64> { Ok(self.counters.get(&index, 0)?.iter().sum()) };
        Ok(KernelCounters {
            lost_events: sum(counter::LOST_EVENTS)?,
            untracked: sum(counter::UNTRACKED)?,
            storage_failed: sum(counter::STORAGE_FAILED)?,
            overflow: sum(counter::OVERFLOW)?,
        })
    }
}

/// Hands offsets BTF `found` to the programs (`apply`), or warns that what they serve
/// is `missing`; returns whether they were found.
fn resolved<T>(found: Option<T>, missing: &str, apply: impl FnOnce(T)) -> bool {
    match found {
        Some(offsets) => {
            apply(offsets);
            true
        }
        None => {
            tracing::warn!("{missing}");
            false
        }
    }
}

/// Loads and attaches one program of the probe table at its hook.
fn attach_one(program: &mut Program, hook: Hook, btf: &Btf) -> anyhow::Result<()> {
    match hook {
        Hook::BtfTracePoint { name } => {
            let tp: &mut BtfTracePoint = program.try_into()?;
            tp.load(name, btf)
                .with_context(|| format!("loading the tp_btf program for {name}"))?;
            tp.attach()
                .with_context(|| format!("attaching to tp_btf/{name}"))?;
        }
        Hook::FEntry { function } => {
            let f: &mut FEntry = program.try_into()?;
            f.load(function, btf)
                .with_context(|| format!("loading the fentry program for {function}"))?;
            f.attach()
                .with_context(|| format!("attaching to fentry/{function}"))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Whether `/proc/kallsyms` text names the function `name` (`addr type name [module]`).
    fn kallsyms_has(text: &str, name: &str) -> bool {
        text.lines()
            .any(|l| l.split_whitespace().nth(2) == Some(name))
    }

    #[test]
    fn this_kernel_btf_answers_like_kallsyms() {
        let Ok(btf) = btf::KernelBtf::open(Path::new(btf::VMLINUX)) else {
            panic!("{} unreadable: the agent needs kernel BTF", btf::VMLINUX);
        };
        assert!(btf.has_function("tcp_connect"), "BTF lacks tcp_connect");
        assert!(!btf.has_function("connmon_no_such_function"));
        assert!(
            btf.has_tracepoint("inet_sock_set_state"),
            "BTF lacks btf_trace_inet_sock_set_state"
        );
        assert!(!btf.has_tracepoint("connmon_no_such_tracepoint"));
        if let Ok(kallsyms) = std::fs::read_to_string("/proc/kallsyms")
            && kallsyms.lines().any(|l| !l.starts_with("0000000000000000"))
        {
            for function in [TCP_DONE_WITH_ERROR, SK_ERROR_REPORT] {
                assert_eq!(
                    btf.has_function(function),
                    kallsyms_has(&kallsyms, function),
                    "BTF and /proc/kallsyms disagree on {function}"
                );
            }
        }
    }
}
