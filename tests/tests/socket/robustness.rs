//! Hostile input and slow readers: neither crashes the agent nor stalls anyone else.

use super::*;

/// Hostile lines from a seeded generator, so a failing run can be replayed.
struct Rng(fastrand::Rng);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0.u64(..)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.0.u64(..n)
    }

    /// One malformed (or occasionally valid) line, never containing a newline, and
    /// whether it is valid (`None`: random fragments that may happen to form a command).
    fn line(&mut self) -> (Vec<u8>, Option<bool>) {
        const FRAGMENTS: [&str; 16] = [
            "{",
            "}",
            "[",
            "]",
            "\"cmd\"",
            ":",
            ",",
            "\"subscribe\"",
            "\"evict\"",
            "null",
            "1e999",
            "\"\\u0000\"",
            "{\"cmd\":",
            "\"dst\":",
            "-",
            "\"pool\"",
        ];
        let kind = self.below(10);
        let line: Vec<u8> = match kind {
            0 => (0..self.below(200))
                .map(|_| (self.next() as u8).max(1))
                .map(|b| if b == b'\n' { b' ' } else { b })
                .collect(),
            1 => (0..self.below(30))
                .flat_map(|_| {
                    FRAGMENTS[self.below(16) as usize]
                        .bytes()
                        .collect::<Vec<_>>()
                })
                .collect(),
            2 => format!(
                "{{\"cmd\":\"{}\"}}",
                ["launch", "EVICT", "", "subscribe ", "snap"][self.below(5) as usize]
            )
            .into_bytes(),
            3 => [
                r#"{"cmd":"evict","dst":12}"#,
                r#"{"cmd":"evict","dst":"10.0.0.1:0"}"#,
                r#"{"cmd":"evict","dst":"10.0.0.1:80","for_ms":"5m"}"#,
                r#"{"cmd":"subscribe","types":"evict"}"#,
                r#"{"cmd":"subscribe","types":["nope"]}"#,
                r#"{"cmd":"pool","op":"add","members":[1,2]}"#,
                r#"{"cmd":"pool","op":"explode"}"#,
                r#"{"cmd":"reinstate"}"#,
                r#"{"cmd":"ping","id":{"a":1}}"#,
                r#"{"cmd":["ping"]}"#,
            ][self.below(10) as usize]
                .as_bytes()
                .to_vec(),
            4 => vec![0xff, 0xfe, 0x80, 0xc3, 0x28, b'{', 0xa0, 0xa1],
            5 => {
                // Over 64 KiB.
                let n = 65 * 1024 + self.below(10_000) as usize;
                vec![b'x'; n]
            }
            6 => format!("\"{}\"", self.next()).into_bytes(),
            7 => format!("{{\"cmd\":\"ping\",\"id\":{}}}", self.below(1000)).into_bytes(),
            8 => r#"{"cmd":"pool","op":"list"}"#.as_bytes().to_vec(),
            _ => format!("{{\"cmd\":\"snapshot\",\"extra\":{}}}", self.below(9)).into_bytes(),
        };
        // Kinds 7 and 8 are valid; blank lines are ignored by the server (no reply).
        let valid = match kind {
            1 => None,
            7 | 8 => Some(true),
            _ => Some(false),
        };
        let blank = line.iter().all(u8::is_ascii_whitespace);
        (if blank { b"{".to_vec() } else { line }, valid)
    }
}

