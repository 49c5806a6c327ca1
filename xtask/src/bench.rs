//! `cargo xtask bench`: connmon's performance figures, measured on this machine and
//! printed as Markdown (also written to `target/bench/report.md`). BENCHMARKS.md quotes
//! a full run. A benchmark reports; it never asserts a target.
//!
//! 1. Connect overhead: connects/s of `loadgen` untraced vs with connmon, libbpf-tools
//!    `tcpstates` and a `bpftrace` per-destination counter attached; ratios to the
//!    untraced rate of the same round, and each tracer's CPU.
//! 2. Ingest and loss: connmon's delivered and lost events at the highest refused-connect
//!    rate, for several ring-buffer sizes.
//! 3. Detection latency: kernel event → evict decision (`detect_us`) with 0, 1 k and
//!    10 k failing connects/s in the background.
//! 4. Blackholed node: first SYN → `suspect` and → `evict` for a DROPped destination.
//! 5. Memory and CPU: agent RSS idle; engine RSS at 10 k / 100 k / 1 M destinations and
//!    CPU per 100 k events/s (synthetic stream, `engine_bench`).
//! 6. Start-up: exec → all programs attached.
//! 7. Handshake checks: a member's death → eviction with no client traffic vs
//!    `idle_after` and the probe rate; agent CPU at 10 000 probes/s; memory with 1 M
//!    scheduled members (module [`checks`]).
//! 8. Scraper: Scrapy crawl time and connects to dead proxies with 30 % dead proxies,
//!    connmon.scrapy vs scrapy-rotating-proxies vs all-healthy (`bench_scraper`).
//! 9. Soak (`--soak DURATION`, or 20 s in `--quick`): see `soak.rs`.
//! 10. Fleet: propagation latency between agents over NATS JetStream with 3 and 50
//!     agents, NATS message rate and agent CPU at 1 000 verdicts/s, a late joiner's
//!     resync (module [`fleet`]; `CONNMON_BENCH_ONLY=fleet`).
//!
//! Only loopback and a namespace this command creates are used; every load is bounded in
//! time and count. `--quick` runs each scenario once, briefly (< 60 s), so that
//! `cargo xtask test` keeps the harness from rotting.

