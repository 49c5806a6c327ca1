//! `cargo xtask fuzz [TARGET] [--time D]`: the fuzz targets of `fuzz/` (cargo-fuzz,
//! libFuzzer), one per input boundary of the agent (socket protocol and session, config
//! file, pool file, state file, ring-buffer records, HAProxy's servers state, fleet
//! messages from NATS). Each target starts from its checked-in seeds
//! (`fuzz/corpus/TARGET/seed-*`) plus whatever earlier runs on this machine added, and
//! runs for a bounded time. `cargo xtask test`
//! runs every target for [`CI_SECONDS`] seconds.
//!
//! libFuzzer's output of each target goes to `target/fuzz-logs/TARGET.log`; the console
//! gets one line per target (runs, coverage, corpus; for a crash the log's tail and the
//! reproducer). The targets build against `fuzz/Cargo.lock` as committed (checked like
//! `--locked`, which cargo-fuzz lacks); it pins the workspace's versions, and
//! `cargo xtask fuzz --sync-lock` rewrites it after a dependency change.
//!
//! A crash leaves its input in `fuzz/artifacts/TARGET/`; reproduce it with
//! `cargo xtask fuzz TARGET --reproduce FILE`, then make it a unit test next to the
//! parser (each regression test found so far is named `fuzz_regression_*`).
//!
//! cargo-fuzz needs the nightly toolchain (`-Z sanitizer`, sancov passes); it is called
//! through [`setup::nightly_toolchain`] so that the project's nightly pin applies. The
//! agent's eBPF object is not needed (`AYA_BUILD_SKIP=1`): the targets use the agent's
//! pure logic only.

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::Instant,
};

use anyhow::{Context as _, bail};

use crate::{build, setup};

/// Every target in `fuzz/Cargo.toml` (a unit test checks that the lists agree).
pub(crate) const TARGETS: &[&str] = &[
    "protocol_line",
    "socket_session",
    "config_toml",
    "pool_file",
    "state_file",
    "ring_record",
    "haproxy_servers_state",
    "fleet_message",
];

/// Seconds per target in `cargo xtask test`. Building the targets from a clean tree
/// (CI's case) takes ~6 min of CPU, ~3 min on 2 cores; each target then costs this plus
/// 2–5 s (cargo's no-op check, libFuzzer's start and final stats): with 6 s, fuzzing costs a CI run
/// about 4 min in all, and every target still runs from its seeds on every change.
/// Longer runs: `cargo xtask fuzz`.
pub(crate) const CI_SECONDS: u64 = 6;

/// The cargo-fuzz release `cargo xtask setup` installs (`cargo install --locked`).
pub(crate) const CARGO_FUZZ_VERSION: &str = "0.13.2";

#[derive(clap::Args)]
pub(crate) struct Options {
    /// One target (default: all of them, one after the other).
    pub target: Option<String>,
    /// How long each target runs: `20s`, `10m`, `2h`, or plain seconds.
    #[arg(long, default_value = "60s", value_parser = parse_seconds)]
    pub time: u64,
    /// libFuzzer sanitizer: `none` (fastest; the targets are safe Rust) or `address`.
    #[arg(long, default_value = "none")]
    pub sanitizer: String,
    /// Run one input (a crash artifact) through TARGET instead of fuzzing.
    #[arg(long, requires = "target")]
    pub reproduce: Option<PathBuf>,
    /// Rewrite `fuzz/Cargo.lock` from the workspace's `Cargo.lock` (after a dependency
    /// of `monitor` changed) instead of fuzzing.
    #[arg(long)]
    pub sync_lock: bool,
}

pub(crate) fn run(opts: &Options) -> anyhow::Result<()> {
    if opts.sync_lock {
        return sync_lock();
    }
    setup::ensure_cargo_fuzz()?;
    let targets: Vec<&str> = match &opts.target {
        Some(t) if TARGETS.contains(&t.as_str()) => vec![t.as_str()],
        Some(t) => bail!("no fuzz target {t:?}; targets: {}", TARGETS.join(", ")),
        None => TARGETS.to_vec(),
    };
    if let Some(input) = &opts.reproduce {
        return reproduce(targets[0], input, &opts.sanitizer);
    }
    fuzz(&targets, opts.time, &opts.sanitizer)
}

