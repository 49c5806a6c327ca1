//! Loading and attaching the eBPF programs, and the handles the reader needs: the ring
//! buffer (registered with tokio) and the per-CPU counters.
//!
//! Dropping a [`KernelSource`] detaches every program and frees the maps.

use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};
use aya::{
    Ebpf, EbpfLoader,
    maps::{MapData, PerCpuArray, RingBuf},
    programs::TracePoint,
};
use monitor_common::{ProbeConfig, counter};
use tokio::io::{Interest, unix::AsyncFd};

use super::{
    btf, features,
    poll::ReaderPoll,
    probes::{self, Hook, KernelFacts},
    tracefs,
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
    pub tracefs: PathBuf,
    pub mounted_tracefs: bool,
    pub netns_resolved: bool,
    /// Whether `inet_sk_error_report` errors are remembered for the CLOSE transition
    /// (kernels without `tcp_done_with_error()`).
    pub error_fallback: bool,
    /// The owner of each socket's network namespace is read (`net->user_ns->level`).
    pub netns_owner_resolved: bool,
    /// The hooks attached, from the probe table (`category:name`).
    pub attached: Vec<String>,
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
}

/// The kernel function that, since 6.10 (and in distribution kernels that backported
/// it, such as Debian's 6.1.0-57), sets `sk_err` before the CLOSE transition and raises
/// `inet_sk_error_report` only after it.
pub const TCP_DONE_WITH_ERROR: &str = "tcp_done_with_error";

/// Whether the kernel raises the socket error before the CLOSE transition, so that the
/// error must be remembered from `inet_sk_error_report` (the fallback). Decided by
/// whether `tcp_done_with_error()` exists (BTF, else `/proc/kallsyms`), not by the
/// version number: backports make versions a poor feature test. When neither source
/// knows it, the fallback is on: it costs a map update per error, never an outcome.
pub fn reports_error_before_close(in_btf: bool, kallsyms: Option<&str>) -> bool {
    if in_btf {
        return false;
    }
    !kallsyms.is_some_and(|text| kallsyms_has(text, TCP_DONE_WITH_ERROR))
}

/// Whether `/proc/kallsyms` text names the function `name` (`addr type name [module]`).
fn kallsyms_has(text: &str, name: &str) -> bool {
    text.lines()
        .any(|l| l.split_whitespace().nth(2) == Some(name))
}

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
    /// Mounts tracefs if needed, resolves offsets, loads and attaches all four programs.
    pub fn attach(opts: &SourceOptions) -> anyhow::Result<Self> {
        if EBPF_OBJECT.is_empty() {
            bail!(
                "this connmon binary was built without its eBPF programs (AYA_BUILD_SKIP=1); build it with `cargo xtask build`"
            );
        }
        validate_ring_buffer_bytes(opts.ring_buffer_bytes).map_err(anyhow::Error::msg)?;
        features::check()?;
        let kernel_btf = btf::KernelBtf::open(Path::new(btf::VMLINUX))?;
        let done_with_error_in_btf = kernel_btf.has_function(TCP_DONE_WITH_ERROR);
        let kallsyms = if done_with_error_in_btf {
            None
        } else {
            std::fs::read_to_string("/proc/kallsyms").ok()
        };
        let error_fallback =
            reports_error_before_close(done_with_error_in_btf, kallsyms.as_deref());
        let facts = KernelFacts {
            error_before_close: error_fallback,
        };
        let (tracefs_path, mounted) = tracefs::ensure_mounted()?;
        let mut config: ProbeConfig =
            tracefs::read_probe_offsets(&tracefs_path, probes::wanted(&facts))?;

        let kernel = kernel_btf.kernel_offsets()?;
        config.sock_sk_err = kernel.sock_sk_err;
        let netns_resolved = match (kernel.sock_common_skc_net, kernel.net_ns_inum) {
            (Some(net), Some(inum)) => {
                config.sock_common_skc_net = net;
                config.net_ns_inum = inum;
                config.has_netns = 1;
                true
            }
            _ => {
                tracing::warn!(
                    "kernel BTF lacks sock_common.skc_net.net or net.ns.inum: netns will be reported as 0"
                );
                false
            }
        };
        let netns_owner_resolved = match (kernel.net_user_ns, kernel.user_ns_level) {
            (Some(user_ns), Some(level)) if netns_resolved => {
                config.net_user_ns = user_ns;
                config.user_ns_level = level;
                config.has_netns_owner = 1;
                true
            }
            _ => {
                tracing::warn!(
                    "kernel BTF lacks net.user_ns or user_namespace.level: namespace ownership is unknown, \
                     so only connects from connmon's own network namespace count as evidence under trust = \"rootful\""
                );
                false
            }
        };
        config.wakeup_established = u32::from(opts.wakeup_every_event);
        config.error_fallback = u32::from(error_fallback);

        let mut ebpf = EbpfLoader::new()
            .override_global("CONFIG", &config, true)
            .map_max_entries("EVENTS", opts.ring_buffer_bytes)
            .load(EBPF_OBJECT)
            .context("loading the eBPF programs (is this run as root?)")?;

        let mut attached = Vec::new();
        for probe in probes::wanted(&facts) {
            let program = probe.program;
            let program_mut = ebpf
                .program_mut(program)
                .with_context(|| format!("program {program} missing from the eBPF object"))?;
            match probe.hook {
                Hook::TracePoint { category, name } => {
                    let tp: &mut TracePoint = program_mut.try_into()?;
                    tp.load()
                        .with_context(|| format!("loading program {program}"))?;
                    tp.attach(category, name)
                        .with_context(|| format!("attaching to tracepoint {category}:{name}"))?;
                }
            }
            attached.push(probe.hook.to_string());
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
                tracefs: tracefs_path,
                mounted_tracefs: mounted,
                netns_resolved,
                error_fallback,
                netns_owner_resolved,
                attached,
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
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_report_fallback_only_without_tcp_done_with_error() {
        let with = "ffffffff8201d360 T tcp_done_with_error\nffffffff8201d400 t tcp_done\n";
        let without = "ffffffff8201d400 T tcp_done\nffffffff8201d500 t tcp_done_with_error_x\n";
        assert!(!reports_error_before_close(true, None));
        assert!(!reports_error_before_close(false, Some(with)));
        assert!(reports_error_before_close(false, Some(without)));
        assert!(reports_error_before_close(false, None));
    }

    #[test]
    fn this_kernel_btf_answers_like_kallsyms() {
        let Ok(btf) = btf::KernelBtf::open(Path::new(btf::VMLINUX)) else {
            panic!("{} unreadable: the agent needs kernel BTF", btf::VMLINUX);
        };
        let in_btf = btf.has_function(TCP_DONE_WITH_ERROR);
        assert!(btf.has_function("tcp_connect"), "BTF lacks tcp_connect");
        assert!(!btf.has_function("connmon_no_such_function"));
        if let Ok(kallsyms) = std::fs::read_to_string("/proc/kallsyms")
            && kallsyms.lines().any(|l| !l.starts_with("0000000000000000"))
        {
            assert_eq!(
                in_btf,
                kallsyms_has(&kallsyms, TCP_DONE_WITH_ERROR),
                "BTF and /proc/kallsyms disagree on {TCP_DONE_WITH_ERROR}"
            );
        }
    }
}
