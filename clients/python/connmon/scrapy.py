"""Scrapy integration: connmon's evictions steer the proxy of every request and retry.

Turn everything on with the add-on (Scrapy ≥ 2.10)::

    ADDONS = {"connmon.scrapy.ConnmonAddon": 0}
    CONNMON_PROXIES = ["http://user:pw@10.0.0.7:3128", "10.0.0.8:3128", ...]
    CONNMON_SOCKET = "/run/connmon/connmon.sock"        # the default

which is the same as::

    DOWNLOADER_MIDDLEWARES = {"connmon.scrapy.ConnmonProxyMiddleware": 350}
    DOWNLOAD_HANDLERS = {"http": "connmon.scrapy.ConnmonDownloadHandler",
                         "https": "connmon.scrapy.ConnmonDownloadHandler"}

- :class:`ConnmonProxyMiddleware` gives every request **and every retry** a proxy
  connmon has not evicted (a retry avoids the proxy that just failed), one download slot
  per proxy (``download_slot = "connmon:<ip:port>"``), and re-queues on a live proxy the
  requests whose download was aborted because their proxy was evicted.
- :class:`ConnmonDownloadHandler` wraps the real HTTP handler
  (``CONNMON_DOWNLOAD_HANDLER``, default Scrapy's HTTP/1.1 one). It refuses to start a
  download through a proxy evicted while the request waited in its slot, and when
  connmon evicts a proxy it cancels the downloads in flight through it at once —
  ``Deferred.cancel()`` on the handler's download, Scrapy's own timeout mechanism — so
  they are retried on a live proxy instead of waiting for ``DOWNLOAD_TIMEOUT``.
- **Suspects.** connmon's early warning — ``suspect``: a connect to a live proxy had its
  first SYN retransmitted, ~1 s without an answer, the first sign of a blackholed proxy,
  ~2 s before the eviction with the default policy — is acted on too
  (``CONNMON_ON_SUSPECT``): ``"abort"`` (the default) cancels the downloads in flight
  through the proxy and re-queues them elsewhere, and until a response comes back through
  it (or ``CONNMON_SUSPECT_TTL`` seconds, default 10, pass) new requests go to other
  proxies; ``"avoid"`` does the latter only; ``"off"`` ignores suspects. The price of a
  false alarm (one SYN lost on a healthy proxy) is re-downloading what was in flight
  through it — at most its slot's concurrency.
- :class:`RotatingProxiesFeed` is an extension for scrapy-rotating-proxies users: it
  marks proxies dead/good in that middleware's list from connmon's verdicts, and keeps
  its ban detection. With :class:`ConnmonDownloadHandler` installed too (the
  :class:`RotatingProxiesAddon` does both), requests RotatingProxyMiddleware had already
  assigned to a proxy before its eviction are stopped before they are sent, and
  downloads in flight through it are cancelled; both come back to RotatingProxyMiddleware
  as a failure of that proxy, which retries them on another one.

Without an agent, the pool counts every proxy as alive, so requests rotate over all of
them; it logs that once and reconnects in the background. Stats go to Scrapy's stats
collector under ``connmon/``.

Other settings: ``CONNMON_RESOLVE`` (False: proxies must be IP addresses; True: host
names are resolved once at start), ``CONNMON_STARTUP_WAIT`` (seconds to wait for the
first snapshot before the first request; default 5; 0 = do not wait).
"""

from __future__ import annotations

import collections
import logging
import time
import weakref
from typing import Any, Dict, List, Optional, Set, Tuple

from scrapy import signals
from scrapy.exceptions import NotConfigured
from scrapy.http import Request, Response
from scrapy.utils.defer import deferred_from_coro, maybe_deferred_to_future
from scrapy.utils.misc import build_from_crawler, load_object
from twisted.internet.defer import Deferred

from .client import DEFAULT_SOCKET, Message
from .pool import LivePool, proxy_key

