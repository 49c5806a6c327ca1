//! `connmon top` driven in a real terminal (tmux, 80×24) against a real agent with real
//! failing connects: the rows, the header's evictions, the keys (filter, sort, pause,
//! quit), and the message when no agent is running.

use std::{
    net::{SocketAddr, TcpStream},
    process::Command,
    thread,
    time::{Duration, Instant},
};

use connmon_integration::{
    Agent, BLACKHOLE_V4, Netns, assert_status_row, closed_port, connmon_bin, require_root,
    scratch_dir, timing::wait_until, write_config,
};

const WAIT: Duration = Duration::from_secs(30);

/// A tmux server of the test's own (`-L`), killed on drop.
struct Tmux {
    socket: String,
}

impl Tmux {
    /// Starts `connmon top ARGS` in an 80×24 window.
    fn start(tag: &str, args: &[&str]) -> Self {
        let mut command = vec![connmon_bin().display().to_string(), "top".to_owned()];
        command.extend(args.iter().map(|a| (*a).to_owned()));
        Self::run(tag, &command.join(" "), 80)
    }

    /// Runs a shell command line in a `width`×24 window.
    fn run(tag: &str, command: &str, width: u16) -> Self {
        let tmux = Tmux {
            socket: format!("connmon-test-{tag}-{}", std::process::id()),
        };
        let status = Command::new("tmux")
            .args(["-L", &tmux.socket, "-f", "/dev/null", "new-session", "-d"])
            .args(["-s", "top", "-x", &width.to_string(), "-y", "24"])
            .env("TERM", "xterm-256color")
            .arg(command)
            .status()
            .expect("tmux (Debian package `tmux`, installed by cargo xtask setup)");
        assert!(status.success(), "tmux new-session failed");
        // Keep the pane after the program exits, to tell a quit from a crash.
        let _ = Command::new("tmux")
            .args([
                "-L",
                &tmux.socket,
                "set-option",
                "-t",
                "top",
                "remain-on-exit",
                "on",
            ])
            .status();
        tmux
    }

    fn capture(&self) -> String {
        self.capture_with(&[])
    }

    /// The screen; with `-e`, its colour escape sequences too.
    fn capture_with(&self, flags: &[&str]) -> String {
        let out = Command::new("tmux")
            .args(["-L", &self.socket, "capture-pane", "-p", "-t", "top"])
            .args(flags)
            .output()
            .expect("tmux capture-pane");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn keys(&self, keys: &str) {
        let status = Command::new("tmux")
            .args(["-L", &self.socket, "send-keys", "-t", "top", keys])
            .status()
            .expect("tmux send-keys");
        assert!(status.success(), "send-keys {keys}");
    }

    /// Waits until the screen satisfies `pred`; returns that screen.
    fn wait_for(&self, what: &str, pred: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + WAIT;
        loop {
            let screen = self.capture();
            if pred(&screen) {
                return screen;
            }
            assert!(
                Instant::now() < deadline,
                "no {what} within {WAIT:?}; screen:\n{screen}"
            );
            thread::sleep(Duration::from_millis(200));
        }
    }

    /// Whether the program in the pane has exited (`pane_dead` = 1).
    fn exited(&self) -> bool {
        Command::new("tmux")
            .args([
                "-L",
                &self.socket,
                "display-message",
                "-p",
                "-t",
                "top",
                "#{pane_dead}",
            ])
            .output()
            .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "1")
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = Command::new("tmux")
            .args(["-L", &self.socket, "kill-server"])
            .status();
    }
}

/// The screen line that shows `dst`.
fn row<'a>(screen: &'a str, dst: &str) -> Option<&'a str> {
    screen.lines().find(|l| l.starts_with(dst))
}

