//! The `connmon` command line.

use std::{io::IsTerminal as _, process::ExitCode, time::Duration};

use clap::{Args, Parser, Subcommand};
use monitor::{
    agent::{self, RunOptions},
    sinks::stdout::OutputFormat,
    source::kernel::{SourceOptions, validate_ring_buffer_bytes},
};

/// Kernel-level TCP connection monitor: every outgoing connect becomes one outcome
/// (established, refused, reset, timeout, abandoned, unreachable), attributed to the
/// process, cgroup and network namespace that made it.
#[derive(Parser)]
#[command(name = "connmon", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Attach to the kernel and stream connect outcomes to stdout.
    Run(RunArgs),
}

#[derive(Args)]
struct RunArgs {
    /// Output format (default: json when stdout is not a terminal, text otherwise).
    #[arg(long, value_enum)]
    output: Option<OutputFormat>,
    /// Ring buffer size in bytes (a power of two, >= 4096).
    #[arg(long, default_value_t = 256 * 1024, value_parser = parse_ring_size)]
    ring_buffer_bytes: u32,
    /// Wake the reader for every event (default: routine `established` outcomes are batched).
    #[arg(long)]
    wakeup_every_event: bool,
    /// How often batched events are picked up, e.g. 100ms.
    #[arg(long, default_value = "100ms", value_parser = parse_duration)]
    batch_interval: Duration,
    /// How often a stats line is written, e.g. 10s (0s: only at exit).
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    stats_interval: Duration,
}

fn parse_ring_size(s: &str) -> Result<u32, String> {
    let n: u32 = s.parse().map_err(|e| format!("{s:?} is not a byte count: {e}"))?;
    validate_ring_buffer_bytes(n)?;
    Ok(n)
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    let (num, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = num.parse().map_err(|_| format!("{s:?} is not a duration like 100ms, 10s or 5m"))?;
    match unit {
        "ms" => Ok(Duration::from_millis(n)),
        "s" | "" => Ok(Duration::from_secs(n)),
        "m" => Ok(Duration::from_secs(n * 60)),
        _ => Err(format!("{s:?} is not a duration like 100ms, 10s or 5m")),
    }
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Run(args) => {
            let output = args.output.unwrap_or(if std::io::stdout().is_terminal() {
                OutputFormat::Text
            } else {
                OutputFormat::Json
            });
            let opts = RunOptions {
                source: SourceOptions {
                    ring_buffer_bytes: args.ring_buffer_bytes,
                    wakeup_every_event: args.wakeup_every_event,
                },
                output,
                batch_interval: args.batch_interval.max(Duration::from_millis(1)),
                stats_interval: args.stats_interval,
            };
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .enable_all()
                .build()
                .map_err(anyhow::Error::from)
                .and_then(|rt| rt.block_on(agent::run(opts)))
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("connmon: error: {err:#}");
            ExitCode::FAILURE
        }
    }
}