log = logging.getLogger("connmon.scrapy")

DEFAULT_HANDLER = "scrapy.core.downloader.handlers.http11.HTTP11DownloadHandler"
SLOT_PREFIX = "connmon:"


class ProxyEvicted(Exception):
    """The request's proxy was evicted by connmon (or, ``suspect=True``, called a suspect)
    before or during its download."""

    def __init__(self, proxy: str, in_flight: bool, suspect: bool = False) -> None:
        state = "while downloading through it" if in_flight else "before the download started"
        verdict = "called proxy {} a suspect" if suspect else "evicted proxy {}"
        super().__init__(f"connmon {verdict.format(proxy)} {state}")
        self.proxy = proxy
        self.in_flight = in_flight
        self.suspect = suspect


def _proxy_list(value: Any) -> List[str]:
    # The old README recipe used a dict {"ip:port": "http://ip:port"}: take its values.
    if isinstance(value, dict):
        return [str(v) for v in value.values()]
    if isinstance(value, str):
        return [p for p in value.replace(",", " ").split() if p]
    return [str(p) for p in value]


def _same_proxy(meta_proxy: Any, ours: str) -> bool:
    """Whether ``meta["proxy"]`` is still the proxy we assigned (Scrapy's
    HttpProxyMiddleware rewrites it without the userinfo)."""
    if meta_proxy == ours:
        return True
    if not isinstance(meta_proxy, str):
        return False
    try:
        return proxy_key(meta_proxy) == proxy_key(ours)
    except ValueError:
        return False


class _Download:
    __slots__ = ("deferred", "aborted", "ours")

    def __init__(self, deferred: "Deferred[Response]", ours: bool) -> None:
        self.deferred = deferred
        self.aborted: Optional[str] = None
        """Why it was cancelled: ``"evict"`` or ``"suspect"``."""
        self.ours = ours
        """Assigned by :class:`ConnmonProxyMiddleware` (not by scrapy-rotating-proxies)."""


SUSPECT_MODES = ("abort", "avoid", "off")


def _rotating_proxy_list(settings: Any) -> List[str]:
    """scrapy-rotating-proxies' ``ROTATING_PROXY_LIST`` (or ``_PATH``), as URLs."""
    proxies = settings.getlist("ROTATING_PROXY_LIST")
    path = settings.get("ROTATING_PROXY_LIST_PATH")
    if path:
        with open(path) as f:
            proxies = [line.strip() for line in f if line.strip()]
    return [p if "://" in p else "http://" + p for p in proxies if not p.startswith("#")]


