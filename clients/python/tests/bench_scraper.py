"""The scraper benchmark behind `cargo xtask bench` (xtask/src/bench_scraper.rs): crawl
wall time and connects to dead proxies, for a pool of 10 tinyproxy proxies of which 30 %
are dead (1 refusing, 2 blackholed), with connmon.scrapy vs scrapy-rotating-proxies
alone vs an all-healthy pool. Run inside a network namespace whose 10.200.0.2 is a
blackholed neighbour:

    python bench_scraper.py --out report.json [--quick] [--rounds N]

Every crawl is a fresh Scrapy process; each scenario gets a fresh agent (default
policy, pool = the 10 proxies) and a fresh state file, so "first spider" scenarios
start with nothing evicted; the policy is connmon's default except that the host-wide
local-outage guard is off (other tests on a shared host trip it). Wall time is Scrapy's own `elapsed_time_seconds` (engine
start → finish). Dead-proxy connects are the agent's `connect` events to the dead
proxies (the kernel's view), split into before and after the agent's `evict`.
"""

import argparse
import json
import os
import shutil
import statistics
import tempfile

from harness import BLACKHOLE, Agent, ConnectLog, Target, Tinyproxy, crawl, free_port, intervals, parse_ts


def agent_config(pool, policy=""):
    members = ", ".join(json.dumps(m) for m in pool)
    # connmon's defaults, but for the local-outage guard: it is host-wide, and on a
    # machine where other tests fail connects by the thousand (a shared development
    # host) it suspends ejections for minutes. Off here, as in the tests.
    return f"[policy]\noutage_min_destinations = 100000\n{policy}pool = [{members}]\n"


