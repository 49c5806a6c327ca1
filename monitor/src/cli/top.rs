//! `connmon top`: a live full-screen view of a running agent, like `htop` for the
//! destinations connmon tracks.
//!
//! Two connections to the agent's socket: one asks for a `snapshot` every `--interval`
//! (the table, and connects/s and failures/s from the difference of two snapshots), the
//! other subscribes to `evict`, `reinstate`, `diagnosis` and `stats` (evictions, lost
//! events, the guard) on a reader thread. Rows are destinations sorted by failures; keys
//! change the sort and the filters. The layout fits 80×24 and plain terminals over SSH
//! (no mouse, no 256-colour assumptions). When the agent is not running, or goes away,
//! the screen says so and keeps retrying.

use std::{
    collections::VecDeque,
    path::PathBuf,
    sync::mpsc,
    time::{Duration, Instant},
};

use clap::Args;
use crossterm::event::{self, Event, KeyCode, KeyEventKind, KeyModifiers};
use ratatui::{
    Frame,
    layout::{Constraint, Layout},
    style::{Color, Modifier, Style},
    text::{Line, Span},
    widgets::{Paragraph, Row, Table, Wrap},
};
use serde_json::Value;

use super::{Client, SocketArg};
use crate::protocol::{Request, Snapshot, Subscribe, Topic};

/// `connmon top`.
#[derive(Args, Debug)]
pub struct TopArgs {
    #[command(flatten)]
    pub socket: SocketArg,
    /// How often the view is refreshed (e.g. 500ms, 2s).
    #[arg(long, default_value = "1s", value_parser = crate::policy::config::parse_duration)]
    pub interval: Duration,
    /// Start with only pool members shown (key `p` toggles).
    #[arg(long)]
    pub proxies_only: bool,
    /// Start with only failing or ejected destinations shown (key `f` toggles).
    #[arg(long)]
    pub failing_only: bool,
    /// Start sorted by this column (key `s` cycles).
    #[arg(long, value_enum, default_value_t = SortKey::Failures)]
    pub sort: SortKey,
}

/// What the rows are sorted by (largest first, except the address).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum SortKey {
    Failures,
    FailureRatio,
    Attempts,
    P99,
    Destination,
}

impl SortKey {
    fn next(self) -> Self {
        match self {
            SortKey::Failures => SortKey::FailureRatio,
            SortKey::FailureRatio => SortKey::Attempts,
            SortKey::Attempts => SortKey::P99,
            SortKey::P99 => SortKey::Destination,
            SortKey::Destination => SortKey::Failures,
        }
    }

    fn label(self) -> &'static str {
        match self {
            SortKey::Failures => "failures",
            SortKey::FailureRatio => "fail%",
            SortKey::Attempts => "attempts",
            SortKey::P99 => "p99",
            SortKey::Destination => "destination",
        }
    }
}

/// Filters and sort order, shared by `connmon top` and `connmon status`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct View {
    pub sort: SortKey,
    pub proxies_only: bool,
    pub failing_only: bool,
}

/// Failed connects of a destination (every outcome but `established`).
pub fn failures(d: &Value) -> u64 {
    let o = &d["outcomes"];
    ["refused", "reset", "timeout", "abandoned", "unreachable"]
        .iter()
        .filter_map(|k| o[*k].as_u64())
        .sum()
}

/// The failure ratio to show: over the ratio window when it has attempts, else over the
/// destination's whole record. (An ejection clears the window — the evidence is spent —
/// so an ejected destination that failed 1 of 1 would otherwise show no ratio at all.)
pub fn failure_ratio(d: &Value) -> Option<f64> {
    if let Some(r) = d["failure_ratio"].as_f64() {
        return Some(r);
    }
    let attempts = d["attempts"].as_u64().filter(|&a| a > 0)?;
    Some(failures(d) as f64 / attempts as f64)
}

/// The destinations of a snapshot that pass `view`'s filters, in its order.
pub fn select<'a>(snapshot: &'a Value, view: &View) -> Vec<&'a Value> {
    let mut rows = filter(snapshot, view);
    sort(&mut rows, view.sort);
    rows
}