class _CrawlerState:
    """One per crawler, shared by the middleware, the download handler and the feed:
    the :class:`LivePool` and the downloads in flight per proxy."""

    def __init__(self, crawler: Any, proxies: List[str]) -> None:
        settings = crawler.settings
        self.crawler = crawler
        self.stats = crawler.stats
        from twisted.internet import reactor

        self.reactor = reactor
        self.inflight: Dict[str, Set[_Download]] = {}
        self.acted_at: Dict[str, float] = {}
        """Proxy → ``time.time()`` when the reactor acted on its latest eviction (aborted
        what was in flight). From then on nothing is sent to it; between the pool
        learning of the eviction (``pool.evicted_at``) and this moment, a download that
        had already started may still open its connection."""
        self.history: "collections.deque[Tuple[float, str, str]]" = collections.deque(maxlen=10000)
        """``(time.time(), "evict" | "reinstate", proxy)`` as the reactor acted on them."""
        self.aborts: "collections.deque[Dict[str, Any]]" = collections.deque(maxlen=1000)
        """The latest aborted downloads: proxy, the evict's (or suspect's) ``ts``, ``at``
        (time.time()) and ``why`` (``"evict"`` | ``"suspect"``)."""
        self.listeners: List[Any] = []
        self.feeds = 0
        """How many RotatingProxiesFeed follow this pool (the handler then also guards
        scrapy-rotating-proxies' requests)."""
        self.suspect_mode = str(settings.get("CONNMON_ON_SUSPECT") or "abort").lower()
        if self.suspect_mode not in SUSPECT_MODES:
            raise NotConfigured(f"connmon: CONNMON_ON_SUSPECT must be one of {SUSPECT_MODES}, not {self.suspect_mode!r}")
        self.suspect_ttl = settings.getfloat("CONNMON_SUSPECT_TTL", 10.0)
        self.suspects: Dict[str, float] = {}
        """Proxy → ``time.monotonic()`` when connmon called it a suspect; cleared by a
        response through it, its eviction, or after ``CONNMON_SUSPECT_TTL``."""
        self.pool = LivePool(
            proxies,
            settings.get("CONNMON_SOCKET") or DEFAULT_SOCKET,
            on_evict=self._evict_from_thread,
            on_reinstate=self._reinstate_from_thread,
            on_suspect=self._suspect_from_thread if self.suspect_mode != "off" else None,
            resolve=settings.getbool("CONNMON_RESOLVE", False),
        )
        wait = settings.getfloat("CONNMON_STARTUP_WAIT", 5.0)
        if wait > 0:
            self.pool.wait_ready(wait)
        if not self.pool.synced.is_set():
            log.warning(
                "connmon: no agent answered at %s; rotating over all %d proxies until one does",
                self.pool.socket,
                len(self.pool.proxies),
            )
            self.stats.set_value("connmon/agent_unavailable_at_start", 1)
        crawler.signals.connect(self.record_stats, signal=signals.spider_closed)
        crawler.signals.connect(self.close, signal=signals.engine_stopped)

    def record_stats(self) -> None:
        for key, value in self.pool.stats.items():
            self.stats.set_value(f"connmon/pool_{key}", value)

    def close(self) -> None:
        self.pool.close()
        self.record_stats()

    # Called on the pool's thread: hop to the reactor.
    def _evict_from_thread(self, proxy: str, event: Message) -> None:
        self.reactor.callFromThread(self._evicted, proxy, event)

    def _reinstate_from_thread(self, proxy: str, event: Message) -> None:
        self.reactor.callFromThread(self._reinstated, proxy, event)

    def _suspect_from_thread(self, proxy: str, event: Message) -> None:
        self.reactor.callFromThread(self._suspected, proxy, event)

    def canonical(self, proxy: Any) -> Optional[str]:
        """The pool's spelling of ``proxy`` (a URL as in ``meta["proxy"]``), if it is one
        of the pool's proxies."""
        if not isinstance(proxy, str):
            return None
        for key in self.pool._lookup(proxy):
            same = self.pool._by_key.get(key)
            if same:
                return same[0]
        return None

    def is_suspect(self, proxy: str) -> bool:
        since = self.suspects.get(proxy)
        if since is None:
            return False
        if time.monotonic() - since > self.suspect_ttl:
            del self.suspects[proxy]
            return False
        return True

    def fresh_suspects(self) -> List[str]:
        return [p for p in list(self.suspects) if self.is_suspect(p)]

    def cleared(self, proxy: str) -> None:
        """A response came back through ``proxy``: it is not blackholed."""
        if self.suspects.pop(proxy, None) is not None:
            self.stats.inc_value("connmon/suspects_cleared")

    def _abort(self, proxy: str, event: Message, why: str, only_ours: bool) -> int:
        downloads = [d for d in self.inflight.get(proxy, ()) if (d.ours or not only_ours) and not d.aborted]
        for download in downloads:
            download.aborted = why
            self.aborts.append({"proxy": proxy, "evict_ts": event.get("ts"), "at": time.time(), "why": why})
            self.stats.inc_value("connmon/inflight_aborted")
            if why == "suspect":
                self.stats.inc_value("connmon/inflight_aborted_on_suspect")
            download.deferred.cancel()
        return len(downloads)

    def _evicted(self, proxy: str, event: Message) -> None:
        self.stats.inc_value("connmon/evictions_seen")
        self.suspects.pop(proxy, None)
        self.acted_at[proxy] = time.time()
        self.history.append((self.acted_at[proxy], "evict", proxy))
        if self.inflight.get(proxy):
            log.info("connmon: %s evicted (%s); aborting %d downloads through it", proxy,
                     event.get("reason", event.get("source")), len(self.inflight[proxy]))
        self._abort(proxy, event, "evict", only_ours=False)
        for listener in self.listeners:
            listener.connmon_evicted(proxy, event)

    def _suspected(self, proxy: str, event: Message) -> None:
        if self.pool.is_dead(proxy):
            return
        self.stats.inc_value("connmon/suspects_seen")
        self.suspects[proxy] = time.monotonic()
        if self.suspect_mode == "abort":
            aborted = self._abort(proxy, event, "suspect", only_ours=True)
            if aborted:
                log.info("connmon: %s is a suspect (a SYN retransmitted); re-queueing %d downloads through it",
                         proxy, aborted)

    def _reinstated(self, proxy: str, event: Message) -> None:
        self.stats.inc_value("connmon/reinstatements_seen")
        self.history.append((time.time(), "reinstate", proxy))
        for listener in self.listeners:
            listener.connmon_reinstated(proxy, event)


