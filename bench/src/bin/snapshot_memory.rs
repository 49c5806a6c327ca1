//! Heap cost of one socket `snapshot` reply (issue #18: a soak's RSS followed the
//! destination table up). Fills an engine with `--destinations` destinations (a
//! quarter with failures, so they carry their detail and a process list), then renders
//! the reply the way the session did before (the whole snapshot as one
//! `serde_json::Value`, then one `String`) and the way it does now
//! ([`SnapshotReply`], a chunk at a time), counting the heap with a wrapping allocator.
//! Prints one JSON line: the table size, the reply's bytes, and for each way the peak
//! heap above the starting point and the number of allocations.

use std::{
    alloc::{GlobalAlloc, Layout, System},
    sync::atomic::{AtomicUsize, Ordering},
};

use clap::Parser;
use connmon_bench::{connect, dst, engine};
use monitor::{
    server::{protocol, snapshot_reply::SnapshotReply},
    source::event::Outcome,
};
use serde_json::{Value, json};

/// The system allocator, counting live bytes, their peak, and allocations.
struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);
static ALLOCATIONS: AtomicUsize = AtomicUsize::new(0);

// SAFETY: forwards to `System` unchanged; only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller's contract is `System`'s.
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            let live = LIVE.fetch_add(layout.size(), Ordering::Relaxed) + layout.size();
            PEAK.fetch_max(live, Ordering::Relaxed);
            ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: the caller's contract is `System`'s.
        unsafe { System.dealloc(ptr, layout) };
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

#[derive(Parser)]
struct Args {
    #[arg(long, default_value_t = 10_000)]
    destinations: u32,
}

/// Runs `f`, returning its result, the heap peak above the live bytes before it, and
/// its allocations.
fn measure<T>(f: impl FnOnce() -> T) -> (T, usize, usize) {
    let base = LIVE.load(Ordering::Relaxed);
    PEAK.store(base, Ordering::Relaxed);
    let allocations = ALLOCATIONS.load(Ordering::Relaxed);
    let out = f();
    (
        out,
        PEAK.load(Ordering::Relaxed) - base,
        ALLOCATIONS.load(Ordering::Relaxed) - allocations,
    )
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let mut policy = engine(args.destinations, 1_700_000_000_000_000_000)?;
    let mut out = Vec::new();
    let mut now = 1_000_000_000u64;
    for i in 0..args.destinations {
        let outcomes: &[Outcome] = if i % 4 == 0 {
            &[Outcome::Established, Outcome::Refused]
        } else {
            &[Outcome::Established]
        };
        for &outcome in outcomes {
            now += 1_000;
            let record = connect(dst(i), outcome, now);
            policy.on_connect(&record, now, &mut out);
            out.clear();
        }
    }
    let server = json!({"clients": 1});
    let id = json!(1);

    // Before: as the session rendered it until issue #18.
    let (whole, whole_peak, whole_allocs) = measure(|| {
        let snapshot = policy.snapshot(now);
        let mut value = serde_json::to_value(&snapshot).unwrap_or_else(|_| json!({}));
        if let Value::Object(map) = &mut value {
            map.insert("type".into(), "snapshot".into());
            map.insert("server".into(), server.clone());
        }
        protocol::reply(value, Some(&id)).len() + 1
    });
    // Now: chunk by chunk (each chunk written to the socket, then reused).
    let (streamed, streamed_peak, streamed_allocs) = measure(|| {
        let mut reply = SnapshotReply::new(policy.snapshot(now), server.clone(), Some(&id));
        let mut buf = Vec::new();
        let mut bytes = 0;
        loop {
            let more = reply.fill(&mut buf);
            bytes += buf.len();
            buf.clear();
            if !more {
                break;
            }
        }
        bytes
    });
    // The snapshot itself, which both ways build first.
    let ((), snapshot_peak, _) = measure(|| drop(policy.snapshot(now)));
    anyhow::ensure!(
        whole == streamed,
        "the two ways gave {whole} and {streamed} bytes"
    );
    println!(
        "{}",
        json!({
            "destinations": args.destinations,
            "reply_bytes": whole,
            "snapshot_struct_peak_bytes": snapshot_peak,
            "whole_value_peak_bytes": whole_peak,
            "whole_value_allocations": whole_allocs,
            "streamed_peak_bytes": streamed_peak,
            "streamed_allocations": streamed_allocs,
        })
    );
    Ok(())
}
