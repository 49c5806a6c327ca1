//! The stdout sink: one NDJSON object per line (the stable, documented format) or
//! aligned text for people. Lines are rendered into a buffer and written once per
//! ring-buffer drain, so a burst costs one write.

use std::{fmt::Write as _, io::Write as _, net::SocketAddr};

use serde::Serialize;

pub use crate::config::{EventsFilter, OutputFormat};
use crate::{
    bus::json,
    clock::WallClock,
    policy::{decision::Decision, pool::Role},
    source::event::{Attribution, Comm, ConnectRecord, KernelEvent, SynRetransmitRecord},
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

/// Renders events into a buffer; [`StdoutSink::flush`] writes it out.
pub struct StdoutSink {
    format: OutputFormat,
    /// Colours for text lines: only on a terminal, never with `NO_COLOR`.
    palette: super::text::Palette,
    clock: WallClock,
    buf: Vec<u8>,
    out: std::io::Stdout,
    events: EventsFilter,
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
                let mark = if probe { " probe" } else { "" };
                let extra = format!(
                    "{}us retx={}{}{mark}",
                    c.duration_us(),
                    c.syn_retransmits,
                    origin_suffix(&c.who)
                );
                self.text_line(
                    c.ktime_ns,
                    c.outcome.as_str(),
                    c.src,
                    c.dst,
                    c.who.tgid,
                    &c.who.comm,
                    &extra,
                );
            }
        }
    }

    fn syn_retransmit(&mut self, r: &SynRetransmitRecord, role: Role, probe: bool) {
        let since_syn_us = r.ktime_ns.saturating_sub(r.start_ns) / 1_000;
        match self.format {
            OutputFormat::Json => {
                json::syn_retransmit(&mut self.buf, r, role, probe, &self.clock);
                self.buf.push(b'\n');
            }
            OutputFormat::Text => {
                let mark = if probe { " probe" } else { "" };
                let extra = format!(
                    "{since_syn_us}us retx={}{}{mark}",
                    r.retransmits,
                    origin_suffix(&r.who)
                );
                self.text_line(
                    r.ktime_ns,
                    "syn_retransmit",
                    r.src,
                    r.dst,
                    r.who.tgid,
                    &r.who.comm,
                    &extra,
                );
            }
        }
    }

    /// Any serializable line (stats, decisions) in JSON mode; `text` in text mode.
    pub fn record<T: Serialize>(&mut self, value: &T, text: impl FnOnce() -> String) {
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

    #[expect(clippy::too_many_arguments, reason = "one column each")]
    fn text_line(
        &mut self,
        ktime_ns: u64,
        what: &str,
        src: SocketAddr,
        dst: SocketAddr,
        tgid: u32,
        comm: &Comm,
        extra: &str,
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
        let _ = writeln!(
            line,
            "{time:<15}  {colour}{what:<14}{reset} {src:>24} -> {dst:<24} {tgid:>7} {comm:<16} {extra}",
            comm = comm.as_str()
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
        if self.buf.is_empty() {
            return Ok(());
        }
        let mut out = self.out.lock();
        out.write_all(&self.buf)?;
        out.flush()?;
        self.buf.clear();
        Ok(())
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
    use crate::source::event::{Attribution, Family, Outcome};

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
            sink.decision(&Decision::Reinstate(
                crate::policy::decision::Reinstatement {
                    dst: "10.0.0.1:80".parse().unwrap(),
                    netns: None,
                    ejected_ms: 1,
                    verified: false,
                    early: false,
                    ts: None,
                    origin: None,
                },
            ));
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
        sink.decision(&Decision::Reinstate(
            crate::policy::decision::Reinstatement {
                dst: "10.0.0.1:80".parse().unwrap(),
                netns: None,
                ejected_ms: 30_000,
                verified: true,
                early: false,
                origin: None,
                ts: None,
            },
        ));
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