_STATES: "weakref.WeakKeyDictionary[Any, _CrawlerState]" = weakref.WeakKeyDictionary()


def crawler_pool(crawler: Any, proxies: Optional[List[str]] = None) -> _CrawlerState:
    """The crawler's shared state, created on first use from ``CONNMON_PROXIES`` (or
    ``proxies``)."""
    state = _STATES.get(crawler)
    if state is None:
        if proxies is None:
            proxies = _proxy_list(crawler.settings.get("CONNMON_PROXIES") or [])
        if not proxies:
            # scrapy-rotating-proxies + RotatingProxiesFeed: the handler may be built first.
            proxies = _rotating_proxy_list(crawler.settings)
        if not proxies:
            raise NotConfigured("connmon: CONNMON_PROXIES (or ROTATING_PROXY_LIST) is empty")
        state = _CrawlerState(crawler, proxies)
        _STATES[crawler] = state
    return state


def _is_connmon_handler(path: Any) -> bool:
    if path is None:
        return False
    try:
        cls = load_object(path) if isinstance(path, str) else path
    except Exception:
        return False
    return isinstance(cls, type) and issubclass(cls, ConnmonDownloadHandler)


class ConnmonProxyMiddleware:
    """Assigns each request and each retry a live proxy; see the module's doc."""

    def __init__(self, crawler: Any) -> None:
        self.crawler = crawler
        self.state = crawler_pool(crawler)
        self.pool = self.state.pool
        self.stats = crawler.stats
        self._all_dead_logged = False
        handlers = crawler.settings.getwithbase("DOWNLOAD_HANDLERS")
        if not all(_is_connmon_handler(handlers.get(scheme)) for scheme in ("http", "https")):
            log.warning(
                "connmon: DOWNLOAD_HANDLERS does not use connmon.scrapy.ConnmonDownloadHandler for http and https: "
                "downloads in flight through an evicted proxy will not be aborted (use ConnmonAddon)"
            )

    @classmethod
    def from_crawler(cls, crawler: Any) -> ConnmonProxyMiddleware:
        return cls(crawler)

    def process_request(self, request: Request, spider: Any = None) -> None:
        meta = request.meta
        current = meta.get("connmon_proxy")
        if current is None and "proxy" in meta:
            return None  # the spider chose a proxy itself
        if current is not None and not _same_proxy(meta.get("proxy"), current):
            return None  # something else changed the proxy since: leave it
        retry_times = meta.get("retry_times", 0)
        is_retry = current is not None and retry_times != meta.get("connmon_retry_times", 0)
        reassigned = meta.pop("connmon_reassign", False)
        if current is not None and not is_retry and not reassigned and not self.pool.is_dead(current):
            return None
        exclude = [current] if current is not None else []
        proxy = self.pool.choose(exclude=exclude + self.state.fresh_suspects())
        if proxy is not None and self.state.is_suspect(proxy):
            proxy = self.pool.choose(exclude=exclude) or proxy  # every live proxy is a suspect
        if proxy is None:
            proxy = self._least_recently_evicted()
        if current is None:
            self.stats.inc_value("connmon/requests_assigned")
        else:
            self.stats.inc_value("connmon/requests_reassigned")
        meta["proxy"] = proxy
        meta["connmon_proxy"] = proxy
        meta["connmon_retry_times"] = retry_times
        meta["download_slot"] = SLOT_PREFIX + proxy_key(proxy)
        return None

    def _least_recently_evicted(self) -> str:
        self.stats.inc_value("connmon/no_live_proxy")
        if not self._all_dead_logged:
            log.warning("connmon: every proxy is evicted; using the one evicted longest ago")
            self._all_dead_logged = True
        evicted_at = self.pool.evicted_at
        return min(self.pool.proxies, key=lambda p: evicted_at.get(p, 0.0))

    def process_response(self, request: Request, response: Response, spider: Any = None) -> Response:
        proxy = request.meta.get("connmon_proxy")
        if proxy is not None and self.state.suspects:
            self.state.cleared(proxy)
        return response

    def process_exception(self, request: Request, exception: BaseException, spider: Any = None) -> Optional[Request]:
        if not isinstance(exception, ProxyEvicted) or request.meta.get("connmon_proxy") is None:
            return None
        retry = request.copy()
        retry.meta["connmon_reassign"] = True
        retry.dont_filter = True
        self.stats.inc_value("connmon/requests_requeued_after_eviction")
        log.debug("connmon: %s; re-queueing %s", exception, request)
        return retry


