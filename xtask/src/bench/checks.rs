//! Section 7 of `cargo xtask bench`: handshake checks (`[checks]`).
//!
//! - Death → eviction with no client traffic: a pool of listening members inside a
//!   namespace this command creates, the agent running in that namespace (its probes
//!   must reach the members), one member killed after a warm-up; the time from the kill
//!   to its `evict`, for several `idle_after` and `max_per_second`.
//! - Agent CPU at 10 000 probes/s: 2 000 members on closed ports (refused at once, the
//!   detectors off so that they stay in the pool), `max_per_second = 10000`.
//! - Memory with 1 M scheduled members (`checks_bench`, no kernel).
//!
//! Every load is bounded in time and count; only the namespace's loopback is used.

use std::{
    fmt::Write as _,
    io::{BufRead as _, BufReader, Write as _},
    process::{Child, ChildStdin, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::Context as _;
use serde_json::Value;

use super::{Env, Plan, Tracer, launch_connmon, lines, median, monotonic_ns};
use crate::{netns::BlackholeNetns, setup};

/// Listeners on 127.0.0.1 inside the namespace, accepting and closing every
/// connection; `close PORT` on stdin closes one (a member dies).
const MEMBERS_PY: &str = r#"
import json, queue, selectors, socket, sys, threading
n = int(sys.argv[1])
sel = selectors.DefaultSelector()
socks = {}
for _ in range(n):
    s = socket.socket(); s.bind(("127.0.0.1", 0)); s.listen(4096); s.setblocking(False)
    socks[s.getsockname()[1]] = s; sel.register(s, selectors.EVENT_READ)
print(json.dumps(sorted(socks)), flush=True)
kills = queue.Queue()
def commands():
    for line in sys.stdin:
        kills.put(int(line.split()[1]))
threading.Thread(target=commands, daemon=True).start()
while True:
    for key, _ in sel.select(timeout=0.01):
        try:
            c, _ = key.fileobj.accept(); c.close()
        except OSError:
            pass
    while not kills.empty():
        s = socks.pop(kills.get()); sel.unregister(s); s.close()
"#;

struct Members {
    child: Child,
    stdin: ChildStdin,
    ports: Vec<u16>,
}

impl Members {
    fn start(ns: &BlackholeNetns, n: usize) -> anyhow::Result<Self> {
        let mut child = Command::new("nsenter")
            .arg(format!("--net={}", ns.path().display()))
            .args(["python3", "-c", MEMBERS_PY, &n.to_string()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .context("starting the member listeners")?;
        let stdin = child.stdin.take().context("stdin")?;
        let mut first = String::new();
        BufReader::new(child.stdout.take().context("stdout")?).read_line(&mut first)?;
        let ports: Vec<u16> = serde_json::from_str(&first).context("member ports")?;
        Ok(Members {
            child,
            stdin,
            ports,
        })
    }

    fn kill(&mut self, port: u16) -> anyhow::Result<()> {
        writeln!(self.stdin, "close {port}")?;
        self.stdin.flush()?;
        Ok(())
    }
}

impl Drop for Members {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `connmon run` inside `ns` with `config`.
fn start_in(env: &Env, ns: &BlackholeNetns, tag: &str, config: &str) -> anyhow::Result<Tracer> {
    let path = env.dir.join(format!("checks-{tag}.toml"));
    std::fs::write(&path, config)?;
    let (tracer, _) = launch_connmon(env, &format!("checks-{tag}"), &path, Some(&ns.path()), &[])?;
    Ok(tracer)
}

/// Waits for an `evict` of `dst` in the agent's output; returns its decision time.
fn wait_evict(tracer: &Tracer, dst: &str, timeout: Duration) -> Option<u64> {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        let out = std::fs::read_to_string(&tracer.stdout).unwrap_or_default();
        if let Some(v) = lines(&out).find(|v| v["type"] == "evict" && v["dst"] == dst) {
            return Some(v["trigger"]["ktime_ns"].as_u64()? + v["detect_us"].as_u64()? * 1_000);
        }
        thread::sleep(Duration::from_millis(50));
    }
    None
}

pub(super) fn run(env: &Env, plan: &Plan, report: &mut String) -> anyhow::Result<()> {
    let ns = BlackholeNetns::new("bench")?;
    let _ = writeln!(
        report,
        "## 7. Handshake checks\n\n\
         Death → eviction with no client traffic: {} listening pool members in a namespace, the agent inside it, \
         `[checks] idle_after` and `max_per_second` as below; one member is killed after a warm-up of two idle periods, \
         and the time from the kill to its `evict` is measured ({} trial(s) per row, median).\n\n\
         | idle_after | max_per_second | kill → evict (ms) | trials evicted |\n|---:|---:|---:|---:|",
        plan.checks_members, plan.checks_trials
    );
    for &(idle_s, rate) in plan.checks_grid {
        let mut times = Vec::new();
        for trial in 0..plan.checks_trials {
            let mut members = Members::start(&ns, plan.checks_members)?;
            let pool: Vec<String> = members
                .ports
                .iter()
                .map(|p| format!("\"127.0.0.1:{p}\""))
                .collect();
            let config = format!(
                "[policy]\npool = [{}]\nbase_ejection = \"60s\"\n\n[checks]\nidle_after = \"{idle_s}s\"\n\
                 max_per_second = {rate}\nearly_probe_interval = \"0s\"\n",
                pool.join(", ")
            );
            let tracer = start_in(env, &ns, &format!("death-{idle_s}-{rate}-{trial}"), &config)?;
            thread::sleep(Duration::from_secs(2 * idle_s));
            let victim = members.ports[members.ports.len() / 2];
            let killed = monotonic_ns();
            members.kill(victim)?;
            // The worst case is one full cycle of the pool at the rate, plus idle_after.
            let bound = Duration::from_secs(
                idle_s + 5 + (plan.checks_members as u64 / u64::from(rate)) * 2,
            );
            let evicted = wait_evict(&tracer, &format!("127.0.0.1:{victim}"), bound);
            tracer.stop()?;
            if let Some(at) = evicted {
                times.push(at.saturating_sub(killed) as f64 / 1e6);
            }
        }
        let _ = writeln!(
            report,
            "| {idle_s} s | {rate} | {:.0} | {}/{} |",
            median(times.clone()),
            times.len(),
            plan.checks_trials
        );
    }

    // CPU at 10 000 probes/s: closed ports are refused at once; the detectors are off so
    // that every member stays in the pool and keeps being probed.
    let ports: Vec<String> = (0..plan.cpu_members)
        .map(|i| format!("\"127.0.0.1:{}\"", 20_000 + i))
        .collect();
    let config = format!(
        "[policy]\npool = [{}]\nconsecutive_refused = 0\nconsecutive_timeouts = 0\nconsecutive_resets = 0\n\
         syn_retransmits = 0\nratio_min_attempts = 4000000000\noutage_min_destinations = 0\n\n\
         [checks]\nidle_after = \"100ms\"\nmax_per_second = 10000\nmax_in_flight = 4096\nearly_probe_interval = \"0s\"\n",
        ports.join(", ")
    );
    let tracer = start_in(env, &ns, "cpu", &config)?;
    thread::sleep(Duration::from_secs(1));
    let (cpu0, t0, k0) = (tracer.cpu(), Instant::now(), monotonic_ns());
    thread::sleep(Duration::from_secs_f64(plan.cpu_secs));
    let (cpu1, secs, k1) = (tracer.cpu(), t0.elapsed().as_secs_f64(), monotonic_ns());
    let pid = tracer.pid();
    let out = tracer.stop()?;
    let probes: Vec<Value> = lines(&out)
        .filter(|v| v["type"] == "connect" && v["probe"] == true && v["tgid"] == pid)
        .collect();
    let in_window = probes
        .iter()
        .filter(|v| {
            v["ktime_ns"]
                .as_u64()
                .is_some_and(|k| (k0..k1).contains(&k))
        })
        .count();
    let cpu = cpu1 - cpu0;
    let stats = lines(&out)
        .filter(|v| v["type"] == "stats")
        .last()
        .unwrap_or(Value::Null);
    let sent = stats["probes"]["sent"].as_u64().unwrap_or(0);
    let uptime = stats["uptime_s"].as_u64().unwrap_or(0).max(1);
    let _ = writeln!(
        report,
        "\nAgent CPU with `max_per_second = 10000` over {} members on closed ports (refused at once; the \
         kernel's loopback work for the refusal is charged to the agent), measured over {:.1} s after a 1 s \
         warm-up: **{:.0} % of one core** at **{:.0} probe outcomes/s** in that window, i.e. **{:.0} µs of CPU \
         per probe** (user + system, NDJSON output included); {} probes sent in {} s of uptime, {} lost. \
         The agent also sees every other connect on the host.\n",
        plan.cpu_members,
        secs,
        cpu / secs * 100.0,
        in_window as f64 / secs,
        cpu / (in_window.max(1) as f64) * 1e6,
        sent,
        uptime,
        stats["probes"]["lost"].as_u64().unwrap_or(0),
    );

    let out = setup::stdout(
        Command::new(
            env.dir
                .parent()
                .context("target dir")?
                .join("release/checks_bench"),
        )
        .args([
            "--members",
            &plan.memory_members.to_string(),
            "--seconds",
            "150",
        ]),
    )?;
    let v: Value = serde_json::from_slice(&out)?;
    let kib = |k: &str| v[k].as_f64().unwrap_or(0.0);
    let _ = writeln!(
        report,
        "Memory (`checks_bench`, no kernel): {} explicit members — the pool itself {:.0} MiB, their background-check \
         schedule {:.0} MiB more ({:.0} bytes a member); {} probes over 150 simulated seconds at 10 000/s, \
         {:.1} µs of CPU per poll (every 10 ms), {:.2} µs per probe scheduled.\n",
        plan.memory_members,
        (kib("rss_pool_kib") - kib("rss_base_kib")) / 1024.0,
        (kib("rss_scheduled_kib") - kib("rss_pool_kib")) / 1024.0,
        (kib("rss_scheduled_kib") - kib("rss_pool_kib")) * 1024.0 / f64::from(plan.memory_members),
        v["probes"],
        v["cpu_us_per_poll"].as_f64().unwrap_or(0.0),
        v["cpu_us_per_probe"].as_f64().unwrap_or(0.0),
    );
    Ok(())
}
