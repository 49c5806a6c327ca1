//! Builds `monitor-ebpf` for the BPF target with aya-build (the nightly pinned in the
//! workspace's Cargo.toml + bpf-linker, which `cargo xtask setup` provides) and leaves
//! the object in OUT_DIR for `include_bytes!`.
//!
//! With `AYA_BUILD_SKIP=1` an empty object is written instead, so that the agent's pure
//! logic can be compiled and unit-tested without the eBPF toolchain; such a binary
//! refuses to start with a clear error.

use std::{env, fs, path::PathBuf};

use anyhow::{Context as _, anyhow};

fn main() -> anyhow::Result<()> {
    let skip = env::var("AYA_BUILD_SKIP").is_ok_and(|v| v == "1" || v.eq_ignore_ascii_case("true"));
    if skip {
        let out = PathBuf::from(env::var_os("OUT_DIR").context("OUT_DIR not set")?);
        fs::write(out.join("monitor"), []).context("writing placeholder eBPF object")?;
        println!("cargo:rerun-if-env-changed=AYA_BUILD_SKIP");
        return Ok(());
    }
    let cargo_metadata::Metadata {
        packages,
        workspace_metadata,
        ..
    } = cargo_metadata::MetadataCommand::new()
        .no_deps()
        .exec()
        .context("cargo metadata")?;
    // The pinned nightly ([workspace.metadata.connmon] nightly in Cargo.toml).
    let nightly = workspace_metadata["connmon"]["nightly"]
        .as_str()
        .context("Cargo.toml has no [workspace.metadata.connmon] nightly = \"nightly-YYYY-MM-DD\"")?
        .to_owned();
    let ebpf = packages
        .into_iter()
        .find(|p| p.name.as_str() == "monitor-ebpf")
        .ok_or_else(|| anyhow!("monitor-ebpf package not found"))?;
    let root_dir = ebpf
        .manifest_path
        .parent()
        .ok_or_else(|| anyhow!("no parent for {}", ebpf.manifest_path))?;
    aya_build::build_ebpf(
        [aya_build::Package {
            name: ebpf.name.as_str(),
            root_dir: root_dir.as_str(),
            ..Default::default()
        }],
        aya_build::Toolchain::Custom(&nightly),
    )
}
