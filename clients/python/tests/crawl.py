"""One Scrapy crawl in its own process (Twisted's reactor cannot restart), driven by a
JSON spec; writes a JSON report. Used by the tests (harness.crawl) and the benchmark.

    python crawl.py SPEC.json REPORT.json

spec: mode ("connmon" | "rotating" | "feed"), proxies (URLs), socket, target, pages,
concurrency, download_timeout, retry_times, kill ({"pid", "after"}: kill a proxy after
that many responses), progress (a file that gets the response count after each one).
"""

import json
import os
import signal
import sys
import time

import scrapy
from scrapy.crawler import CrawlerProcess


class PagesSpider(scrapy.Spider):
    name = "pages"

    def __init__(self, spec, **kw):
        super().__init__(**kw)
        self.spec = spec
        self.fetched = []
        self.failed = []
        self.killed_at = None
        self.slots = {}

    async def start(self):
        for req in self.start_requests():
            yield req

    def start_requests(self):
        for i in range(self.spec["pages"]):
            yield scrapy.Request(f"{self.spec['target']}/page/{i}", callback=self.parse, errback=self.failure,
                                 dont_filter=True)

    def parse(self, response):
        self.fetched.append(response.url)
        slot = response.meta.get("download_slot")
        self.slots[slot] = self.slots.get(slot, 0) + 1
        n = len(self.fetched)
        kill = self.spec.get("kill")
        if kill and self.killed_at is None and n >= kill["after"]:
            os.kill(kill["pid"], signal.SIGKILL)
            self.killed_at = time.time()
        progress = self.spec.get("progress")
        if progress:
            with open(progress + ".tmp", "w") as f:
                f.write(str(n))
            os.replace(progress + ".tmp", progress)

    def closed(self, reason):
        for mw in self.crawler.engine.downloader.middleware.middlewares:
            proxies = getattr(mw, "proxies", None)
            if proxies is not None and hasattr(proxies, "dead"):
                self.rotating_dead = sorted(proxies.dead)

    def failure(self, failure):
        self.failed.append({"url": failure.request.url, "error": repr(failure.value)})


def settings_for(spec):
    s = {
        "LOG_LEVEL": spec.get("log_level", "INFO"),
        "TELNETCONSOLE_ENABLED": False,
        "ROBOTSTXT_OBEY": False,
        "COOKIES_ENABLED": False,
        "CONCURRENT_REQUESTS": spec.get("concurrency", 32),
        "CONCURRENT_REQUESTS_PER_DOMAIN": spec.get("per_slot", 8),
        "DOWNLOAD_TIMEOUT": spec.get("download_timeout", 15),
        "RETRY_TIMES": spec.get("retry_times", 5),
        "DOWNLOAD_DELAY": 0,
        "RANDOMIZE_DOWNLOAD_DELAY": False,
    }
    mode = spec["mode"]
    if mode == "connmon":
        s["ADDONS"] = {"connmon.scrapy.ConnmonAddon": 0}
        s["CONNMON_PROXIES"] = spec["proxies"]
        s["CONNMON_SOCKET"] = spec["socket"]
    elif mode in ("rotating", "feed"):
        s["DOWNLOADER_MIDDLEWARES"] = {
            "rotating_proxies.middlewares.RotatingProxyMiddleware": 610,
            "rotating_proxies.middlewares.BanDetectionMiddleware": 620,
        }
        s["ROTATING_PROXY_LIST"] = spec["proxies"]
        s["ROTATING_PROXY_PAGE_RETRY_TIMES"] = spec.get("retry_times", 5)
        if mode == "feed":
            s["ADDONS"] = {"connmon.scrapy.RotatingProxiesAddon": 0}  # the feed + ConnmonDownloadHandler
            s["CONNMON_SOCKET"] = spec["socket"]
    else:
        raise SystemExit(f"unknown mode {mode}")
    s.update(spec.get("settings", {}))
    return s


def main():
    spec_path, out_path = sys.argv[1], sys.argv[2]
    with open(spec_path) as f:
        spec = json.load(f)
    process = CrawlerProcess(settings_for(spec))
    crawler = process.create_crawler(PagesSpider)
    started = time.time()
    process.crawl(crawler, spec=spec)
    process.start()
    elapsed = time.time() - started
    spider = crawler.spider
    stats = {k: v for k, v in crawler.stats.get_stats().items() if isinstance(v, (int, float, str))}
    report = {
        "elapsed": elapsed,
        "started": started,
        "fetched": spider.fetched,
        "failed": spider.failed,
        "killed_at": spider.killed_at,
        "slots": spider.slots,
        "stats": stats,
    }
    if spec["mode"] in ("connmon", "feed"):
        from connmon.scrapy import _STATES

        state = _STATES.get(crawler)
        if state is not None:
            report["aborts"] = list(state.aborts)
            report["evicted_at"] = dict(state.pool.evicted_at)
            report["acted_at"] = dict(state.acted_at)
            report["history"] = list(state.history)
            report["pool_stats"] = dict(state.pool.stats)
            report["dead"] = state.pool.dead()
    report["rotating_dead"] = getattr(spider, "rotating_dead", None)
    with open(out_path, "w") as f:
        json.dump(report, f, default=str)


if __name__ == "__main__":
    main()
