//! Section 10 of `cargo xtask bench`: the fleet (issue #15, `[fleet]` over NATS
//! JetStream). `CONNMON_BENCH_ONLY=fleet` runs it alone.
//!
//! A real `nats-server -js` on loopback (its own port, store and monitoring port) and
//! N agents (processes, release build, `--checks off`, 64 KiB rings) acting as the hosts
//! of one fleet, all sharing a pool of `fleet_members` members `10.200.0.1:20000+i`.
//! Host A (`h0`) takes evidence only from a namespace this command creates, where
//! nothing listens on those ports; the other hosts trust only the host namespace, so
//! they learn every eviction from the fleet.
//!
//! - Propagation latency: paced refused connects in A's namespace, one new member
//!   each; for every member, the time from the kernel event on A (the evict's
//!   `trigger.ktime_ns`) to the moment a socket subscriber of host C (the last host)
//!   reads the fleet's `evict` (CLOCK_MONOTONIC, same machine), p50/p99/max.
//! - At `fleet_verdict_rate` verdicts/s (A refusing that many new members a second):
//!   NATS messages in and out per second (the server's `/varz`), CPU of A, of C, of
//!   the median other host and of nats-server, and the latency under that load.
//! - A late joiner's resync of the bucket the run left behind (one key per ejection).
//!
//! Every load is bounded in count and time; only loopback and the namespace are used.
//!
//! For experiments: `CONNMON_BENCH_FLEET_AGENTS=50` runs only fleets of that size
//! (comma-separated), `CONNMON_BENCH_FLEET_RECEIVER_ARGS="--wakeup-every-event"` adds
//! arguments to every host but A.

