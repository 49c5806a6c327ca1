//! The stdout sink: one NDJSON object per line (the stable, documented format) or
//! aligned text for people. Lines are rendered into a buffer and written in one write:
//! at once for decisions and stats, and for kernel events once the reader goes back to
//! sleep — while failures flow and it polls the ring every few hundred µs, event lines
//! are collected over polls (at most [`FLUSH_BYTES`] or [`FLUSH_AFTER`]) instead of a
//! `write` per poll.

use std::{
    fmt::Write as _,
    io::Write as _,
    net::SocketAddr,
    time::{Duration, Instant},
};

use serde::Serialize;

pub use crate::config::{EventsFilter, OutputFormat};
use crate::{
    bus::json,
    clock::WallClock,
    policy::{decision::Decision, pool::Role},
    source::event::{Attribution, ConnectRecord, KernelEvent, SynRetransmitRecord},
    stats::Stats,
};

impl EventsFilter {
    fn kernel_event(self, event: &KernelEvent) -> bool {
        match self {
            EventsFilter::All => true,
            EventsFilter::Failures => match event {
                KernelEvent::Connect(c) => c.outcome != crate::source::event::Outcome::Established,
                KernelEvent::SynRetransmit(_) => true,
            },
            EventsFilter::Decisions | EventsFilter::None => false,
        }
    }

    fn decision(self) -> bool {
        self != EventsFilter::None
    }
}

/// ` container=<first 12 hex digits>` and ` untrusted` for the text columns, as apply.
fn origin_suffix(who: &Attribution) -> String {
    let mut out = String::new();
    if let Some(id) = who.container() {
        let _ = write!(out, " container={}", id.get(..12).unwrap_or(id));
    }
    if !who.trusted {
        out.push_str(" untrusted");
    }
    out
}

/// Pending event lines are written once they reach this many bytes...
pub const FLUSH_BYTES: usize = 32 * 1024;
/// ... or once the first of them has waited this long (while the reader polls).
pub const FLUSH_AFTER: Duration = Duration::from_millis(50);

/// Renders events into a buffer; [`StdoutSink::flush`] writes it out.
pub struct StdoutSink {
    format: OutputFormat,
    /// Colours for text lines: only on a terminal, never with `NO_COLOR`.
    palette: super::text::Palette,
    clock: WallClock,
    buf: Vec<u8>,
    out: std::io::Stdout,
    events: EventsFilter,
    /// A decision or stats line is pending: written at the next [`Self::flush_due`].
    urgent: bool,
    /// When [`Self::flush_due`] first saw event lines pending.
    pending_since: Option<Instant>,
}

/// The stdout consumer: `output`, or json unless stdout is a terminal.
pub fn start(
    output: Option<OutputFormat>,
    events: EventsFilter,
    cx: &super::SinkContext,
) -> StdoutSink {
    let output = output.unwrap_or_else(|| {
        use std::io::IsTerminal as _;
        if std::io::stdout().is_terminal() {
            OutputFormat::Text
        } else {
            OutputFormat::Json
        }
    });
    StdoutSink::new(output, cx.clock).with_events(events)
}

impl StdoutSink {
    pub fn new(format: OutputFormat, clock: WallClock) -> Self {
        use std::io::IsTerminal as _;
        let colour = format == OutputFormat::Text
            && super::text::colour_wanted(std::io::stdout().is_terminal());
        StdoutSink {
            format,
            palette: super::text::Palette::new(colour),
            clock,
            buf: Vec::with_capacity(64 * 1024),
            out: std::io::stdout(),
            events: EventsFilter::All,
            urgent: false,
            pending_since: None,
        }
    }

    /// Writes only the records `events` selects.
    #[must_use]
    pub fn with_events(mut self, events: EventsFilter) -> Self {
        self.events = events;
        self
    }

    /// A kernel event; `role` is the destination's role in the pool.
    pub fn event(&mut self, event: &KernelEvent, role: Role) {
        self.event_of(event, role, false);
    }

    /// A kernel event of the agent's own probe (`"probe":true`).
    pub fn probe_event(&mut self, event: &KernelEvent, role: Role) {
        self.event_of(event, role, true);
    }

