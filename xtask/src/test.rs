//! `cargo xtask test`: set-up, clippy with `-D warnings` (`--no-clippy` skips it; a
//! warning fails the run at the end), build, a smoke run of the benchmarks (`bench --quick`, so
//! the harness cannot rot), every fuzz target for a bounded time (`fuzz::CI_SECONDS`), then every test in one `cargo nextest` run (all crates but
//! `monitor-ebpf`, which only builds for the BPF target): unit tests in parallel, the
//! root eBPF integration tests (package `connmon-integration`) one at a time (see
//! `.config/nextest.toml`). Then, unless nextest was given a filter or `--no-kernels`
//! is passed, the kernel matrix (`cargo xtask kernels`, see kernels.rs) runs the
//! kernel-facing root tests inside Debian's 6.1 and 6.12 kernels. The last line printed
//! is a plain `total: N passed, M failed` over the host run and the matrix.
//!
//! The `.deb`, the container image and the Python tools venv are built before the
//! tests run (`tests/tests/service.rs` installs and runs them).

use std::{
    io::{BufRead as _, BufReader, Write as _},
    process::{Command, Stdio},
};

use anyhow::{Context as _, bail};

use crate::{bench, build, fuzz, image, kernels, package, pytools, run::is_root, setup};

#[derive(clap::Args)]
pub(crate) struct Options {
    /// Skip clippy (`-D warnings` over every crate but the eBPF one), the first step.
    #[arg(long)]
    pub no_clippy: bool,
    /// Skip the benchmark smoke run.
    #[arg(long)]
    pub no_bench: bool,
    /// Skip the kernel matrix (it also is skipped when nextest arguments are given).
    #[arg(long)]
    pub no_kernels: bool,
    /// Skip the bounded fuzzing run (every fuzz target for `fuzz::CI_SECONDS` s).
    #[arg(long)]
    pub no_fuzz: bool,
    /// Extra arguments for `cargo nextest run`, e.g. `-- -E 'test(refused)'`.
    #[arg(last = true)]
    pub args: Vec<String>,
}

pub(crate) fn run(opts: &Options) -> anyhow::Result<()> {
    if !is_root() {
        bail!(
            "the integration tests load eBPF programs and create network namespaces: run `sudo -E cargo xtask test`"
        );
    }
    let toolchain = setup::run(&setup::Options::default())?;
    // A warning fails the run, but only at the end: the tests still run and report.
    let clippy_result = if opts.no_clippy {
        Ok(())
    } else {
        clippy(&toolchain)
    };
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
    // What tests/tests/service.rs installs and runs: built once here, reused by the tests.
    let packaged = package::build_all(&toolchain)?;
    let image = image::build(&toolchain)?;
    let tools_venv = pytools::ensure_venv()?;
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
        .env("CONNMON_DEB", &packaged.deb)
        .env("CONNMON_IMAGE", &image)
        .env("CONNMON_TOOLS_VENV", &tools_venv)
        .env("CONNMON_TEST_PYTHON", crate::pyenv::ensure_test_venv()?);
    let (tests_result, host) = run_nextest(&mut cmd);
    let run_matrix = !opts.no_kernels && opts.args.is_empty();
    let matrix_result = if run_matrix {
        let kernels: Vec<String> = kernels::DEFAULT_KERNELS
            .iter()
            .map(|k| (*k).to_owned())
            .collect();
        kernels::run_matrix(&toolchain, &kernels, false, None)
    } else {
        Ok(kernels::MatrixResult::default())
    };
    let totals = host.map(|host| {
        let (passed, failed) = match &matrix_result {
            Ok(m) => (host.passed + m.passed, host.failed + m.failed),
            Err(_) => (host.passed, host.failed),
        };
        let summary = format!(
            "host tests: {} passed, {} failed; kernel matrix: {}",
            host.passed,
            host.failed,
            match &matrix_result {
                Ok(_) if !run_matrix => "not run".to_owned(),
                Ok(m) => format!("{} passed, {} failed", m.passed, m.failed),
                Err(e) => format!("error: {e:#}"),
            }
        );
        (summary, passed, failed)
    });
    let matrix_result = matrix_result.and_then(|m| {
        if m.failed > 0 {
            bail!("{} test(s) failed in the kernel matrix", m.failed)
        }
        Ok(())
    });
    let result = match (bench_result, fuzz_result, tests_result, matrix_result) {
        (Ok(()), Ok(()), Ok(()), Ok(())) => clippy_result,
        (_, _, Err(tests), _) => Err(tests),
        (_, _, Ok(()), Err(matrix)) => Err(matrix),
        (Err(bench), _, Ok(()), Ok(())) => {
            Err(bench.context("the benchmark smoke run failed (the tests passed)"))
        }
        (Ok(()), Err(fuzz), Ok(()), Ok(())) => {
            Err(fuzz.context("the bounded fuzzing run failed (the tests passed)"))
        }
    };
    // The plain `total:` line must close the output (CI reads the closing lines), so any
    // error is printed before it and main is told not to print it again.
    let Some((summary, passed, failed)) = totals else {
        return result;
    };
    if let Err(err) = &result {
        eprintln!("xtask: error: {err:#}");
    }
    eprintln!("{summary}");
    eprintln!("total: {passed} passed, {failed} failed");
    let _ = std::io::stderr().flush();
    result.map_err(|_| anyhow::Error::new(AlreadyReported))
}

