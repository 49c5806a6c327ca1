"""connmon.scrapy against real Scrapy, real tinyproxy proxies, a real agent and a local
target: a refusing, a blackholed and a killed proxy; a second spider after the
evictions; the agent restarted mid-crawl; scrapy-rotating-proxies fed by connmon; no
agent at all.

The tests of this module share one world (proxies, target, agent) and run in order:
later ones rely on the evictions of earlier ones, as a second spider would."""

import asyncio
import os
import time


import pytest
from harness import BLACKHOLE, Agent, ConnectLog, Target, Tinyproxy, agent_config, crawl, finish_crawl, free_port, \
    intervals, parse_ts, patience, start_crawl, wait_until

from connmon import Client, proxy_key

PAGES = 150
# How long after the agent's eviction (or suspect) the crawl may act on it: a deadline
# an overloaded host still meets (it takes milliseconds on a quiet one), and far below
# what a download that nothing aborts waits for — the kernel's SYN timeout (15 s in the
# test's namespace, tcp_syn_retries=3) or DOWNLOAD_TIMEOUT (20 s) — so it still tells
# an abort of connmon's from a timeout. How fast is a benchmark figure (bench_scraper.py).
ACT_WITHIN = min(5.0 * patience(), 10.0)
# A download that waited for a timeout ends in one of these (Scrapy counts them under
# downloader/exception_type_count/...): DOWNLOAD_TIMEOUT, and the kernel's SYN timeout.
TIMEOUT_ERRORS = ("twisted.internet.error.TimeoutError", "twisted.internet.error.TCPTimedOutError")


class World:
    def __init__(self, workdir: str) -> None:
        self.dir = workdir
        self.target = Target(delay=0.05)
        self.healthy = [Tinyproxy(workdir, f"127.0.0.{i}").start() for i in (11, 12, 13)]
        self.victim = Tinyproxy(workdir, "127.0.0.14").start()  # killed mid-crawl (test 1)
        self.victim2 = Tinyproxy(workdir, "127.0.0.15").start()  # killed after the agent restart
        self.victim3 = Tinyproxy(workdir, "127.0.0.17").start()  # killed mid-crawl with rotating-proxies
        self.refusing = f"http://user:secret@127.0.0.16:{free_port('127.0.0.16')}"  # nothing listens
        self.blackholed = f"http://{BLACKHOLE}:3128"  # SYNs vanish
        self.blackholed2 = f"http://{BLACKHOLE}:3132"  # used only by the rotating-proxies test
        self.proxies = [p.url for p in self.healthy] + [self.victim.url, self.victim2.url, self.victim3.url,
                                                        self.refusing, self.blackholed]
        self.dsts = [proxy_key(p) for p in self.proxies]
        self.pool = self.dsts + [proxy_key(self.blackholed2)]
        self.agent = Agent(workdir, agent_config(pool=self.pool)).start()

    def spec(self, **kw):
        spec = {"mode": "connmon", "proxies": self.proxies, "socket": self.agent.socket, "target": self.target.url,
                "pages": PAGES, "concurrency": 32, "per_slot": 8, "download_timeout": 20, "retry_times": 5}
        spec.update(kw)
        return spec

    def close(self) -> None:
        self.agent.stop()
        for p in self.healthy + [self.victim, self.victim2, self.victim3]:
            p.kill()
        self.target.close()


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    w = World(str(tmp_path_factory.mktemp("scrapy")))
    yield w
    w.close()


def every_page_fetched(report, pages=PAGES):
    assert report["failed"] == [], report["failed"]
    assert sorted(report["fetched"]) == sorted(set(report["fetched"])), "a page was fetched twice"
    assert len(report["fetched"]) == pages, (len(report["fetched"]), report["log"][-3000:])


def assert_nothing_sent_after_eviction(report, log, proxies):
    """No connect to an evicted proxy started after the crawl acted on the eviction (the
    reactor aborted what was in flight through it) and before it acted on a reinstate. A
    download that had already started may open its connection between the agent's
    decision and that moment (milliseconds on a quiet host, checked to be < ACT_WITHIN)."""
    acted = intervals(report["history"])
    for proxy in proxies:
        dst = proxy_key(proxy)
        assert dst in acted, f"the crawl never acted on an eviction of {proxy}: {report['history']}"
        late = [c for c in log.connects_within(acted) if c["dst"] == dst]
        assert late == [], f"{len(late)} connects to {proxy} after the crawl acted on its eviction: {late[:3]}"
        window = acted[dst][0][0] - log.agent_intervals()[dst][0][0]
        assert window < ACT_WITHIN, f"the crawl acted {window:.3f} s after the agent evicted {proxy}"


