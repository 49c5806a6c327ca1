//! `cargo xtask`: the project's own set-up, build, run and test commands, so that a
//! fresh machine needs nothing but Rust (rustup) and root.

mod bench;
mod build;
mod kernels;
mod run;
mod setup;
mod test;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "cargo xtask")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Install what building and testing need (idempotent): nightly + rust-src, a
    /// bpf-linker matching nightly's LLVM, cargo-nextest, Debian packages for the tests.
    Setup(setup::Options),
    /// Set up, then build the agent with its eBPF programs.
    Build(build::Options),
    /// Set up, build (release) and run the agent: `cargo xtask run -- --output text`.
    Run(run::Options),
    /// Set up, build and run every test, including the root eBPF integration tests.
    Test(test::Options),
    /// Run the kernel-facing root integration tests inside other kernels (Debian 6.1 and
    /// 6.12 by default) under QEMU with virtme-ng: `cargo xtask kernels --smoke`.
    Kernels(kernels::Options),
    /// Measure overhead, throughput, detection latency, memory and start-up (BENCHMARKS.md).
    Bench(bench::Options),
}

fn main() -> ExitCode {
    let result = match Cli::parse().command {
        Command::Setup(opts) => setup::run(&opts).map(|_| ()),
        Command::Build(opts) => build::run(&opts),
        Command::Run(opts) => run::run(&opts),
        Command::Test(opts) => test::run(&opts),
        Command::Bench(opts) => bench::run(&opts),
        Command::Kernels(opts) => kernels::run(&opts),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) if err.is::<test::AlreadyReported>() => ExitCode::FAILURE,
        Err(err) => {
            eprintln!("xtask: error: {err:#}");
            ExitCode::FAILURE
        }
    }
}