/// The destinations that pass `view`'s filters, in the agent's order (by address).
pub fn filter<'a>(snapshot: &'a Value, view: &View) -> Vec<&'a Value> {
    snapshot["destinations"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|d| !view.proxies_only || d["role"] == "proxy")
        .filter(|d| !view.failing_only || failures(d) > 0 || d["state"] != "healthy")
        .collect()
}

/// Sorts rows by `key`, largest first (addresses ascending).
pub fn sort(rows: &mut [&Value], key: SortKey) {
    let dst = |d: &Value| {
        let text = d["dst"].as_str().unwrap_or_default();
        (text.parse::<std::net::SocketAddr>().ok(), text.to_owned())
    };
    match key {
        SortKey::Failures => rows.sort_by(|a, b| {
            (failures(b), b["state"] == "ejected")
                .cmp(&(failures(a), a["state"] == "ejected"))
                .then_with(|| dst(a).cmp(&dst(b)))
        }),
        SortKey::FailureRatio => rows.sort_by(|a, b| {
            failure_ratio(b)
                .unwrap_or(-1.0)
                .total_cmp(&failure_ratio(a).unwrap_or(-1.0))
                .then_with(|| failures(b).cmp(&failures(a)))
        }),
        SortKey::Attempts => rows.sort_by_key(|d| std::cmp::Reverse(d["attempts"].as_u64())),
        SortKey::P99 => rows.sort_by_key(|d| std::cmp::Reverse(d["handshake_p99_us"].as_u64())),
        SortKey::Destination => rows.sort_by_key(|d| dst(d)),
    }
}

/// 12, 1.2k, 12k, 1.2M: counts in at most 5 characters.
pub fn compact(n: u64) -> String {
    match n {
        0..=9_999 => n.to_string(),
        10_000..=999_999 => format!("{}k", n / 1_000),
        _ if n < 10_000_000 => format!("{:.1}M", n as f64 / 1e6),
        _ => format!("{}M", n / 1_000_000),
    }
}

/// A duration in microseconds in at most 6 characters.
pub fn micros(v: &Value) -> String {
    match v.as_u64() {
        Some(us) if us >= 10_000_000 => format!("{}s", us / 1_000_000),
        Some(us) if us >= 1_000_000 => format!("{:.1}s", us as f64 / 1e6),
        Some(us) if us >= 10_000 => format!("{}ms", us / 1_000),
        Some(us) if us >= 1_000 => format!("{:.1}ms", us as f64 / 1e3),
        Some(us) => format!("{us}µs"),
        None => "-".into(),
    }
}

/// Seconds left until an RFC 3339 time, compact (`42s`, `9m`, `2h`).
fn remaining(until: &Value, now: chrono::DateTime<chrono::Utc>) -> String {
    let Some(until) = until
        .as_str()
        .and_then(|s| chrono::DateTime::parse_from_rfc3339(s).ok())
    else {
        return String::new();
    };
    let secs = (until.with_timezone(&chrono::Utc) - now)
        .num_seconds()
        .max(0);
    match secs {
        0..=599 => format!("{secs}s"),
        600..=35_999 => format!("{}m", secs / 60),
        _ => format!("{}h", secs / 3600),
    }
}

/// What the reader thread passes on from the subscription.
enum Feed {
    Message(Value),
    Down,
}

/// Reads the subscription, reconnecting every second while the agent is away.
fn spawn_feed(path: PathBuf, tx: mpsc::Sender<Feed>) {
    std::thread::spawn(move || {
        loop {
            if let Ok(mut client) = Client::connect(&path)
                && client
                    .request(&Request::Subscribe(Subscribe {
                        types: Some(vec![
                            Topic::Evict,
                            Topic::Reinstate,
                            Topic::Diagnosis,
                            Topic::Stats,
                        ]),
                        roles: None,
                    }))
                    .is_ok()
            {
                while let Ok(Some(msg)) = client.next_message() {
                    if tx.send(Feed::Message(msg)).is_err() {
                        return;
                    }
                }
            }
            if tx.send(Feed::Down).is_err() {
                return;
            }
            std::thread::sleep(Duration::from_secs(1));
        }
    });
}

