//! The `connmon` command line.

use std::{path::PathBuf, process::ExitCode, time::Duration};

use clap::{Args, Parser, Subcommand};
use monitor::{
    agent, cli, config::Config, policy::config::parse_duration, sinks::stdout::OutputFormat,
};

/// Kernel-level TCP connection monitor: every outgoing connect becomes one outcome
/// (established, refused, reset, timeout, abandoned, unreachable), attributed to the
/// process, cgroup and network namespace that made it; dead pool members are evicted.
#[derive(Parser)]
#[command(name = "connmon", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Attach to the kernel, stream outcomes and evict/reinstate decisions to stdout.
    Run(RunArgs),
    /// Stream events from a running agent (coloured on a terminal, NDJSON otherwise).
    Watch(cli::WatchArgs),
    /// Show the agent's destinations: state, failure ratio, handshake times, ejections.
    Status(cli::StatusArgs),
    /// Live full-screen view of the agent's destinations (q quits).
    Top(cli::top::TopArgs),
    /// Eject a destination by hand.
    Evict(cli::EvictArgs),
    /// Lift an ejection by hand.
    Reinstate(cli::ReinstateArgs),
    /// Show or change the pool of a running agent.
    Pool(cli::PoolArgs),
    /// List the hosts of the fleet (`[fleet]`): last heartbeat, mode, counts.
    Fleet(cli::fleet::FleetArgs),
    /// Write the man pages and shell completions into a directory (for packaging), and/or
    /// the protocol's JSON Schemas (`--schemas docs/schemas`).
    #[command(hide = true)]
    GenerateAssets {
        #[arg(long, required_unless_present = "schemas")]
        out: Option<PathBuf>,
        #[arg(long)]
        schemas: Option<PathBuf>,
    },
}

/// Flags override the config file (`--config`, default /etc/connmon/connmon.toml if it exists).
#[derive(Args)]
struct RunArgs {
    /// Config file (TOML). Without it, /etc/connmon/connmon.toml is read if present.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Print the effective configuration (file + flags) as TOML and exit.
    #[arg(long)]
    print_config: bool,
    /// Output format [default: json when stdout is not a terminal, text otherwise].
    #[arg(long, value_enum)]
    output: Option<OutputFormat>,
    /// Which records stdout gets (stats lines always) [default: all].
    #[arg(long, value_enum)]
    events: Option<monitor::sinks::stdout::EventsFilter>,
    /// Ring buffer size in bytes (a power of two, >= 4096) [default: 1048576].
    #[arg(long)]
    ring_buffer_bytes: Option<u32>,
    /// Wake the reader for every event (default: routine `established` outcomes are batched).
    #[arg(long)]
    wakeup_every_event: bool,
    /// How often batched events are collected and ejection timers checked [default: 100ms].
    #[arg(long, value_parser = parse_duration)]
    batch_interval: Option<Duration>,
    /// How often a stats line is written, 0s: only at exit [default: 10s].
    #[arg(long, value_parser = parse_duration)]
    stats_interval: Option<Duration>,
    /// Pool members, one per line (ADDR:PORT, [V6]:PORT, CIDR:PORT, CIDR); reloaded on SIGHUP.
    #[arg(long)]
    pool: Option<PathBuf>,
    /// Export spans and metrics over OTLP to this collector URL (see docs/telemetry.md).
    #[arg(long, value_name = "URL")]
    otlp_endpoint: Option<String>,
    /// Serve Prometheus metrics at http://ADDR/metrics (e.g. 127.0.0.1:9464) [default: off].
    #[arg(long, value_name = "ADDR")]
    metrics: Option<std::net::SocketAddr>,
    /// Where ejections are kept across restarts [default: /var/lib/connmon/state.json].
    #[arg(long)]
    state_file: Option<PathBuf>,
    /// The pool-controller socket [default: /run/connmon/connmon.sock].
    #[arg(long)]
    socket: Option<PathBuf>,
    /// `off`: no handshake checks at all, whatever `[checks]` says (also after SIGHUP).
    #[arg(long, value_name = "on|off", value_parser = ["on", "off"])]
    checks: Option<String>,
}

impl RunArgs {
    fn apply(&self, config: &mut Config) {
        config.checks.forced_off = self.checks.as_deref() == Some("off");
        let a = &mut config.agent;
        if self.output.is_some() {
            a.output = self.output;
        }
        if let Some(e) = self.events {
            a.events = e;
        }
        if let Some(n) = self.ring_buffer_bytes {
            a.ring_buffer_bytes = n;
        }
        if self.wakeup_every_event {
            a.wakeup_every_event = true;
        }
        if let Some(d) = self.batch_interval {
            a.batch_interval = d;
        }
        if let Some(d) = self.stats_interval {
            a.stats_interval = d;
        }
        if let Some(p) = &self.pool {
            a.pool_file = Some(p.clone());
        }
        if let Some(p) = &self.state_file {
            a.state_file = p.clone();
        }
        if let Some(url) = &self.otlp_endpoint {
            config.otlp.endpoint = Some(url.clone());
        }
        if let Some(p) = &self.socket {
            a.socket = p.clone();
        }
        if let Some(addr) = self.metrics {
            config.agent.metrics = Some(addr);
        }
    }
}

fn run(args: RunArgs) -> anyhow::Result<()> {
    let mut config = Config::load(args.config.as_deref())?;
    args.apply(&mut config);
    let config = config.validate()?;
    if args.print_config {
        print!("{}", config.to_toml());
        return Ok(());
    }
    // One thread: the ring buffer's readiness, the pipeline and the consumers share it,
    // so a kernel wake-up never has to cross threads (that hop dominated the profile).
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(agent::run(config, args.config))
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let result = match Cli::parse().command {
        Command::Run(args) => run(args),
        Command::Watch(args) => cli::watch(&args),
        Command::Status(args) => cli::status(&args),
        Command::Top(args) => cli::top::top(&args),
        Command::Evict(args) => cli::evict(&args),
        Command::Reinstate(args) => cli::reinstate(&args),
        Command::Pool(args) => cli::pool(&args),
        Command::Fleet(args) => cli::fleet::fleet(&args),
        Command::GenerateAssets { out, schemas } => (|| {
            if let Some(out) = out {
                monitor::assets::write(<Cli as clap::CommandFactory>::command(), &out)?;
            }
            if let Some(dir) = schemas {
                monitor::protocol::schema::write(&dir)?;
            }
            Ok(())
        })(),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("connmon: error: {err:#}");
            ExitCode::FAILURE
        }
    }
}
