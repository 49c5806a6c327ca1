//! Decisions as readable columns for people — `connmon run --output text` and
//! `connmon watch` on a terminal — instead of the JSON object: what happened, to which
//! destination, why (reason, failure mode), for how long (the ejection term), on what
//! evidence, triggered by which process, and how fast it was decided.
//!
//! Both render the decision's JSON object (the documented NDJSON), so the two outputs
//! cannot drift apart and fields added later (e.g. `container`) are shown when present.
//! Colours are ANSI SGR codes, used only when [`colour_wanted`] says so: on a terminal,
//! and never with `NO_COLOR` set (<https://no-color.org>).

use std::fmt::Write as _;

use serde_json::Value;

/// Whether to colour output written to a stream that `is_terminal`: yes, unless the
/// `NO_COLOR` variable is set to a non-empty value.
pub fn colour_wanted(is_terminal: bool) -> bool {
    is_terminal && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
}

/// ANSI styles, or empty strings when colour is off.
#[derive(Clone, Copy, Debug)]
pub struct Palette {
    pub reset: &'static str,
    pub red: &'static str,
    pub green: &'static str,
    pub yellow: &'static str,
    pub magenta: &'static str,
    pub dim: &'static str,
    pub bold: &'static str,
}

impl Palette {
    pub fn new(colour: bool) -> Self {
        if colour {
            Palette {
                reset: "\x1b[0m",
                red: "\x1b[31m",
                green: "\x1b[32m",
                yellow: "\x1b[33m",
                magenta: "\x1b[35m",
                dim: "\x1b[2m",
                bold: "\x1b[1m",
            }
        } else {
            Palette {
                reset: "",
                red: "",
                green: "",
                yellow: "",
                magenta: "",
                dim: "",
                bold: "",
            }
        }
    }
}

fn s(v: &Value) -> &str {
    v.as_str().unwrap_or("-")
}

/// `HH:MM:SS.mmm` of an RFC 3339 `ts` (blank when absent).
pub fn clock(ts: &Value) -> &str {
    ts.as_str()
        .and_then(|ts| ts.get(11..23))
        .unwrap_or("            ")
}

/// `850µs`, `12.3ms`, `30.6s`, `5m0s`.
pub fn duration_ms(ms: u64) -> String {
    match ms {
        0..=59_999 if ms.is_multiple_of(1000) => format!("{}s", ms / 1000),
        0..=59_999 => format!("{:.1}s", ms as f64 / 1e3),
        _ => format!("{}m{}s", ms / 60_000, (ms % 60_000) / 1000),
    }
}

fn micros(us: u64) -> String {
    match us {
        0..=999 => format!("{us}µs"),
        1_000..=999_999 => format!("{:.1}ms", us as f64 / 1e3),
        _ => format!("{:.2}s", us as f64 / 1e6),
    }
}

/// `1/1 failed: 1 refused, streak 1` — the destination's record at the decision.
pub fn evidence(e: &Value) -> String {
    let attempts = e["attempts"].as_u64().unwrap_or(0);
    let kinds = ["refused", "timeout", "abandoned", "reset", "unreachable"];
    let failed: u64 = kinds.iter().filter_map(|k| e[*k].as_u64()).sum();
    let mut out = format!("{failed}/{attempts} failed");
    let parts: Vec<String> = kinds
        .iter()
        .filter_map(|k| {
            e[*k]
                .as_u64()
                .filter(|&n| n > 0)
                .map(|n| format!("{n} {k}"))
        })
        .collect();
    if !parts.is_empty() {
        let _ = write!(out, " ({})", parts.join(", "));
    }
    if let Some(n) = e["syn_retransmits"].as_u64().filter(|&n| n > 0) {
        let _ = write!(out, ", {n} SYN retx");
    }
    if let Some(n) = e["streak"].as_u64() {
        let _ = write!(out, ", streak {n}");
    }
    out
}

/// `dst`, with ` netns:N` when the destination is another network namespace's own
/// loopback (decisions and snapshot rows carry `netns` only then; a connect always
/// carries its socket's namespace, so it is not read there).
pub fn dst_label(v: &Value) -> String {
    let dst = v["dst"].as_str().unwrap_or("-");
    match v["netns"].as_u64() {
        Some(netns) if v["type"] != "connect" && v["type"] != "syn_retransmit" => {
            format!("{dst} netns:{netns}")
        }
        _ => dst.to_owned(),
    }
}