use std::{
    fmt::Write as _,
    fs,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use serde_json::Value;

use crate::{build, setup};

mod checks;
mod fleet;
mod kernel_cost;

#[derive(clap::Args, Default)]
pub(crate) struct Options {
    /// One short round of everything (< 60 s): checks the harness, not the numbers.
    #[arg(long)]
    pub quick: bool,
    /// Rounds per overhead measurement (default 5, quick 1).
    #[arg(long)]
    pub rounds: Option<usize>,
    /// Only the soak (xtask/src/soak.rs) for this long, e.g. `1h`: mixed traffic with
    /// RSS, fds, map occupancy, lost events and decision latency sampled over time.
    #[arg(long, value_parser = crate::soak::parse_duration)]
    pub soak: Option<Duration>,
}

struct Plan {
    rounds: usize,
    load_secs: f64,
    latency_secs: f64,
    blackhole_trials: usize,
    ring_sizes: &'static [u32],
    engine_sizes: &'static [(u32, u64)],
    startup_trials: usize,
    /// Handshake checks: (idle_after seconds, max_per_second) rows, members, trials.
    checks_grid: &'static [(u64, u32)],
    checks_members: usize,
    checks_trials: usize,
    /// Closed-port members probed at 10 000/s, and for how long CPU is measured.
    cpu_members: usize,
    cpu_secs: f64,
    /// Members scheduled in `checks_bench`.
    memory_members: u32,
    /// Fleet: agent counts, pool size, paced latency samples and their rate, the
    /// verdict rate and how long it is held.
    fleet_agents: &'static [usize],
    fleet_members: usize,
    fleet_samples: usize,
    fleet_sample_rate: u64,
    fleet_verdict_rate: u64,
    fleet_rate_secs: f64,
}

impl Plan {
    fn new(opts: &Options) -> Self {
        if opts.quick {
            Plan {
                rounds: opts.rounds.unwrap_or(1),
                load_secs: 1.0,
                latency_secs: 1.0,
                blackhole_trials: 1,
                ring_sizes: &[16 * 1024],
                engine_sizes: &[(10_000, 100_000)],
                startup_trials: 1,
                checks_grid: &[(1, 200)],
                checks_members: 20,
                checks_trials: 1,
                cpu_members: 2_000,
                cpu_secs: 1.0,
                memory_members: 100_000,
                fleet_agents: &[3],
                fleet_members: 1_000,
                fleet_samples: 20,
                fleet_sample_rate: 40,
                fleet_verdict_rate: 1_000,
                fleet_rate_secs: 0.5,
            }
        } else {
            Plan {
                rounds: opts.rounds.unwrap_or(5),
                load_secs: 3.0,
                latency_secs: 5.0,
                blackhole_trials: 3,
                ring_sizes: &[
                    16 * 1024,
                    64 * 1024,
                    256 * 1024,
                    1024 * 1024,
                    4 * 1024 * 1024,
                ],
                engine_sizes: &[
                    (10_000, 2_000_000),
                    (100_000, 2_000_000),
                    (1_000_000, 2_000_000),
                ],
                startup_trials: 5,
                checks_grid: &[(1, 20), (1, 200), (5, 20), (5, 200)],
                checks_members: 200,
                checks_trials: 3,
                cpu_members: 2_000,
                cpu_secs: 5.0,
                memory_members: 1_000_000,
                fleet_agents: &[3, 50],
                fleet_members: 10_000,
                fleet_samples: 300,
                fleet_sample_rate: 20,
                fleet_verdict_rate: 1_000,
                fleet_rate_secs: 9.0,
            }
        }
    }
}

/// Binaries and scratch space.
struct Env {
    connmon: PathBuf,
    loadgen: PathBuf,
    engine: PathBuf,
    dir: PathBuf,
}

pub(crate) fn run(opts: &Options) -> anyhow::Result<()> {
    if !crate::run::is_root() {
        bail!("the benchmarks load eBPF programs: run `sudo -E cargo xtask bench`");
    }
    let toolchain = setup::run(&setup::Options::default())?;
    setup::say(
        "bench: peer tools (bpftrace, libbpf-tools) and a release build of connmon and the load generator",
    );
    setup::ensure_debian(&[
        ("bpftrace", "bpftrace"),
        ("tcpstates", "libbpf-tools"),
        ("stdbuf", "coreutils"),
        ("bpftool", "bpftool"),
    ])?;
    let root = build::workspace_root();
    build::cargo_build(&toolchain, &["--release", "--package", "connmon-bench"])?;
    let release = root.join("target/release");
    let dir = root.join("target/bench");
    fs::create_dir_all(&dir)?;
    let env = Env {
        connmon: release.join("connmon"),
        loadgen: release.join("loadgen"),
        engine: release.join("engine_bench"),
        dir,
    };
    let plan = Plan::new(opts);
    let started = Instant::now();
    let mut report = String::new();
    if let Some(duration) = opts.soak {
        crate::soak::run(&env.connmon, &env.dir, duration, &mut report)?;
        fs::write(env.dir.join("soak.md"), &report)?;
        println!("{report}");
        setup::say(format!(
            "soak report written to {}",
            env.dir.join("soak.md").display()
        ));
        return Ok(());
    }
    let _ = writeln!(
        report,
        "# connmon benchmark report\n\nMachine: {} cores, kernel {}. Mode: {}.\n",
        thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0),
        fs::read_to_string("/proc/sys/kernel/osrelease")
            .unwrap_or_default()
            .trim(),
        if opts.quick {
            "quick (harness check; numbers are not meaningful)"
        } else {
            "full"
        }
    );
    type Section = fn(&Env, &Plan, &mut String) -> anyhow::Result<()>;
    let sections: [(&str, Section); 9] = [
        (kernel_cost::SECTION, kernel_cost::run),
        (OVERHEAD_SECTION, overhead),
        ("ingest and loss per ring-buffer size", ingest),
        (LATENCY_SECTION, latency),
        ("a blackholed node", blackhole),
        ("memory", memory),
        ("start-up", startup),
        (CHECKS_SECTION, checks::run),
        (fleet::SECTION, fleet::run),
    ];
    // `CONNMON_BENCH_ONLY=checks` / `=kernel-cost` / `=latency` / `=fleet`: that section alone.
    let only = match std::env::var("CONNMON_BENCH_ONLY").as_deref() {
        Ok("checks") => Some(CHECKS_SECTION),
        Ok(fleet::SECTION) => Some(fleet::SECTION),
        Ok(kernel_cost::SECTION) => Some(kernel_cost::SECTION),
        Ok("latency") => Some(LATENCY_SECTION),
        Ok("overhead") => Some(OVERHEAD_SECTION),
        _ => None,
    };
    for (i, (name, section)) in sections.iter().enumerate() {
        if only.is_some_and(|o| o != *name) {
            continue;
        }
        setup::say(format!(
            "bench {}/{}: {name} ({:.0} s so far)",
            i + 1,
            sections.len(),
            started.elapsed().as_secs_f64()
        ));
        section(&env, &plan, &mut report)?;
    }
    if only.is_none() {
        setup::say(format!(
            "bench: scraper scenario ({:.0} s so far)",
            started.elapsed().as_secs_f64()
        ));
        crate::bench_scraper::scraper(&env.connmon, &env.dir, opts.quick, &mut report)?;
    }
    if opts.quick {
        setup::say("bench: a 20 s soak (cargo xtask bench --soak DURATION runs it longer)");
        crate::soak::run(&env.connmon, &env.dir, Duration::from_secs(20), &mut report)?;
    }
    let _ = writeln!(
        report,
        "Total bench time: {:.0} s.",
        started.elapsed().as_secs_f64()
    );
    fs::write(env.dir.join("report.md"), &report)?;
    println!("{report}");
    setup::say(format!(
        "report written to {}",
        env.dir.join("report.md").display()
    ));
    Ok(())
}