    fn event_of(&mut self, event: &KernelEvent, role: Role, probe: bool) {
        if !self.events.kernel_event(event) {
            return;
        }
        match event {
            KernelEvent::Connect(c) => self.connect(c, role, probe),
            KernelEvent::SynRetransmit(r) => self.syn_retransmit(r, role, probe),
        }
    }

    /// A policy decision: the JSON object as documented, or readable columns
    /// ([`super::text::decision_line`]).
    pub fn decision(&mut self, decision: &Decision) {
        if !self.events.decision() {
            return;
        }
        let palette = self.palette;
        self.record(decision, || {
            let json = serde_json::to_value(decision).unwrap_or_default();
            super::text::decision_line(&json, &palette).unwrap_or_else(|| json.to_string())
        });
    }

    fn connect(&mut self, c: &ConnectRecord, role: Role, probe: bool) {
        match self.format {
            OutputFormat::Json => {
                json::connect(&mut self.buf, c, role, probe, &self.clock);
                self.buf.push(b'\n');
            }
            OutputFormat::Text => {
                let lead = format!("{}us retx={}", c.duration_us(), c.syn_retransmits);
                let columns = (c.ktime_ns, c.outcome.as_str(), c.src, c.dst);
                self.text_line(columns, &c.who, &lead, probe);
            }
        }
    }

    fn syn_retransmit(&mut self, r: &SynRetransmitRecord, role: Role, probe: bool) {
        match self.format {
            OutputFormat::Json => {
                json::syn_retransmit(&mut self.buf, r, role, probe, &self.clock);
                self.buf.push(b'\n');
            }
            OutputFormat::Text => {
                let since_syn_us = r.ktime_ns.saturating_sub(r.start_ns) / 1_000;
                let lead = format!("{since_syn_us}us retx={}", r.retransmits);
                let columns = (r.ktime_ns, "syn_retransmit", r.src, r.dst);
                self.text_line(columns, &r.who, &lead, probe);
            }
        }
    }

    /// Any serializable line (stats, decisions) in JSON mode; `text` in text mode.
    pub fn record<T: Serialize>(&mut self, value: &T, text: impl FnOnce() -> String) {
        self.urgent = true;
        match self.format {
            OutputFormat::Json => self.json_line(value),
            OutputFormat::Text => {
                self.buf.extend_from_slice(text().as_bytes());
                self.buf.push(b'\n');
            }
        }
    }

    pub fn stats(&mut self, stats: &Stats) {
        self.record(stats, || stats.to_text());
    }

    fn json_line<T: Serialize>(&mut self, value: &T) {
        json::value(&mut self.buf, value);
        self.buf.push(b'\n');
    }

    /// One text line: time, what, `src -> dst`, tgid and comm of `who`, then `lead`,
    /// the origin marks and ` probe`.
    fn text_line(
        &mut self,
        (ktime_ns, what, src, dst): (u64, &str, SocketAddr, SocketAddr),
        who: &Attribution,
        lead: &str,
        probe: bool,
    ) {
        let ts = self.clock.rfc3339(ktime_ns);
        let time = ts.get(11..26).unwrap_or(&ts);
        let mut line = String::with_capacity(128);
        let colour = match what {
            "established" => self.palette.green,
            "syn_retransmit" => self.palette.yellow,
            _ => self.palette.red,
        };
        let reset = self.palette.reset;
        let mark = if probe { " probe" } else { "" };
        let _ = writeln!(
            line,
            "{time:<15}  {colour}{what:<14}{reset} {src:>24} -> {dst:<24} {tgid:>7} {comm:<16} {lead}{origin}{mark}",
            tgid = who.tgid,
            comm = who.comm.as_str(),
            origin = origin_suffix(who),
        );
        self.buf.extend_from_slice(line.as_bytes());
    }

