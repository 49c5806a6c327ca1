//! The Prometheus endpoint against a real Prometheus server (Debian package
//! `prometheus`): it scrapes `connmon run --metrics ADDR` every second, and a PromQL query
//! through its HTTP API answers the exact number of refused connects the test made.

use std::{
    io::{Read as _, Write as _},
    net::TcpStream,
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use connmon_integration::{
    Agent, closed_port, require_root, scratch_dir, timing::wait_until, write_config,
};
use serde_json::Value;

/// A free TCP port on loopback (bound, then released).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

/// One plain HTTP/1.0 GET; returns (status, body).
fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        stream,
        "GET {path} HTTP/1.0\r\nHost: 127.0.0.1:{port}\r\nAccept: */*\r\n\r\n"
    )
    .ok()?;
    let mut raw = String::new();
    stream.read_to_string(&mut raw).ok()?;
    let (head, body) = raw.split_once("\r\n\r\n")?;
    let status = head.split_whitespace().nth(1)?.parse().ok()?;
    Some((status, body.to_owned()))
}

fn percent_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// A Prometheus server with its own data directory, killed on drop.
struct Prometheus {
    child: Child,
    port: u16,
    log: std::path::PathBuf,
}

impl Prometheus {
    fn start(target_port: u16) -> Self {
        let dir = scratch_dir("prometheus");
        let config = dir.join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nscrape_configs:\n  - job_name: connmon\n    scrape_interval: 1s\n    scrape_timeout: 1s\n    static_configs:\n      - targets: ['127.0.0.1:{target_port}']\n"
            ),
        )
        .expect("prometheus.yml");
        let port = free_port();
        let log = dir.join("prometheus.log");
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("log file"))
            .spawn()
            .expect(
                "starting prometheus (Debian package `prometheus`, installed by cargo xtask setup)",
            );
        let server = Prometheus { child, port, log };
        wait_until(
            Duration::from_secs(60),
            Duration::from_millis(200),
            || http_get(port, "/-/ready").is_some_and(|(status, _)| status == 200),
            || format!("Prometheus not ready within 60 s; log:\n{}", server.log()),
        );
        server
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The value of a PromQL instant query with one result, `None` without a result.
    fn query_one(&self, promql: &str) -> Option<f64> {
        let (status, body) = http_get(
            self.port,
            &format!("/api/v1/query?query={}", percent_encode(promql)),
        )?;
        assert_eq!(status, 200, "query {promql}: {body}");
        let v: Value = serde_json::from_str(&body).expect("Prometheus answers JSON");
        assert_eq!(v["status"], "success", "{body}");
        let result = v["data"]["result"].as_array()?;
        assert!(result.len() <= 1, "{promql}: more than one series: {body}");
        result.first()?["value"][1].as_str()?.parse().ok()
    }

    /// Polls `promql` until it equals `want`.
    fn wait_for(&self, promql: &str, want: f64, agent: &Agent) {
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut last = None;
        while Instant::now() < deadline {
            last = self.query_one(promql);
            if last == Some(want) {
                return;
            }
            thread::sleep(Duration::from_millis(250));
        }
        panic!(
            "{promql} = {last:?}, expected {want} within 60 s\nPrometheus log:\n{}\nagent stderr:\n{}",
            self.log(),
            agent.stderr()
        );
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn prometheus_scrapes_the_endpoint_and_counts_the_refused_connects() {
    require_root();
    let metrics_port = free_port();
    let dir = scratch_dir("prom-agent");
    // Room for every destination other tests on the host may be failing meanwhile.
    let config = write_config(
        &dir,
        "[agent]\nmetrics_destinations = 5000\n[policy]\nmax_ejection_percent = 100\noutage_min_destinations = 0\n",
    );
    let mut agent = Agent::start(&[
        "--config",
        config.to_str().unwrap(),
        "--metrics",
        &format!("127.0.0.1:{metrics_port}"),
    ]);

    // The endpoint itself: OpenMetrics, with the build info.
    let (status, body) = http_get(metrics_port, "/metrics").expect("GET /metrics");
    assert_eq!(status, 200, "{body}");
    assert!(
        body.contains("connmon_build_info{version=") && body.trim_end().ends_with("# EOF"),
        "{body}"
    );

    let prometheus = Prometheus::start(metrics_port);
    prometheus.wait_for("up{job=\"connmon\"}", 1.0, &agent);

    const REFUSED: usize = 7;
    let port = closed_port("127.0.0.1");
    let dst = format!("127.0.0.1:{port}");
    for _ in 0..REFUSED {
        let err = TcpStream::connect(("127.0.0.1", port)).expect_err("nothing listens");
        assert_eq!(err.kind(), std::io::ErrorKind::ConnectionRefused);
    }
    // The agent saw them all before we ask Prometheus.
    let seen = std::cell::Cell::new(0);
    agent.wait_for("the last refused connect", Duration::from_secs(20), |v| {
        if v["type"] == "connect" && v["outcome"] == "refused" && v["dst"] == dst.as_str() {
            seen.set(seen.get() + 1);
        }
        seen.get() >= REFUSED
    });

    prometheus.wait_for(
        &format!(
            "sum(connmon_destination_connect_attempts_total{{job=\"connmon\",dst=\"{dst}\",outcome=\"refused\"}})"
        ),
        REFUSED as f64,
        &agent,
    );
    prometheus.wait_for(
        &format!("connmon_destination_ejected{{dst=\"{dst}\"}}"),
        1.0,
        &agent,
    );
    // This host's own decision: `origin="local"` (a fleet verdict says "fleet").
    let local = prometheus
        .query_one("sum(connmon_evictions_total{origin=\"local\"})")
        .expect("connmon_evictions_total{origin=\"local\"}");
    assert!(local >= 1.0, "local evictions {local}");
    assert_eq!(
        prometheus.query_one("sum(connmon_evictions_total{origin=\"fleet\"})"),
        None,
        "no fleet: no fleet evictions"
    );
    // The host-wide counter includes the test's connects (other traffic may add more).
    let total = prometheus
        .query_one("sum(connmon_connect_attempts_total{outcome=\"refused\"})")
        .expect("connmon_connect_attempts_total");
    assert!(total >= REFUSED as f64, "refused total {total}");
    assert_eq!(
        prometheus.query_one("connmon_probes_total"),
        Some(0.0),
        "probes are exposed (0 until the agent probes)"
    );
    let (ok, _) = agent.stop();
    assert!(ok, "the agent exits cleanly with the endpoint on");
}

#[test]
fn a_metrics_address_in_use_is_one_clear_error() {
    require_root();
    let busy = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = busy.local_addr().expect("addr").to_string();
    let out = Command::new(connmon_integration::connmon_bin())
        .args(["run", "--config", "/dev/null", "--metrics", &addr])
        .arg("--state-file")
        .arg(scratch_dir("prom-busy").join("state.json"))
        .arg("--socket")
        .arg(scratch_dir("prom-busy-sock").join("connmon.sock"))
        .output()
        .expect("connmon");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains(&format!("cannot listen on {addr} for agent.metrics")),
        "{stderr}"
    );
}