/// Everything on screen.
struct State {
    socket: PathBuf,
    view: View,
    paused: bool,
    snapshot: Option<Value>,
    /// Why there is no fresh snapshot (agent not running, …).
    error: Option<String>,
    previous: Option<(Instant, u64, u64)>,
    connects_per_s: f64,
    failures_per_s: f64,
    /// Times of evictions seen in the last minute, and the total since `top` started.
    evictions: VecDeque<Instant>,
    evictions_total: u64,
    lost_events: Option<u64>,
    last_guard: Option<String>,
    last_decision: Option<String>,
    scroll: usize,
}

impl State {
    fn totals(snapshot: &Value) -> (u64, u64) {
        let mut attempts = 0;
        let mut failed = 0;
        for d in snapshot["destinations"].as_array().into_iter().flatten() {
            attempts += d["attempts"].as_u64().unwrap_or(0);
            failed += failures(d);
        }
        (attempts, failed)
    }

    fn on_snapshot(&mut self, snapshot: Value) {
        let now = Instant::now();
        let (attempts, failed) = Self::totals(&snapshot);
        if let Some((then, a0, f0)) = self.previous {
            let dt = now.duration_since(then).as_secs_f64().max(1e-3);
            self.connects_per_s = attempts.saturating_sub(a0) as f64 / dt;
            self.failures_per_s = failed.saturating_sub(f0) as f64 / dt;
        }
        self.previous = Some((now, attempts, failed));
        self.snapshot = Some(snapshot);
        self.error = None;
    }

    fn on_feed(&mut self, feed: Feed) {
        let Feed::Message(msg) = feed else {
            return;
        };
        let hhmmss = msg["ts"].as_str().and_then(|t| t.get(11..19)).unwrap_or("");
        match msg["type"].as_str() {
            Some("evict") => {
                self.evictions.push_back(Instant::now());
                self.evictions_total += 1;
                self.last_decision = Some(format!(
                    "{hhmmss} EVICT {} ({})",
                    msg["dst"].as_str().unwrap_or("-"),
                    msg["reason"].as_str().unwrap_or("-")
                ));
            }
            Some("reinstate") => {
                self.last_decision = Some(format!(
                    "{hhmmss} REINSTATE {}",
                    msg["dst"].as_str().unwrap_or("-")
                ));
            }
            Some("diagnosis") => {
                let kind = msg["kind"].as_str().unwrap_or("-");
                if kind == "ejection_guard" || kind == "local_outage" {
                    self.last_guard = Some(format!(
                        "{hhmmss} {kind} {}",
                        msg["dst"].as_str().unwrap_or("")
                    ));
                }
            }
            Some("stats") => self.lost_events = msg["lost_events"].as_u64(),
            _ => {}
        }
    }

    fn evictions_last_minute(&mut self) -> usize {
        while self
            .evictions
            .front()
            .is_some_and(|t| t.elapsed() > Duration::from_secs(60))
        {
            self.evictions.pop_front();
        }
        self.evictions.len()
    }
}

/// `connmon top`: runs until `q`, Esc or Ctrl-C.
pub fn top(args: &TopArgs) -> anyhow::Result<()> {
    use std::io::IsTerminal as _;
    if !std::io::stdout().is_terminal() {
        anyhow::bail!(
            "connmon top needs a terminal; use `connmon status` (or `connmon status --json`) in scripts"
        );
    }
    let mut state = State {
        socket: args.socket.socket.clone(),
        view: View {
            sort: args.sort,
            proxies_only: args.proxies_only,
            failing_only: args.failing_only,
        },
        paused: false,
        snapshot: None,
        error: None,
        previous: None,
        connects_per_s: 0.0,
        failures_per_s: 0.0,
        evictions: VecDeque::new(),
        evictions_total: 0,
        lost_events: None,
        last_guard: None,
        last_decision: None,
        scroll: 0,
    };
    let (tx, feed) = mpsc::channel();
    spawn_feed(args.socket.socket.clone(), tx);
    let mut terminal = ratatui::try_init()?;
    let result = run_loop(&mut terminal, &mut state, &feed, args.interval);
    ratatui::restore();
    result
}

