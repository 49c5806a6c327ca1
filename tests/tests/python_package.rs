//! The `connmon` Python package (`clients/python/`) against real components: its pytest
//! suites run in a network namespace this test creates (whose 10.200.0.2 is a blackholed
//! neighbour), with the Python environment `cargo xtask setup` makes (pinned Scrapy,
//! scrapy-rotating-proxies, pytest; `xtask/src/pyenv.rs`). The suites start their own
//! `connmon run` (`CONNMON_BIN`), tinyproxy proxies on 127.0.0.x and a local HTTP target.
//!
//! - `test_livepool.py`: snapshot at connect, lagged → resync, bye → reconnect, keys;
//!   `test_package.py`: pip-installable, typed, versioned with the agent.
//! - `test_scrapy.py`: a refusing, a blackholed and a killed proxy (every page fetched,
//!   nothing sent to an evicted proxy, in-flight downloads aborted on the eviction), a
//!   second spider, the agent restarted mid-crawl, scrapy-rotating-proxies fed by
//!   connmon (a proxy killed mid-crawl gets nothing once evicted), no agent, the README's
//!   requests/httpx/aiohttp recipes, a blackholed proxy left at connmon's `suspect`.

use std::{
    io::Read as _,
    os::unix::process::CommandExt as _,
    path::PathBuf,
    thread,
    time::{Duration, Instant},
};

use connmon_integration::{Netns, connmon_bin, piped, require_root};

fn python_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../clients/python")
}

/// The test venv's interpreter: `CONNMON_TEST_PYTHON` (set by `cargo xtask test`) or the
/// link `cargo xtask setup` leaves in `~/.cache/connmon/pyenv-test`.
fn test_python() -> PathBuf {
    let python = std::env::var_os("CONNMON_TEST_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").unwrap_or_else(|| "/root".into()))
                .join(".cache/connmon/pyenv-test/bin/python")
        });
    assert!(
        python.exists(),
        "no Python test environment at {}: run `cargo xtask setup` (or `cargo xtask test`)",
        python.display()
    );
    python
}

/// Runs pytest on `files` inside a fresh namespace and checks that each of `expected`
/// passed and nothing was skipped; pytest's summary is printed either way.
fn run_pytest(tag: &str, files: &[&str], expected: &[&str], timeout: Duration) {
    require_root();
    let ns = Netns::new(tag);
    // A kernel SYN timeout of 15 s: an abort at ~1 s is connmon's doing, not the kernel's.
    ns.sysctl("net.ipv4.tcp_syn_retries", "3");
    let mut child = piped("ip")
        .args(["netns", "exec", &ns.name])
        .arg(test_python())
        .args(["-m", "pytest", "-v", "-rA", "-p", "no:cacheprovider"])
        .args(files)
        .current_dir(python_dir().join("tests"))
        .env("CONNMON_BIN", connmon_bin())
        // A group of its own: on the deadline the whole group is killed, not only pytest
        // (its agents and tinyproxies once outlived it and loaded the next runs).
        .process_group(0)
        .spawn()
        .expect("starting pytest");
    let mut stdout = child.stdout.take().expect("stdout");
    let reader = thread::spawn(move || {
        let mut out = String::new();
        let _ = stdout.read_to_string(&mut out);
        out
    });
    let deadline = Instant::now() + timeout;
    let mut timed_out = false;
    while child.try_wait().expect("wait").is_none() {
        if Instant::now() > deadline {
            timed_out = true;
            // SAFETY: kill(2) on the process group this test created for pytest.
            unsafe { libc::kill(-(child.id() as i32), libc::SIGKILL) };
            break;
        }
        thread::sleep(Duration::from_millis(100));
    }
    let status = child.wait().expect("pytest status");
    let report = reader.join().expect("reader");
    let mut stderr = String::new();
    let _ = child
        .stderr
        .take()
        .map(|mut e| e.read_to_string(&mut stderr));
    println!("{report}");
    assert!(
        !timed_out,
        "pytest did not finish within {timeout:?}:\n{report}\n{stderr}"
    );
    assert!(
        status.success(),
        "pytest failed ({status}):\n{report}\n{stderr}"
    );
    for test in expected {
        assert!(
            report
                .lines()
                .any(|l| l.starts_with("PASSED") && l.contains(&format!("::{test}"))),
            "{test} did not pass:\n{report}"
        );
    }
    assert!(!report.contains("SKIPPED"), "no test may skip:\n{report}");
}

#[test]
fn python_livepool_and_package_tests_pass_against_a_real_agent() {
    run_pytest(
        "pylive",
        &["test_livepool.py", "test_package.py"],
        &[
            "test_keys_accept_urls_userinfo_ipv6_and_ip_port",
            "test_snapshot_at_connect_knows_earlier_evictions",
            "test_follows_evict_and_reinstate_with_callbacks",
            "test_lagged_resynchronises_from_a_snapshot",
            "test_bye_reconnect_keeps_the_last_view_and_logs_once",
            "test_no_agent_means_every_proxy_is_alive_and_one_warning",
            "test_async_live_pool",
            "test_the_example_controller_resynchronises_from_a_snapshot",
            "test_ipv6_proxy_urls_match_the_agents_dst",
            "test_pip_installs_a_typed_package_versioned_with_the_agent",
            "test_the_single_file_client_works_alone",
        ],
        Duration::from_secs(400),
    );
}

#[test]
fn python_scrapy_tests_pass_with_real_proxies_and_agent() {
    run_pytest(
        "pyscrapy",
        &["test_scrapy.py"],
        &[
            "test_refusing_blackholed_and_killed_proxies",
            "test_a_second_spider_sends_nothing_to_evicted_proxies",
            "test_agent_restarted_mid_crawl",
            "test_rotating_proxies_feed",
            "test_without_an_agent_it_rotates_over_all_proxies",
            "test_the_agent_knows_every_proxy",
            "test_readme_recipes_for_requests_httpx_and_aiohttp",
            "test_the_middleware_alone_still_works_and_says_what_it_cannot_do",
            "test_a_suspect_proxy_is_left_before_its_eviction",
        ],
        // A deadline: the suite takes 75–115 s at load average 10–11, and ran out of
        // 220 s at 12.
        Duration::from_secs(450),
    );
}
