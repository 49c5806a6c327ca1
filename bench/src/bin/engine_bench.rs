//! Drives the eviction engine (`EjectionPolicy`) with a synthetic outcome stream, as
//! `cargo xtask bench` does for the memory and CPU figures: no kernel involved.
//!
//! Fills the destination table with `--destinations` distinct destinations, then feeds
//! `--events` outcomes (mostly `established`, 1 % refused) spread over them, and prints
//! `{"destinations":N,"rss_kib":..,"events":N,"seconds":S,"events_per_s":R,"cpu_pct_per_100k_eps":P}`.

use std::time::Instant;

use clap::Parser;
use connmon_bench::{connect, cpu_seconds, dst, engine, status_kib};
use monitor::source::event::Outcome;

#[derive(Parser)]
struct Args {
    #[arg(long, default_value_t = 100_000)]
    destinations: u32,
    #[arg(long, default_value_t = 2_000_000)]
    events: u64,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let mut policy = engine(args.destinations, 0)?;
    let mut out = Vec::new();
    let mut now = 1_000_000_000u64;
    let record = |i: u32, outcome: Outcome, now: u64| connect(dst(i), outcome, now);
    for i in 0..args.destinations {
        now += 1_000;
        policy.on_connect(&record(i, Outcome::Established, now), now, &mut out);
    }
    out.clear();
    let rss_full = status_kib("VmHWM:");
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