/// Builds every target once (with `fuzz/Cargo.lock` as checked in), then runs each
/// for `seconds`, libFuzzer's output going to `target/fuzz-logs/TARGET.log`: one summary
/// line per target, and for a crash the log's tail and the reproducer's path.
pub(crate) fn fuzz(targets: &[&str], seconds: u64, sanitizer: &str) -> anyhow::Result<()> {
    let started = Instant::now();
    check_lock()?;
    setup::say(format!(
        "building the fuzz targets (cargo fuzz build, nightly, sanitizer {sanitizer})"
    ));
    setup::run_cmd(&mut cargo_fuzz(&["build", "--sanitizer", sanitizer])?)?;
    setup::say(format!(
        "fuzz targets built in {:.0} s; fuzzing each for {seconds} s (libFuzzer's output in {})",
        started.elapsed().as_secs_f64(),
        log_dir().display()
    ));
    std::fs::create_dir_all(log_dir())
        .with_context(|| format!("creating {}", log_dir().display()))?;
    let mut failed = Vec::new();
    for target in targets {
        let corpus = fuzz_dir().join("corpus").join(target);
        std::fs::create_dir_all(&corpus)
            .with_context(|| format!("creating {}", corpus.display()))?;
        let log_path = log_dir().join(format!("{target}.log"));
        let log = std::fs::File::create(&log_path)
            .with_context(|| format!("creating {}", log_path.display()))?;
        let status = cargo_fuzz(&["run", "--sanitizer", sanitizer, target])?
            .arg(&corpus)
            .arg("--")
            .arg(format!("-max_total_time={seconds}"))
            // A hang of one input is a bug (the session target ends every session).
            .arg("-timeout=20")
            .arg("-rss_limit_mb=2048")
            .arg("-max_len=65536")
            .arg("-print_final_stats=1")
            .stdout(log.try_clone()?)
            .stderr(log)
            .status()
            .with_context(|| format!("starting cargo fuzz run {target}"))?;
        let text = std::fs::read_to_string(&log_path).unwrap_or_default();
        let summary = Summary::of(&text);
        if status.success() {
            setup::say(format!("fuzz {target}: {summary}, no crash"));
        } else {
            let tail: Vec<&str> = text.lines().rev().take(40).collect();
            let tail: Vec<&str> = tail.into_iter().rev().collect();
            let artifact = summary.artifact.clone().unwrap_or_else(|| {
                fuzz_dir()
                    .join("artifacts")
                    .join(target)
                    .display()
                    .to_string()
            });
            setup::say(format!(
                "fuzz {target}: FAILED ({status}), {summary}\n--- last lines of {} ---\n{}\n---\nreproducer: {artifact}\nreplay it with `cargo xtask fuzz {target} --reproduce {artifact}`",
                log_path.display(),
                tail.join("\n"),
            ));
            failed.push(format!("{target}: {status}; reproducer {artifact}"));
        }
    }
    remove_scratch_files();
    if !failed.is_empty() {
        bail!("fuzz targets failed:\n{}", failed.join("\n"));
    }
    setup::say(format!(
        "fuzzing done: {} targets × {seconds} s, no crash ({:.0} s in all)",
        targets.len(),
        started.elapsed().as_secs_f64()
    ));
    Ok(())
}

/// Where libFuzzer's output of each target goes.
fn log_dir() -> PathBuf {
    build::workspace_root().join("target/fuzz-logs")
}

/// What one target's libFuzzer log says: executions, coverage, corpus, the crash input.
#[derive(Debug, Default, PartialEq)]
struct Summary {
    runs: Option<u64>,
    exec_per_s: Option<u64>,
    cov: Option<u64>,
    features: Option<u64>,
    corpus: Option<u64>,
    new_units: Option<u64>,
    artifact: Option<String>,
}

impl Summary {
    fn of(log: &str) -> Self {
        let mut s = Summary::default();
        let stat = |line: &str, name: &str| {
            line.strip_prefix(name)
                .and_then(|rest| rest.trim().parse::<u64>().ok())
        };
        for line in log.lines() {
            let line = line.trim();
            if let Some(v) = stat(line, "stat::number_of_executed_units:") {
                s.runs = Some(v);
            } else if let Some(v) = stat(line, "stat::average_exec_per_sec:") {
                s.exec_per_s = Some(v);
            } else if let Some(v) = stat(line, "stat::new_units_added:") {
                s.new_units = Some(v);
            } else if line.starts_with('#') && line.contains(" cov: ") {
                // `#1234\tNEW    cov: 812 ft: 2301 corp: 97/4Kb ...`: the last one counts.
                let field = |name: &str| {
                    line.split_whitespace()
                        .skip_while(|w| *w != name)
                        .nth(1)
                        .and_then(|v| v.split('/').next())
                        .and_then(|v| v.parse::<u64>().ok())
                };
                s.cov = field("cov:").or(s.cov);
                s.features = field("ft:").or(s.features);
                s.corpus = field("corp:").or(s.corpus);
            } else if let Some(rest) = line.split("Test unit written to ").nth(1) {
                s.artifact = Some(rest.trim().to_owned());
            }
        }
        s
    }
}

