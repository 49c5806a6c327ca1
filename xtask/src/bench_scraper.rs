//! Benchmark 7, the scraper scenario: what connmon's verdicts are worth to a Scrapy crawl.
//! Crawl wall time and connects to dead proxies for a pool of 10 tinyproxy proxies with
//! 30 % dead (1 refusing, 2 blackholed), with `connmon.scrapy` (first spider, and a
//! second spider started after the evictions) vs scrapy-rotating-proxies alone vs an
//! all-healthy pool. The crawls, proxies and target run in a namespace this module
//! creates (its 10.200.0.2 is a blackholed neighbour); the scenario itself is
//! `clients/python/tests/bench_scraper.py`, run with the pinned Python environment
//! (`pyenv`). `cargo xtask bench` runs it as its last section; `cargo xtask bench-scraper`
//! runs it alone.

use std::{fmt::Write as _, fs, path::Path, process::Command};

use anyhow::Context as _;
use serde_json::Value;

use crate::{build, pyenv, setup};

#[derive(clap::Args)]
pub(crate) struct Options {
    /// One short round (harness check; numbers are not meaningful).
    #[arg(long)]
    pub quick: bool,
}

/// `cargo xtask bench-scraper`: set-up, release build of the agent, this section only.
pub(crate) fn run(opts: &Options) -> anyhow::Result<()> {
    if !crate::run::is_root() {
        anyhow::bail!("the benchmark loads eBPF programs: run `sudo -E cargo xtask bench-scraper`");
    }
    let toolchain = setup::run(&setup::Options::default())?;
    let connmon = build::build_agent(&toolchain, true)?;
    let root = build::workspace_root();
    let dir = root.join("target/bench");
    fs::create_dir_all(&dir)?;
    let mut report = String::new();
    scraper(&connmon, &dir, opts.quick, &mut report)?;
    fs::write(dir.join("scraper.md"), &report)?;
    println!("{report}");
    Ok(())
}

/// Runs the scenario and appends its section to `report`.
pub(crate) fn scraper(
    connmon: &Path,
    dir: &Path,
    quick: bool,
    report: &mut String,
) -> anyhow::Result<()> {
    let python = pyenv::ensure_test_venv()?;
    let script_dir = build::workspace_root().join("clients/python/tests");
    let out = dir.join("scraper.json");
    let _ = fs::remove_file(&out);
    let ns = crate::netns::BlackholeNetns::new("bench-scraper")?;
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", &ns.name])
        .arg(&python)
        .arg("bench_scraper.py")
        .arg("--out")
        .arg(&out)
        .arg("--work")
        .arg(dir.join("scraper-work"))
        .current_dir(&script_dir)
        .env("CONNMON_BIN", connmon)
        .env("PYTHONDONTWRITEBYTECODE", "1");
    if quick {
        cmd.arg("--quick");
    }
    setup::run_cmd(&mut cmd)?;
    let data: Value = serde_json::from_str(
        &fs::read_to_string(&out).with_context(|| format!("reading {}", out.display()))?,
    )?;
    let _ = writeln!(
        report,
        "## 7. Scraper: crawl time with dead proxies\n\n\
         Scrapy 2.19 crawls {pages} pages of a local target ({delay} s per page) through 10 tinyproxy \
         proxies on loopback addresses, 32 requests at once, 8 per proxy, `DOWNLOAD_TIMEOUT` = {timeout} s, \
         5 retries. \"30 % dead\": 1 refusing proxy and 2 blackholed ones (a namespace neighbour \
         whose SYNs vanish). Each scenario has a fresh agent with the default policy and the 10 proxies \
         as its pool (default policy unless the scenario says otherwise, local-outage guard off: it is host-wide and other tests on a shared host trip it). Wall time: Scrapy's `elapsed_time_seconds`, median of {rounds} round(s). Connects to \
         dead proxies: the agent's `connect` events to them during the crawl, and those that started \
         after the agent had evicted that proxy (for connmon.scrapy also: after the crawl had acted on the eviction). \
         In-flight aborted: downloads cancelled at an eviction or (in parentheses) at a `suspect`. Last dead \
         proxy evicted: seconds from the crawl's start to the agent's last eviction (median; the fixed cost of \
         discovering the dead proxies).\n\n\
         | scenario | wall (s) | vs all-healthy | pages fetched | connects to dead proxies | … after eviction | in-flight aborted (on suspect) | last dead proxy evicted (s) |\n\
         |---|---:|---:|---:|---:|---:|---:|---:|",
        pages = data["pages"],
        delay = data["target_delay_s"],
        timeout = data["download_timeout_s"],
        rounds = data["results"][0]["rounds"],
    );
    let results = data["results"].as_array().cloned().unwrap_or_default();
    let healthy = results
        .first()
        .and_then(|r| r["wall_s_median"].as_f64())
        .unwrap_or(f64::NAN);
    for r in &results {
        let runs = r["runs"].as_array().cloned().unwrap_or_default();
        let sum = |key: &str| -> u64 { runs.iter().filter_map(|x| x[key].as_u64()).sum() };
        let after = if runs
            .iter()
            .any(|x| x["connects_after_crawl_learned"].is_u64())
        {
            format!(
                "{} ({} after the crawl acted on it)",
                sum("connects_after_evict"),
                sum("connects_after_crawl_learned")
            )
        } else {
            sum("connects_after_evict").to_string()
        };
        let wall = r["wall_s_median"].as_f64().unwrap_or(f64::NAN);
        let mut evicted: Vec<f64> = runs
            .iter()
            .filter_map(|x| x["first_evict_s"].as_f64())
            .collect();
        evicted.sort_by(f64::total_cmp);
        let evicted = evicted
            .get(evicted.len() / 2)
            .map_or("–".to_owned(), |t| format!("{t:.2}"));
        let _ = writeln!(
            report,
            "| {} | {:.2} | {:+.0} % | {}/{} | {} | {} | {} ({}) | {} |",
            r["scenario"].as_str().unwrap_or("?"),
            wall,
            (wall / healthy - 1.0) * 100.0,
            sum("fetched"),
            runs.len() as u64 * data["pages"].as_u64().unwrap_or(0),
            sum("connects_to_dead"),
            after,
            sum("aborted"),
            sum("aborted_on_suspect"),
            evicted,
        );
    }
    let _ = writeln!(
        report,
        "\nCounts are totals over the rounds; rounds interleave the scenarios. Load average \
         at the end: {} on {} CPUs (the wall times are only as steady as the machine). Raw data: `{}`.\n",
        data["loadavg_at_end"][0]
            .as_f64()
            .map_or("?".to_owned(), |l| format!("{l:.1}")),
        data["cpus"],
        out.display()
    );
    Ok(())
}
