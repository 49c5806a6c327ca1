//! What connmon needs from the running kernel, probed before loading anything, so that
//! an unsuitable kernel gets one clear line naming the missing feature instead of a
//! verifier or loader error. Probed by asking the kernel (creating a map, loading a
//! trivial program), never by version number: distributions backport.
//!
//! BTF is checked where it is read (`btf.rs`); a missing hook fails its attach with
//! the hook's name.

use aya::maps::MapType;

/// A kernel feature connmon cannot run without.
#[derive(Debug, thiserror::Error)]
pub enum MissingFeature {
    #[error(
        "this kernel lacks {what} ({since}); connmon cannot run here (see README: minimum kernel)"
    )]
    Missing {
        what: &'static str,
        since: &'static str,
    },
    #[error("probing the kernel for {what} failed: {detail}")]
    Probe { what: &'static str, detail: String },
}

const MAPS: &[(MapType, &str, &str)] = &[
    (
        MapType::RingBuf,
        "the BPF ring buffer map type (BPF_MAP_TYPE_RINGBUF)",
        "Linux 5.8",
    ),
    (
        MapType::SkStorage,
        "socket-local storage (BPF_MAP_TYPE_SK_STORAGE)",
        "Linux 5.2; from tp_btf/fentry programs 5.11",
    ),
    (
        MapType::Array,
        "the BPF array map type (BPF_MAP_TYPE_ARRAY)",
        "Linux 3.19",
    ),
    (
        MapType::PerCpuArray,
        "the BPF per-CPU array map type (BPF_MAP_TYPE_PERCPU_ARRAY)",
        "Linux 4.6",
    ),
];

/// Checks every map type the eBPF object uses. The program type of the hooks
/// (BPF_PROG_TYPE_TRACING) is not probed here: aya's probe for it loads a program
/// against `bpf_fentry_test1` and fails on kernels that do support it (6.18); a kernel
/// without it fails at the first attach, with the hook named.
pub fn check() -> Result<(), MissingFeature> {
    for &(map_type, what, since) in MAPS {
        match aya::sys::is_map_supported(map_type) {
            Ok(true) => {}
            Ok(false) => return Err(MissingFeature::Missing { what, since }),
            Err(e) => {
                return Err(MissingFeature::Probe {
                    what,
                    detail: e.to_string(),
                });
            }
        }
    }
    Ok(())
}