    /// Writes everything rendered so far.
    ///
    /// A plain blocking write on the pipeline's thread: handing each batch to tokio's
    /// blocking pool cost a thread wake-up per drain, the largest item in a profile at
    /// 50 k events/s. If stdout's reader stalls, the pipeline stalls with it and the
    /// kernel counts what the ring buffer cannot hold (`lost_events`).
    pub fn flush(&mut self) -> std::io::Result<()> {
        self.urgent = false;
        self.pending_since = None;
        if self.buf.is_empty() {
            return Ok(());
        }
        let mut out = self.out.lock();
        out.write_all(&self.buf)?;
        out.flush()?;
        self.buf.clear();
        Ok(())
    }

    /// Writes what is rendered if it is due: always when `idle` (the reader goes back
    /// to sleep: nothing else would write it soon) or a decision or stats line waits;
    /// event lines while the reader polls once they reach [`FLUSH_BYTES`] or wait
    /// [`FLUSH_AFTER`]. At 10 000 failures/s this is one write per ~70 lines instead of
    /// one per 250 µs poll (the write was ~15 % of the agent's CPU).
    pub fn flush_due(&mut self, idle: bool) -> std::io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        if self.due(Instant::now(), idle) {
            self.flush()?;
        }
        Ok(())
    }

    /// Whether the pending lines are to be written at `now` (see [`Self::flush_due`]).
    fn due(&mut self, now: Instant, idle: bool) -> bool {
        let since = *self.pending_since.get_or_insert(now);
        idle || self.urgent
            || self.buf.len() >= FLUSH_BYTES
            || now.duration_since(since) >= FLUSH_AFTER
    }

    /// The rendered, not yet flushed bytes (for tests).
    #[cfg(test)]
    pub fn pending(&self) -> &[u8] {
        &self.buf
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::event::{Comm, Family, Outcome};

    fn refused() -> KernelEvent {
        KernelEvent::Connect(ConnectRecord {
            outcome: Outcome::Refused,
            ktime_ns: 1_000_057_000,
            start_ns: 1_000_000_000,
            family: Family::Ipv6,
            src: "[::1]:33850".parse().unwrap(),
            dst: "[::1]:40002".parse().unwrap(),
            who: Attribution {
                pid: 123,
                tgid: 123,
                comm: Comm::from("python3"),
                cgroup_id: 7,
                netns: 9,
                netns_owner: crate::source::event::NetnsOwner::Child,
                cgroup: Some(std::sync::Arc::new(
                    crate::source::cgroup::CgroupOrigin::from_path(&format!(
                        "/system.slice/docker-{}.scope",
                        "ab".repeat(32)
                    )),
                )),
                trusted: false,
            },
            syn_retransmits: 0,
            errno: 111,
        })
    }

    /// 10.0.0.1:80 reinstated after `ejected_ms`.
    fn reinstate(ejected_ms: u64, verified: bool) -> Decision {
        Decision::Reinstate(crate::policy::decision::Reinstatement {
            dst: "10.0.0.1:80".parse().unwrap(),
            netns: None,
            ejected_ms,
            verified,
            early: false,
            ts: None,
            origin: None,
        })
    }

    #[test]
    fn events_filter_selects_what_reaches_stdout() {
        let established = match refused() {
            KernelEvent::Connect(mut c) => {
                c.outcome = Outcome::Established;
                c.errno = 0;
                KernelEvent::Connect(c)
            }
            other @ KernelEvent::SynRetransmit(_) => other,
        };
        let lines = |events: EventsFilter| {
            let mut sink = StdoutSink::new(OutputFormat::Json, WallClock::from_offset_ns(0))
                .with_events(events);
            sink.event(&refused(), Role::Proxy);
            sink.event(&established, Role::Proxy);
            sink.decision(&reinstate(1, false));
            std::str::from_utf8(sink.pending())
                .unwrap()
                .lines()
                .map(|l| {
                    let v: serde_json::Value = serde_json::from_str(l).unwrap();
                    v.get("outcome")
                        .and_then(|o| o.as_str())
                        .unwrap_or("decision")
                        .to_owned()
                })
                .collect::<Vec<_>>()
        };
        assert_eq!(
            lines(EventsFilter::All),
            ["refused", "established", "decision"]
        );
        assert_eq!(lines(EventsFilter::Failures), ["refused", "decision"]);
        assert_eq!(lines(EventsFilter::Decisions), ["decision"]);
        assert!(
            lines(EventsFilter::None).is_empty(),
            "none writes no records"
        );
    }

    #[test]
    fn event_lines_wait_while_the_reader_polls_but_not_past_the_bounds() {
        let mut sink = StdoutSink::new(OutputFormat::Json, WallClock::from_offset_ns(0));
        sink.event(&refused(), Role::Proxy);
        let t0 = Instant::now();
        assert!(!sink.due(t0, false), "one event line waits for more");
        assert!(
            !sink.due(t0 + FLUSH_AFTER / 2, false),
            "the wait counts from the first look"
        );
        assert!(sink.due(t0 + FLUSH_AFTER, false), "at most FLUSH_AFTER");
        assert!(sink.due(t0, true), "written at once when the reader sleeps");
        while sink.pending().len() < FLUSH_BYTES {
            sink.event(&refused(), Role::Proxy);
        }
        assert!(sink.due(t0, false), "at most FLUSH_BYTES wait");

        let mut sink = StdoutSink::new(OutputFormat::Json, WallClock::from_offset_ns(0));
        sink.event(&refused(), Role::Proxy);
        sink.decision(&reinstate(1, false));
        assert!(
            sink.due(Instant::now(), false),
            "a decision is written at once"
        );
    }

    #[test]
    fn json_connect_line_has_the_documented_fields() {
        let mut sink = StdoutSink::new(
            OutputFormat::Json,
            WallClock::from_offset_ns(1_700_000_000_000_000_000),
        );
        sink.event(&refused(), Role::Proxy);
        let text = std::str::from_utf8(sink.pending()).unwrap();
        assert!(text.ends_with('\n') && text.lines().count() == 1);
        let v: serde_json::Value = serde_json::from_str(text).unwrap();
        assert_eq!(v["type"], "connect");
        assert_eq!(v["outcome"], "refused");
        assert_eq!(v["ts"], "2023-11-14T22:13:21.000057000Z");
        assert_eq!(v["ktime_ns"], 1_000_057_000u64);
        assert_eq!(v["src"], "[::1]:33850");
        assert_eq!(v["dst"], "[::1]:40002");
        assert_eq!(v["family"], "ipv6");
        assert_eq!(v["role"], "proxy");
        assert_eq!(
            (v["pid"].as_u64(), v["tgid"].as_u64()),
            (Some(123), Some(123))
        );
        assert_eq!(v["comm"], "python3");
        assert_eq!(
            (v["cgroup_id"].as_u64(), v["netns"].as_u64()),
            (Some(7), Some(9))
        );
        assert_eq!(
            (v["syn_retransmits"].as_u64(), v["duration_us"].as_u64()),
            (Some(0), Some(57))
        );
        let id = "ab".repeat(32);
        assert_eq!(v["cgroup"], format!("/system.slice/docker-{id}.scope"));
        assert_eq!(v["container"], id);
        assert!(
            v.get("pod_uid").is_none(),
            "absent when the path names no pod"
        );
        assert_eq!(v["trusted"], false);
    }

    #[test]
    fn a_decision_in_text_mode_is_columns_not_json() {
        let mut sink = StdoutSink::new(OutputFormat::Text, WallClock::from_offset_ns(0));
        sink.decision(&reinstate(30_000, true));
        let text = std::str::from_utf8(sink.pending()).unwrap();
        assert!(
            text.contains("REINSTATE")
                && text.contains("10.0.0.1:80")
                && text.contains("after 30s")
                && text.contains("verified by a probe"),
            "{text}"
        );
        assert!(!text.contains('{'), "not a JSON blob: {text}");
    }

    #[test]
    fn text_line_is_aligned() {
        let mut sink = StdoutSink::new(OutputFormat::Text, WallClock::from_offset_ns(0));
        sink.event(&refused(), Role::Target);
        let text = std::str::from_utf8(sink.pending()).unwrap();
        assert!(
            text.contains("refused") && text.contains("[::1]:33850 -> [::1]:40002"),
            "{text}"
        );
        assert!(
            text.contains("python3") && text.contains("57us retx=0"),
            "{text}"
        );
    }
}
