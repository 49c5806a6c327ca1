//! What connmon needs from the running kernel, probed before loading anything, so that
//! an unsuitable kernel gets one clear line naming the missing feature instead of a
//! verifier or loader error. Probed by asking the kernel (creating a map, loading a
//! trivial program), never by version number: distributions backport.
//!
//! BTF and the four tracepoints are checked where they are read (`btf.rs`,
//! `tracefs.rs`), with errors of the same kind.

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
        MapType::LruHash,
        "the BPF LRU hash map type (BPF_MAP_TYPE_LRU_HASH)",
        "Linux 4.10",
    ),
    (
        MapType::PerCpuArray,
        "the BPF per-CPU array map type (BPF_MAP_TYPE_PERCPU_ARRAY)",
        "Linux 4.6",
    ),
];

/// Checks every map type the eBPF object uses and the program type of every hook in the
/// probe table.
pub fn check() -> Result<(), MissingFeature> {
    let mut checked = Vec::new();
    for probe in super::probes::PROBES {
        let (program_type, what, since) = probe.hook.program_type();
        if checked.contains(&program_type) {
            continue;
        }
        checked.push(program_type);
        match aya::sys::is_program_supported(program_type) {
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
