//! `cargo xtask bench --soak DURATION`: the agent under hours of mixed traffic, sampled
//! over time to show that nothing grows (issue #18). A short run is part of
//! `cargo xtask bench --quick` (and so of `cargo xtask test`).
//!
//! Traffic, all inside a network namespace this command creates (never off the host):
//! established connects to a listener, refused connects to a rotating set of closed
//! ports (pool members: evicted, reinstated, evicted again), resets (a listener that
//! aborts accepted connections with SO_LINGER 0), connects to a blackholed neighbour
//! that the client abandons; pool churn through the socket (`pool add`/`remove`);
//! a SIGHUP every 10 s; subscribers that connect, read or lag, and vanish.
//!
//! Sampled every interval: agent RSS and open fds, occupancy of the kernel's LRU maps
//! (INFLIGHT, ESTABLISHED, REPORTED_ERRORS: entries counted by walking their keys with
//! the bpf syscall), lost events and events from the agent's `stats` lines, and
//! kernel event → evict latency (`detect_us`) of the interval's evictions. The report
//! compares the first and last quarter of the run and fits a slope per hour.

use std::{
    fmt::Write as _,
    fs,
    io::{BufRead as _, BufReader, Read as _, Write as _},
    net::{SocketAddr, TcpListener, TcpStream},
    os::unix::net::UnixStream,
    path::Path,
    process::{Child, Command, Stdio},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use nix::{
    sys::{
        signal::{Signal, kill},
        socket::{setsockopt, sockopt},
    },
    unistd::Pid,
};
use serde_json::{Value, json};

use crate::{
    netns::{BLACKHOLE, BlackholeNetns},
    setup,
};

/// The namespace's own address and the ports used.
const LOCAL: &str = "10.200.0.1";
const ESTABLISHED_PORT: u16 = 7000;
const RESET_PORT: u16 = 7001;
const REFUSED_PORTS: std::ops::Range<u16> = 7100..7140;
/// Kernel LRU maps whose occupancy is sampled.
const MAPS: [&str; 3] = ["INFLIGHT", "ESTABLISHED", "REPORTED_ERRORS"];

/// One sample of the agent.
#[derive(Clone, Debug, Default)]
struct Sample {
    at_s: f64,
    rss_kib: u64,
    fds: u64,
    map_entries: [u64; 3],
    /// Destinations in the agent's table (`tracked` of a snapshot): tracepoints are
    /// global, so every connect on the host counts, not only the soak's.
    tracked: u64,
    events: u64,
    lost_events: u64,
    evictions: u64,
    detect_p50_us: u64,
    detect_max_us: u64,
}

/// What the stdout reader accumulates between samples.
#[derive(Default)]
struct Stream {
    events: u64,
    lost_events: u64,
    evictions: u64,
    reinstatements: u64,
    detect_us: Vec<u64>,
    bad_lines: u64,
}

/// Runs the soak for `duration` with the release `connmon` and appends its report.
pub(crate) fn run(
    connmon: &Path,
    dir: &Path,
    duration: Duration,
    report: &mut String,
) -> anyhow::Result<()> {
    let interval = sample_interval(duration);
    // One SYN retransmission before the kernel gives up.
    let ns = BlackholeNetns::new("soak")?;
    ns.sysctl("net.ipv4.tcp_syn_retries=1")?;
    let socket = dir.join("connmon-soak.sock");
    let state = dir.join("state-soak.json");
    let _ = fs::remove_file(&state);
    let pool_file = dir.join("soak-pool.txt");
    fs::write(&pool_file, format!("{LOCAL}/32\n"))?;
    let config = dir.join("soak.toml");
    fs::write(
        &config,
        format!(
            "[agent]\npool_file = \"{}\"\n\n[policy]\nbase_ejection = \"2s\"\nmax_ejection = \"8s\"\nmax_ejection_percent = 100\noutage_min_destinations = 1000000\n",
            pool_file.display()
        ),
    )?;
    let stderr_path = dir.join("connmon-soak.err");
    let mut child = Command::new(connmon)
        .args(["run", "--output", "json", "--config"])
        .arg(&config)
        .arg("--state-file")
        .arg(&state)
        .arg("--socket")
        .arg(&socket)
        .args(["--stats-interval", &format!("{}ms", interval.as_millis())])
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(fs::File::create(&stderr_path)?)
        .spawn()
        .context("starting connmon for the soak")?;
    let pid = child.id();
    let guard = KillOnDrop(&mut child);
    wait_for_socket(&socket, pid, &stderr_path)?;
    let stream = Arc::new(Mutex::new(Stream::default()));
    let reader = {
        let stdout = guard.0.stdout.take().context("agent stdout")?;
        let stream = Arc::clone(&stream);
        thread::spawn(move || read_stdout(stdout, &stream))
    };

    setup::say(format!(
        "soak: {} s of mixed traffic, a sample every {} s",
        duration.as_secs(),
        interval.as_secs_f64()
    ));
    let stop = Arc::new(AtomicBool::new(false));
    let counters = Arc::new(Counters::default());
    let mut workers = Vec::new();
    workers.extend(traffic(&ns, &stop, &counters)?);
    let every = |secs| Duration::from_secs(secs);
    workers.push(rounds(
        "soak-pool",
        None,
        &stop,
        every(1),
        pool_churn(&socket, &counters),
    ));
    workers.push(rounds(
        "soak-subscribers",
        None,
        &stop,
        every(2),
        subscriber(&socket, &counters),
    ));

    let started = Instant::now();
    let mut samples = Vec::new();
    let mut next_hup = Duration::from_secs(10);
    while started.elapsed() < duration {
        let wake = (samples.len() as u32 + 1) * interval;
        while started.elapsed() < wake.min(duration) {
            if started.elapsed() >= next_hup {
                let _ = kill(Pid::from_raw(pid as i32), Signal::SIGHUP);
                counters.sighups.fetch_add(1, Ordering::Relaxed);
                next_hup += Duration::from_secs(10);
            }
            thread::sleep(Duration::from_millis(100));
        }
        if guard.0.try_wait()?.is_some() {
            bail!(
                "connmon exited during the soak: {}",
                fs::read_to_string(&stderr_path).unwrap_or_default()
            );
        }
        samples.push(sample(pid, started, &stream, &socket));
    }
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        let _ = w.join();
    }
    let _ = kill(Pid::from_raw(pid as i32), Signal::SIGTERM);
    let deadline = Instant::now() + Duration::from_secs(15);
    let status = loop {
        if let Some(status) = guard.0.try_wait()? {
            break status;
        }
        if Instant::now() > deadline {
            bail!("connmon did not exit within 15 s of SIGTERM after the soak");
        }
        thread::sleep(Duration::from_millis(50));
    };
    drop(guard);
    let _ = reader.join();
    let stream = stream.lock().expect("stream lock");
    let stderr = fs::read_to_string(&stderr_path).unwrap_or_default();
    write_report(
        report,
        duration,
        interval,
        &samples,
        &stream,
        &counters,
        status.success(),
        &stderr,
    );
    if stream.bad_lines > 0 {
        bail!(
            "connmon printed {} lines that are not JSON during the soak",
            stream.bad_lines
        );
    }
    if !status.success() {
        bail!("connmon exited with {status} after the soak: {stderr}");
    }
    Ok(())
}

