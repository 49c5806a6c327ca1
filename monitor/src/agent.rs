//! `connmon run`: attach, then read the ring buffer until SIGINT/SIGTERM.
//!
//! One task owns the pipeline: it drains the ring buffer when the kernel wakes it (every
//! failure does) and on a short timer (routine `established` outcomes are written
//! without a wake-up to keep the per-connect cost low), decodes each record, and hands it
//! on to the sinks. Output is flushed once per drain.

use std::time::{Duration, Instant};

use anyhow::Context as _;
use tokio::signal::unix::{SignalKind, signal};

use crate::{
    clock::WallClock,
    sinks::stdout::{OutputFormat, StdoutSink},
    source::{
        event::decode,
        kernel::{KernelSource, SourceOptions},
    },
    stats::{Counters, Stats},
};

/// Everything `connmon run` needs, after CLI and config merging.
#[derive(Clone, Debug)]
pub struct RunOptions {
    pub source: SourceOptions,
    pub output: OutputFormat,
    /// How often batched records are picked up without a kernel wake-up.
    pub batch_interval: Duration,
    /// How often a `stats` line is written (0: only at exit).
    pub stats_interval: Duration,
}

/// Fails with one clear sentence when the host cannot run connmon.
pub fn preflight() -> anyhow::Result<()> {
    if !nix::unistd::geteuid().is_root() {
        anyhow::bail!("connmon must run as root (it loads eBPF programs and may mount tracefs)");
    }
    let btf = std::path::Path::new(crate::source::btf::VMLINUX);
    if !btf.exists() {
        anyhow::bail!(
            "{} not found: connmon needs Linux >= 5.8 built with CONFIG_DEBUG_INFO_BTF",
            btf.display()
        );
    }
    Ok(())
}

pub async fn run(opts: RunOptions) -> anyhow::Result<()> {
    preflight()?;
    let started = Instant::now();
    let mut source = KernelSource::attach(&opts.source)?;
    if source.info.mounted_tracefs {
        tracing::info!(path = %source.info.tracefs.display(), "mounted tracefs");
    }
    tracing::info!(
        ring_buffer_bytes = opts.source.ring_buffer_bytes,
        netns = source.info.netns_resolved,
        "attached to sock:inet_sock_set_state, tcp:tcp_receive_reset, tcp:tcp_retransmit_skb, sock:inet_sk_error_report"
    );

    let clock = WallClock::calibrate();
    let mut sink = StdoutSink::new(opts.output, clock);
    let mut counters = Counters::default();
    let mut last_lost = 0u64;

    let mut sigint = signal(SignalKind::interrupt()).context("installing SIGINT handler")?;
    let mut sigterm = signal(SignalKind::terminate()).context("installing SIGTERM handler")?;
    let mut batch_tick = tokio::time::interval(opts.batch_interval);
    batch_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let stats_every = if opts.stats_interval.is_zero() { Duration::from_secs(86_400 * 365) } else { opts.stats_interval };
    let mut stats_tick = tokio::time::interval_at(tokio::time::Instant::now() + stats_every, stats_every);

    loop {
        tokio::select! {
            guard = source.ring.readable_mut() => {
                let mut guard = guard.context("waiting on the ring buffer")?;
                drain(guard.get_inner_mut(), &mut sink, &mut counters);
                guard.clear_ready();
            }
            _ = batch_tick.tick() => drain(source.ring.get_mut(), &mut sink, &mut counters),
            _ = stats_tick.tick() => {
                let stats = snapshot(&source, &counters, &clock, started, false)?;
                if stats.lost_events > last_lost {
                    tracing::warn!(
                        lost = stats.lost_events - last_lost,
                        total = stats.lost_events,
                        "ring buffer full: events were lost (raise --ring-buffer-bytes)"
                    );
                    last_lost = stats.lost_events;
                }
                sink.stats(&stats);
            }
            _ = sigint.recv() => break,
            _ = sigterm.recv() => break,
        }
        sink.flush().await.context("writing to stdout")?;
    }

    drain(source.ring.get_mut(), &mut sink, &mut counters);
    let stats = snapshot(&source, &counters, &clock, started, true)?;
    if stats.lost_events > last_lost {
        tracing::warn!(total = stats.lost_events, "ring buffer full: events were lost (raise --ring-buffer-bytes)");
    }
    sink.stats(&stats);
    sink.flush().await.context("writing to stdout")?;
    drop(source);
    tracing::info!("detached; exiting");
    Ok(())
}

fn drain(ring: &mut aya::maps::RingBuf<aya::maps::MapData>, sink: &mut StdoutSink, counters: &mut Counters) {
    while let Some(item) = ring.next() {
        match decode(&item) {
            Ok(event) => {
                counters.count(&event);
                sink.event(&event);
            }
            Err(err) => {
                counters.decode_errors += 1;
                tracing::warn!(%err, "undecodable ring-buffer record");
            }
        }
    }
}

fn snapshot(
    source: &KernelSource,
    counters: &Counters,
    clock: &WallClock,
    started: Instant,
    is_final: bool,
) -> anyhow::Result<Stats> {
    let kernel = source.counters().context("reading kernel counters")?;
    Ok(Stats {
        r#type: "stats",
        ts: clock.rfc3339(crate::clock::monotonic_now_ns()),
        uptime_s: started.elapsed().as_secs(),
        events: counters.events,
        outcomes: counters.outcomes.into(),
        syn_retransmits: counters.syn_retransmits,
        lost_events: kernel.lost_events,
        untracked: kernel.untracked,
        decode_errors: counters.decode_errors,
        is_final,
    })
}
