//! What the engine benchmarks (`src/bin/*`) share: a synthetic destination and
//! connect, an engine sized for a table, and this process's CPU time and memory.

use std::net::{Ipv4Addr, SocketAddr};

use monitor::{
    clock::WallClock,
    policy::{EjectionPolicy, PolicyConfig, PoolMembership},
    source::event::{Attribution, ConnectRecord, Family, Outcome},
};

/// The `i`-th synthetic destination, `10.x.y.z:8080`.
pub fn dst(i: u32) -> SocketAddr {
    SocketAddr::new(Ipv4Addr::from(0x0a00_0000 + i).into(), 8080)
}

/// An engine whose table holds `destinations` (and a few more), the local-outage guard
/// off, its wall clock `offset_ns` ahead of the monotonic one.
pub fn engine(destinations: u32, offset_ns: i128) -> anyhow::Result<EjectionPolicy> {
    let config = PolicyConfig {
        max_destinations: destinations as usize + 16,
        outage_min_destinations: 0,
        ..PolicyConfig::default()
    };
    Ok(EjectionPolicy::new(
        config,
        PoolMembership::unconfigured(),
        1,
        WallClock::from_offset_ns(offset_ns),
        7,
    )?)
}

/// A connect to `dst` with `outcome` at `now`, 50 µs after its SYN, from a trusted
/// process.
pub fn connect(dst: SocketAddr, outcome: Outcome, now: u64) -> ConnectRecord {
    ConnectRecord {
        outcome,
        ktime_ns: now,
        start_ns: now - 50_000,
        family: Family::Ipv4,
        src: "10.255.0.1:40000".parse().expect("literal"),
        dst,
        who: Attribution::fixture("bench"),
        syn_retransmits: 0,
        errno: 0,
    }
}

/// This process's user + system CPU time in seconds.
pub fn cpu_seconds() -> f64 {
    use nix::sys::resource::{UsageWho, getrusage};
    getrusage(UsageWho::RUSAGE_SELF)
        .map(|u| {
            let t = |tv: nix::sys::time::TimeVal| tv.tv_sec() as f64 + tv.tv_usec() as f64 / 1e6;
            t(u.user_time()) + t(u.system_time())
        })
        .unwrap_or(0.0)
}

/// A `/proc/self/status` figure in KiB, e.g. `VmRSS:` or `VmHWM:` (the peak of this
/// process image; `getrusage`'s `ru_maxrss` keeps the one of the parent it was forked
/// from).
pub fn status_kib(key: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix(key))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}