fn refresh(client: &mut Option<Client>, state: &mut State) {
    if client.is_none() {
        match Client::connect(&state.socket) {
            Ok(c) => *client = Some(c),
            Err(err) => {
                state.error = Some(err.to_string());
                state.previous = None;
                return;
            }
        }
    }
    let Some(c) = client.as_mut() else { return };
    match c.request(&Request::Snapshot(Snapshot {})) {
        Ok(snapshot) => state.on_snapshot(snapshot),
        Err(err) => {
            *client = None;
            state.previous = None;
            state.error = Some(format!(
                "{err}: the agent at {} went away; retrying",
                state.socket.display()
            ));
        }
    }
}

fn run_loop(
    terminal: &mut ratatui::DefaultTerminal,
    state: &mut State,
    feed: &mpsc::Receiver<Feed>,
    interval: Duration,
) -> anyhow::Result<()> {
    let mut client: Option<Client> = None;
    let mut next_refresh = Instant::now();
    loop {
        while let Ok(msg) = feed.try_recv() {
            if !state.paused {
                state.on_feed(msg);
            }
        }
        if !state.paused && Instant::now() >= next_refresh {
            refresh(&mut client, state);
            next_refresh = Instant::now() + interval;
        }
        terminal.draw(|frame| draw(frame, state))?;
        let wait = next_refresh
            .saturating_duration_since(Instant::now())
            .min(Duration::from_millis(250));
        if event::poll(wait)? {
            match event::read()? {
                Event::Key(key) if key.kind != KeyEventKind::Release => match key.code {
                    KeyCode::Char('q') | KeyCode::Esc => return Ok(()),
                    KeyCode::Char('c') if key.modifiers.contains(KeyModifiers::CONTROL) => {
                        return Ok(());
                    }
                    KeyCode::Char('s') => {
                        state.view.sort = state.view.sort.next();
                        state.scroll = 0;
                    }
                    KeyCode::Char('p') => {
                        state.view.proxies_only = !state.view.proxies_only;
                        state.scroll = 0;
                    }
                    KeyCode::Char('f') => {
                        state.view.failing_only = !state.view.failing_only;
                        state.scroll = 0;
                    }
                    KeyCode::Char(' ') => {
                        state.paused = !state.paused;
                        state.previous = None;
                    }
                    KeyCode::Down | KeyCode::Char('j') => state.scroll += 1,
                    KeyCode::Up | KeyCode::Char('k') => {
                        state.scroll = state.scroll.saturating_sub(1)
                    }
                    KeyCode::PageDown => state.scroll += 10,
                    KeyCode::PageUp => state.scroll = state.scroll.saturating_sub(10),
                    _ => {}
                },
                _ => {}
            }
        }
    }
}

