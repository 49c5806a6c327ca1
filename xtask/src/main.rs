//! `cargo xtask`: the project's own set-up, build, run and test commands, so that a
//! fresh machine needs nothing but Rust (rustup) and root.

mod bench;
mod bench_scraper;
mod build;
mod fuzz;
mod image;
mod kernels;
mod netns;
mod package;
mod pyenv;
mod pytools;
mod run;
mod setup;
mod soak;
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
    /// Build the .deb (binary, unit, config, man pages, completions) and the Python
    /// client's wheel into target/package/.
    Package(package::Options),
    /// Build the container image localhost/connmon:<version> (FROM scratch, static musl).
    Image(image::Options),
    /// Run the fuzz targets (cargo-fuzz): all, or one, for `--time` each.
    Fuzz(fuzz::Options),
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
        Command::Kernels(opts) => kernels::run(&opts),
        Command::Package(opts) => package::run(&opts),
        Command::Image(opts) => image::run(&opts),
        Command::Fuzz(opts) => fuzz::run(&opts),
        Command::BenchScraper(opts) => bench_scraper::run(&opts),
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