/// A running tracer (connmon or a peer tool) whose CPU use we measure.
struct Tracer {
    name: &'static str,
    child: Child,
    stdout: PathBuf,
}

impl Tracer {
    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn cpu(&self) -> f64 {
        cpu_seconds(self.pid()).unwrap_or(0.0)
    }

    /// SIGTERM (connmon writes its final stats) and wait.
    fn stop(mut self) -> anyhow::Result<String> {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            if self.child.try_wait()?.is_some() {
                return Ok(fs::read_to_string(&self.stdout).unwrap_or_default());
            }
            thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        if self.name == "connmon" {
            bail!("connmon did not exit within 15 s of SIGTERM");
        }
        // A peer tool slow to print its maps at exit: its measurement is already taken.
        Ok(String::new())
    }
}

/// Starts a process with stdout/stderr in files and waits until `ready` appears in either.
/// bpftrace counting the same events as connmon (`BPFTRACE_COUNT`), its output in
/// `<stem>.out`.
fn bpftrace_counter(env: &Env, stem: &str) -> anyhow::Result<Tracer> {
    let mut count = Command::new("bpftrace");
    count.args(["-e", BPFTRACE_COUNT]);
    let attached = "Attaching";
    Ok(spawn_traced(
        "bpftrace",
        stem,
        &mut count,
        &env.dir,
        attached,
        Duration::from_secs(30),
    )?
    .0)
}

