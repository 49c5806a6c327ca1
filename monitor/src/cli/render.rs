//! Human renderings for the client subcommands: one coloured line per event for
//! `connmon watch` on a terminal, and the aligned destination table of `connmon status`.
//! They read the protocol's JSON objects, so anything the agent adds later still prints.

use std::fmt::Write as _;

use serde_json::Value;

use crate::sinks::text::{Palette, decision_line, dst_label};

fn s(v: &Value) -> &str {
    v.as_str().unwrap_or("-")
}

/// ` container <12 hex>` (or ` cgroup <path>`) and ` untrusted`, as they apply.
fn origin(v: &Value, palette: &Palette) -> String {
    let mut out = String::new();
    if let Some(id) = v["container"].as_str() {
        let _ = write!(out, " container {}", id.get(..12).unwrap_or(id));
    } else if let Some(path) = v["cgroup"].as_str() {
        let _ = write!(out, " cgroup {path}");
    }
    if v["trusted"] == false {
        let _ = write!(out, " {}untrusted{}", palette.yellow, palette.reset);
    }
    out
}

/// One line for a terminal, coloured by what happened when `palette` has colours
/// (decisions as in `connmon run --output text`).
pub fn pretty(v: &Value, palette: &Palette) -> String {
    if let Some(line) = decision_line(v, palette) {
        return line;
    }
    let Palette {
        reset,
        red,
        green,
        yellow,
        dim,
        ..
    } = *palette;
    let t = crate::sinks::text::clock(&v["ts"]);
    match v["type"].as_str().unwrap_or_default() {
        "connect" => {
            let outcome = s(&v["outcome"]);
            let colour = if outcome == "established" { green } else { red };
            format!(
                "{dim}{t}{reset} connect   {colour}{outcome:<11}{reset} {:<22} {dim}{:<6}{reset} {:>8} {}/{} errno {}{}",
                s(&v["dst"]),
                s(&v["role"]),
                v["duration_us"]
                    .as_u64()
                    .map_or("-".into(), |us| format!("{us}µs")),
                s(&v["comm"]),
                v["tgid"],
                v["errno"],
                origin(v, palette)
            )
        }
        "syn_retransmit" => format!(
            "{dim}{t}{reset} {yellow}SYN retx{reset}  #{} {:<22} {dim}{:<6}{reset} after {}µs {}/{}{}",
            v["retransmits"],
            s(&v["dst"]),
            s(&v["role"]),
            v["since_syn_us"],
            s(&v["comm"]),
            v["tgid"],
            origin(v, palette)
        ),
        "stats" => format!(
            "{dim}{t} stats events={} refused={} timeout={} lost_events={}{reset}",
            v["events"], v["outcomes"]["refused"], v["outcomes"]["timeout"], v["lost_events"]
        ),
        "lagged" => format!(
            "{yellow}missed {} events: this terminal read too slowly{reset}",
            v["missed"]
        ),
        _ => v.to_string(),
    }
}

fn micros(v: &Value) -> String {
    match v.as_u64() {
        Some(us) if us >= 1_000_000 => format!("{:.2}s", us as f64 / 1e6),
        Some(us) if us >= 1_000 => format!("{:.1}ms", us as f64 / 1e3),
        Some(us) => format!("{us}µs"),
        None => "-".into(),
    }
}

