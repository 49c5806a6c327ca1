//! `cargo xtask test`: set-up, build, then every test in one `cargo nextest` run (all
//! crates but `monitor-ebpf`, which only builds for the BPF target): unit
//! tests in parallel, the root eBPF integration tests (package `connmon-integration`)
//! one at a time (see `.config/nextest.toml`), with nextest's usual summary.

use std::process::Command;

use anyhow::bail;

use crate::{build, run::is_root, setup};

#[derive(clap::Args)]
pub struct Options {
    /// Extra arguments for `cargo nextest run`, e.g. `-- -E 'test(refused)'`.
    #[arg(last = true)]
    pub args: Vec<String>,
}

pub fn run(opts: &Options) -> anyhow::Result<()> {
    if !is_root() {
        bail!("the integration tests load eBPF programs and create network namespaces: run `sudo -E cargo xtask test`");
    }
    let toolchain = setup::run(&setup::Options::default())?;
    let bin = build::build_agent(&toolchain, false)?;
    let root = build::workspace_root();
    let mut cmd = Command::new("cargo");
    cmd.current_dir(&root)
        .args(["nextest", "run", "--workspace", "--exclude", "monitor-ebpf", "--no-fail-fast"])
        .args(&opts.args)
        .env("PATH", toolchain.path_env())
        .env("CONNMON_BIN", &bin);
    setup::run_cmd(&mut cmd)
}