fn spawn_traced(
    name: &'static str,
    stem: &str,
    cmd: &mut Command,
    dir: &Path,
    ready: &str,
    timeout: Duration,
) -> anyhow::Result<(Tracer, Duration)> {
    let stdout = dir.join(format!("{stem}.out"));
    let stderr = dir.join(format!("{stem}.err"));
    let start = Instant::now();
    let child = cmd
        .stdin(Stdio::null())
        .stdout(fs::File::create(&stdout)?)
        .stderr(fs::File::create(&stderr)?)
        .spawn()
        .with_context(|| format!("starting {name}"))?;
    let mut tracer = Tracer {
        name,
        child,
        stdout: stdout.clone(),
    };
    loop {
        let out = fs::read_to_string(&stdout).unwrap_or_default()
            + &fs::read_to_string(&stderr).unwrap_or_default();
        if out.contains(ready) {
            return Ok((tracer, start.elapsed()));
        }
        if let Some(status) = tracer.child.try_wait()? {
            bail!(
                "{name} exited ({status}) before it was ready: {}",
                out.trim()
            );
        }
        if start.elapsed() > timeout {
            let _ = tracer.child.kill();
            bail!("{name} not ready within {timeout:?}: {}", out.trim());
        }
        thread::sleep(Duration::from_millis(5));
    }
}

fn start_connmon(env: &Env, tag: &str, extra: &[&str]) -> anyhow::Result<(Tracer, Duration)> {
    launch_connmon(env, tag, &env.dir.join("bench.toml"), None, extra)
}

/// `connmon run` with `config` (inside the namespace at `netns`, if given), a state file
/// and a socket of its own; returns once it has attached.
fn launch_connmon(
    env: &Env,
    tag: &str,
    config: &Path,
    netns: Option<&Path>,
    extra: &[&str],
) -> anyhow::Result<(Tracer, Duration)> {
    let state = env.dir.join(format!("state-{tag}.json"));
    let _ = fs::remove_file(&state);
    let mut cmd = match netns {
        Some(ns) => {
            let mut cmd = Command::new("nsenter");
            cmd.arg(format!("--net={}", ns.display())).arg(&env.connmon);
            cmd
        }
        None => Command::new(&env.connmon),
    };
    cmd.args([
        "run",
        "--output",
        "json",
        "--stats-interval",
        "0s",
        "--config",
    ])
    .arg(config)
    .arg("--state-file")
    .arg(&state)
    .arg("--socket")
    .arg(env.dir.join(format!("connmon-{tag}.sock")))
    .args(extra);
    spawn_traced(
        "connmon",
        &format!("connmon-{tag}"),
        &mut cmd,
        &env.dir,
        "attached to",
        Duration::from_secs(20),
    )
}

fn write_config(env: &Env, text: &str) -> anyhow::Result<()> {
    fs::write(env.dir.join("bench.toml"), text).context("writing bench config")
}

fn loadgen(env: &Env, args: &[&str]) -> anyhow::Result<Value> {
    let out = setup::stdout(Command::new(&env.loadgen).args(args))?;
    serde_json::from_slice(&out).context("loadgen output")
}

fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = 100.0;
    Some((f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?) / ticks)
}

fn rss_kib(pid: u32) -> Option<u64> {
    fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

fn lines(output: &str) -> impl Iterator<Item = Value> + '_ {
    output.lines().filter_map(|l| serde_json::from_str(l).ok())
}

/// connmon's final stats line.
fn final_stats(output: &str) -> Value {
    lines(output)
        .filter(|v| v["type"] == "stats")
        .last()
        .unwrap_or(Value::Null)
}

fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let idx = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[idx.min(sorted.len() - 1)]
}

/// The name of the connect-overhead section (`CONNMON_BENCH_ONLY=overhead`).
const OVERHEAD_SECTION: &str = "connect overhead vs untraced, tcpstates, bpftrace";

/// The name of the detection-latency section (`CONNMON_BENCH_ONLY=latency`).
const LATENCY_SECTION: &str = "detection latency under load";

/// The name of the handshake-checks section (`CONNMON_BENCH_ONLY=checks` runs it alone).
const CHECKS_SECTION: &str = "handshake checks";

/// Counts connect outcomes (transitions out of SYN_SENT) per destination in a map and
/// delivers nothing per event: the cheapest useful tracer.
const BPFTRACE_COUNT: &str = "tracepoint:sock:inet_sock_set_state /args->protocol == 6 && args->oldstate == 2/ \
     { @[ntop(args->daddr), args->dport] = count(); }";

#[derive(Clone, Copy, PartialEq)]
enum Peer {
    None,
    Connmon,
    Tcpstates,
    Bpftrace,
}