impl std::fmt::Display for Summary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let n = |v: Option<u64>| v.map_or_else(|| "?".to_owned(), |v| v.to_string());
        write!(
            f,
            "{} runs ({}/s), coverage {} edges / {} features, corpus {} (+{} new)",
            n(self.runs),
            n(self.exec_per_s),
            n(self.cov),
            n(self.features),
            n(self.corpus),
            n(self.new_units)
        )
    }
}

/// Fails unless `fuzz/Cargo.lock` resolves the fuzz crate as it is (cargo-fuzz has no
/// `--locked`; with a current lock file its build changes nothing) and pins every
/// package it shares with the workspace at the workspace's version.
fn check_lock() -> anyhow::Result<()> {
    let stale = lock_differences()?;
    if !stale.is_empty() {
        bail!(
            "fuzz/Cargo.lock differs from the workspace's Cargo.lock ({}): run `cargo xtask fuzz --sync-lock` and commit it",
            stale.join(", ")
        );
    }
    setup::run_cmd(
        Command::new("cargo")
            .current_dir(build::workspace_root())
            .arg(format!("+{}", setup::nightly_toolchain()?))
            .args(["fetch", "--locked", "--manifest-path"])
            .arg(fuzz_dir().join("Cargo.toml")),
    )
    .context("fuzz/Cargo.lock is stale: run `cargo xtask fuzz --sync-lock` and commit it")
}

/// Packages of `fuzz/Cargo.lock` pinned at a version the workspace's lock does not have.
fn lock_differences() -> anyhow::Result<Vec<String>> {
    let read = |path: PathBuf| -> anyhow::Result<Vec<(String, String)>> {
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("reading {}", path.display()))?;
        let mut packages = Vec::new();
        let mut name = None;
        for line in text.lines() {
            if let Some(n) = line.strip_prefix("name = ") {
                name = Some(n.trim_matches('"').to_owned());
            } else if let Some(v) = line.strip_prefix("version = ")
                && let Some(n) = name.take()
            {
                packages.push((n, v.trim_matches('"').to_owned()));
            }
        }
        Ok(packages)
    };
    let workspace = read(build::workspace_root().join("Cargo.lock"))?;
    let fuzz = read(fuzz_dir().join("Cargo.lock"))?;
    Ok(fuzz
        .into_iter()
        .filter(|(name, version)| {
            let mut same_name = workspace.iter().filter(|(n, _)| n == name).peekable();
            same_name.peek().is_some() && !same_name.any(|(_, v)| v == version)
        })
        .map(|(name, version)| format!("{name} {version}"))
        .collect())
}

/// Rewrites `fuzz/Cargo.lock` from the workspace's: every shared package at the
/// workspace's version, plus the fuzz crate's own (libfuzzer-sys…).
fn sync_lock() -> anyhow::Result<()> {
    let root = build::workspace_root();
    std::fs::copy(root.join("Cargo.lock"), fuzz_dir().join("Cargo.lock"))
        .context("copying Cargo.lock to fuzz/")?;
    setup::run_cmd(
        Command::new("cargo")
            .current_dir(&root)
            .arg(format!("+{}", setup::nightly_toolchain()?))
            .args(["fetch", "--manifest-path"])
            .arg(fuzz_dir().join("Cargo.toml")),
    )?;
    let stale = lock_differences()?;
    if !stale.is_empty() {
        bail!(
            "fuzz/Cargo.lock still differs after syncing: {}",
            stale.join(", ")
        );
    }
    setup::say("fuzz/Cargo.lock now pins the workspace's versions: commit it");
    Ok(())
}

/// The `state_file` target's scratch files (one per fuzzing process, in /dev/shm).
fn remove_scratch_files() {
    for dir in [PathBuf::from("/dev/shm"), std::env::temp_dir()] {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            if entry
                .file_name()
                .to_string_lossy()
                .starts_with("connmon-fuzz-state-")
            {
                let _ = std::fs::remove_file(entry.path());
            }
        }
    }
}