/// About 120 samples per run, at least one a second.
fn sample_interval(duration: Duration) -> Duration {
    (duration / 120).max(Duration::from_secs(1))
}

/// `20s`, `10m`, `1h`, `1h30m` or plain seconds.
pub(crate) fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    if let Ok(secs) = text.parse::<u64>() {
        return Ok(Duration::from_secs(secs));
    }
    let (mut total, mut number) = (0u64, String::new());
    for c in text.chars() {
        if c.is_ascii_digit() {
            number.push(c);
            continue;
        }
        let unit = match c {
            's' => 1,
            'm' => 60,
            'h' => 3600,
            _ => return Err(format!("{text:?}: a duration is like 90s, 10m or 1h")),
        };
        let n: u64 = number
            .parse()
            .map_err(|_| format!("{text:?}: a number must come before {c:?}"))?;
        total = total.saturating_add(n.saturating_mul(unit));
        number.clear();
    }
    if !number.is_empty() || total == 0 {
        return Err(format!("{text:?}: a duration is like 90s, 10m or 1h"));
    }
    Ok(Duration::from_secs(total))
}

struct KillOnDrop<'a>(&'a mut Child);

impl Drop for KillOnDrop<'_> {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

fn wait_for_socket(socket: &Path, pid: u32, stderr: &Path) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    while UnixStream::connect(socket).is_err() {
        if Instant::now() > deadline || !Path::new(&format!("/proc/{pid}")).exists() {
            bail!(
                "connmon did not serve {} within 30 s: {}",
                socket.display(),
                fs::read_to_string(stderr).unwrap_or_default()
            );
        }
        thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

fn read_stdout(stdout: impl std::io::Read, stream: &Mutex<Stream>) {
    for line in BufReader::new(stdout).lines() {
        let Ok(line) = line else { break };
        let Ok(v) = serde_json::from_str::<Value>(&line) else {
            stream.lock().expect("stream lock").bad_lines += 1;
            continue;
        };
        let mut s = stream.lock().expect("stream lock");
        match v["type"].as_str() {
            Some("evict") => {
                s.evictions += 1;
                if let Some(us) = v["detect_us"].as_u64() {
                    s.detect_us.push(us);
                }
            }
            Some("reinstate") => s.reinstatements += 1,
            Some("stats") => {
                s.events = v["events"].as_u64().unwrap_or(s.events);
                s.lost_events = v["lost_events"].as_u64().unwrap_or(s.lost_events);
            }
            _ => {}
        }
    }
}

/// `tracked` from a snapshot over the socket (0 if the agent did not answer in 5 s).
fn tracked(socket: &Path) -> u64 {
    let Ok(mut s) = UnixStream::connect(socket) else {
        return 0;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
    if s.write_all(b"{\"cmd\":\"snapshot\"}\n").is_err() {
        return 0;
    }
    BufReader::new(s)
        .lines()
        .take(2)
        .map_while(Result::ok)
        .filter_map(|l| serde_json::from_str::<Value>(&l).ok())
        .find(|v| v["type"] == "snapshot")
        .and_then(|v| v["tracked"].as_u64())
        .unwrap_or(0)
}

fn sample(pid: u32, started: Instant, stream: &Mutex<Stream>, socket: &Path) -> Sample {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let rss_kib = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0);
    let fds = fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count() as u64)
        .unwrap_or(0);
    let map_entries = bpf::occupancy(pid, &MAPS);
    let tracked = tracked(socket);
    let mut s = stream.lock().expect("stream lock");
    let mut detect = std::mem::take(&mut s.detect_us);
    detect.sort_unstable();
    Sample {
        at_s: started.elapsed().as_secs_f64(),
        rss_kib,
        fds,
        map_entries,
        tracked,
        events: s.events,
        lost_events: s.lost_events,
        evictions: s.evictions,
        detect_p50_us: detect.get(detect.len() / 2).copied().unwrap_or(0),
        detect_max_us: detect.last().copied().unwrap_or(0),
    }
}

