//! Connect load generator for `cargo xtask bench`: N threads of blocking connects to a
//! loopback (or namespace-local) address, bounded in time and count, optionally paced.
//!
//! - `refused`: connects to a port nothing listens on (each one is a RST).
//! - `established`: connects to a local listener; the client closes with SO_LINGER 0.
//! - `ports`: refused connects to consecutive ports from `--port` (one new destination each).
//!
//! Prints one JSON object: `{"connects":N,"errors":N,"elapsed_s":S,"rate":R}`.

use std::{
    net::{IpAddr, SocketAddr, TcpListener, TcpStream},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use clap::{Parser, ValueEnum};

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Mode {
    Refused,
    Established,
    Ports,
}

#[derive(Parser)]
struct Args {
    #[arg(long, value_enum)]
    mode: Mode,
    #[arg(long, default_value_t = 2)]
    threads: usize,
    /// Seconds to run.
    #[arg(long, default_value_t = 3.0)]
    duration: f64,
    /// Total connects per second across threads (0: as fast as possible).
    #[arg(long, default_value_t = 0)]
    rate: u64,
    /// Stop after this many connects in total.
    #[arg(long, default_value_t = 50_000_000)]
    max: u64,
    #[arg(long, default_value = "127.0.0.1")]
    addr: IpAddr,
    /// Port for `refused` (default: a free port) or first port for `ports`.
    #[arg(long, default_value_t = 0)]
    port: u16,
    /// Per-connect timeout in milliseconds (for destinations that never answer).
    #[arg(long, default_value_t = 2000)]
    timeout_ms: u64,
    /// Enter this network namespace (`ip netns` name) before connecting.
    #[arg(long)]
    netns: Option<String>,
}

fn closed_port(addr: IpAddr) -> anyhow::Result<u16> {
    let l = TcpListener::bind((addr, 0)).context("binding a probe port")?;
    Ok(l.local_addr()?.port())
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if let Some(ns) = &args.netns {
        let file = std::fs::File::open(format!("/run/netns/{ns}"))
            .with_context(|| format!("netns {ns}"))?;
        nix::sched::setns(file, nix::sched::CloneFlags::CLONE_NEWNET).context("setns")?;
    }
    if args.threads == 0 || args.duration <= 0.0 || args.duration > 600.0 {
        bail!("--threads must be > 0 and --duration in (0, 600]");
    }
    let stop = Arc::new(AtomicBool::new(false));
    let (target, acceptor) = match args.mode {
        Mode::Refused => {
            let port = if args.port == 0 {
                closed_port(args.addr)?
            } else {
                args.port
            };
            (SocketAddr::new(args.addr, port), None)
        }
        Mode::Ports => (SocketAddr::new(args.addr, args.port.max(1)), None),
        Mode::Established => {
            // A deep backlog: with a shallow one, SYNs dropped on a full accept queue
            // cost a 1 s retransmit and measure the acceptor, not connect().
            let sock = socket2::Socket::new(
                socket2::Domain::for_address(SocketAddr::new(args.addr, 0)),
                socket2::Type::STREAM,
                None,
            )?;
            sock.set_reuse_address(true)?;
            sock.bind(&SocketAddr::new(args.addr, 0).into())?;
            sock.listen(4096)?;
            let listener: TcpListener = sock.into();
            let addr = listener.local_addr()?;
            let stop = Arc::clone(&stop);
            let acceptor = thread::spawn(move || {
                // Blocking accepts; the main thread's final connect wakes the last one.
                while !stop.load(Ordering::Relaxed) {
                    if let Ok((conn, _)) = listener.accept() {
                        drop(conn);
                    }
                }
            });
            (addr, Some(acceptor))
        }
    };
    let connects = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let next_port = Arc::new(AtomicU64::new(u64::from(target.port())));
    let deadline = Instant::now() + Duration::from_secs_f64(args.duration);
    let per_thread_interval =
        (args.rate > 0).then(|| Duration::from_secs_f64(args.threads as f64 / args.rate as f64));
    let timeout = Duration::from_millis(args.timeout_ms);
    let start = Instant::now();
    let workers: Vec<_> = (0..args.threads)
        .map(|_| {
            let (connects, errors, next_port) = (
                Arc::clone(&connects),
                Arc::clone(&errors),
                Arc::clone(&next_port),
            );
            let mode = args.mode;
            let max = args.max;
            thread::spawn(move || {
                let mut next = Instant::now();
                while Instant::now() < deadline && connects.load(Ordering::Relaxed) < max {
                    if let Some(interval) = per_thread_interval {
                        let now = Instant::now();
                        if next > now {
                            thread::sleep(next - now);
                        }
                        next += interval;
                    }
                    let dst = match mode {
                        Mode::Ports => {
                            let p = next_port.fetch_add(1, Ordering::Relaxed);
                            SocketAddr::new(target.ip(), u16::try_from(p).unwrap_or(u16::MAX))
                        }
                        _ => target,
                    };
                    match TcpStream::connect_timeout(&dst, timeout) {
                        Ok(stream) => {
                            let s = socket2::Socket::from(stream);
                            let _ = s.set_linger(Some(Duration::ZERO));
                        }
                        Err(_) => {
                            errors.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    connects.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    for w in workers {
        let _ = w.join();
    }
    let elapsed = start.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    if let Some(acceptor) = acceptor {
        let _ = TcpStream::connect_timeout(&target, timeout);
        let _ = acceptor.join();
    }
    let n = connects.load(Ordering::Relaxed);
    println!(
        "{}",
        serde_json::json!({
            "connects": n,
            "errors": errors.load(Ordering::Relaxed),
            "elapsed_s": elapsed,
            "rate": n as f64 / elapsed,
        })
    );
    Ok(())
}