#[test]
fn ten_thousand_malformed_lines_neither_crash_nor_starve_a_subscriber() {
    require_root();
    let ns = Netns::new("fuzz");
    let path = socket_path("fuzz");
    let agent = start(&path, &[]);
    let (mut sub, _) = Sock::open(&path);
    sub.request(json!({"cmd": "subscribe", "types": ["connect"]}));
    let dst = refused_dst(&ns);
    const CONNECTS: usize = 300;

    let fuzz_path = path.clone();
    let fuzzer = thread::spawn(move || {
        let mut rng = Rng(fastrand::Rng::with_seed(0x9e37_79b9_7f4a_7c15));
        let (mut lines, mut connections, mut closed_for_errors) = (0usize, 0usize, 0usize);
        let deadline = Instant::now() + Duration::from_secs(90);
        while lines < 10_000 {
            assert!(
                Instant::now() < deadline,
                "fuzzing took too long ({lines} lines)"
            );
            let (mut c, _) = Sock::open(&fuzz_path);
            connections += 1;
            let mut consecutive = 0;
            loop {
                let (line, valid) = rng.line();
                c.send_raw(&line)
                    .expect("the agent reads every line of an open connection");
                lines += 1;
                // One reply per line; a subscribe made of random fragments may also
                // bring events, which are skipped.
                let reply = loop {
                    let v = c.read().expect("one reply per line");
                    if ["error", "ok", "pong", "snapshot"]
                        .contains(&v["type"].as_str().unwrap_or_default())
                    {
                        break v;
                    }
                };
                if let Some(valid) = valid {
                    assert_eq!(
                        reply["type"] == "error",
                        !valid,
                        "line {:?} got {reply}",
                        String::from_utf8_lossy(&line[..line.len().min(80)])
                    );
                }
                if reply["type"] != "error" {
                    consecutive = 0;
                    continue;
                }
                assert!(
                    reply["code"].is_string() && reply["message"].is_string(),
                    "{reply}"
                );
                consecutive += 1;
                if consecutive == 10 {
                    let last = c.read().expect("closing notice");
                    assert_eq!(last["code"], "too_many_errors", "{last}");
                    assert!(c.read().is_none(), "closed after 10 consecutive errors");
                    closed_for_errors += 1;
                    break;
                }
                if lines >= 10_000 {
                    break;
                }
            }
        }
        (lines, connections, closed_for_errors)
    });
    let dst_c = dst.clone();
    let ns_inode = ns.inode;
    let prober = ns.spawn(None, move || {
        let dst: std::net::SocketAddr = dst_c.parse().unwrap();
        for _ in 0..CONNECTS {
            TcpStream::connect(dst).expect_err("refused");
            thread::sleep(Duration::from_millis(5));
        }
    });
    let mut got = 0;
    let deadline = Instant::now() + Duration::from_secs(60);
    while got < CONNECTS {
        assert!(
            Instant::now() < deadline,
            "subscriber got {got} of {CONNECTS} connects"
        );
        let v = sub.read().expect("subscriber stays connected");
        assert_ne!(v["type"], "lagged", "{v}");
        if is_connect(&v, "refused", &dst, ns_inode) {
            got += 1;
        }
    }
    prober.join().expect("prober");
    let (lines, connections, closed) = fuzzer.join().expect("fuzzer");
    assert!(
        lines >= 10_000 && connections > 1 && closed > 0,
        "{lines} lines, {connections} connections, {closed} closed"
    );
    let snap = sub.request(json!({"cmd": "snapshot"}));
    assert!(
        snap["server"]["protocol_errors"].as_u64().unwrap() > 5_000,
        "{}",
        snap["server"]
    );
    assert!(snap["server"]["closed_for_errors"].as_u64().unwrap() >= closed as u64);
    let (ok, printed) = agent.stop();
    assert!(ok, "agent exits cleanly after the fuzzing");
    assert_eq!(
        printed
            .iter()
            .filter(|v| is_connect(v, "refused", &dst, ns_inode))
            .count(),
        CONNECTS
    );
}

