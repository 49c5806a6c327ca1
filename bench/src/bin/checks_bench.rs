//! Memory and CPU of the handshake-check schedule (`CheckScheduler`) with many members,
//! as `cargo xtask bench` reports them: no kernel, no sockets.
//!
//! Builds a configured pool of `--members` explicit `ADDR:PORT` members, schedules them
//! all for background checks (`idle_after`), then polls every 10 ms of simulated time for
//! `--seconds`, answering every probe at once, and prints
//! `{"members":N,"rss_base_kib":..,"rss_pool_kib":..,"rss_scheduled_kib":..,"rss_peak_kib":..,"probes":N,"polls":N,"cpu_us_per_poll":..}`.

use std::time::Duration;

use clap::Parser;
use connmon_bench::{cpu_seconds, dst, status_kib as kib};
use monitor::{
    policy::{
        PoolEntry, PoolMembership,
        checks::{CheckScheduler, ChecksConfig},
    },
    source::event::Outcome,
};

#[derive(Parser)]
struct Args {
    #[arg(long, default_value_t = 1_000_000)]
    members: u32,
    /// Simulated seconds of polling.
    #[arg(long, default_value_t = 120)]
    seconds: u64,
    #[arg(long, default_value_t = 10_000)]
    rate: u32,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let base = kib("VmRSS:");
    let pool = PoolMembership::from_entries((0..args.members).map(|i| PoolEntry::Member(dst(i))));
    let with_pool = kib("VmRSS:");
    let config = ChecksConfig {
        idle_after: Duration::from_secs(60),
        max_per_second: args.rate,
        ..ChecksConfig::default()
    };
    config.validate()?;
    const SEC: u64 = 1_000_000_000;
    let mut now = 1_000 * SEC;
    let mut scheduler = CheckScheduler::new(config, 100_000, 3, now);
    scheduler.set_members(pool.members(), now);
    let scheduled = kib("VmRSS:");
    let (mut requests, mut ended) = (Vec::new(), Vec::new());
    let (mut probes, mut polls) = (0u64, 0u64);
    let cpu = cpu_seconds();
    let end = now + args.seconds * SEC;
    while now < end {
        scheduler.poll(
            now,
            |dst| pool.role(dst) == monitor::policy::Role::Proxy,
            |_| None,
            &mut requests,
            &mut ended,
        );
        for r in requests.drain(..) {
            scheduler.on_own_connect(r.dst, Outcome::Established);
            probes += 1;
        }
        ended.clear();
        polls += 1;
        now += 10_000_000;
    }
    let cpu = cpu_seconds() - cpu;
    println!(
        "{}",
        serde_json::json!({
            "members": args.members,
            "rss_base_kib": base,
            "rss_pool_kib": with_pool,
            "rss_scheduled_kib": scheduled,
            "rss_peak_kib": kib("VmHWM:"),
            "probes": probes,
            "polls": polls,
            "cpu_us_per_poll": cpu / polls.max(1) as f64 * 1e6,
            "cpu_us_per_probe": cpu / probes.max(1) as f64 * 1e6,
        })
    );
    Ok(())
}
