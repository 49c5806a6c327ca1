//! `cargo xtask test`: set-up, build, a smoke run of the benchmarks (`bench --quick`, so
//! the harness cannot rot), then every test in one `cargo nextest` run (all crates but
//! `monitor-ebpf`, which only builds for the BPF target): unit tests in parallel, the
//! root eBPF integration tests (package `connmon-integration`) one at a time (see
//! `.config/nextest.toml`). nextest's summary is the last thing printed.

use std::process::Command;

use anyhow::bail;

use crate::{bench, build, run::is_root, setup};

#[derive(clap::Args)]
pub struct Options {
    /// Skip the benchmark smoke run.
    #[arg(long)]
    pub no_bench: bool,
    /// Extra arguments for `cargo nextest run`, e.g. `-- -E 'test(refused)'`.
    #[arg(last = true)]
    pub args: Vec<String>,
}

pub fn run(opts: &Options) -> anyhow::Result<()> {
    if !is_root() {
        bail!(
            "the integration tests load eBPF programs and create network namespaces: run `sudo -E cargo xtask test`"
        );
    }
    let toolchain = setup::run(&setup::Options::default())?;
    let bench_result = if opts.no_bench {
        Ok(())
    } else {
        setup::say(
            "benchmark smoke run (cargo xtask bench --quick): checks the harness, not the numbers",
        );
        bench::run(&bench::Options {
            quick: true,
            rounds: None,
        })
    };
    let bin = build::build_agent(&toolchain, false)?;
    let root = build::workspace_root();
    let mut cmd = Command::new("cargo");
    cmd.current_dir(&root)
        .args([
            "nextest",
            "run",
            "--workspace",
            "--exclude",
            "monitor-ebpf",
            "--no-fail-fast",
        ])
        .args(&opts.args)
        .env("PATH", toolchain.path_env())
        .env("CONNMON_BIN", &bin)
        .env("CONNMON_TEST_PYTHON", crate::pyenv::ensure_test_venv()?);
    let tests_result = setup::run_cmd(&mut cmd);
    match (bench_result, tests_result) {
        (Ok(()), Ok(())) => Ok(()),
        (Err(bench), Ok(())) => {
            Err(bench.context("the benchmark smoke run failed (the tests passed)"))
        }
        (_, Err(tests)) => Err(tests),
    }
}
