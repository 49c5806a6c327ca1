//! Drives the eviction engine (`EjectionPolicy`) with a synthetic outcome stream, as
//! `cargo xtask bench` does for the memory and CPU figures: no kernel involved.
//!
//! Fills the destination table with `--destinations` distinct destinations, then feeds
//! `--events` outcomes (mostly `established`, 1 % refused) spread over them, and prints
//! `{"destinations":N,"rss_kib":..,"events":N,"seconds":S,"events_per_s":R,"cpu_pct_per_100k_eps":P}`.

use std::{
    net::{Ipv4Addr, SocketAddr},
    time::Instant,
};

use clap::Parser;
use monitor::{
    clock::WallClock,
    policy::{EjectionPolicy, PolicyConfig, PoolMembership},
    source::event::{Attribution, Comm, ConnectRecord, Family, NetnsOwner, Outcome},
};

#[derive(Parser)]
struct Args {
    #[arg(long, default_value_t = 100_000)]
    destinations: u32,
    #[arg(long, default_value_t = 2_000_000)]
    events: u64,
}

fn dst(i: u32) -> SocketAddr {
    SocketAddr::new(Ipv4Addr::from(0x0a00_0000 + i).into(), 8080)
}

/// This process's user + system CPU time in seconds.
fn cpu_seconds() -> f64 {
    use nix::sys::resource::{UsageWho, getrusage};
    getrusage(UsageWho::RUSAGE_SELF)
        .map(|u| {
            let t = |tv: nix::sys::time::TimeVal| tv.tv_sec() as f64 + tv.tv_usec() as f64 / 1e6;
            t(u.user_time()) + t(u.system_time())
        })
        .unwrap_or(0.0)
}

/// Peak resident set size of this process image in KiB (`VmHWM`). Not `getrusage`'s
/// `ru_maxrss`: that keeps the high-water mark of the parent it was forked from.
fn peak_rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let config = PolicyConfig {
        max_destinations: args.destinations as usize + 16,
        outage_min_destinations: 0,
        ..PolicyConfig::default()
    };
    let mut policy = EjectionPolicy::new(
        config,
        PoolMembership::unconfigured(),
        1,
        WallClock::from_offset_ns(0),
        7,
    )?;
    let who = Attribution {
        pid: 1,
        tgid: 1,
        comm: Comm::from("bench"),
        cgroup_id: 1,
        netns: 1,
        netns_owner: NetnsOwner::Initial,
        cgroup: None,
        trusted: true,
    };
    let mut out = Vec::new();
    let mut now = 1_000_000_000u64;
    let record = |i: u32, outcome: Outcome, now: u64| ConnectRecord {
        outcome,
        ktime_ns: now,
        start_ns: now - 50_000,
        family: Family::Ipv4,
        src: "10.255.0.1:40000".parse().expect("literal"),
        dst: dst(i),
        who: who.clone(),
        syn_retransmits: 0,
        errno: 0,
    };
    for i in 0..args.destinations {
        now += 1_000;
        policy.on_connect(&record(i, Outcome::Established, now), now, &mut out);
    }
    out.clear();
    let rss_full = peak_rss_kib();
    let start = Instant::now();
    let cpu_start = cpu_seconds();
    for n in 0..args.events {
        now += 1_000;
        let i = (n.wrapping_mul(2_654_435_761) % u64::from(args.destinations.max(1))) as u32;
        let outcome = if n % 100 == 0 {
            Outcome::Refused
        } else {
            Outcome::Established
        };
        policy.on_connect(&record(i, outcome, now), now, &mut out);
        out.clear();
        if n % 4096 == 0 {
            policy.tick(now, &mut out);
            out.clear();
        }
    }
    let seconds = start.elapsed().as_secs_f64();
    let cpu = cpu_seconds() - cpu_start;
    let eps = args.events as f64 / seconds;
    println!(
        "{}",
        serde_json::json!({
            "destinations": args.destinations,
            "rss_kib": rss_full,
            "events": args.events,
            "seconds": seconds,
            "events_per_s": eps,
            "cpu_pct_per_100k_eps": cpu / args.events as f64 * 100_000.0 * 100.0,
        })
    );
    Ok(())
}