fn draw(frame: &mut Frame, state: &mut State) {
    let [header, table, footer] = Layout::vertical([
        Constraint::Length(4),
        Constraint::Min(3),
        Constraint::Length(1),
    ])
    .areas(frame.area());
    let bold = Style::new().add_modifier(Modifier::BOLD);
    let red = Style::new().fg(Color::Red).add_modifier(Modifier::BOLD);
    let dim = Style::new().add_modifier(Modifier::DIM);

    let evictions_minute = state.evictions_last_minute();
    let mut lines = Vec::new();
    let status = if state.paused {
        Span::styled(" PAUSED ", Style::new().add_modifier(Modifier::REVERSED))
    } else {
        Span::raw("")
    };
    lines.push(Line::from(vec![
        Span::styled("connmon top", bold),
        Span::raw(format!(" — {}  ", state.socket.display())),
        status,
    ]));
    match (&state.snapshot, &state.error) {
        (_, Some(err)) => {
            lines.push(Line::from(Span::styled(err.clone(), red)));
            lines.push(Line::from(Span::styled(
                "retrying every second; q quits",
                dim,
            )));
        }
        (Some(snap), None) => {
            lines.push(Line::from(format!(
                "connects/s {:>7.1}   failures/s {:>6.1}   evictions {} last min, {} total",
                state.connects_per_s, state.failures_per_s, evictions_minute, state.evictions_total
            )));
            let outage = snap["local_outage"] == true;
            let mut guard = vec![Span::raw(format!(
                "tracked {}   ejected {}/{} max   lost events {}   guard ",
                snap["tracked"],
                snap["ejected"],
                snap["max_ejected"],
                state
                    .lost_events
                    .map_or_else(|| "-".to_owned(), |n| n.to_string()),
            ))];
            if outage {
                guard.push(Span::styled("LOCAL OUTAGE (evictions held)", red));
            } else if snap["ejected"].as_u64() >= snap["max_ejected"].as_u64()
                && snap["ejected"].as_u64() > Some(0)
            {
                guard.push(Span::styled("at limit", red));
            } else {
                guard.push(Span::raw("ok"));
            }
            lines.push(Line::from(guard));
            let last = state
                .last_guard
                .iter()
                .chain(state.last_decision.iter())
                .cloned()
                .collect::<Vec<_>>()
                .join("   ");
            lines.push(Line::from(Span::styled(last, dim)));
        }
        (None, None) => lines.push(Line::from("connecting…")),
    }
    frame.render_widget(Paragraph::new(lines).wrap(Wrap { trim: true }), header);

    if let Some(snap) = &state.snapshot {
        let rows = select(snap, &state.view);
        let with_container = rows.iter().any(|d| d["container"].is_string());
        let visible = usize::from(table.height.saturating_sub(1));
        state.scroll = state.scroll.min(rows.len().saturating_sub(visible));
        let now = chrono::Utc::now();
        let body = rows
            .iter()
            .skip(state.scroll)
            .take(visible)
            .map(|d| destination_row(d, now, with_container));
        let mut titles = vec![
            "DESTINATION",
            "ROLE",
            "STATE",
            "ATT",
            "FAIL%",
            "P50",
            "P99",
            "REF",
            "TMO",
            "ABN",
            "EJECT",
        ];
        let mut widths = vec![
            Constraint::Min(16),
            Constraint::Length(6),
            Constraint::Length(9),
            Constraint::Length(5),
            Constraint::Length(5),
            Constraint::Length(6),
            Constraint::Length(6),
            Constraint::Length(4),
            Constraint::Length(4),
            Constraint::Length(4),
            Constraint::Length(5),
        ];
        if with_container {
            titles.push("CONTAINER");
            widths.push(Constraint::Min(10));
        }
        let table_widget = Table::new(body, widths)
            .header(Row::new(titles).style(Style::new().add_modifier(Modifier::REVERSED)))
            .column_spacing(1);
        frame.render_widget(table_widget, table);
    }

    let filters = format!(
        "sort:{} {}{}",
        state.view.sort.label(),
        if state.view.proxies_only {
            "[proxies] "
        } else {
            ""
        },
        if state.view.failing_only {
            "[failing] "
        } else {
            ""
        },
    );
    frame.render_widget(
        Paragraph::new(Line::from(vec![
            Span::styled("q", bold),
            Span::raw(" quit "),
            Span::styled("s", bold),
            Span::raw(" sort "),
            Span::styled("p", bold),
            Span::raw(" proxies "),
            Span::styled("f", bold),
            Span::raw(" failing "),
            Span::styled("space", bold),
            Span::raw(" pause  "),
            Span::styled(filters, dim),
        ])),
        footer,
    );
}