def first_evict_s(log, report):
    """Seconds from the crawl's start until the agent had evicted every dead proxy it
    evicted during the crawl (each one's first eviction: a later one is a re-eviction
    after the 30 s ejection ended) — the fixed cost of discovering them — or None."""
    first = {}
    for e in log.evicts:
        t = parse_ts(e["ts"]) - report["started"]
        if e["type"] == "evict" and t >= 0:
            first[e["dst"]] = min(first.get(e["dst"], t), t)
    return round(max(first.values()), 3) if first else None


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--rounds", type=int, default=None)
    ap.add_argument("--work", default=None, help="keep agent and crawl logs here")
    args = ap.parse_args()
    rounds = args.rounds or (1 if args.quick else 3)
    pages = 100 if args.quick else 1000
    delay = 0.1
    work = args.work or tempfile.mkdtemp(prefix="connmon-bench-scraper-")
    if args.work:
        shutil.rmtree(work, ignore_errors=True)
        os.makedirs(work)
    target = Target(delay=delay)
    healthy = [Tinyproxy(work, f"127.0.0.{20 + i}").start() for i in range(10)]
    refusing = f"http://127.0.0.40:{free_port('127.0.0.40')}"
    blackholed = [f"http://{BLACKHOLE}:3128", f"http://{BLACKHOLE}:3129"]
    dead = [refusing] + blackholed
    dead_dsts = [p.split("//", 1)[1] for p in dead]
    mixed = [p.url for p in healthy[:7]] + dead
    all_healthy = [p.url for p in healthy]
    download_timeout = 3 if args.quick else 10
    base = {"target": target.url, "pages": pages, "concurrency": 32, "per_slot": 8,
            "download_timeout": download_timeout,
            "retry_times": 5, "log_level": "WARNING"}
    # (name, mode, proxies, second spider?, extra Scrapy settings, extra [policy] lines)
    scenarios = [
        ("all-healthy pool, connmon.scrapy", "connmon", all_healthy, False, {}, ""),
        ("30 % dead, connmon.scrapy (first spider)", "connmon", mixed, False, {}, ""),
        ("30 % dead, connmon.scrapy (first spider), CONNMON_ON_SUSPECT=off", "connmon", mixed, False,
         {"CONNMON_ON_SUSPECT": "off"}, ""),
        ("30 % dead, connmon.scrapy (first spider), policy.syn_retransmits = 1", "connmon", mixed, False, {},
         "syn_retransmits = 1\n"),
        ("30 % dead, connmon.scrapy (second spider)", "connmon", mixed, True, {}, ""),
        ("30 % dead, scrapy-rotating-proxies alone", "rotating", mixed, False, {}, ""),
    ]
    if not args.quick:
        scenarios.append(("30 % dead, scrapy-rotating-proxies + RotatingProxiesAddon (feed + handler)", "feed", mixed,
                          False, {}, ""))
    runs_of = {name: [] for name, *_ in scenarios}
    try:
        # Rounds outside, scenarios inside: a burst of load on the machine hits every
        # scenario alike instead of one.
        for r in range(rounds):
            for index, (name, mode, proxies, second, settings, policy) in enumerate(scenarios):
                runs = runs_of[name]
                agent_dir = os.path.join(work, f"agent-{index}-{r}")
                os.makedirs(agent_dir)
                keys = [p.split("//", 1)[1] for p in mixed + all_healthy]
                agent = Agent(agent_dir, agent_config(sorted(set(keys)), policy)).start()
                try:
                    spec = dict(base, mode=mode, proxies=proxies, socket=agent.socket, settings=settings)
                    log = ConnectLog(agent.socket, dead_dsts)
                    if second:
                        crawl(spec, timeout=600)  # the first spider: its evictions stay
                    report = crawl(spec, timeout=600)
                    log.close()
                    with open(os.path.join(agent_dir, "crawl.log"), "w") as f:
                        f.write(report["log"])
                finally:
                    agent.stop()
                # Connects of this crawl that started while the agent had that proxy
                # evicted, and (connmon.scrapy) while the crawl had acted on the eviction.
                to_dead = [c for c in log.connects if c["start"] >= report["started"]]
                in_crawl = ConnectLog.__new__(ConnectLog)
                in_crawl.connects = to_dead
                after_evict = in_crawl.connects_within(log.agent_intervals())
                after_learned = in_crawl.connects_within(intervals(report.get("history") or []))
                runs.append({
                    "wall_s": report["stats"].get("elapsed_time_seconds", report["elapsed"]),
                    "fetched": len(report["fetched"]),
                    "failed": len(report["failed"]),
                    "connects_to_dead": len(to_dead),
                    "connects_after_evict": len(after_evict),
                    "connects_after_crawl_learned": len(after_learned) if mode == "connmon" else None,
                    "aborted": report["stats"].get("connmon/inflight_aborted", 0),
                    "aborted_on_suspect": report["stats"].get("connmon/inflight_aborted_on_suspect", 0),
                    "held_back": report["stats"].get("connmon/requests_held_back", 0)
                    + report["stats"].get("connmon/requests_held_back_suspect", 0),
                    "suspects": report["stats"].get("connmon/suspects_seen", 0),
                    "first_evict_s": first_evict_s(log, report),
                    "retries": report["stats"].get("retry/count", 0),
                    "agent_evicts": sum(e["type"] == "evict" for e in log.evicts),
                    "agent_reinstates": sum(e["type"] == "reinstate" for e in log.evicts),
                    "pool_stats": report.get("pool_stats"),
                })
        results = [{
            "scenario": name,
            "rounds": rounds,
            "wall_s_median": statistics.median(r["wall_s"] for r in runs_of[name]),
            "runs": runs_of[name],
        } for name, *_ in scenarios]
    finally:
        for p in healthy:
            p.kill()
        target.close()
        if not args.work:
            shutil.rmtree(work, ignore_errors=True)
    load = os.getloadavg()
    out = {"pages": pages, "target_delay_s": delay, "concurrency": 32, "per_proxy": 8,
           "download_timeout_s": download_timeout,
           "proxies": 10, "dead": {"refusing": 1, "blackholed": 2}, "loadavg_at_end": load, "cpus": os.cpu_count(),
           "results": results}
    with open(args.out, "w") as f:
        json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