impl Peer {
    fn label(self) -> &'static str {
        match self {
            Peer::None => "untraced",
            Peer::Connmon => "connmon",
            Peer::Tcpstates => "libbpf-tools tcpstates",
            Peer::Bpftrace => "bpftrace (count per destination)",
        }
    }

    fn start(self, env: &Env) -> anyhow::Result<Option<Tracer>> {
        Ok(match self {
            Peer::None => None,
            Peer::Connmon => Some(start_connmon(env, "overhead", &[])?.0),
            Peer::Tcpstates => Some(
                spawn_traced(
                    "tcpstates",
                    "tcpstates",
                    Command::new("stdbuf").args(["-oL", "tcpstates"]),
                    &env.dir,
                    "SKADDR",
                    Duration::from_secs(20),
                )?
                .0,
            ),
            Peer::Bpftrace => Some(bpftrace_counter(env, "bpftrace")?),
        })
    }
}

#[derive(Default)]
struct Sample {
    rates: Vec<f64>,
    ratios: Vec<f64>,
    cpu: Vec<f64>,
    delivered: u64,
    lost: u64,
    connects: u64,
    error: Option<String>,
}

fn overhead(env: &Env, plan: &Plan, report: &mut String) -> anyhow::Result<()> {
    write_config(env, "")?;
    let peers = [Peer::None, Peer::Connmon, Peer::Tcpstates, Peer::Bpftrace];
    let secs = format!("{}", plan.load_secs);
    // (mode, load threads): 1 thread is the everyday case (the reader keeps up), 2 a flood.
    let cases = [
        ("refused", "1"),
        ("refused", "2"),
        ("established", "1"),
        ("established", "2"),
    ];
    let mut results: Vec<Vec<Sample>> = cases
        .iter()
        .map(|_| peers.iter().map(|_| Sample::default()).collect())
        .collect();
    for round in 0..plan.rounds {
        for (m, &(mode, threads)) in cases.iter().enumerate() {
            let mut baseline = f64::NAN;
            for (p, peer) in peers.iter().enumerate() {
                let sample = &mut results[m][p];
                let tracer = match peer.start(env) {
                    Ok(t) => t,
                    Err(e) => {
                        sample.error = Some(format!("{e:#}"));
                        continue;
                    }
                };
                let cpu0 = tracer.as_ref().map(Tracer::cpu).unwrap_or(0.0);
                let t0 = Instant::now();
                let load = loadgen(
                    env,
                    &["--mode", mode, "--threads", threads, "--duration", &secs],
                )?;
                let wall = t0.elapsed().as_secs_f64();
                let cpu = tracer
                    .as_ref()
                    .map(|t| (t.cpu() - cpu0) / wall * 100.0)
                    .unwrap_or(0.0);
                let rate = load["rate"].as_f64().unwrap_or(0.0);
                let connects = load["connects"].as_u64().unwrap_or(0);
                if *peer == Peer::None {
                    baseline = rate;
                }
                sample.rates.push(rate);
                sample.ratios.push(rate / baseline);
                sample.cpu.push(cpu);
                if let Some(t) = tracer {
                    let out = t.stop()?;
                    if *peer == Peer::Connmon {
                        let stats = final_stats(&out);
                        let outcome = if mode == "refused" {
                            "refused"
                        } else {
                            "established"
                        };
                        sample.delivered += stats["outcomes"][outcome].as_u64().unwrap_or(0);
                        sample.lost += stats["lost_events"].as_u64().unwrap_or(0);
                        sample.connects += connects;
                    }
                }
            }
            setup::say(format!(
                "overhead round {}/{} {mode} x{threads} done",
                round + 1,
                plan.rounds
            ));
        }
    }
    let _ = writeln!(
        report,
        "## 1. Connect overhead\n\n`loadgen` with 1 and 2 threads of blocking connects for {} s per run, {} round(s); medians. \
         Ratio = connects/s with the tracer ÷ untraced connects/s of the same round. \
         Command: `cargo xtask bench` (`CONNMON_BENCH_ONLY=overhead` for this section alone).\n\n\
         | mode | load threads | tracer | connects/s | ratio | tracer CPU (% of one core) | connmon events delivered / connects (lost) |\n|---|---:|---|---:|---:|---:|---|",
        plan.load_secs, plan.rounds
    );
    for (m, &(mode, threads)) in cases.iter().enumerate() {
        for (p, peer) in peers.iter().enumerate() {
            let s = &results[m][p];
            if let Some(err) = &s.error {
                let _ = writeln!(
                    report,
                    "| {mode} | {threads} | {} | unavailable: {} | | | |",
                    peer.label(),
                    err.lines().next().unwrap_or("")
                );
                continue;
            }
            let delivery = if *peer == Peer::Connmon {
                format!("{} / {} ({} lost)", s.delivered, s.connects, s.lost)
            } else {
                String::new()
            };
            let _ = writeln!(
                report,
                "| {mode} | {threads} | {} | {:.0} | {:.2} | {:.0} | {delivery} |",
                peer.label(),
                median(s.rates.clone()),
                median(s.ratios.clone()),
                median(s.cpu.clone())
            );
        }
    }
    report.push('\n');
    Ok(())
}