use std::{
    collections::HashMap,
    fmt::Write as _,
    fs,
    io::{BufRead, BufReader, Read as _, Write as _},
    net::{TcpListener, TcpStream},
    os::unix::net::UnixStream,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use serde_json::Value;

use super::{Env, Plan, Tracer, cpu_seconds, lines, monotonic_ns, percentile};

/// The name of this section (`CONNMON_BENCH_ONLY=fleet`).
pub(super) const SECTION: &str = "fleet";

/// First port of the pool's members.
const FIRST_PORT: u16 = 20_000;

fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// `nats-server -js` with a monitoring port; killed on drop.
struct Nats {
    child: Child,
    port: u16,
    monitor: u16,
}

impl Nats {
    fn start(dir: &Path) -> anyhow::Result<Self> {
        let (port, monitor) = (free_port()?, free_port()?);
        let store = dir.join("store");
        let _ = fs::remove_dir_all(&store);
        fs::create_dir_all(&store)?;
        let log = fs::File::create(dir.join("nats.log"))?;
        let child = Command::new("nats-server")
            .args(["-js", "-sd"])
            .arg(&store)
            .args(["-a", "127.0.0.1", "-p", &port.to_string()])
            .args(["-m", &monitor.to_string()])
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("starting nats-server (`cargo xtask setup` installs it)")?;
        let nats = Nats {
            child,
            port,
            monitor,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            if Instant::now() > deadline {
                bail!("nats-server did not listen on {port}");
            }
            thread::sleep(Duration::from_millis(50));
        }
        Ok(nats)
    }

    /// The server's `/varz` (message and byte counters).
    fn varz(&self) -> anyhow::Result<Value> {
        let mut s = TcpStream::connect(("127.0.0.1", self.monitor))?;
        s.set_read_timeout(Some(Duration::from_secs(5)))?;
        write!(s, "GET /varz HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")?;
        let mut text = String::new();
        s.read_to_string(&mut text)?;
        let body = text.split_once("\r\n\r\n").map_or("", |(_, b)| b);
        serde_json::from_str(body).context("nats /varz")
    }
}

impl Drop for Nats {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One host of the fleet.
struct Host {
    tracer: Tracer,
    stderr: PathBuf,
    socket: PathBuf,
}

/// Starts `connmon run` as host `h{i}` (no waiting: see [`wait_ready`]).
fn spawn_host(
    env: &Env,
    nats: &Nats,
    tag: &str,
    i: usize,
    evidence: &str,
    pool: &Path,
) -> anyhow::Result<Host> {
    let stem = format!("fleet-{tag}-h{i}");
    let config = env.dir.join(format!("{stem}.toml"));
    fs::write(
        &config,
        format!(
            "[policy]\njitter = 0.0\nmax_ejection_percent = 100\nbase_ejection = \"600s\"\n\
             outage_min_destinations = 1000000\n\n[policy.evidence]\n{evidence}\n\n\
             [fleet]\nservers = [\"nats://127.0.0.1:{}\"]\ncluster = \"bench{tag}\"\nhost_id = \"h{i}\"\n\
             heartbeat = \"5s\"\nqueue = 16384\n",
            nats.port
        ),
    )?;
    let state = env.dir.join(format!("{stem}.state.json"));
    let _ = fs::remove_file(&state);
    let socket = env.dir.join(format!("{stem}.sock"));
    let stdout = env.dir.join(format!("{stem}.out"));
    let stderr = env.dir.join(format!("{stem}.err"));
    let extra: Vec<String> = if i == 0 {
        Vec::new()
    } else {
        std::env::var("CONNMON_BENCH_FLEET_RECEIVER_ARGS")
            .unwrap_or_default()
            .split_whitespace()
            .map(str::to_owned)
            .collect()
    };
    let child = Command::new(&env.connmon)
        .args([
            "run",
            "--output",
            "json",
            "--stats-interval",
            "0s",
            "--checks",
            "off",
            "--ring-buffer-bytes",
            "65536",
            "--config",
        ])
        .arg(&config)
        .arg("--state-file")
        .arg(&state)
        .arg("--socket")
        .arg(&socket)
        .arg("--pool")
        .arg(pool)
        .args(&extra)
        .stdin(Stdio::null())
        .stdout(fs::File::create(&stdout)?)
        .stderr(fs::File::create(&stderr)?)
        .spawn()
        .context("starting connmon")?;
    Ok(Host {
        tracer: Tracer {
            name: "connmon",
            child,
            stdout,
        },
        stderr,
        socket,
    })
}

/// Waits until every host has resynced from the bucket (it is then in the fleet).
fn wait_ready(hosts: &mut [Host], timeout: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    for (i, host) in hosts.iter_mut().enumerate() {
        loop {
            let err = fs::read_to_string(&host.stderr).unwrap_or_default();
            if err.contains("fleet: resynced") {
                break;
            }
            if let Some(status) = host.tracer.child.try_wait()? {
                bail!("host h{i} exited ({status}): {}", err.trim());
            }
            if Instant::now() > deadline {
                bail!(
                    "host h{i} not in the fleet within {timeout:?}: {}",
                    err.trim()
                );
            }
            thread::sleep(Duration::from_millis(50));
        }
    }
    Ok(())
}

/// The next line of `reader` into `line`; false at its end or on an error.
fn next_line(reader: &mut impl BufRead, line: &mut String) -> bool {
    line.clear();
    matches!(reader.read_line(line), Ok(n) if n > 0)
}

/// Notes when the first `evict` of its destination was read.
fn note_evict(seen: &Mutex<HashMap<String, u64>>, v: &Value, at: u64) {
    if v["type"] == "evict"
        && let Some(dst) = v["dst"].as_str()
        && let Ok(mut seen) = seen.lock()
    {
        seen.entry(dst.to_owned()).or_insert(at);
    }
}

/// A socket subscriber of one host: every fleet `evict` it reads, with when.
struct Subscriber {
    seen: Arc<Mutex<HashMap<String, u64>>>,
}

impl Subscriber {
    fn start(socket: &Path) -> anyhow::Result<Self> {
        let stream = UnixStream::connect(socket)
            .with_context(|| format!("connecting to {}", socket.display()))?;
        let mut writer = stream.try_clone()?;
        let mut reader = BufReader::new(stream);
        let mut line = String::new();
        reader.read_line(&mut line)?; // hello
        writeln!(writer, r#"{{"cmd":"subscribe","id":1,"types":["evict"]}}"#)?;
        line.clear();
        reader.read_line(&mut line)?;
        if !line.contains("\"ok\"") {
            bail!("subscribe refused: {line}");
        }
        let seen: Arc<Mutex<HashMap<String, u64>>> = Arc::default();
        let store = Arc::clone(&seen);
        thread::spawn(move || {
            let mut line = String::new();
            while next_line(&mut reader, &mut line) {
                let at = monotonic_ns();
                let Ok(v) = serde_json::from_str::<Value>(&line) else {
                    continue;
                };
                if v["reason"] == "fleet" {
                    note_evict(&store, &v, at);
                }
            }
        });
        Ok(Subscriber { seen })
    }

    fn count(&self) -> usize {
        self.seen.lock().map(|s| s.len()).unwrap_or(0)
    }

    /// Waits until `n` evicts were read (or `timeout`).
    fn wait_for(&self, n: usize, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while self.count() < n && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(20));
        }
    }
}

/// A plain NATS subscriber of A's verdict subject (one more fan-out target, doing no
/// work): when each `evict` left the server, to split the latency into A's part and
/// the receiver's part.
struct Observer {
    seen: Arc<Mutex<HashMap<String, u64>>>,
}

impl Observer {
    fn start(port: u16, subject: &str) -> anyhow::Result<Self> {
        let stream = TcpStream::connect(("127.0.0.1", port))?;
        let mut writer = stream.try_clone()?;
        let mut reader = BufReader::new(stream);
        let mut line = String::new();
        reader.read_line(&mut line)?;
        if !line.starts_with("INFO") {
            bail!("not a NATS server: {line}");
        }
        write!(
            writer,
            "CONNECT {{\"verbose\":false,\"pedantic\":false}}\r\nSUB {subject} 1\r\nPING\r\n"
        )?;
        loop {
            line.clear();
            if reader.read_line(&mut line)? == 0 {
                bail!("NATS closed the observer's connection");
            }
            if line.starts_with("PONG") {
                break;
            }
        }
        let seen: Arc<Mutex<HashMap<String, u64>>> = Arc::default();
        let store = Arc::clone(&seen);
        thread::spawn(move || {
            let mut line = String::new();
            let mut payload = Vec::new();
            while next_line(&mut reader, &mut line) {
                if line.starts_with("PING") {
                    let _ = writer.write_all(b"PONG\r\n");
                    continue;
                }
                // MSG <subject> <sid> [reply] <bytes>
                let Some(len) = line
                    .strip_prefix("MSG ")
                    .and_then(|rest| rest.split_whitespace().last())
                    .and_then(|n| n.parse::<usize>().ok())
                else {
                    continue;
                };
                payload.resize(len + 2, 0);
                if reader.read_exact(&mut payload).is_err() {
                    return;
                }
                let at = monotonic_ns();
                let Ok(v) = serde_json::from_slice::<Value>(&payload[..len]) else {
                    continue;
                };
                note_evict(&store, &v, at);
            }
        });
        Ok(Observer { seen })
    }
}

/// Busy and total jiffies of the whole machine (`/proc/stat`).
fn machine_jiffies() -> (u64, u64) {
    let stat = fs::read_to_string("/proc/stat").unwrap_or_default();
    let cpu: Vec<u64> = stat
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .skip(1)
        .filter_map(|f| f.parse().ok())
        .collect();
    let total: u64 = cpu.iter().take(8).sum();
    let idle = cpu.get(3).copied().unwrap_or(0) + cpu.get(4).copied().unwrap_or(0);
    (total - idle, total)
}

/// The parts of the paced latency, ms, sorted: kernel event → A's decision
/// (`detect_us`), A's decision → the observer read it from NATS, NATS → C's
/// subscriber read the fleet's evict.
fn breakdown(
    a_out: &str,
    nats: &HashMap<String, u64>,
    seen: &HashMap<String, u64>,
    to: usize,
) -> [Vec<f64>; 3] {
    let mut parts: [Vec<f64>; 3] = Default::default();
    for v in lines(a_out).filter(|v| v["type"] == "evict") {
        let Some(dst) = v["dst"].as_str() else {
            continue;
        };
        let Some(i) = dst
            .rsplit_once(':')
            .and_then(|(_, p)| p.parse::<usize>().ok())
            .and_then(|p| p.checked_sub(usize::from(FIRST_PORT)))
        else {
            continue;
        };
        let (Some(kernel), Some(detect_us), Some(&out), Some(&read)) = (
            v["trigger"]["ktime_ns"].as_u64(),
            v["detect_us"].as_u64(),
            nats.get(dst),
            seen.get(dst),
        ) else {
            continue;
        };
        if i >= to {
            continue;
        }
        let decided = kernel + detect_us * 1_000;
        parts[0].push(detect_us as f64 / 1e3);
        parts[1].push(out.saturating_sub(decided) as f64 / 1e6);
        parts[2].push(read.saturating_sub(out) as f64 / 1e6);
    }
    for part in &mut parts {
        part.sort_by(f64::total_cmp);
    }
    parts
}

/// Refused connects from A's namespace to members `first..first+count`, paced.
fn refuse(
    env: &Env,
    ns: &crate::netns::BlackholeNetns,
    first: usize,
    count: usize,
    rate: u64,
) -> anyhow::Result<Value> {
    let port = u16::try_from(usize::from(FIRST_PORT) + first).context("member port")?;
    let secs = (count as f64 / rate as f64 + 2.0).min(600.0);
    super::loadgen(
        env,
        &[
            "--netns",
            &ns.name,
            "--mode",
            "ports",
            "--addr",
            "10.200.0.1",
            "--port",
            &port.to_string(),
            "--threads",
            "1",
            "--rate",
            &rate.to_string(),
            "--duration",
            &format!("{secs:.1}"),
            "--max",
            &count.to_string(),
            "--timeout-ms",
            "1000",
        ],
    )
}

/// Kernel event on A → C's subscriber, ms, for every member C has read, sorted.
fn latencies(a_out: &str, seen: &HashMap<String, u64>, from: usize, to: usize) -> Vec<f64> {
    let mut ms: Vec<f64> = lines(a_out)
        .filter(|v| v["type"] == "evict")
        .filter_map(|v| {
            let dst = v["dst"].as_str()?;
            let port: usize = dst.rsplit_once(':')?.1.parse().ok()?;
            let i = port.checked_sub(usize::from(FIRST_PORT))?;
            if !(from..to).contains(&i) {
                return None;
            }
            let at = *seen.get(dst)?;
            let kernel = v["trigger"]["ktime_ns"].as_u64()?;
            Some(at.saturating_sub(kernel) as f64 / 1e6)
        })
        .collect();
    ms.sort_by(f64::total_cmp);
    ms
}

fn varz_u64(v: &Value, key: &str) -> u64 {
    v[key].as_u64().unwrap_or(0)
}

/// The `key=NUMBER` of a log line.
fn log_field(line: &str, key: &str) -> Option<u64> {
    let rest = &line[line.find(&format!("{key}="))? + key.len() + 1..];
    rest.split(|c: char| !c.is_ascii_digit())
        .next()?
        .parse()
        .ok()
}

pub(super) fn run(env: &Env, plan: &Plan, report: &mut String) -> anyhow::Result<()> {
    let members = plan.fleet_members;
    let samples = plan.fleet_samples.min(members / 2);
    let pool = env.dir.join("fleet-pool.txt");
    let mut text = String::new();
    for i in 0..members {
        let _ = writeln!(text, "10.200.0.1:{}", usize::from(FIRST_PORT) + i);
    }
    fs::write(&pool, text)?;
    let _ = writeln!(
        report,
        "## 10. Fleet (NATS JetStream)\n\n\
         N agents on this host act as the hosts of one fleet (release build, `--checks off`, 64 KiB rings, \
         `[fleet]` share mode, a real `nats-server -js` on loopback), pool of {members} members. Host A's \
         evidence is a namespace of its own; every other host learns the evictions from the fleet only. \
         Every agent also sees (and drops as untrusted) A's connects — the kernel programs are global — so \
         the receivers' CPU includes that. Latency: kernel event on A (the evict's `trigger.ktime_ns`) → a \
         socket subscriber of host C (the last host) reads the fleet's `evict`, {samples} members refused at \
         {} /s. Then A refuses {} new members a second for {:.1} s: NATS messages in and out per verdict \
         (`/varz`; × the rate = messages/s) and CPU (user + system) of A, C, the median other host and \
         nats-server per verdict, both counted until C has read every verdict (or 20 s after the load), \
         and the latency under that load. Last, a late joiner's resync of the bucket the run left.\n\n\
         | agents | latency p50 / p99 / max (ms) | read by C | at {} verdicts/s: achieved | NATS msgs in · out per verdict | CPU µs per verdict: A · C · other (median) · nats | latency under load p50 / p99 (ms) | read by C | dropped (A) | late joiner resync |\n\
         |---:|---|---:|---:|---|---|---|---:|---:|---|",
        plan.fleet_sample_rate,
        plan.fleet_verdict_rate,
        plan.fleet_rate_secs,
        plan.fleet_verdict_rate,
    );
    let mut parts = Vec::new();
    let agents: Vec<usize> = match std::env::var("CONNMON_BENCH_FLEET_AGENTS") {
        Ok(list) => list
            .split(',')
            .map(|n| n.trim().parse().context("CONNMON_BENCH_FLEET_AGENTS"))
            .collect::<anyhow::Result<_>>()?,
        Err(_) => plan.fleet_agents.to_vec(),
    };
    for &n in &agents {
        let (row, part) = one_fleet(env, plan, n, &pool, samples)?;
        let _ = writeln!(report, "{row}");
        parts.push(part);
    }
    let _ = writeln!(
        report,
        "\nWhere the paced latency goes (p50 / p99, ms): kernel event → A's decision (`detect_us`); A's \
         decision → a plain NATS subscriber of A's subject read it (A's bus, link, publish and the server's \
         fan-out); NATS → C's socket subscriber read the fleet's evict (C's link, pipeline, socket). CPU: \
         each agent idle for 10 s before any load (median and max over the hosts, % of a core), all agents \
         together and the whole machine (every process, other sessions' too) during the paced phase.\n\n\
         | agents | kernel → A decides | A decides → out of NATS | NATS → C's subscriber | idle CPU per agent median / max | idle nats-server | paced: all agents · machine busy |\n\
         |---:|---|---|---|---|---|---|"
    );
    for part in parts {
        let _ = writeln!(report, "{part}");
    }
    let _ = writeln!(report);
    Ok(())
}

/// One fleet of `n` hosts: the row of the table.
fn one_fleet(
    env: &Env,
    plan: &Plan,
    n: usize,
    pool: &Path,
    samples: usize,
) -> anyhow::Result<(String, String)> {
    let tag = format!("{n}");
    let dir = env.dir.join(format!("fleet-nats-{n}"));
    fs::create_dir_all(&dir)?;
    let nats = Nats::start(&dir)?;
    let ns = crate::netns::BlackholeNetns::new("bench")?;
    let mut hosts = Vec::with_capacity(n);
    for i in 0..n {
        let evidence = if i == 0 {
            format!("netns = [\"/run/netns/{}\"]", ns.name)
        } else {
            "trust = \"host\"".to_owned()
        };
        hosts.push(spawn_host(env, &nats, &tag, i, &evidence, pool)?);
    }
    let stop_all = |hosts: Vec<Host>| {
        for h in &hosts {
            // SAFETY: kill has no memory-safety preconditions.
            unsafe { libc::kill(h.tracer.pid() as i32, libc::SIGTERM) };
        }
        hosts
            .into_iter()
            .map(|h| h.tracer.stop().unwrap_or_default())
            .collect::<Vec<String>>()
    };
    if let Err(e) = wait_ready(&mut hosts, Duration::from_secs(60 + 4 * n as u64)) {
        stop_all(hosts);
        return Err(e);
    }
    let pids: Vec<u32> = hosts.iter().map(|h| h.tracer.pid()).collect();
    let nats_pid = nats.child.id();
    let cpu_all = |pids: &[u32]| -> Vec<f64> {
        pids.iter()
            .map(|p| cpu_seconds(*p).unwrap_or(0.0))
            .collect()
    };
    // Idle: every agent in the fleet, nothing flowing (but other sessions' traffic).
    const IDLE: Duration = Duration::from_secs(10);
    let (idle0, idle_nats0) = (cpu_all(&pids), cpu_seconds(nats_pid).unwrap_or(0.0));
    thread::sleep(IDLE);
    let (idle1, idle_nats1) = (cpu_all(&pids), cpu_seconds(nats_pid).unwrap_or(0.0));
    let mut idle: Vec<f64> = idle0
        .iter()
        .zip(&idle1)
        .map(|(a, b)| (b - a) / IDLE.as_secs_f64() * 100.0)
        .collect();
    idle.sort_by(f64::total_cmp);
    let idle_nats = (idle_nats1 - idle_nats0) / IDLE.as_secs_f64() * 100.0;

    let c = Subscriber::start(&hosts[n - 1].socket)?;
    let observer = Observer::start(nats.port, &format!("connmon.bench{tag}.verdict.h0"))?;

    // Propagation latency, paced.
    let (paced_cpu0, paced_machine0, paced_t0) =
        (cpu_all(&pids), machine_jiffies(), Instant::now());
    refuse(env, &ns, 0, samples, plan.fleet_sample_rate)?;
    c.wait_for(samples, Duration::from_secs(10));
    let paced_read = c.count();
    let (paced_cpu1, paced_machine1) = (cpu_all(&pids), machine_jiffies());
    let paced_secs = paced_t0.elapsed().as_secs_f64();
    let paced_agents: f64 = paced_cpu0
        .iter()
        .zip(&paced_cpu1)
        .map(|(a, b)| b - a)
        .sum::<f64>()
        / paced_secs
        * 100.0;
    let machine_busy = (paced_machine1.0 - paced_machine0.0) as f64
        / (paced_machine1.1 - paced_machine0.1).max(1) as f64
        * 100.0;

    // The verdict rate.
    let rate_count = ((plan.fleet_verdict_rate as f64 * plan.fleet_rate_secs) as usize)
        .min(plan.fleet_members - samples);
    let cpu0 = cpu_all(&pids);
    let nats_cpu0 = cpu_seconds(nats_pid).unwrap_or(0.0);
    let varz0 = nats.varz()?;
    let t0 = Instant::now();
    let load = refuse(env, &ns, samples, rate_count, plan.fleet_verdict_rate)?;
    let load_secs = t0.elapsed().as_secs_f64();
    // Until C has read them all (or 20 s more): the work a verdict causes, not only
    // what fits in the load's window.
    c.wait_for(samples + rate_count, Duration::from_secs(20));
    let secs = t0.elapsed().as_secs_f64();
    let cpu1 = cpu_all(&pids);
    let nats_cpu1 = cpu_seconds(nats_pid).unwrap_or(0.0);
    let varz1 = nats.varz()?;
    let loaded_read = c.count() - paced_read;
    let verdicts = load["connects"].as_f64().unwrap_or(0.0).max(1.0);
    // CPU (user + system) per verdict, µs.
    let per = |d: f64| d / verdicts * 1e6;
    let cpu: Vec<f64> = cpu0.iter().zip(&cpu1).map(|(a, b)| per(b - a)).collect();
    let mut others: Vec<f64> = cpu[1..n - 1].to_vec();
    others.sort_by(f64::total_cmp);
    let other = if others.is_empty() {
        f64::NAN
    } else {
        others[others.len() / 2]
    };
    // Messages per verdict (× 1 000 = the rate at 1 000 verdicts/s).
    let msgs_in = (varz_u64(&varz1, "in_msgs") - varz_u64(&varz0, "in_msgs")) as f64 / verdicts;
    let msgs_out = (varz_u64(&varz1, "out_msgs") - varz_u64(&varz0, "out_msgs")) as f64 / verdicts;

    // A late joiner reads the bucket.
    let mut late = vec![spawn_host(env, &nats, &tag, n, "trust = \"host\"", pool)?];
    let late_started = Instant::now();
    let joined = wait_ready(&mut late, Duration::from_secs(120));
    let late_secs = late_started.elapsed().as_secs_f64();
    let late_err = fs::read_to_string(&late[0].stderr).unwrap_or_default();
    let resync_line = late_err
        .lines()
        .find(|l| l.contains("fleet: resynced"))
        .unwrap_or_default()
        .to_owned();
    stop_all(late);
    let outputs = stop_all(hosts);
    joined?;

    let seen = c.seen.lock().map(|s| s.clone()).unwrap_or_default();
    let paced = latencies(&outputs[0], &seen, 0, samples);
    let out_of_nats = observer.seen.lock().map(|s| s.clone()).unwrap_or_default();
    let parts = breakdown(&outputs[0], &out_of_nats, &seen, samples);
    let p = |v: &[f64]| format!("{:.1} / {:.1}", percentile(v, 50.0), percentile(v, 99.0));
    let part_row = format!(
        "| {n} | {} | {} | {} | {:.2} % / {:.2} % | {idle_nats:.2} % | {paced_agents:.0} % · {machine_busy:.0} % of 2 cores |",
        p(&parts[0]),
        p(&parts[1]),
        p(&parts[2]),
        percentile(&idle, 50.0),
        idle.last().copied().unwrap_or(f64::NAN),
    );
    let loaded = latencies(&outputs[0], &seen, samples, samples + rate_count);
    let a_stats = lines(&outputs[0])
        .filter(|v| v["type"] == "stats")
        .last()
        .unwrap_or(Value::Null);
    let dropped = &a_stats["fleet"]["dropped"];
    let row = format!(
        "| {n} | {:.1} / {:.1} / {:.1} | {}/{samples} | {:.0} /s ({} connects in {load_secs:.1} s; C had read them after {secs:.1} s) | {:.2} · {:.2} | {:.0} · {:.0} · {:.0} · {:.0} | {:.1} / {:.1} | {loaded_read}/{rate_count} | {} (queue full {}, unreachable {}) | {} keys in {} ms ({:.1} s from exec) |",
        percentile(&paced, 50.0),
        percentile(&paced, 99.0),
        paced.last().copied().unwrap_or(f64::NAN),
        paced_read,
        load["rate"].as_f64().unwrap_or(0.0),
        load["connects"],
        msgs_in,
        msgs_out,
        cpu[0],
        cpu[n - 1],
        other,
        per(nats_cpu1 - nats_cpu0),
        percentile(&loaded, 50.0),
        percentile(&loaded, 99.0),
        dropped["queue_full"].as_u64().unwrap_or(0)
            + dropped["unreachable"].as_u64().unwrap_or(0)
            + dropped["lagged"].as_u64().unwrap_or(0),
        dropped["queue_full"],
        dropped["unreachable"],
        log_field(&resync_line, "entries").unwrap_or(0),
        log_field(&resync_line, "elapsed_ms").unwrap_or(0),
        late_secs,
    );
    Ok((row, part_row))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_fields_are_read_from_tracing_lines() {
        let line = "INFO fleet: resynced from the KV bucket entries=9800 hosts=51 own=0 elapsed_ms=412 actions=9800";
        assert_eq!(log_field(line, "entries"), Some(9800));
        assert_eq!(log_field(line, "elapsed_ms"), Some(412));
        assert_eq!(log_field(line, "missing"), None);
    }

    #[test]
    fn latencies_join_a_kernel_event_to_the_subscriber_read() {
        let out = r#"{"type":"evict","dst":"10.200.0.1:20001","trigger":{"ktime_ns":1000000}}
{"type":"evict","dst":"10.200.0.1:20500","trigger":{"ktime_ns":1000000}}"#;
        let seen = HashMap::from([
            ("10.200.0.1:20001".to_owned(), 4_000_000),
            ("10.200.0.1:20500".to_owned(), 9_000_000),
        ]);
        assert_eq!(latencies(out, &seen, 0, 10), vec![3.0]);
    }
}