#[test]
fn a_subscriber_that_never_reads_stalls_nothing_and_is_told_it_lagged() {
    require_root();
    let ns = Netns::new("slow");
    // The default bus capacity (16384 messages per subscriber) holds a full 1 MiB ring
    // buffer's worth of records, so a subscriber that reads never lags; the one that
    // does not read falls 30000 events behind.
    let (path, agent) = start_configured(
        "slow",
        "[agent]\nbus_capacity = 16384\nring_buffer_bytes = 1048576\n",
        &[],
    );
    let (mut slow, _) = Sock::open(&path);
    slow.request(json!({"cmd": "subscribe", "types": ["connect"]}));
    let (mut good, _) = Sock::open(&path);
    good.request(json!({"cmd": "subscribe", "types": ["connect"]}));
    let dst = refused_dst(&ns);
    const EVENTS: usize = 30_000;

    let ns_inode = ns.inode;
    let dst_c = dst.clone();
    let reader = thread::spawn(move || {
        let mut got = 0;
        let deadline = Instant::now() + Duration::from_secs(100);
        while got < EVENTS && Instant::now() < deadline {
            match good.read_within().flatten() {
                Some(v) => {
                    assert_ne!(
                        v["type"], "lagged",
                        "the reading subscriber must not lag: {v}"
                    );
                    if is_connect(&v, "refused", &dst_c, ns_inode) {
                        got += 1;
                    }
                }
                None => break,
            }
        }
        got
    });
    let flood_dst = dst.clone();
    let flood = ns.spawn(None, move || {
        let dst: std::net::SocketAddr = flood_dst.parse().unwrap();
        // Paced (20 ms every 100 connects) so that the agent's one thread, which also
        // writes to the reading subscriber, keeps up on a slow CPU with a debug build;
        // the silent subscriber still falls 30000 events behind its 16384-message queue.
        for i in 0..EVENTS {
            TcpStream::connect(dst).expect_err("refused");
            if i % 100 == 99 {
                thread::sleep(Duration::from_millis(20));
            }
        }
    });
    // The agent answers while the flood runs and the slow client holds a full socket.
    let (mut pinger, _) = Sock::open(&path);
    let mut pings = 0;
    while !flood.is_finished() {
        let started = Instant::now();
        let pong = pinger.request(json!({"cmd": "ping"}));
        assert_eq!(pong["type"], "pong");
        // Answered at all while the flood runs is the point; how fast is a benchmark
        // figure, and a slow (emulated) CPU must not fail this.
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "ping took {:?}",
            started.elapsed()
        );
        pings += 1;
        thread::sleep(Duration::from_millis(100));
    }
    flood.join().expect("flood");
    assert!(pings > 0);
    let got = reader.join().expect("reader");
    if got != EVENTS {
        let (_, printed) = agent.stop();
        let on_stdout = printed
            .iter()
            .filter(|v| is_connect(v, "refused", &dst, ns.inode))
            .count();
        let stats = printed
            .iter()
            .rev()
            .find(|v| v["type"] == "stats")
            .cloned()
            .unwrap_or_default();
        panic!(
            "the reading subscriber got {got} of {EVENTS} events; stdout {on_stdout}; final stats {stats}"
        );
    }

    // Now the slow one reads: what fit in its socket, then `lagged`, then the rest.
    let mut before_lag = 0;
    let lagged = loop {
        let v = slow.read().expect("slow client still connected");
        if v["type"] == "lagged" {
            break v;
        }
        before_lag += 1;
        assert!(
            before_lag <= EVENTS,
            "no lagged notice after {before_lag} lines"
        );
    };
    let missed = lagged["missed"].as_u64().expect("missed");
    assert!(
        missed > 0 && (before_lag as u64) < EVENTS as u64,
        "{lagged} after {before_lag}"
    );
    let snap = pinger.request(json!({"cmd": "snapshot"}));
    assert!(
        snap["server"]["lagged_messages"].as_u64().unwrap() >= missed,
        "{}",
        snap["server"]
    );
    let (ok, printed) = agent.stop();
    assert!(ok);
    assert_eq!(
        printed
            .iter()
            .filter(|v| is_connect(v, "refused", &dst, ns.inode))
            .count(),
        EVENTS,
        "stdout got every event"
    );
    assert!(
        printed
            .iter()
            .any(|v| v["type"] == "stats" && v["lost_events"] == 0 && v["final"] == true)
    );
}