fn ingest(env: &Env, plan: &Plan, report: &mut String) -> anyhow::Result<()> {
    write_config(env, "")?;
    let _ = writeln!(
        report,
        "## 2. Ingest and loss\n\nRefused connects at the highest rate `loadgen` reaches (2 threads, {} s), per ring-buffer size.\n\n\
         | ring buffer | connects/s | delivered | lost | agent CPU (% of one core) |\n|---:|---:|---:|---:|---:|",
        plan.load_secs
    );
    let secs = format!("{}", plan.load_secs);
    for &size in plan.ring_sizes {
        let (tracer, _) =
            start_connmon(env, "ingest", &["--ring-buffer-bytes", &size.to_string()])?;
        let cpu0 = tracer.cpu();
        let t0 = Instant::now();
        let load = loadgen(
            env,
            &["--mode", "refused", "--threads", "2", "--duration", &secs],
        )?;
        let cpu = (tracer.cpu() - cpu0) / t0.elapsed().as_secs_f64() * 100.0;
        let stats = final_stats(&tracer.stop()?);
        let _ = writeln!(
            report,
            "| {} KiB | {:.0} | {} | {} | {cpu:.0} |",
            size / 1024,
            load["rate"].as_f64().unwrap_or(0.0),
            stats["outcomes"]["refused"].as_u64().unwrap_or(0),
            stats["lost_events"].as_u64().unwrap_or(0)
        );
    }
    report.push('\n');
    Ok(())
}