fn destination_row(d: &Value, now: chrono::DateTime<chrono::Utc>, container: bool) -> Row<'static> {
    let state = d["state"].as_str().unwrap_or("-").to_owned();
    let style = match state.as_str() {
        "ejected" => Style::new().fg(Color::Red).add_modifier(Modifier::BOLD),
        "probation" | "suspect" => Style::new().fg(Color::Yellow),
        _ if failures(d) > 0 => Style::new().fg(Color::Red),
        _ => Style::new(),
    };
    let o = &d["outcomes"];
    let count = |v: &Value| compact(v.as_u64().unwrap_or(0));
    let mut cells = vec![
        d["dst"].as_str().unwrap_or("-").to_owned(),
        d["role"].as_str().unwrap_or("-").to_owned(),
        state,
        count(&d["attempts"]),
        failure_ratio(d).map_or("-".into(), |r| format!("{:.0}%", r * 100.0)),
        micros(&d["handshake_p50_us"]),
        micros(&d["handshake_p99_us"]),
        count(&o["refused"]),
        count(&o["timeout"]),
        count(&o["abandoned"]),
        remaining(&d["ejected_until"], now),
    ];
    if container {
        cells.push(d["container"].as_str().unwrap_or("").to_owned());
    }
    Row::new(cells).style(style)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn snap() -> Value {
        json!({"destinations": [
            {"dst": "10.0.0.1:80", "role": "proxy", "state": "healthy", "attempts": 10,
             "outcomes": {"established": 10}, "failure_ratio": 0.0},
            {"dst": "10.0.0.2:80", "role": "proxy", "state": "ejected", "attempts": 1,
             "outcomes": {"refused": 1}, "failure_ratio": null},
            {"dst": "10.0.0.3:80", "role": "target", "state": "healthy", "attempts": 4,
             "outcomes": {"established": 1, "timeout": 3}, "failure_ratio": 0.75},
        ]})
    }

    fn dsts(rows: &[&Value]) -> Vec<String> {
        rows.iter()
            .map(|d| d["dst"].as_str().unwrap().to_owned())
            .collect()
    }

    #[test]
    fn an_ejected_destination_that_failed_1_of_1_shows_100_percent() {
        let s = snap();
        assert_eq!(failure_ratio(&s["destinations"][1]), Some(1.0));
        assert_eq!(
            failure_ratio(&s["destinations"][2]),
            Some(0.75),
            "the window ratio wins when there is one"
        );
    }

    #[test]
    fn rows_sort_by_failures_and_filter_by_role_and_failing() {
        let s = snap();
        let mut view = View {
            sort: SortKey::Failures,
            proxies_only: false,
            failing_only: false,
        };
        assert_eq!(
            dsts(&select(&s, &view)),
            ["10.0.0.3:80", "10.0.0.2:80", "10.0.0.1:80"]
        );
        view.sort = SortKey::FailureRatio;
        assert_eq!(
            dsts(&select(&s, &view)),
            ["10.0.0.2:80", "10.0.0.3:80", "10.0.0.1:80"]
        );
        view.proxies_only = true;
        assert_eq!(dsts(&select(&s, &view)), ["10.0.0.2:80", "10.0.0.1:80"]);
        view.failing_only = true;
        assert_eq!(dsts(&select(&s, &view)), ["10.0.0.2:80"]);
        view = View {
            sort: SortKey::Attempts,
            proxies_only: false,
            failing_only: false,
        };
        assert_eq!(
            dsts(&select(&s, &view)),
            ["10.0.0.1:80", "10.0.0.3:80", "10.0.0.2:80"]
        );
    }

    #[test]
    fn numbers_fit_their_columns() {
        assert_eq!(compact(9_999), "9999");
        assert_eq!(compact(12_345), "12k");
        assert_eq!(compact(1_234_567), "1.2M");
        assert_eq!(micros(&json!(80)), "80µs");
        assert_eq!(micros(&json!(1_500)), "1.5ms");
        assert_eq!(micros(&json!(2_500_000)), "2.5s");
        assert_eq!(micros(&Value::Null), "-");
    }
}