/// Lints every crate but the eBPF one (its own target), tests and benches included; a
/// warning fails the run (after the tests, which still run).
fn clippy(toolchain: &setup::Toolchain) -> anyhow::Result<()> {
    let args = [
        "clippy",
        "--workspace",
        "--exclude",
        "monitor-ebpf",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ];
    setup::say(format!("lints: cargo {}", args.join(" ")));
    setup::run_cmd(
        Command::new("cargo")
            .current_dir(build::workspace_root())
            .args(args)
            .env("PATH", toolchain.path_env()),
    )
    .context("clippy found warnings (fix them, or `#[expect(clippy::…, reason = \"…\")]` where the lint is wrong; `--no-clippy` skips this step)")
}

/// An error whose message was already printed (before the closing `total:` line).
#[derive(Debug)]
pub(crate) struct AlreadyReported;

impl std::fmt::Display for AlreadyReported {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the tests failed (reported above)")
    }
}

impl std::error::Error for AlreadyReported {}

/// Counts from nextest's closing `Summary` line.
#[derive(Debug, Default, PartialEq, Eq)]
struct Counts {
    passed: usize,
    failed: usize,
}

/// Runs nextest, passing its stderr through while reading its `Summary` line.
fn run_nextest(cmd: &mut Command) -> (anyhow::Result<()>, Option<Counts>) {
    let mut child = match cmd.stderr(Stdio::piped()).spawn() {
        Ok(child) => child,
        Err(e) => return (Err(e).context(format!("starting {cmd:?}")), None),
    };
    let mut counts = None;
    if let Some(err) = child.stderr.take() {
        for line in BufReader::new(err).lines() {
            let Ok(line) = line else { break };
            eprintln!("{line}");
            if let Some(c) = parse_summary(&line) {
                counts = Some(c);
            }
        }
    }
    let result = match child.wait() {
        Ok(status) if status.success() => Ok(()),
        Ok(status) => Err(anyhow::anyhow!("{cmd:?} failed with {status}")),
        Err(e) => Err(e).context("waiting for nextest"),
    };
    (result, counts)
}

/// Parses nextest's `Summary [  1.2s] 10 tests run: 9 passed, 1 failed, 2 skipped`.
fn parse_summary(line: &str) -> Option<Counts> {
    let rest = line.trim_start().strip_prefix("Summary")?;
    let (_, tail) = rest.split_once("run:")?;
    let mut counts = Counts::default();
    for part in tail.split(',') {
        let mut words = part.split_whitespace();
        let Some(n) = words.next().and_then(|n| n.parse::<usize>().ok()) else {
            continue;
        };
        match words.collect::<Vec<_>>().join(" ").as_str() {
            "passed" => counts.passed += n,
            "failed" | "timed out" | "exec failed" | "leaky failed" => counts.failed += n,
            _ if part.contains("passed") => counts.passed += n,
            _ => {}
        }
    }
    Some(counts)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_nextest_summaries() {
        assert_eq!(
            parse_summary("     Summary [  12.3s] 10 tests run: 9 passed, 1 failed, 2 skipped"),
            Some(Counts {
                passed: 9,
                failed: 1
            })
        );
        assert_eq!(
            parse_summary(
                "     Summary [ 100.0s] 5 tests run: 3 passed (1 slow), 1 failed, 1 timed out, 0 skipped"
            ),
            Some(Counts {
                passed: 3,
                failed: 2
            })
        );
        assert_eq!(parse_summary("        PASS [   1.0s] x"), None);
    }

    /// A plain `cargo test` must not build the root integration tests (they need root),
    /// while `cargo xtask test` (`--workspace`) must still reach them.
    #[test]
    fn root_tests_are_out_of_the_default_build_but_in_the_workspace() {
        let out = Command::new(env!("CARGO"))
            .args(["metadata", "--no-deps", "--format-version", "1"])
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .output()
            .expect("cargo metadata runs");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let meta: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
        let named = |key: &str| -> Vec<String> {
            meta[key]
                .as_array()
                .unwrap_or_else(|| panic!("no {key} in cargo metadata"))
                .iter()
                .map(|id| id.as_str().unwrap_or_default().to_owned())
                .collect()
        };
        let is_root_tests =
            |id: &String| id.contains("/tests#") || id.contains("connmon-integration");
        assert!(
            !named("workspace_default_members").iter().any(is_root_tests),
            "tests/ is a default member: a non-root `cargo test` would run the root tests"
        );
        assert!(
            named("workspace_members").iter().any(is_root_tests),
            "tests/ is no workspace member: `cargo xtask test` would not run it"
        );
    }
}
