//! `cargo xtask test`: set-up, build, a smoke run of the benchmarks (`bench --quick`, so
//! the harness cannot rot), every fuzz target for a bounded time (`fuzz::CI_SECONDS`), then every test in one `cargo nextest` run (all crates but
//! `monitor-ebpf`, which only builds for the BPF target): unit tests in parallel, the
//! root eBPF integration tests (package `connmon-integration`) one at a time (see
//! `.config/nextest.toml`). nextest's summary is the last thing printed.

use std::process::Command;

use anyhow::bail;

use crate::{bench, build, fuzz, run::is_root, setup};

#[derive(clap::Args)]
pub struct Options {
    /// Skip the benchmark smoke run.
    #[arg(long)]
    pub no_bench: bool,
    /// Skip the bounded fuzzing run (every fuzz target for `fuzz::CI_SECONDS` s).
    #[arg(long)]
    pub no_fuzz: bool,
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
            soak: None,
        })
    };
    let fuzz_result = if opts.no_fuzz {
        Ok(())
    } else {
        setup::say(format!(
            "bounded fuzzing: every target for {} s (cargo xtask fuzz runs them longer)",
            fuzz::CI_SECONDS
        ));
        setup::ensure_cargo_fuzz()
            .and_then(|()| fuzz::fuzz(fuzz::TARGETS, fuzz::CI_SECONDS, "none"))
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
        .env("CONNMON_BIN", &bin);
    let tests_result = setup::run_cmd(&mut cmd);
    match (bench_result, fuzz_result, tests_result) {
        (Ok(()), Ok(()), Ok(())) => Ok(()),
        (Err(bench), _, Ok(())) => {
            Err(bench.context("the benchmark smoke run failed (the tests passed)"))
        }
        (Ok(()), Err(fuzz), Ok(())) => {
            Err(fuzz.context("fuzzing found a crash (the tests passed)"))
        }
        (_, _, Err(tests)) => Err(tests),
    }
}
