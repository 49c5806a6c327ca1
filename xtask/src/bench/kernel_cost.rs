//! Section 0 of `cargo xtask bench`: the in-kernel cost per connect, from the kernel's
//! own accounting (`kernel.bpf_stats_enabled=1`: each program's `run_time_ns` and
//! `run_cnt`, read with `bpftool prog show --json` and selected by the tracer's pid).
//!
//! connmon and the bpftrace per-destination counter, one at a time, each under
//! `loadgen` refused and established connects at 1 and 2 threads. Far less noisy than
//! connect rates on a shared machine: other tracers' runs are not counted, only this
//! tracer's programs (other hosts' traffic on the same tracepoints is, and makes the
//! figures an upper bound). `CONNMON_BENCH_ONLY=kernel-cost` runs this section alone.

use std::{collections::BTreeMap, fmt::Write as _, fs, process::Command};

use anyhow::Context as _;
use serde_json::Value;

use super::{Env, Plan, Tracer, bpftrace_counter, loadgen, start_connmon};
use crate::setup;

/// Name of this section for `CONNMON_BENCH_ONLY`.
pub(super) const SECTION: &str = "kernel-cost";

const BPF_STATS: &str = "/proc/sys/kernel/bpf_stats_enabled";

/// Per program name: (run_time_ns, run_cnt), summed over the tracer's programs.
type Stats = BTreeMap<String, (u64, u64)>;

/// Reads the run statistics of every BPF program held by `pid`, from the
/// `/proc/PID/fdinfo` of its program fds (`prog_id`, `run_time_ns`, `run_cnt`); names
/// from `bpftool prog show --json`.
fn prog_stats(pid: u32) -> anyhow::Result<Stats> {
    let out = setup::stdout(Command::new("bpftool").args(["prog", "show", "--json"]))?;
    let progs: Value = serde_json::from_slice(&out).context("bpftool output")?;
    let names: BTreeMap<u64, String> = progs
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|p| Some((p["id"].as_u64()?, p["name"].as_str()?.to_owned())))
        .collect();
    let mut seen = Vec::new();
    let mut stats = Stats::new();
    for entry in fs::read_dir(format!("/proc/{pid}/fdinfo"))? {
        let Ok(text) = fs::read_to_string(entry?.path()) else {
            continue;
        };
        let field = |key: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
                .and_then(|v| v.trim().parse::<u64>().ok())
        };
        // Program fds only (link fds name a prog_id too, without run statistics).
        let (Some(id), Some(time), Some(count)) =
            (field("prog_id"), field("run_time_ns"), field("run_cnt"))
        else {
            continue;
        };
        if seen.contains(&id) {
            continue;
        }
        seen.push(id);
        let name = names.get(&id).cloned().unwrap_or_else(|| id.to_string());
        let e = stats.entry(name).or_default();
        e.0 += time;
        e.1 += count;
    }
    Ok(stats)
}

fn delta(before: &Stats, after: &Stats) -> Stats {
    after
        .iter()
        .map(|(name, &(t, c))| {
            let (t0, c0) = before.get(name).copied().unwrap_or_default();
            (name.clone(), (t.saturating_sub(t0), c.saturating_sub(c0)))
        })
        .collect()
}

/// Restores `kernel.bpf_stats_enabled` on drop.
struct StatsEnabled(String);

impl StatsEnabled {
    fn on() -> anyhow::Result<Self> {
        let old = fs::read_to_string(BPF_STATS).context("reading kernel.bpf_stats_enabled")?;
        fs::write(BPF_STATS, "1").context("setting kernel.bpf_stats_enabled=1")?;
        Ok(StatsEnabled(old.trim().to_owned()))
    }
}

impl Drop for StatsEnabled {
    fn drop(&mut self) {
        let _ = fs::write(BPF_STATS, &self.0);
    }
}

/// One measured run: connects, and the per-program deltas.
struct Run {
    connects: u64,
    programs: Stats,
}

impl Run {
    fn total_ns(&self) -> u64 {
        self.programs.values().map(|&(t, _)| t).sum()
    }

    fn runs(&self) -> u64 {
        self.programs.values().map(|&(_, c)| c).sum()
    }

    fn per_connect(&self, ns: u64) -> f64 {
        ns as f64 / self.connects.max(1) as f64
    }
}

fn measure(env: &Env, tracer: &Tracer, mode: &str, threads: u32, secs: f64) -> anyhow::Result<Run> {
    let before = prog_stats(tracer.pid())?;
    let out = loadgen(
        env,
        &[
            "--mode",
            mode,
            "--threads",
            &threads.to_string(),
            "--duration",
            &secs.to_string(),
        ],
    )?;
    let after = prog_stats(tracer.pid())?;
    Ok(Run {
        connects: out["connects"].as_u64().unwrap_or(0),
        programs: delta(&before, &after),
    })
}

pub(super) fn run(env: &Env, plan: &Plan, report: &mut String) -> anyhow::Result<()> {
    let _stats = StatsEnabled::on()?;
    super::write_config(env, "")?;
    let secs = plan.load_secs;
    let _ = writeln!(
        report,
        "## 0. In-kernel cost per connect (bpf_stats)\n\n\
         `kernel.bpf_stats_enabled=1`; each tracer's programs' `run_time_ns` and `run_cnt` \
         (bpftool) around `loadgen --mode M --threads T --duration {secs}` to 127.0.0.1; \
         ns per connect = Δrun_time_ns ÷ connects (best of {} round(s); other traffic on the \
         host runs the same programs, so these are upper bounds). connmon runs with its \
         defaults (`--output json` to a file).\n\n\
         | tracer | mode | threads | connects | program runs per connect | ns per connect | per program (ns per connect) |\n\
         |---|---|---:|---:|---:|---:|---|",
        plan.rounds
    );
    type Start = fn(&Env) -> anyhow::Result<Tracer>;
    let tracers: [(&str, Start); 2] = [
        ("connmon", |env| {
            Ok(start_connmon(env, "kernel-cost", &[])?.0)
        }),
        ("bpftrace counter", |env| {
            bpftrace_counter(env, "bpftrace-kernel-cost")
        }),
    ];
    for (label, start) in tracers {
        let tracer = start(env)?;
        for mode in ["refused", "established"] {
            for threads in [1, 2] {
                let mut best: Option<Run> = None;
                for _ in 0..plan.rounds {
                    let run = measure(env, &tracer, mode, threads, secs)?;
                    if best.as_ref().is_none_or(|b| {
                        run.per_connect(run.total_ns()) < b.per_connect(b.total_ns())
                    }) {
                        best = Some(run);
                    }
                }
                let Some(run) = best else { continue };
                let per_program = run
                    .programs
                    .iter()
                    .filter(|(_, (_, c))| *c > 0)
                    .map(|(name, &(t, c))| {
                        format!(
                            "{name} {:.0} ({:.2} runs, {:.0} ns a run)",
                            run.per_connect(t),
                            c as f64 / run.connects.max(1) as f64,
                            t as f64 / c.max(1) as f64
                        )
                    })
                    .collect::<Vec<_>>()
                    .join("; ");
                let _ = writeln!(
                    report,
                    "| {label} | {mode} | {threads} | {} | {:.2} | **{:.0}** | {per_program} |",
                    run.connects,
                    run.runs() as f64 / run.connects.max(1) as f64,
                    run.per_connect(run.total_ns()),
                );
            }
        }
        let _ = tracer.stop();
    }
    report.push('\n');
    Ok(())
}