/// What the traffic and control threads did.
#[derive(Default)]
struct Counters {
    established: AtomicU64,
    refused: AtomicU64,
    resets: AtomicU64,
    abandoned: AtomicU64,
    pool_changes: AtomicU64,
    subscribers: AtomicU64,
    lagging_subscribers: AtomicU64,
    sighups: AtomicU64,
}

/// Moves the calling thread into the namespace at `path`.
fn enter(path: &Path) {
    let file = fs::File::open(path).expect("open the soak namespace");
    nix::sched::setns(file, nix::sched::CloneFlags::CLONE_NEWNET)
        .expect("setns into the soak namespace");
}

/// Spawns `f` in the namespace, looping until `stop` with `pause` between rounds.
fn in_ns(
    ns: &BlackholeNetns,
    name: &str,
    stop: &Arc<AtomicBool>,
    pause: Duration,
    f: impl FnMut() + Send + 'static,
) -> thread::JoinHandle<()> {
    rounds(name, Some(ns.path()), stop, pause, f)
}

/// Spawns a thread named `name` (in the namespace at `ns` when given) that calls `f`
/// until `stop`, with `pause` between rounds.
fn rounds(
    name: &str,
    ns: Option<std::path::PathBuf>,
    stop: &Arc<AtomicBool>,
    pause: Duration,
    mut f: impl FnMut() + Send + 'static,
) -> thread::JoinHandle<()> {
    let stop = Arc::clone(stop);
    thread::Builder::new()
        .name(name.to_owned())
        .spawn(move || {
            if let Some(path) = ns {
                enter(&path);
            }
            while !stop.load(Ordering::Relaxed) {
                f();
                thread::sleep(pause);
            }
        })
        .expect("spawn a soak thread")
}