def test_refusing_blackholed_and_killed_proxies(world):
    log = ConnectLog(world.agent.socket, world.dsts)
    try:
        report = crawl(world.spec(kill={"pid": world.victim.proc.pid, "after": 40}))
    finally:
        log.close()
    every_page_fetched(report)
    dead = [world.refusing, world.blackholed, world.victim.url]
    assert sorted(report["dead"]) == sorted(dead), report["dead"]
    assert_nothing_sent_after_eviction(report, log, dead)
    # Every proxy was tried; the dead ones only until connmon said so.
    for dst in world.dsts:
        if dst not in (proxy_key(world.victim2.url), proxy_key(world.victim3.url)):
            assert log.connects_to(dst), f"no connect to {dst} at all"
    # In-flight downloads through the blackholed proxy were aborted on the agent's
    # eviction (without it they would wait for the kernel's 15 s SYN timeout).
    aborts = [a for a in report["aborts"] if a["proxy"] == world.blackholed]
    assert aborts, report["aborts"]
    for a in aborts:
        delay = a["at"] - parse_ts(a["evict_ts"])
        assert 0 <= delay < ACT_WITHIN, f"aborted {delay:.3f} s after the eviction"
    stats = report["stats"]
    assert stats["connmon/evictions_seen"] >= 3, stats
    assert stats["connmon/inflight_aborted"] >= len(aborts), stats
    assert stats.get("connmon/requests_reassigned", 0) > 0, stats
    # No download waited for a timeout: every one through a dead proxy was aborted (the
    # crawl's duration, which this once bounded, depends on the host's load).
    timed_out = {k: v for k, v in stats.items()
                 if k.startswith("downloader/exception_type_count/") and k.endswith(TIMEOUT_ERRORS)}
    assert timed_out == {}, f"downloads waited for a timeout: {timed_out} (the crawl took {report['elapsed']:.1f} s)"


def test_a_second_spider_sends_nothing_to_evicted_proxies(world):
    dead = [world.refusing, world.blackholed, world.victim.url]
    log = ConnectLog(world.agent.socket, world.dsts)
    try:
        report = crawl(world.spec())
    finally:
        log.close()
    every_page_fetched(report)
    for proxy in dead:
        assert log.connects_to(proxy_key(proxy), after=report["started"]) == [], f"a connect to evicted {proxy}"
    assert report["stats"].get("connmon/inflight_aborted", 0) == 0
    assert report["pool_stats"]["evictions"] == 3, "the evictions came from the snapshot"
    # one download slot per live proxy, each used
    live = [p.url for p in world.healthy] + [world.victim2.url, world.victim3.url]
    assert sorted(report["slots"]) == sorted(f"connmon:{proxy_key(p)}" for p in live), report["slots"]


def test_agent_restarted_mid_crawl(world):
    progress = os.path.join(world.dir, "progress")
    proc = start_crawl(world.spec(pages=PAGES, progress=progress, per_slot=2, concurrency=8,
                                  settings={"CONNMON_STARTUP_WAIT": 5}))
    world.target.server.delay = 0.25
    try:
        wait_until(lambda: os.path.exists(progress) and int(open(progress).read() or 0) >= 10, 60,
                   "the crawl to make progress")
        world.agent.restart()
        log = ConnectLog(world.agent.socket, world.dsts)
        world.victim2.kill()  # the new agent evicts it; the crawl must follow
        report = finish_crawl(proc, timeout=120)
        log.close()
    finally:
        world.target.server.delay = 0.05
        if proc.poll() is None:
            proc.kill()
    every_page_fetched(report)
    assert report["pool_stats"]["reconnects"] >= 1, report["pool_stats"]
    assert report["pool_stats"]["resyncs"] >= 2, report["pool_stats"]
    assert "lost the agent" in report["log"] and "following agent" in report["log"]
    assert world.victim2.url in report["dead"], report["dead"]
    assert_nothing_sent_after_eviction(report, log, [world.victim2.url])
    # the evictions from before the restart are still known (state file + snapshot)
    for proxy in (world.refusing, world.blackholed, world.victim.url):
        assert log.connects_to(proxy_key(proxy)) == [], f"a connect to evicted {proxy} after the restart"