/// One line for a decision (`evict`, `reinstate`, `suspect`, `diagnosis`); `None` for any
/// other message type.
pub fn decision_line(v: &Value, p: &Palette) -> Option<String> {
    let t = clock(&v["ts"]);
    let Palette {
        reset,
        red,
        green,
        yellow,
        magenta,
        dim,
        bold,
    } = *p;
    let detect = v["detect_us"]
        .as_u64()
        .map(|us| format!(" {dim}detect {}{reset}", micros(us)))
        .unwrap_or_default();
    let trigger = match (v["trigger"]["comm"].as_str(), v["trigger"]["pid"].as_u64()) {
        (Some(comm), Some(pid)) => format!(" by {comm}/{pid}"),
        _ => String::new(),
    };
    let container = v["container"]
        .as_str()
        .or(v["trigger"]["container"].as_str())
        .map(|c| format!(" [{c}]"))
        .unwrap_or_default();
    let line = match v["type"].as_str()? {
        "evict" => {
            let term = &v["ejection"];
            let until = clock(&term["until"]);
            format!(
                "{dim}{t}{reset} {bold}{red}EVICT    {reset} {:<22} {:<6} {:<15} {:<6} #{} {} until {} {dim}{}{reset}{trigger}{container}{detect}",
                dst_label(v),
                s(&v["role"]),
                s(&v["reason"]),
                v["failure_mode"].as_str().unwrap_or("-"),
                term["count"],
                duration_ms(term["duration_ms"].as_u64().unwrap_or(0)),
                until.get(..8).unwrap_or(until),
                evidence(&v["evidence"]),
            )
        }
        "reinstate" => format!(
            "{dim}{t}{reset} {bold}{green}REINSTATE{reset} {:<22} {:<6} after {}{}{}",
            dst_label(v),
            v["role"].as_str().unwrap_or(""),
            duration_ms(v["ejected_ms"].as_u64().unwrap_or(0)),
            if v["verified"] == true {
                ", verified by a probe"
            } else {
                ""
            },
            if v["early"] == true { " (early)" } else { "" },
        ),
        "suspect" => format!(
            "{dim}{t}{reset} {yellow}SUSPECT  {reset} {:<22} {:<6} {} SYN retransmits{trigger}{container}{detect}",
            dst_label(v),
            v["role"].as_str().unwrap_or(""),
            v["syn_retransmits"],
        ),
        "diagnosis" => format!(
            "{dim}{t}{reset} {magenta}DIAGNOSIS{reset} {:<22} {} {}{container}: {}",
            dst_label(v),
            s(&v["kind"]),
            v["comm"]
                .as_str()
                .map(|c| format!("{c}/{}", v["tgid"]))
                .unwrap_or_default(),
            s(&v["hint"]),
        ),
        _ => return None,
    };
    Some(line)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn evict() -> Value {
        json!({"type":"evict","dst":"198.51.100.44:8080","role":"proxy","reason":"refused","failure_mode":"reject",
            "evidence":{"attempts":1,"refused":1,"timeout":0,"abandoned":0,"reset":0,"unreachable":0,"syn_retransmits":0,"streak":1},
            "ejection":{"count":1,"duration_ms":30568,"until":"2026-11-24T00:52:02.748128954Z"},
            "trigger":{"ktime_ns":1262563393371u64,"pid":28753,"comm":"python3"},"detect_us":848,
            "ts":"2026-11-24T00:51:32.179985242Z"})
    }

    #[test]
    fn an_eviction_is_columns_not_json() {
        let line = decision_line(&evict(), &Palette::new(false)).unwrap();
        assert_eq!(
            line,
            "00:51:32.179 EVICT     198.51.100.44:8080     proxy  refused         reject #1 30.6s until 00:52:02 1/1 failed (1 refused), streak 1 by python3/28753 detect 848µs"
        );
        assert!(!line.contains('{'), "{line}");
    }

    #[test]
    fn colour_only_when_asked_and_container_when_present() {
        let mut v = evict();
        let plain = decision_line(&v, &Palette::new(false)).unwrap();
        assert!(!plain.contains('\x1b'));
        let coloured = decision_line(&v, &Palette::new(true)).unwrap();
        assert!(coloured.contains("\x1b[31m"));
        v["container"] = json!("scraper-7f9c");
        assert!(
            decision_line(&v, &Palette::new(false))
                .unwrap()
                .contains("[scraper-7f9c]")
        );
        assert!(!colour_wanted(false));
    }

    #[test]
    fn other_decisions_and_non_decisions() {
        let p = Palette::new(false);
        let r = json!({"type":"reinstate","dst":"10.0.0.1:80","ejected_ms":30571,"ts":"2026-11-24T00:52:02.750000000Z"});
        assert_eq!(
            decision_line(&r, &p).unwrap(),
            "00:52:02.750 REINSTATE 10.0.0.1:80                   after 30.6s"
        );
        assert!(decision_line(&json!({"type":"connect"}), &p).is_none());
        assert_eq!(duration_ms(300_000), "5m0s");
        assert_eq!(duration_ms(30_000), "30s");
    }
}