fn traffic(
    ns: &BlackholeNetns,
    stop: &Arc<AtomicBool>,
    counters: &Arc<Counters>,
) -> anyhow::Result<Vec<thread::JoinHandle<()>>> {
    // Listeners, bound from inside the namespace: one that keeps the connection until
    // the client closes it, one that aborts it (SO_LINGER 0: a RST on an established
    // connection this host opened).
    let (tx, rx) = std::sync::mpsc::channel();
    let path = ns.path();
    thread::spawn(move || {
        enter(&path);
        let bind = |port| TcpListener::bind((LOCAL, port));
        let _ = tx.send((bind(ESTABLISHED_PORT), bind(RESET_PORT)));
    });
    let (ok, reset) = rx.recv().context("binding the soak listeners")?;
    let (ok, reset) = (ok?, reset?);
    ok.set_nonblocking(true)?;
    reset.set_nonblocking(true)?;
    let mut handles = Vec::new();
    let s = Arc::clone(stop);
    handles.push(thread::spawn(move || {
        while !s.load(Ordering::Relaxed) {
            let mut idle = true;
            while let Ok((conn, _)) = ok.accept() {
                drop(conn);
                idle = false;
            }
            while let Ok((conn, _)) = reset.accept() {
                let linger = libc::linger {
                    l_onoff: 1,
                    l_linger: 0,
                };
                let _ = setsockopt(&conn, sockopt::Linger, &linger);
                thread::sleep(Duration::from_millis(2));
                drop(conn);
                idle = false;
            }
            if idle {
                thread::sleep(Duration::from_millis(2));
            }
        }
    }));
    // One client loop per kind of traffic: (thread name, pause, what one round does).
    let (c, mut port) = (Arc::clone(counters), REFUSED_PORTS.start);
    let established = move || {
        if TcpStream::connect((LOCAL, ESTABLISHED_PORT)).is_ok() {
            c.established.fetch_add(1, Ordering::Relaxed);
        }
    };
    let c = Arc::clone(counters);
    let refused = move || {
        if TcpStream::connect((LOCAL, port)).is_err() {
            c.refused.fetch_add(1, Ordering::Relaxed);
        }
        port = if port + 1 >= REFUSED_PORTS.end {
            REFUSED_PORTS.start
        } else {
            port + 1
        };
    };
    let c = Arc::clone(counters);
    let reset = move || {
        if let Ok(mut s) = TcpStream::connect((LOCAL, RESET_PORT)) {
            let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
            if s.read(&mut [0u8; 1]).is_err() {
                c.resets.fetch_add(1, Ordering::Relaxed);
            }
        }
    };
    let blackhole = |i: u16| {
        let c = Arc::clone(counters);
        move || {
            let addr: SocketAddr = format!("{BLACKHOLE}:{}", 80 + i).parse().expect("addr");
            if TcpStream::connect_timeout(&addr, Duration::from_millis(1500)).is_err() {
                c.abandoned.fetch_add(1, Ordering::Relaxed);
            }
        }
    };
    type Round = Box<dyn FnMut() + Send>;
    let loops: [(&str, u64, Round); 5] = [
        ("soak-established", 10, Box::new(established)),
        ("soak-refused", 20, Box::new(refused)),
        ("soak-reset", 100, Box::new(reset)),
        ("soak-blackhole", 200, Box::new(blackhole(0))),
        ("soak-blackhole", 200, Box::new(blackhole(1))),
    ];
    for (name, pause_ms, f) in loops {
        handles.push(in_ns(ns, name, stop, Duration::from_millis(pause_ms), f));
    }
    Ok(handles)
}

