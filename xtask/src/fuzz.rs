//! `cargo xtask fuzz [TARGET] [--time D]`: the fuzz targets of `fuzz/` (cargo-fuzz,
//! libFuzzer), one per input boundary of the agent (socket protocol and session, config
//! file, pool file, state file, ring-buffer records, HAProxy's servers state). Each
//! target starts from its checked-in seeds (`fuzz/corpus/TARGET/seed-*`) plus whatever
//! earlier runs on this machine added, and runs for a bounded time. `cargo xtask test`
//! runs every target for [`CI_SECONDS`] seconds.
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
pub const TARGETS: &[&str] = &[
    "protocol_line",
    "socket_session",
    "config_toml",
    "pool_file",
    "state_file",
    "ring_record",
    "haproxy_servers_state",
];

/// Seconds per target in `cargo xtask test`.
pub const CI_SECONDS: u64 = 20;

/// The cargo-fuzz release `cargo xtask setup` installs (`cargo install --locked`).
pub const CARGO_FUZZ_VERSION: &str = "0.13.2";

#[derive(clap::Args)]
pub struct Options {
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
}

pub fn run(opts: &Options) -> anyhow::Result<()> {
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

/// Builds every target once, then runs each for `seconds`; fails on the first crash.
pub fn fuzz(targets: &[&str], seconds: u64, sanitizer: &str) -> anyhow::Result<()> {
    let started = Instant::now();
    setup::say(format!(
        "building the fuzz targets (cargo fuzz build, nightly, sanitizer {sanitizer})"
    ));
    setup::run_cmd(&mut cargo_fuzz(&["build", "--sanitizer", sanitizer])?)?;
    setup::say(format!(
        "fuzz targets built in {:.0} s",
        started.elapsed().as_secs_f64()
    ));
    let mut failed = Vec::new();
    for target in targets {
        let corpus = fuzz_dir().join("corpus").join(target);
        std::fs::create_dir_all(&corpus)
            .with_context(|| format!("creating {}", corpus.display()))?;
        setup::say(format!("fuzzing {target} for {seconds} s"));
        let result = setup::run_cmd(
            cargo_fuzz(&["run", "--sanitizer", sanitizer, target])?
                .arg(&corpus)
                .arg("--")
                .arg(format!("-max_total_time={seconds}"))
                // A hang of one input is a bug (the session target ends every session).
                .arg("-timeout=20")
                .arg("-rss_limit_mb=2048")
                .arg("-max_len=65536")
                .arg("-print_final_stats=1"),
        );
        if let Err(err) = result {
            failed.push(format!(
                "{target}: {err:#}\n  the input is in {}; reproduce with `cargo xtask fuzz {target} --reproduce FILE`",
                fuzz_dir().join("artifacts").join(target).display()
            ));
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