#[test]
fn top_shows_failing_pool_members_and_answers_its_keys() {
    require_root();
    let ns = Netns::new("top");
    let refused_port = closed_port("127.0.0.1");
    let refused = format!("127.0.0.1:{refused_port}");
    // A port of its own: other tests' namespaces use the same addresses, and the
    // tracepoints see every namespace.
    let bh_port = 20_000 + (std::process::id() % 20_000) as u16;
    let blackholed = format!("{BLACKHOLE_V4}:{bh_port}");
    let dir = scratch_dir("top");
    let config = write_config(
        &dir,
        format!(
            "[policy]\npool = [\"{refused}\", \"{blackholed}\"]\nmax_ejection_percent = 100\noutage_min_destinations = 0\n"
        ),
    );
    let socket = dir.join("connmon.sock");
    let _agent = Agent::start_serving(&config, &socket);
    let tmux = Tmux::start("top", &["--socket", socket.to_str().unwrap()]);
    tmux.wait_for("the header", |s| {
        s.contains("connects/s") && s.contains("DESTINATION")
    });

    for _ in 0..3 {
        TcpStream::connect(("127.0.0.1", refused_port)).expect_err("nothing listens");
    }
    ns.run("scraper", move || {
        let dst: SocketAddr = format!("{BLACKHOLE_V4}:{bh_port}").parse().unwrap();
        // tcp_syn_retries=1 in the namespace: the kernel gives up after ~3 s.
        TcpStream::connect_timeout(&dst, Duration::from_secs(10))
            .expect_err("blackholed member never answers");
    });

    // Only pool members: other tests' traffic on the host is `target`.
    tmux.keys("p");
    // The blackholed member is ejected on its second SYN retransmit, before the kernel
    // gives up on the connect (`timeout`, ATT 1).
    let screen = tmux.wait_for("both members ejected, every outcome counted", |s| {
        s.contains("[proxies]")
            && row(s, &refused).is_some_and(|r| r.contains("ejected"))
            && row(s, &blackholed)
                .is_some_and(|r| r.contains("ejected") && r.split_whitespace().nth(3) == Some("1"))
    });
    let cols = |dst: &str| -> Vec<String> {
        row(&screen, dst)
            .unwrap()
            .split_whitespace()
            .map(str::to_owned)
            .collect()
    };
    // DESTINATION ROLE STATE ATT FAIL% P50 P99 REF TMO ABN EJECT
    let r = cols(&refused);
    assert_eq!(
        (&r[1][..], &r[3][..], &r[4][..], &r[7][..]),
        ("proxy", "3", "100%", "3"),
        "{screen}"
    );
    let b = cols(&blackholed);
    assert_eq!(
        (&b[1][..], &b[3][..], &b[4][..], &b[8][..]),
        ("proxy", "1", "100%", "1"),
        "the blackholed member timed out once:\n{screen}"
    );
    assert!(
        screen.contains("evictions 2 last min"),
        "the header counts both evictions:\n{screen}"
    );
    assert!(
        screen.lines().all(|l| l.chars().count() <= 80) && screen.lines().count() <= 24,
        "fits 80×24:\n{screen}"
    );
    assert_eq!(
        screen
            .lines()
            .filter(|l| l.contains(" target ") || l.contains(" targ"))
            .count(),
        0,
        "p hides targets:\n{screen}"
    );

    tmux.keys("f");
    tmux.wait_for("the failing filter", |s| s.contains("[failing]"));
    tmux.keys("s");
    tmux.wait_for("the next sort", |s| s.contains("sort:fail%"));
    tmux.keys("Space");
    tmux.wait_for("pause", |s| s.contains("PAUSED"));
    tmux.keys("Space");
    tmux.wait_for("resume", |s| !s.contains("PAUSED"));
    tmux.keys("q");
    let deadline = Instant::now() + WAIT;
    while !tmux.exited() {
        assert!(
            Instant::now() < deadline,
            "q did not quit; screen:\n{}",
            tmux.capture()
        );
        thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn top_says_when_no_agent_is_running() {
    require_root();
    let socket = scratch_dir("top-none").join("connmon.sock");
    let tmux = Tmux::start("none", &["--socket", socket.to_str().unwrap()]);
    // The message wraps at 80 columns.
    let screen = tmux.wait_for("the no-agent message", |s| {
        let joined = s.split_whitespace().collect::<Vec<_>>().join(" ");
        joined.contains("no agent is running") && joined.contains("retrying")
    });
    assert!(screen.contains("connmon run"), "{screen}");
    tmux.keys("q");
    wait_until(
        WAIT,
        Duration::from_millis(100),
        || tmux.exited(),
        || "q did not quit".to_owned(),
    );
}

#[test]
fn watch_on_a_terminal_prints_decisions_as_columns_and_honours_no_color() {
    require_root();
    let dir = scratch_dir("watch-tty");
    // Other tests' failures on the host must not look like a local outage here.
    let config = write_config(
        &dir,
        "[policy]\nmax_ejection_percent = 100\noutage_min_destinations = 0\n",
    );
    let socket = dir.join("connmon.sock");
    let _agent = Agent::start_serving(&config, &socket);
    let watch = |env: &str| {
        format!(
            "env {env} {} watch --types evict --socket {}",
            connmon_bin().display(),
            socket.display()
        )
    };
    let coloured = Tmux::run("watch-colour", &watch("TERM=xterm"), 200);
    let plain = Tmux::run("watch-plain", &watch("NO_COLOR=1"), 200);
    // A refused connect to a fresh port, again until one EVICT line is on both screens:
    // a watch subscribes once it gets the CPU (a fixed 1.5 s pause was too short on a
    // loaded host), and a decision made before it subscribed is not sent to it.
    let deadline = Instant::now() + WAIT;
    let dst = 'subscribed: loop {
        let port = closed_port("127.0.0.1");
        let dst = format!("127.0.0.1:{port}");
        TcpStream::connect(("127.0.0.1", port)).expect_err("nothing listens");
        let shown_by = Instant::now() + Duration::from_secs(3);
        while Instant::now() < shown_by {
            if plain.capture().contains(&dst) && coloured.capture().contains(&dst) {
                break 'subscribed dst;
            }
            thread::sleep(Duration::from_millis(200));
        }
        assert!(
            Instant::now() < deadline,
            "no EVICT line on both watches within {WAIT:?}:\n{}\n{}",
            plain.capture(),
            coloured.capture()
        );
    };
    let line_of = |screen: &str| {
        screen
            .lines()
            .find(|l| l.contains(&dst))
            .unwrap_or_default()
            .to_owned()
    };
    let screen = plain.wait_for("the EVICT line", |s| s.contains(&dst));
    let line = line_of(&screen);
    for part in [
        "EVICT",
        "refused",
        "reject",
        "#1",
        "1/1 failed (1 refused)",
        "detect",
    ] {
        assert!(line.contains(part), "{part:?} missing in {line:?}");
    }
    assert!(
        !line.contains('{'),
        "a decision is columns, not a JSON blob: {line}"
    );
    coloured.wait_for("the EVICT line", |s| s.contains(&dst));
    let escapes = |t: &Tmux| line_of(&t.capture_with(&["-e"])).matches('\x1b').count();
    assert!(escapes(&coloured) > 0, "colours on a terminal");
    assert_eq!(escapes(&plain), 0, "no colours with NO_COLOR");

    // `connmon status`: an ejected destination that failed 1 of 1 is 100% (the ejection
    // cleared its ratio window), and the filters and sort apply.
    let status = Command::new(connmon_bin())
        .args(["status", "--failing-only", "--sort", "failures", "--socket"])
        .arg(&socket)
        .output()
        .expect("connmon status");
    let table = String::from_utf8_lossy(&status.stdout);
    assert_status_row(&table, &dst, ["proxy", "ejected", "1", "100%"]);
    let json = Command::new(connmon_bin())
        .args([
            "status",
            "--json",
            "--failing-only",
            "--sort",
            "failures",
            "--socket",
        ])
        .arg(&socket)
        .output()
        .expect("connmon status --json");
    let snap: serde_json::Value = serde_json::from_slice(&json.stdout).expect("JSON");
    let dsts = snap["destinations"].as_array().expect("destinations");
    assert!(
        dsts.iter().any(|d| d["dst"] == dst.as_str()),
        "{dst} in --failing-only"
    );
    let failures = |d: &serde_json::Value| {
        ["refused", "reset", "timeout", "abandoned", "unreachable"]
            .iter()
            .map(|k| d["outcomes"][*k].as_u64().unwrap_or(0))
            .sum::<u64>()
    };
    assert!(
        dsts.iter()
            .all(|d| d["state"] != "healthy" || failures(d) > 0),
        "--failing-only shows only failing destinations: {snap}"
    );
    assert!(
        dsts.windows(2).all(|w| failures(&w[0]) >= failures(&w[1])),
        "sorted by failures: {snap}"
    );
}