/// One round of pool churn: adds and removes a member through the socket.
fn pool_churn(socket: &Path, counters: &Arc<Counters>) -> impl FnMut() + Send + 'static {
    let (socket, c, mut round) = (socket.to_owned(), Arc::clone(counters), 0u32);
    let member = |n: u32| format!("10.201.{}.{}:80", (n / 250) % 250, n % 250);
    move || {
        round += 1;
        let Ok(mut s) = UnixStream::connect(&socket) else {
            return;
        };
        let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
        let mut lines = String::new();
        for cmd in [
            json!({"cmd": "pool", "op": "add", "members": [member(round)]}),
            json!({"cmd": "pool", "op": "remove", "members": [member(round + 125)]}),
            json!({"cmd": "snapshot"}),
        ] {
            lines.push_str(&cmd.to_string());
            lines.push('\n');
        }
        if s.write_all(lines.as_bytes()).is_ok() {
            let _ = s.shutdown(std::net::Shutdown::Write);
            let _ = s.read_to_end(&mut Vec::new());
            c.pool_changes.fetch_add(2, Ordering::Relaxed);
        }
    }
}

/// One round of subscribers (every 2 s): a subscriber arrives; every other one reads
/// for 3 s, the others never read (they lag) and vanish after 5 s.
fn subscriber(socket: &Path, counters: &Arc<Counters>) -> impl FnMut() + Send + 'static {
    let (socket, c, mut n) = (socket.to_owned(), Arc::clone(counters), 0u64);
    move || {
        n += 1;
        let socket = socket.clone();
        let reads = n.is_multiple_of(2);
        if !reads {
            c.lagging_subscribers.fetch_add(1, Ordering::Relaxed);
        }
        c.subscribers.fetch_add(1, Ordering::Relaxed);
        // Detached: each ends by itself within 5 s.
        thread::spawn(move || {
            let Ok(mut s) = UnixStream::connect(&socket) else {
                return;
            };
            let _ = s.write_all(b"{\"cmd\":\"subscribe\"}\n");
            let until = Instant::now() + Duration::from_secs(if reads { 3 } else { 5 });
            let _ = s.set_read_timeout(Some(Duration::from_millis(200)));
            let mut buf = vec![0u8; 64 * 1024];
            while Instant::now() < until {
                if reads {
                    let _ = s.read(&mut buf);
                } else {
                    thread::sleep(Duration::from_millis(200));
                }
            }
        });
    }
}

/// Least-squares slope of `ys` over `xs`, per hour of `xs` in seconds.
fn slope_per_hour(xs: &[f64], ys: &[f64]) -> f64 {
    let n = xs.len() as f64;
    if xs.len() < 2 {
        return 0.0;
    }
    let (mx, my) = (xs.iter().sum::<f64>() / n, ys.iter().sum::<f64>() / n);
    let cov: f64 = xs.iter().zip(ys).map(|(x, y)| (x - mx) * (y - my)).sum();
    let var: f64 = xs.iter().map(|x| (x - mx).powi(2)).sum();
    if var == 0.0 { 0.0 } else { cov / var * 3600.0 }
}

fn quarter_means(ys: &[f64]) -> (f64, f64) {
    let q = (ys.len() / 4).max(1);
    let mean = |s: &[f64]| s.iter().sum::<f64>() / s.len().max(1) as f64;
    (
        mean(&ys[..q.min(ys.len())]),
        mean(&ys[ys.len().saturating_sub(q)..]),
    )
}