fn latency(env: &Env, plan: &Plan, report: &mut String) -> anyhow::Result<()> {
    // Pool = 127.0.0.2 (any port); background failures go to a 127.0.0.1 target. The
    // outage guard is off: here the "outage" is the benchmark itself.
    write_config(
        env,
        "[policy]\npool = [\"127.0.0.2/32\"]\noutage_min_destinations = 0\nmax_ejection_percent = 100\nbase_ejection = \"10m\"\n",
    )?;
    let _ = writeln!(
        report,
        "## 3. Detection latency\n\nFrom the kernel event (ring-buffer `ktime_ns`) to (a) the evict decision (`detect_us`) and \
         (b) a subscriber on the Unix socket having read the `evict` line, for refused connects to distinct pool members \
         (127.0.0.2:20000+, 200/s for {} s) with background refused connects to a target. µs, p50 / p99 / p99.9 / max.\n\n\
         | background failing connects/s | evictions | (a) decision | (b) subscriber |\n|---:|---:|---|---|",
        plan.latency_secs
    );
    for background in [0u64, 1_000, 10_000] {
        let (tracer, _) = start_connmon(env, "latency", &[])?;
        let subscriber = Subscriber::start(&env.dir.join("connmon-latency.sock"))?;
        let bg_secs = format!("{}", plan.latency_secs + 0.5);
        let loadgen_bin = env.loadgen.clone();
        let bg = (background > 0).then(|| {
            Command::new(&loadgen_bin)
                .args([
                    "--mode",
                    "refused",
                    "--threads",
                    "2",
                    "--duration",
                    &bg_secs,
                    "--rate",
                    &background.to_string(),
                ])
                .stdout(Stdio::null())
                .spawn()
        });
        let bg = bg.transpose()?;
        thread::sleep(Duration::from_millis(250));
        let secs = format!("{}", plan.latency_secs);
        let probes = (200.0 * plan.latency_secs) as u64;
        loadgen(
            env,
            &[
                "--mode",
                "ports",
                "--addr",
                "127.0.0.2",
                "--port",
                "20000",
                "--threads",
                "1",
                "--rate",
                "200",
                "--duration",
                &secs,
                "--max",
                &probes.to_string(),
            ],
        )?;
        if let Some(mut bg) = bg {
            let _ = bg.wait();
        }
        thread::sleep(Duration::from_millis(300));
        let mut received = subscriber.finish();
        let out = tracer.stop()?;
        let mut detect: Vec<f64> = lines(&out)
            .filter(|v| v["type"] == "evict")
            .filter_map(|v| v["detect_us"].as_f64())
            .collect();
        detect.sort_by(f64::total_cmp);
        received.sort_by(f64::total_cmp);
        let _ = writeln!(
            report,
            "| {background} | {} | {} | {} |",
            detect.len(),
            quantiles(&detect),
            quantiles(&received)
        );
    }
    report.push('\n');
    Ok(())
}

fn quantiles(sorted: &[f64]) -> String {
    format!(
        "{:.0} / {:.0} / {:.0} / {:.0} ({} lines)",
        percentile(sorted, 50.0),
        percentile(sorted, 99.0),
        percentile(sorted, 99.9),
        sorted.last().copied().unwrap_or(f64::NAN),
        sorted.len()
    )
}

fn monotonic_ns() -> u64 {
    let ts = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)
        .expect("CLOCK_MONOTONIC is always there");
    ts.tv_sec() as u64 * 1_000_000_000 + ts.tv_nsec() as u64
}

/// A pool controller on the agent's Unix socket, subscribed to `evict`: records, per
/// line, the time from the kernel event (`trigger.ktime_ns`) to having read it.
struct Subscriber {
    stream: std::os::unix::net::UnixStream,
    reader: thread::JoinHandle<Vec<f64>>,
}

impl Subscriber {
    fn start(path: &Path) -> anyhow::Result<Self> {
        use std::io::{BufRead as _, Write as _};
        let mut stream = std::os::unix::net::UnixStream::connect(path)
            .with_context(|| format!("connecting to {}", path.display()))?;
        stream.write_all(b"{\"cmd\":\"subscribe\",\"types\":[\"evict\"]}\n")?;
        let mut lines = std::io::BufReader::new(stream.try_clone()?).lines();
        // hello, then ok: subscribed from here on.
        for _ in 0..2 {
            lines.next().context("the agent closed the socket")??;
        }
        let reader = thread::spawn(move || {
            let mut latencies = Vec::new();
            for line in lines.map_while(Result::ok) {
                let now = monotonic_ns();
                let Ok(v) = serde_json::from_str::<Value>(&line) else {
                    continue;
                };
                if let Some(k) = v["trigger"]["ktime_ns"].as_u64() {
                    latencies.push(now.saturating_sub(k) as f64 / 1_000.0);
                }
            }
            latencies
        });
        Ok(Subscriber { stream, reader })
    }

    fn finish(self) -> Vec<f64> {
        let _ = self.stream.shutdown(std::net::Shutdown::Both);
        self.reader.join().unwrap_or_default()
    }
}