class ConnmonDownloadHandler:
    """Wraps the real HTTP download handler so that downloads through a proxy connmon
    evicts are cancelled at once; see the module's doc."""

    lazy = False

    def __init__(self, crawler: Any) -> None:
        self.state = crawler_pool(crawler)
        path = crawler.settings.get("CONNMON_DOWNLOAD_HANDLER") or DEFAULT_HANDLER
        self.inner = build_from_crawler(load_object(path), crawler)

    @classmethod
    def from_crawler(cls, crawler: Any) -> ConnmonDownloadHandler:
        return cls(crawler)

    def _followed_proxy(self, request: Request) -> Tuple[Optional[str], bool]:
        """The pool's proxy this request goes through, and whether ConnmonProxyMiddleware
        assigned it (else scrapy-rotating-proxies did, with RotatingProxiesFeed on)."""
        meta = request.meta
        proxy = meta.get("connmon_proxy")
        if proxy is not None:
            return (proxy, True) if _same_proxy(meta.get("proxy"), proxy) else (None, False)
        if meta.get("_rotating_proxy") and self.state.feeds:
            return self.state.canonical(meta.get("proxy")), False
        return None, False

    async def download_request(self, request: Request, spider: Any = None) -> Response:
        proxy, ours = self._followed_proxy(request)
        if proxy is None:
            return await self._inner_download(request)
        state = self.state
        if state.pool.is_dead(proxy):
            state.stats.inc_value("connmon/requests_held_back")
            raise ProxyEvicted(proxy, in_flight=False)
        if ours and state.suspect_mode == "abort" and state.is_suspect(proxy) \
                and any(not state.is_suspect(p) for p in state.pool.alive()):
            state.stats.inc_value("connmon/requests_held_back_suspect")
            raise ProxyEvicted(proxy, in_flight=False, suspect=True)
        deferred = deferred_from_coro(self._inner_download(request))
        download = _Download(deferred, ours)
        state.inflight.setdefault(proxy, set()).add(download)
        try:
            return await maybe_deferred_to_future(deferred)
        except BaseException:
            if download.aborted:
                raise ProxyEvicted(proxy, in_flight=True, suspect=download.aborted == "suspect") from None
            raise
        finally:
            self.state.inflight[proxy].discard(download)

    async def _inner_download(self, request: Request) -> Response:
        result = self.inner.download_request(request)
        if isinstance(result, Deferred):  # an old-style handler
            response: Response = await maybe_deferred_to_future(result)
        else:
            response = await result
        return response

    async def close(self) -> None:
        close = getattr(self.inner, "close", None)
        if close is None:
            return
        result = close()
        if isinstance(result, Deferred):
            await maybe_deferred_to_future(result)
        elif result is not None:
            await result