#[expect(
    clippy::too_many_arguments,
    reason = "one report from everything the run gathered"
)]
fn write_report(
    report: &mut String,
    duration: Duration,
    interval: Duration,
    samples: &[Sample],
    stream: &Stream,
    counters: &Counters,
    clean_exit: bool,
    stderr: &str,
) {
    let n = |a: &AtomicU64| a.load(Ordering::Relaxed);
    let _ = writeln!(
        report,
        "## 7. Soak\n\n{} s of mixed traffic in a test namespace, sampled every {:.0} s ({} samples). Traffic: {} established, \
         {} refused (40 rotating pool ports), {} resets, {} abandoned connects to a blackholed neighbour; {} pool changes \
         over the socket, {} SIGHUPs, {} subscribers ({} of them never read). The agent decided {} evictions and {} \
         reinstatements; clean exit: {}.\n",
        duration.as_secs(),
        interval.as_secs_f64(),
        samples.len(),
        n(&counters.established),
        n(&counters.refused),
        n(&counters.resets),
        n(&counters.abandoned),
        n(&counters.pool_changes),
        n(&counters.sighups),
        n(&counters.subscribers),
        n(&counters.lagging_subscribers),
        stream.evictions,
        stream.reinstatements,
        if clean_exit { "yes" } else { "no" },
    );
    // Decision latency is only meaningful in samples that had evictions.
    let with_evictions: Vec<&Sample> = samples.iter().filter(|s| s.detect_max_us > 0).collect();
    let series = |of: &[&Sample], y: fn(&Sample) -> u64| -> (Vec<f64>, Vec<f64>) {
        of.iter().map(|s| (s.at_s, y(s) as f64)).unzip()
    };
    let all: Vec<&Sample> = samples.iter().collect();
    type Row<'a> = (&'static str, &'a [&'a Sample], fn(&Sample) -> u64);
    let rows: [Row<'_>; 9] = [
        ("agent RSS (KiB)", &all, |s| s.rss_kib),
        ("open fds", &all, |s| s.fds),
        ("INFLIGHT entries", &all, |s| s.map_entries[0]),
        ("ESTABLISHED entries", &all, |s| s.map_entries[1]),
        ("destinations tracked (whole host)", &all, |s| s.tracked),
        ("REPORTED_ERRORS entries", &all, |s| s.map_entries[2]),
        ("lost events (cumulative)", &all, |s| s.lost_events),
        ("detect_us p50 per sample", &with_evictions, |s| {
            s.detect_p50_us
        }),
        ("detect_us max per sample", &with_evictions, |s| {
            s.detect_max_us
        }),
    ];
    let _ = writeln!(
        report,
        "| metric | first quarter (mean) | last quarter (mean) | min | max | slope per hour |\n|---|---:|---:|---:|---:|---:|"
    );
    for (name, of, y) in rows {
        let (xs, ys) = series(of, y);
        let (first, last) = quarter_means(&ys);
        let min = ys.iter().copied().fold(f64::INFINITY, f64::min);
        let max = ys.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let _ = writeln!(
            report,
            "| {name} | {first:.0} | {last:.0} | {min:.0} | {max:.0} | {:+.0} |",
            slope_per_hour(&xs, &ys)
        );
    }
    let events = samples.last().map(|s| s.events).unwrap_or(0);
    let _ = writeln!(
        report,
        "\nEvents: {events} ({:.0}/s); lost: {}. Samples (time s: RSS KiB, fds, INFLIGHT/ESTABLISHED/REPORTED_ERRORS, destinations tracked, lost, evictions, detect_us p50/max):\n",
        events as f64 / duration.as_secs_f64().max(1.0),
        samples.last().map(|s| s.lost_events).unwrap_or(0)
    );
    let step = (samples.len() / 12).max(1);
    for s in samples.iter().step_by(step).chain(samples.last()) {
        let _ = writeln!(
            report,
            "    {:>6.0}: {} KiB, {} fds, {}/{}/{}, {} tracked, lost {}, evictions {}, detect {}/{}",
            s.at_s,
            s.rss_kib,
            s.fds,
            s.map_entries[0],
            s.map_entries[1],
            s.map_entries[2],
            s.tracked,
            s.lost_events,
            s.evictions,
            s.detect_p50_us,
            s.detect_max_us
        );
    }
    let warnings: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("WARN") || l.contains("ERROR"))
        .collect();
    let _ = writeln!(
        report,
        "\nAgent warnings/errors on stderr: {}{}\n",
        warnings.len(),
        warnings
            .iter()
            .take(3)
            .map(|w| format!("\n    {w}"))
            .collect::<String>()
    );
}

