//! `cargo xtask build`: set-up, then `cargo build` with the matching bpf-linker on PATH.

use std::{path::PathBuf, process::Command};

use crate::setup::{self, Toolchain, run_cmd};

#[derive(clap::Args, Default)]
pub(crate) struct Options {
    /// Build with the release profile.
    #[arg(long)]
    pub release: bool,
}

/// The workspace root (xtask lives one level below it).
pub(crate) fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask has a parent")
        .to_path_buf()
}

/// Builds the agent; returns the path of the `connmon` binary.
pub(crate) fn build_agent(toolchain: &Toolchain, release: bool) -> anyhow::Result<PathBuf> {
    let root = workspace_root();
    let profile: &[&str] = if release { &["--release"] } else { &[] };
    cargo_build(toolchain, profile)?;
    Ok(root
        .join("target")
        .join(if release { "release" } else { "debug" })
        .join("connmon"))
}

/// `cargo build --package monitor ARGS` in the workspace, with the bpf-linker on PATH.
pub(crate) fn cargo_build(toolchain: &Toolchain, args: &[&str]) -> anyhow::Result<()> {
    run_cmd(
        Command::new("cargo")
            .current_dir(workspace_root())
            .args(["build", "--package", "monitor"])
            .args(args)
            .env("PATH", toolchain.path_env()),
    )
}

pub(crate) fn run(opts: &Options) -> anyhow::Result<()> {
    let toolchain = setup::run(&setup::Options { no_packages: true })?;
    let bin = build_agent(&toolchain, opts.release)?;
    setup::say(format!("built {}", bin.display()));
    Ok(())
}