class ConnmonAddon:
    """Scrapy add-on: installs :class:`ConnmonProxyMiddleware` (priority 350, before
    Scrapy's HttpProxyMiddleware) and :class:`ConnmonDownloadHandler` for http/https."""

    def update_settings(self, settings: Any) -> None:
        settings["DOWNLOADER_MIDDLEWARES"]["connmon.scrapy.ConnmonProxyMiddleware"] = 350
        for scheme in ("http", "https"):
            settings["DOWNLOAD_HANDLERS"][scheme] = "connmon.scrapy.ConnmonDownloadHandler"


class RotatingProxiesAddon:
    """Scrapy add-on for scrapy-rotating-proxies users: installs :class:`RotatingProxiesFeed`
    and :class:`ConnmonDownloadHandler` for http/https (RotatingProxyMiddleware and
    BanDetectionMiddleware stay as you configured them)."""

    def update_settings(self, settings: Any) -> None:
        settings["EXTENSIONS"]["connmon.scrapy.RotatingProxiesFeed"] = 500
        for scheme in ("http", "https"):
            settings["DOWNLOAD_HANDLERS"][scheme] = "connmon.scrapy.ConnmonDownloadHandler"


class RotatingProxiesFeed:
    """For scrapy-rotating-proxies users: connmon's verdicts mark proxies dead/good in
    ``RotatingProxyMiddleware``'s proxy list (its ban detection stays as it is).

    ::

        ADDONS = {"connmon.scrapy.RotatingProxiesAddon": 0}
        ROTATING_PROXY_LIST = [...]            # followed by connmon, no other setting

    An evicted proxy is marked dead, and marked dead again whenever rotating-proxies'
    own back-off would bring it back while connmon still has it evicted (its
    ``proxies.get_random`` never returns a proxy connmon has evicted); a reinstated proxy
    is marked good.

    With :class:`ConnmonDownloadHandler` as the http/https download handler (the add-on
    sets it), requests RotatingProxyMiddleware assigned to a proxy before its eviction —
    waiting in that proxy's download slot — are stopped before anything is sent, and
    downloads in flight through it are cancelled at the eviction. Both reach
    BanDetectionMiddleware and RotatingProxyMiddleware as a :class:`ProxyEvicted` failure
    of that proxy, so rotating-proxies retries them on another proxy (one of its
    ``ROTATING_PROXY_PAGE_RETRY_TIMES``). Without that handler the feed warns once:
    such requests still go to the dead proxy."""

    def __init__(self, crawler: Any) -> None:
        self.crawler = crawler
        self.stats = crawler.stats
        proxies = _rotating_proxy_list(crawler.settings)
        if not proxies:
            raise NotConfigured("RotatingProxiesFeed: ROTATING_PROXY_LIST is empty")
        self.state = crawler_pool(crawler, proxies=proxies)
        self.state.listeners.append(self)
        self.state.feeds += 1
        handlers = crawler.settings.getwithbase("DOWNLOAD_HANDLERS")
        if not all(_is_connmon_handler(handlers.get(scheme)) for scheme in ("http", "https")):
            log.warning(
                "connmon: DOWNLOAD_HANDLERS does not use connmon.scrapy.ConnmonDownloadHandler for http and https: "
                "requests rotating-proxies queued for a proxy before its eviction will still be sent to it "
                "(use RotatingProxiesAddon)"
            )
        self.rotating: Any = None
        self._task: Any = None
        crawler.signals.connect(self.engine_started, signal=signals.engine_started)
        crawler.signals.connect(self.engine_stopped, signal=signals.engine_stopped)

    @classmethod
    def from_crawler(cls, crawler: Any) -> RotatingProxiesFeed:
        return cls(crawler)

    def engine_started(self) -> None:
        from rotating_proxies.middlewares import RotatingProxyMiddleware
        from twisted.internet import task

        engine = self.crawler.engine
        for mw in engine.downloader.middleware.middlewares:
            if isinstance(mw, RotatingProxyMiddleware):
                self.rotating = mw
        if self.rotating is None:
            log.warning("connmon: RotatingProxiesFeed found no RotatingProxyMiddleware; it does nothing")
            return
        self._guard_choice()
        self._sync()
        self._task = task.LoopingCall(self._sync)
        self._task.start(1.0, now=False)

    def _guard_choice(self) -> None:
        """Wraps this middleware's ``proxies.get_random`` so that a proxy connmon has
        evicted is never handed out (it is marked dead again instead), and its
        ``proxies.reanimate`` so that rotating-proxies' own reanimation never brings one
        back to life."""
        proxies = self.rotating.proxies
        original = proxies.get_random
        pool = self.state.pool

        def get_random() -> Optional[str]:
            for _ in range(len(proxies.proxies) + 1):
                proxy: Optional[str] = original()
                if proxy is None or not pool.is_dead(proxy):
                    return proxy
                proxies.mark_dead(proxy)
                self.stats.inc_value("connmon/rotating_marked_dead")
            fallback: Optional[str] = original()
            return fallback

        proxies.get_random = get_random

        # rotating-proxies reanimates dead proxies on its own jittered schedule (the
        # backoff can be near zero): an evicted one is marked dead again at once, not at
        # the next second's sync.
        original_reanimate = proxies.reanimate

        def reanimate(*args: Any, **kwargs: Any) -> int:
            n: int = original_reanimate(*args, **kwargs)
            if n:
                self._sync()
            return n

        proxies.reanimate = reanimate

    def engine_stopped(self) -> None:
        if self._task is not None and self._task.running:
            self._task.stop()

    def _proxies_entry(self, proxy: str) -> Optional[str]:
        return self.rotating.proxies.get_proxy(proxy) if self.rotating is not None else None

    def _sync(self) -> None:
        """Re-marks dead what connmon still has evicted (rotating-proxies reanimates on
        its own schedule)."""
        proxies = self.rotating.proxies
        for proxy in self.state.pool.dead():
            entry = self._proxies_entry(proxy)
            if entry is not None and entry not in proxies.dead:
                proxies.mark_dead(entry)
                self.stats.inc_value("connmon/rotating_marked_dead")

    def connmon_evicted(self, proxy: str, event: Message) -> None:
        entry = self._proxies_entry(proxy)
        if entry is not None:
            self.rotating.proxies.mark_dead(entry)
            self.stats.inc_value("connmon/rotating_marked_dead")

    def connmon_reinstated(self, proxy: str, event: Message) -> None:
        entry = self._proxies_entry(proxy)
        if entry is not None:
            self.rotating.proxies.mark_good(entry)
            self.stats.inc_value("connmon/rotating_marked_good")


__all__ = [
    "ConnmonAddon",
    "ConnmonDownloadHandler",
    "ConnmonProxyMiddleware",
    "ProxyEvicted",
    "RotatingProxiesAddon",
    "RotatingProxiesFeed",
    "crawler_pool",
]