/// Occupancy of the agent's BPF maps, by name, through the bpf syscall: ids from
/// `/proc/PID/fdinfo` (`map_id:`), a new fd per id (`BPF_MAP_GET_FD_BY_ID`), the name
/// from `BPF_OBJ_GET_INFO_BY_FD`, and the keys walked with `BPF_MAP_GET_NEXT_KEY`.
mod bpf {
    use std::os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd};

    const BPF_MAP_GET_NEXT_KEY: libc::c_long = 4;
    const BPF_MAP_GET_FD_BY_ID: libc::c_long = 14;
    const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;

    fn sys_bpf(cmd: libc::c_long, attr: &mut [u64; 16]) -> libc::c_long {
        // SAFETY: `attr` is a zero-padded 128-byte bpf_attr, larger than every command's.
        unsafe {
            libc::syscall(
                libc::SYS_bpf,
                cmd,
                attr.as_mut_ptr(),
                size_of::<[u64; 16]>(),
            )
        }
    }

    fn map_ids(pid: u32) -> Vec<u32> {
        let Ok(entries) = std::fs::read_dir(format!("/proc/{pid}/fdinfo")) else {
            return Vec::new();
        };
        let mut ids: Vec<u32> = entries
            .flatten()
            .filter_map(|e| std::fs::read_to_string(e.path()).ok())
            .filter_map(|t| {
                t.lines()
                    .find_map(|l| l.strip_prefix("map_id:"))
                    .and_then(|v| v.trim().parse().ok())
            })
            .collect();
        ids.sort_unstable();
        ids.dedup();
        ids
    }

    /// (name, key size, max entries) of a map fd.
    fn info(fd: &OwnedFd) -> Option<(String, usize, u64)> {
        let mut info = [0u8; 96];
        let mut attr = [0u64; 16];
        attr[0] = fd.as_raw_fd() as u64 | ((info.len() as u64) << 32);
        attr[1] = info.as_mut_ptr() as u64;
        if sys_bpf(BPF_OBJ_GET_INFO_BY_FD, &mut attr) != 0 {
            return None;
        }
        let u32_at = |o: usize| u32::from_ne_bytes(info[o..o + 4].try_into().expect("4 bytes"));
        let key_size = u32_at(8) as usize;
        let max_entries = u64::from(u32_at(16));
        let name: Vec<u8> = info[24..40]
            .iter()
            .copied()
            .take_while(|&b| b != 0)
            .collect();
        Some((
            String::from_utf8_lossy(&name).into_owned(),
            key_size,
            max_entries,
        ))
    }

    fn count(fd: &OwnedFd, key_size: usize, max_entries: u64) -> u64 {
        let mut key = vec![0u8; key_size.max(1)];
        let mut next = vec![0u8; key_size.max(1)];
        let mut n = 0u64;
        let mut first = true;
        // Bounded: a map holds at most max_entries keys (+1 against concurrent changes).
        while n <= max_entries {
            let mut attr = [0u64; 16];
            attr[0] = fd.as_raw_fd() as u64;
            attr[1] = if first { 0 } else { key.as_ptr() as u64 };
            attr[2] = next.as_mut_ptr() as u64;
            if sys_bpf(BPF_MAP_GET_NEXT_KEY, &mut attr) != 0 {
                break;
            }
            n += 1;
            first = false;
            std::mem::swap(&mut key, &mut next);
        }
        n
    }

    /// Entries in each of the agent's maps named in `names` (0 when not found).
    pub(super) fn occupancy<const N: usize>(pid: u32, names: &[&str; N]) -> [u64; N] {
        let mut out = [0u64; N];
        for id in map_ids(pid) {
            let mut attr = [0u64; 16];
            attr[0] = u64::from(id);
            let fd = sys_bpf(BPF_MAP_GET_FD_BY_ID, &mut attr);
            if fd < 0 {
                continue;
            }
            // SAFETY: the kernel just returned this new fd; we own it.
            let fd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
            let Some((name, key_size, max_entries)) = info(&fd) else {
                continue;
            };
            if let Some(i) = names.iter().position(|n| *n == name) {
                out[i] = count(&fd, key_size, max_entries);
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flat_series_has_no_slope_and_a_line_has_its_own() {
        let xs: Vec<f64> = (0..10).map(f64::from).collect();
        assert_eq!(slope_per_hour(&xs, &[5.0; 10]), 0.0);
        let ys: Vec<f64> = xs.iter().map(|x| 2.0 * x + 1.0).collect();
        assert!((slope_per_hour(&xs, &ys) - 7200.0).abs() < 1e-6);
        assert_eq!(quarter_means(&ys), (2.0, 18.0));
    }

    #[test]
    fn soak_durations_parse() {
        assert_eq!(parse_duration("90"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_duration("10m"), Ok(Duration::from_secs(600)));
        assert!(parse_duration("1d").is_err());
    }
}
