//! `cargo xtask`: the project's own set-up, build, run and test commands, so that a
//! fresh machine needs nothing but Rust (rustup) and root.

mod bench;
mod bench_scraper;
mod build;
mod pyenv;
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
    /// Measure overhead, throughput, detection latency, memory and start-up (BENCHMARKS.md).
    Bench(bench::Options),
    /// Only the scraper benchmark (Scrapy with 30 % dead proxies; part of `bench`).
    BenchScraper(bench_scraper::Options),
}

fn main() -> ExitCode {
    let result = match Cli::parse().command {
        Command::Setup(opts) => setup::run(&opts).map(|_| ()),
        Command::Build(opts) => build::run(&opts),
        Command::Run(opts) => run::run(&opts),
        Command::Test(opts) => test::run(&opts),
        Command::Bench(opts) => bench::run(&opts),
        Command::BenchScraper(opts) => bench_scraper::run(&opts),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("xtask: error: {err:#}");
            ExitCode::FAILURE
        }
    }
}