def test_rotating_proxies_feed(world):
    """scrapy-rotating-proxies with RotatingProxiesAddon (the feed + ConnmonDownloadHandler):
    the proxies evicted before the crawl get nothing; blackholed2, new to everyone, gets
    nothing once the crawl acted on its eviction — not even the requests
    RotatingProxyMiddleware had queued in its slot behind the stuck downloads, which
    are cancelled — and neither does victim3, killed mid-crawl."""
    before = [world.refusing, world.blackholed, world.victim.url, world.victim2.url]
    log = ConnectLog(world.agent.socket, world.pool)
    try:
        # 64 at once over 5 live proxies, 8 per proxy: requests wait in the slots
        report = crawl(world.spec(mode="feed", concurrency=64, proxies=world.proxies + [world.blackholed2],
                                  kill={"pid": world.victim3.proc.pid, "after": 40}))
    finally:
        log.close()
    every_page_fetched(report)
    assert log.connects_to(proxy_key(world.blackholed2), after=report["started"]), "blackholed2 was never used"
    assert_nothing_sent_after_eviction(report, log, [world.blackholed2])
    aborted = [a for a in report["aborts"] if a["proxy"] == world.blackholed2]
    assert aborted, report["aborts"]
    if proxy_key(world.victim3.url) in intervals(report["history"]):
        assert_nothing_sent_after_eviction(report, log, [world.victim3.url])
    dead = before + [world.blackholed2]
    # every evicted proxy is dead in rotating-proxies' list (its own ban detection may
    # add others: a connection a loaded machine lost counts as a ban there)
    assert set(dead) <= set(report["rotating_dead"]), report["rotating_dead"]
    for proxy in before:
        assert log.connects_to(proxy_key(proxy), after=report["started"]) == [], f"a connect to evicted {proxy}"
    assert log.connects_to(proxy_key(world.victim3.url), after=report["started"]), "victim3 was never used"
    stats = report["stats"]
    assert stats["connmon/rotating_marked_dead"] >= 5, stats
    assert "will still be sent to it" not in report["log"], "the add-on installs the handler"


def test_without_an_agent_it_rotates_over_all_proxies(world):
    healthy = [p.url for p in world.healthy]
    log = ConnectLog(world.agent.socket, world.dsts)
    try:
        report = crawl(world.spec(proxies=healthy, socket=os.path.join(world.dir, "no-agent.sock"),
                                  settings={"CONNMON_STARTUP_WAIT": 1}))
    finally:
        log.close()
    every_page_fetched(report)
    assert report["log"].count("no agent answered") == 1, report["log"][-3000:]
    assert report["log"].count("no agent at") == 1, report["log"][-3000:]
    for proxy in healthy:
        assert log.connects_to(proxy_key(proxy), after=report["started"]), f"{proxy} was never used"


def test_the_agent_knows_every_proxy(world):
    with Client(world.agent.socket) as c:
        pool = c.pool_list()["pool"]
    assert sorted(pool) == sorted(world.pool)



def readme_recipe(marker):
    readme = open(os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "README.md")).read()
    after = readme[readme.index(marker):]
    code = after[after.index("```python\n") + len("```python\n"):]
    return code[:code.index("```")]


RECIPES = ("`requests` —", "`httpx` —", "`aiohttp` —")