fn blackhole(env: &Env, plan: &Plan, report: &mut String) -> anyhow::Result<()> {
    write_config(env, "[policy]\npool = [\"10.200.0.2:80\"]\n")?;
    let ns = crate::netns::BlackholeNetns::new("bench")?;
    let mut suspect_ms = Vec::new();
    let mut evict_ms = Vec::new();
    for _ in 0..plan.blackhole_trials {
        let (tracer, _) = start_connmon(env, "blackhole", &[])?;
        loadgen(
            env,
            &[
                "--netns",
                &ns.name,
                "--mode",
                "refused",
                "--addr",
                "10.200.0.2",
                "--port",
                "80",
                "--threads",
                "1",
                "--max",
                "1",
                "--timeout-ms",
                "3500",
                "--duration",
                "5",
            ],
        )?;
        let out = tracer.stop()?;
        let all: Vec<Value> = lines(&out).collect();
        let syn = all
            .iter()
            .find(|v| v["type"] == "syn_retransmit" && v["dst"] == "10.200.0.2:80")
            .and_then(|v| Some(v["ktime_ns"].as_u64()? - v["since_syn_us"].as_u64()? * 1000));
        let decided = |kind: &str| {
            all.iter()
                .find(|v| v["type"] == kind && v["dst"] == "10.200.0.2:80")
                .and_then(|v| {
                    Some(v["trigger"]["ktime_ns"].as_u64()? + v["detect_us"].as_u64()? * 1000)
                })
        };
        if let (Some(syn), Some(s), Some(e)) = (syn, decided("suspect"), decided("evict")) {
            suspect_ms.push((s - syn) as f64 / 1e6);
            evict_ms.push((e - syn) as f64 / 1e6);
        }
    }
    let _ = writeln!(
        report,
        "## 4. Blackholed node\n\nOne connect to a neighbour whose SYNs vanish (namespace-local, default `tcp_syn_retries`), \
         {} trial(s), median. A typical scraper gives up after 10 000 ms.\n\n\
         | first SYN → `suspect` (ms) | first SYN → `evict` (ms) | trials with both |\n|---:|---:|---:|\n| {:.0} | {:.0} | {} |\n",
        plan.blackhole_trials,
        median(suspect_ms.clone()),
        median(evict_ms.clone()),
        evict_ms.len()
    );
    Ok(())
}

fn memory(env: &Env, plan: &Plan, report: &mut String) -> anyhow::Result<()> {
    write_config(env, "")?;
    let (tracer, _) = start_connmon(env, "idle", &[])?;
    thread::sleep(Duration::from_secs(1));
    let idle = rss_kib(tracer.pid()).unwrap_or(0);
    tracer.stop()?;
    let _ = writeln!(
        report,
        "## 5. Memory and CPU\n\nAgent RSS idle (attached, no traffic): **{:.1} MiB**.\n\n\
         Engine fed a synthetic stream (`engine_bench`: 99 % established, 1 % refused, spread over all destinations):\n\n\
         | destinations | RSS (MiB) | events/s (one core) | CPU per 100 k events/s (% of one core) |\n|---:|---:|---:|---:|",
        idle as f64 / 1024.0
    );
    for &(destinations, events) in plan.engine_sizes {
        let out = setup::stdout(Command::new(&env.engine).args([
            "--destinations",
            &destinations.to_string(),
            "--events",
            &events.to_string(),
        ]))?;
        let v: Value = serde_json::from_slice(&out)?;
        let _ = writeln!(
            report,
            "| {destinations} | {:.0} | {:.0} | {:.1} |",
            v["rss_kib"].as_f64().unwrap_or(0.0) / 1024.0,
            v["events_per_s"].as_f64().unwrap_or(0.0),
            v["cpu_pct_per_100k_eps"].as_f64().unwrap_or(0.0)
        );
    }
    report.push('\n');
    Ok(())
}

fn startup(env: &Env, plan: &Plan, report: &mut String) -> anyhow::Result<()> {
    write_config(env, "")?;
    let mut times = Vec::new();
    for _ in 0..plan.startup_trials {
        let (tracer, took) = start_connmon(env, "startup", &[])?;
        times.push(took.as_secs_f64() * 1000.0);
        tracer.stop()?;
    }
    let _ = writeln!(
        report,
        "## 6. Start-up\n\nexec → all four programs attached (the `attached` log line), {} trial(s), median: **{:.0} ms**.\n",
        plan.startup_trials,
        median(times)
    );
    Ok(())
}