fn reproduce(target: &str, input: &Path, sanitizer: &str) -> anyhow::Result<()> {
    setup::run_cmd(
        cargo_fuzz(&["run", "--sanitizer", sanitizer, target])?
            .arg(input)
            .args(["--", "-runs=1"]),
    )
}

fn fuzz_dir() -> PathBuf {
    build::workspace_root().join("fuzz")
}

/// `cargo +NIGHTLY fuzz SUBCOMMAND --fuzz-dir fuzz ARGS…` from the workspace root.
fn cargo_fuzz(args: &[&str]) -> anyhow::Result<Command> {
    let (subcommand, rest) = args.split_first().expect("a cargo-fuzz subcommand");
    let mut cmd = Command::new("cargo");
    cmd.current_dir(build::workspace_root())
        .arg(format!("+{}", setup::nightly_toolchain()?))
        .args(["fuzz", subcommand, "--fuzz-dir"])
        .arg(fuzz_dir())
        .args(rest)
        .env("AYA_BUILD_SKIP", "1");
    Ok(cmd)
}

/// `20s`, `10m`, `2h`, `1h30m` or plain seconds.
fn parse_seconds(text: &str) -> Result<u64, String> {
    crate::soak::parse_duration(text).map(|d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summary_reads_libfuzzers_final_stats_and_last_status_line() {
        let log = "INFO: Seed: 1\n#2\tINITED cov: 100 ft: 200 corp: 5/1Kb exec/s: 0 rss: 40Mb\n\
                   #4096\tpulse  cov: 812 ft: 2301 corp: 97/4Kb lim: 43 exec/s: 2048 rss: 52Mb\n\
                   #8000\tDONE   cov: 815 ft: 2310 corp: 99/4Kb lim: 43 exec/s: 2000 rss: 52Mb\n\
                   Done 8000 runs in 4 second(s)\n\
                   stat::number_of_executed_units: 8000\n\
                   stat::average_exec_per_sec:     2000\n\
                   stat::new_units_added:          94\n";
        let s = Summary::of(log);
        assert_eq!(
            (
                s.runs,
                s.exec_per_s,
                s.cov,
                s.features,
                s.corpus,
                s.new_units
            ),
            (
                Some(8000),
                Some(2000),
                Some(815),
                Some(2310),
                Some(99),
                Some(94)
            ),
            "summary of {log}"
        );
        assert_eq!(s.artifact, None, "no crash, no artifact");
        let crash = "==1== ERROR: libFuzzer: deadly signal\n\
                     artifact_prefix='/w/fuzz/artifacts/pool_file/'; Test unit written to /w/fuzz/artifacts/pool_file/crash-abc\n";
        assert_eq!(
            Summary::of(crash).artifact.as_deref(),
            Some("/w/fuzz/artifacts/pool_file/crash-abc"),
            "the reproducer's path is read from the log"
        );
    }

    #[test]
    fn fuzz_lock_pins_the_workspace_versions() {
        let stale = lock_differences().expect("both lock files are readable");
        assert!(
            stale.is_empty(),
            "fuzz/Cargo.lock pins versions the workspace's Cargo.lock does not have: {stale:?}; \
             run `cargo xtask fuzz --sync-lock` and commit fuzz/Cargo.lock"
        );
    }

    #[test]
    fn every_target_of_the_fuzz_crate_is_listed() {
        let manifest = std::fs::read_to_string(fuzz_dir().join("Cargo.toml"))
            .expect("fuzz/Cargo.toml is readable");
        let bins: Vec<&str> = manifest
            .split("[[bin]]")
            .skip(1)
            .filter_map(|bin| {
                bin.lines()
                    .find_map(|l| l.trim().strip_prefix("name = \""))
                    .and_then(|rest| rest.strip_suffix('"'))
            })
            .collect();
        assert_eq!(
            bins, TARGETS,
            "fuzz/Cargo.toml's [[bin]]s and fuzz::TARGETS differ"
        );
        for target in TARGETS {
            let seeds = std::fs::read_dir(fuzz_dir().join("corpus").join(target))
                .unwrap_or_else(|e| panic!("fuzz/corpus/{target}: {e}"))
                .filter_map(Result::ok)
                .filter(|e| e.file_name().to_string_lossy().starts_with("seed-"))
                .count();
            assert!(
                seeds > 0,
                "fuzz/corpus/{target} has no checked-in seed-* file"
            );
        }
    }
}