def test_readme_recipes_for_requests_httpx_and_aiohttp(world):
    # The README's own code, with this world's socket. The dead proxies must be evicted
    # before it runs: the earlier crawls evicted most of them, but victim3 (killed in the
    # rotating-proxies crawl) may have failed too few times there; whatever the agent
    # has not ejected yet is ejected by hand, so the recipes meet five evicted proxies.
    dead = (world.refusing, world.blackholed, world.victim.url, world.victim2.url, world.victim3.url)
    with Client(world.agent.socket) as c:
        ejected = {d["dst"] for d in c.snapshot()["destinations"] if d.get("state") == "ejected"}
        for proxy in dead:
            if proxy_key(proxy) not in ejected:
                c.evict(proxy_key(proxy), for_ms=600_000)
    pages = [f"{world.target.url}/page/r{i}" for i in range(12)]
    before = world.target.server.hits
    log = ConnectLog(world.agent.socket, world.dsts)
    started = time.time()
    used = set()
    try:
        for marker in RECIPES:
            code = readme_recipe(marker).replace("LivePool(PROXIES", "LivePool(PROXIES, socket=SOCKET")
            assert "socket=SOCKET" in code, f"README {marker}: no LivePool(PROXIES...) to point at the test agent"
            scope = {"PROXIES": world.proxies, "URLS": pages, "SOCKET": world.agent.socket}
            exec(compile(code, f"README {marker}", "exec"), scope)
            if marker.startswith("`aiohttp`"):
                bodies = asyncio.run(asyncio.wait_for(scope["main"](), 60))
                assert len(bodies) == len(pages) and all("<h1>/page/r" in b for b in bodies)
            else:
                assert scope["pool"].wait_synced(10)
                for u in pages:
                    resp = scope["get"](u)
                    assert resp.status_code == 200 and f"<h1>{u[len(world.target.url):]}</h1>" in resp.text, \
                        (marker, u, resp.status_code)
                scope["pool"].close()
                for client in scope.get("clients", {}).values():
                    client.close()
            used.add(marker)
    finally:
        log.close()
    assert used == set(RECIPES)
    # every page of every recipe reached the target through a proxy (tinyproxy), none twice
    assert world.target.server.hits - before == len(RECIPES) * len(pages)
    proxied = [c for c in log.connects if c["start"] >= started and c.get("outcome") == "established"]
    assert proxied, "no recipe connected to a proxy"
    for proxy in dead:
        assert log.connects_to(proxy_key(proxy), after=started) == [], f"a connect to evicted {proxy}"


def test_the_middleware_alone_still_works_and_says_what_it_cannot_do(world):
    healthy = [p.url for p in world.healthy]
    report = crawl(world.spec(proxies=healthy, settings={
        "ADDONS": {}, "DOWNLOADER_MIDDLEWARES": {"connmon.scrapy.ConnmonProxyMiddleware": 350}}))
    every_page_fetched(report)
    assert report["log"].count("will not be aborted (use ConnmonAddon)") == 1, report["log"][-3000:]
    assert report["stats"]["connmon/requests_assigned"] == PAGES


def test_a_suspect_proxy_is_left_before_its_eviction(world, tmp_path):
    """With the default policy (2 SYN retransmits evict, ~3 s), connmon's `suspect` at
    the first retransmit (~1 s) makes the crawl cancel its downloads through a
    blackholed proxy and leave it, two seconds before the eviction."""
    blackholed = f"http://{BLACKHOLE}:3131"  # never used before: the agent knows nothing of it
    healthy = [p.url for p in world.healthy]
    proxies = healthy + [blackholed]
    agent = Agent(str(tmp_path), agent_config([proxy_key(p) for p in proxies], syn_retransmits=2)).start()
    log = ConnectLog(agent.socket, [proxy_key(blackholed)])
    suspects = []
    watcher = Client(agent.socket)
    watcher.subscribe(types=["suspect"])
    try:
        # The crawl must follow the agent before its first request, or it misses the
        # suspect (~1 s after that request): the default 5 s wait for the first snapshot
        # once ran out on a loaded host. A deadline, ended by the snapshot.
        report = crawl(world.spec(proxies=proxies, socket=agent.socket, pages=80,
                                  settings={"CONNMON_STARTUP_WAIT": 30 * patience()}))
    finally:
        log.close()
        agent.stop()
    for event in watcher.events():
        if event.get("type") == "suspect" and event.get("dst") == proxy_key(blackholed):
            suspects.append(parse_ts(event["ts"]))
            break
    watcher.close()
    every_page_fetched(report, pages=80)
    assert suspects, "the agent never called the blackholed proxy a suspect"
    stats = report["stats"]
    assert "connmon/agent_unavailable_at_start" not in stats, \
        ("the crawl did not follow the agent from its start", report["log"][-3000:])
    assert stats.get("connmon/suspects_seen", 0) >= 1, stats
    on_suspect = [a for a in report["aborts"] if a["proxy"] == blackholed and a["why"] == "suspect"]
    assert on_suspect, report["aborts"]
    for a in on_suspect:
        delay = a["at"] - parse_ts(a["evict_ts"])
        assert 0 <= delay < ACT_WITHIN, f"aborted {delay:.3f} s after the suspect"
    # once the crawl acted on the suspect, nothing more went to the blackholed proxy
    acted = min(a["at"] for a in on_suspect)
    late = log.connects_to(proxy_key(blackholed), after=acted)
    assert late == [], f"{len(late)} connects to the suspect after the crawl left it"