/// `connmon status`: a header line, then one row per destination.
pub fn status_table(snapshot: &Value) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "tracked: {}, ejected: {} (at most {} at once), local outage: {}",
        snapshot["tracked"],
        snapshot["ejected"],
        snapshot["max_ejected"],
        if snapshot["local_outage"] == true {
            "yes"
        } else {
            "no"
        }
    );
    let header = [
        "DESTINATION",
        "ROLE",
        "STATE",
        "ATTEMPTS",
        "FAIL%",
        "P50",
        "P99",
        "TOP CGROUP",
        "EJECTED UNTIL",
        "ORIGIN",
    ];
    let mut rows: Vec<[String; 10]> = vec![header.map(String::from)];
    for d in snapshot["destinations"].as_array().into_iter().flatten() {
        let top = &d["top_cgroups"][0];
        let top_cgroup = match (top["container"].as_str(), top["cgroup"].as_str()) {
            (Some(id), _) => format!("container {}", id.get(..12).unwrap_or(id)),
            (None, Some(path)) => path.to_owned(),
            (None, None) => top["cgroup_id"]
                .as_u64()
                .map_or_else(|| "-".to_owned(), |id| id.to_string()),
        };
        rows.push([
            dst_label(d),
            s(&d["role"]).to_owned(),
            s(&d["state"]).to_owned(),
            d["attempts"].to_string(),
            super::top::failure_ratio(d).map_or("-".into(), |r| format!("{:.0}%", r * 100.0)),
            micros(&d["handshake_p50_us"]),
            micros(&d["handshake_p99_us"]),
            top_cgroup,
            d["ejected_until"].as_str().unwrap_or("-").to_owned(),
            // `reason: fleet`: the host(s) whose verdict it is.
            d["origin"].as_str().unwrap_or("-").to_owned(),
        ]);
    }
    let widths: Vec<usize> = (0..10)
        .map(|c| rows.iter().map(|r| r[c].chars().count()).max().unwrap_or(0))
        .collect();
    for row in &rows {
        let mut line = String::new();
        for (c, cell) in row.iter().enumerate() {
            let pad = widths[c] - cell.chars().count();
            // Numbers right-aligned, text left-aligned.
            if (3..=6).contains(&c) {
                line.push_str(&" ".repeat(pad));
                line.push_str(cell);
            } else {
                line.push_str(cell);
                if c + 1 < row.len() {
                    line.push_str(&" ".repeat(pad));
                }
            }
            if c + 1 < row.len() {
                line.push_str("  ");
            }
        }
        let _ = writeln!(out, "{}", line.trim_end());
    }
    if let Some(untrusted) = snapshot["untrusted_events"].as_u64() {
        let _ = writeln!(
            out,
            "evidence: trust {}, untrusted events (reported, never counted): {untrusted}",
            s(&snapshot["evidence"]["trust"])
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn the_status_table_aligns_columns() {
        let snap = json!({"tracked": 2, "ejected": 1, "max_ejected": 1, "local_outage": false, "destinations": [
            {"dst": "10.0.0.1:80", "role": "proxy", "state": "ejected", "attempts": 12, "failure_ratio": 0.5,
             "handshake_p50_us": 1500, "handshake_p99_us": null, "ejected_until": "2026-11-24T01:00:00Z"},
            {"dst": "[2001:db8::1]:3128", "role": "target", "state": "healthy", "attempts": 3, "failure_ratio": null, "outcomes": {"established": 3},
             "handshake_p50_us": 80, "handshake_p99_us": 2_500_000, "ejected_until": null}
        ]});
        let table = status_table(&snap);
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(
            lines[0],
            "tracked: 2, ejected: 1 (at most 1 at once), local outage: no"
        );
        assert!(
            lines[1].starts_with(
                "DESTINATION         ROLE    STATE    ATTEMPTS  FAIL%    P50    P99  TOP CGROUP  EJECTED UNTIL"
            ),
            "{table}"
        );
        assert!(lines[2].starts_with("10.0.0.1:80         proxy   ejected        12    50%  1.5ms      -  -           2026-11-24T01:00:00Z"), "{table}");
        assert!(
            lines[3].starts_with(
                "[2001:db8::1]:3128  target  healthy         3     0%   80µs  2.50s  -           -"
            ),
            "{table}"
        );
    }

    #[test]
    fn the_status_table_names_namespace_container_and_untrusted_events() {
        let snap = json!({"tracked": 1, "ejected": 0, "max_ejected": 1, "local_outage": false,
            "untrusted_events": 7, "evidence": {"trust": "rootful", "netns": [], "cgroups": []}, "destinations": [
            {"dst": "127.0.0.1:8080", "netns": 4026532301u64, "role": "target", "state": "healthy", "attempts": 1,
             "failure_ratio": 1.0, "handshake_p50_us": null, "handshake_p99_us": null, "ejected_until": null,
             "top_cgroups": [{"cgroup_id": 9, "cgroup": "/system.slice/docker-ab.scope",
                              "container": "0123456789abcdef", "connects": 1}]}
        ]});
        let table = status_table(&snap);
        let lines: Vec<&str> = table.lines().collect();
        assert!(
            lines[2].starts_with("127.0.0.1:8080 netns:4026532301")
                && lines[2].contains("container 0123456789ab")
                && lines[1].ends_with("TOP CGROUP              EJECTED UNTIL  ORIGIN"),
            "{table}"
        );
        assert_eq!(
            lines[3],
            "evidence: trust rootful, untrusted events (reported, never counted): 7"
        );
    }

    #[test]
    fn pretty_lines_name_the_container_and_untrusted_connects() {
        let line = pretty(
            &json!({"type": "connect", "outcome": "refused", "dst": "10.0.0.1:80", "netns": 5,
            "container": "0123456789abcdef0123", "trusted": false}),
            &Palette::new(false),
        );
        assert!(
            line.contains("10.0.0.1:80 ") && !line.contains("netns:5"),
            "{line}"
        );
        assert!(
            line.contains("container 0123456789ab") && line.contains("untrusted"),
            "{line}"
        );
    }

    #[test]
    fn pretty_lines_name_the_destination() {
        let line = pretty(
            &json!({"type": "evict", "ts": "2026-11-24T00:40:33.989297959Z", "dst": "10.0.0.1:80", "role": "proxy",
            "reason": "refused", "ejection": {"duration_ms": 30000, "until": "x"}, "evidence": {"attempts": 1}}),
            &Palette::new(false),
        );
        assert!(
            line.contains("00:40:33.989") && line.contains("EVICT") && line.contains("10.0.0.1:80"),
            "{line}"
        );
    }
}
