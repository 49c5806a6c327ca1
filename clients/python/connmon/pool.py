"""A live view of which proxies connmon has evicted, kept current in the background.

:class:`LivePool` (a daemon thread) and :class:`AsyncLivePool` (an asyncio task) both

- subscribe to ``evict``/``reinstate`` (and ``suspect`` when given ``on_suspect``) and
  then take a ``snapshot``, so a pool started
  after an eviction knows about it at once (the agent does not re-announce ejections);
- resynchronise from a new ``snapshot`` after a ``lagged`` notice (events were lost);
- reconnect with exponential backoff when the agent is absent, restarts or says
  ``bye``, logging once per outage (not per attempt), and keep their last view while
  disconnected;
- answer :meth:`~PoolView.alive`, :meth:`~PoolView.is_dead` and
  :meth:`~PoolView.choose` from memory, thread-safely, without waiting for the agent.

Proxies are given as URLs (``http://user:pw@1.2.3.4:8080``, ``http://[2001:db8::7]:3128``)
or as ``ip:port`` / ``[v6]:port``; :func:`proxy_key` turns each into the ``dst`` connmon
writes. connmon sees IP addresses, not names: a proxy given by host name is an error
unless ``resolve=True``, which resolves it once, when the pool is built
(:func:`socket.getaddrinfo`), and matches every address it resolves to.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import random
import socket
import threading
import time
from typing import Any, Callable, Dict, Iterable, List, Optional, Set, Tuple, Union
from urllib.parse import urlsplit

from .client import DEFAULT_SOCKET, AsyncClient, Client, ConnmonError, Message

log = logging.getLogger("connmon")

Callback = Callable[[str, Message], None]
"""``callback(proxy, event)``: the proxy as given to the pool, and the ``evict`` or
``reinstate`` event (for a change learned from a snapshot, a dict with ``"type"``,
``"dst"`` and ``"source": "snapshot"``), or the ``suspect`` event."""

_DEFAULT_PORTS = {"http": 80, "https": 443, "socks4": 1080, "socks5": 1080, "socks5h": 1080}


def _parse(proxy: str) -> Tuple[str, int]:
    text = proxy.strip()
    parts = urlsplit(text if "://" in text else "//" + text)
    host = parts.hostname
    try:
        port = parts.port
    except ValueError as err:
        raise ValueError(f"proxy {proxy!r}: {err}") from None
    if port is None:
        port = _DEFAULT_PORTS.get(parts.scheme)
    if not host or port is None:
        raise ValueError(f"proxy {proxy!r}: expected a URL with a port (http://1.2.3.4:8080) or ip:port")
    return host, port


def _format(addr: str, port: int) -> str:
    ip = ipaddress.ip_address(addr)
    if ip.version == 6:
        if ip.ipv4_mapped is not None:
            return f"{ip.ipv4_mapped}:{port}"
        return f"[{ip.compressed}]:{port}"
    return f"{ip}:{port}"


def proxy_keys(proxy: str, resolve: bool = False) -> List[str]:
    """The ``dst`` strings connmon would write for connects to ``proxy``.

    ``resolve=False``: the host must be an IP literal (else :class:`ValueError`);
    ``resolve=True``: a host name is resolved now, every address counts."""
    host, port = _parse(proxy)
    try:
        return [_format(host, port)]
    except ValueError:
        if not resolve:
            raise ValueError(
                f"proxy {proxy!r}: {host!r} is a host name; connmon reports IP addresses — "
                "give the proxy's IP address, or pass resolve=True to resolve it once now"
            ) from None
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return sorted({_format(str(info[4][0]), port) for info in infos})


def proxy_key(proxy: str) -> str:
    """The ``dst`` connmon writes for ``proxy`` (an IP-literal URL or ``ip:port``)."""
    return proxy_keys(proxy)[0]


class PoolView:
    """The state both pools share: which of the given proxies are dead, guarded by a lock.

    ``proxies`` keep their order and spelling; every method that returns proxies returns
    them as given."""

    def __init__(
        self,
        proxies: Iterable[str],
        *,
        on_evict: Optional[Callback] = None,
        on_reinstate: Optional[Callback] = None,
        on_suspect: Optional[Callback] = None,
        resolve: bool = False,
    ) -> None:
        self.proxies: List[str] = list(dict.fromkeys(proxies))
        if not self.proxies:
            raise ValueError("a pool needs at least one proxy")
        self._by_key: Dict[str, List[str]] = {}
        self._keys: Dict[str, List[str]] = {}
        for proxy in self.proxies:
            keys = proxy_keys(proxy, resolve=resolve)
            self._keys[proxy] = keys
            for key in keys:
                self._by_key.setdefault(key, []).append(proxy)
        self.on_evict = on_evict
        self.on_reinstate = on_reinstate
        self.on_suspect = on_suspect
        """``on_suspect(proxy, event)``: connmon's early warning that a live proxy may be
        blackholed — a connect to it has just had its first SYN retransmitted (~1 s
        without an answer). It is not an eviction (one lost SYN is enough) and the pool's
        view does not change; set at construction (it adds ``suspect`` to the
        subscription). Not called for a proxy the pool has as dead."""
        self._lock = threading.Lock()
        self._dead_keys: Set[str] = set()
        self._rr = random.randrange(len(self.proxies))
        self.connected = False
        self.synced = threading.Event()
        """Set once the first snapshot has been applied."""
        self.ready = threading.Event()
        """Set once the first snapshot has been applied or the first attempt failed."""
        self.stats: Dict[str, int] = {
            "connects": 0,
            "reconnects": 0,
            "resyncs": 0,
            "lagged": 0,
            "evictions": 0,
            "reinstatements": 0,
            "suspects": 0,
        }
        self.evicted_at: Dict[str, float] = {}
        """Proxy → ``time.time()`` when this pool learned of its latest eviction."""

    # --- queries -------------------------------------------------------------------

    def _lookup(self, proxy: str) -> List[str]:
        if proxy in self._keys:
            return self._keys[proxy]
        try:
            return proxy_keys(proxy)
        except ValueError:
            return []

    def _dead_proxy(self, proxy: str) -> bool:
        keys = self._keys[proxy]
        return any(k in self._dead_keys for k in keys)

    def is_dead(self, proxy: str) -> bool:
        """Whether connmon has evicted ``proxy`` (a URL, ``ip:port`` or one of the pool's
        entries) and not reinstated it, as far as this pool knows."""
        keys = self._lookup(proxy)
        with self._lock:
            return any(k in self._dead_keys for k in keys)

    def alive(self) -> List[str]:
        """The proxies not evicted, in the order given."""
        with self._lock:
            return [p for p in self.proxies if not self._dead_proxy(p)]

    def dead(self) -> List[str]:
        """The proxies evicted, in the order given."""
        with self._lock:
            return [p for p in self.proxies if self._dead_proxy(p)]

    def choose(self, exclude: Iterable[str] = ()) -> Optional[str]:
        """A live proxy not in ``exclude``, round-robin. If every live proxy is excluded,
        a live excluded one; if every proxy is dead, ``None`` (the caller decides)."""
        excluded: Set[str] = set()
        for proxy in exclude:
            excluded.update(self._lookup(proxy))
        with self._lock:
            alive = [p for p in self.proxies if not self._dead_proxy(p)]
            if not alive:
                return None
            preferred = [p for p in alive if not excluded.intersection(self._keys[p])] or alive
            self._rr += 1
            return preferred[self._rr % len(preferred)]

    # --- updates (from the follower) ------------------------------------------------

    def _apply_event(self, event: Message) -> None:
        kind = event.get("type")
        dst = event.get("dst")
        if dst not in self._by_key:
            return
        if kind == "suspect":
            self._suspected(dst, event)
            return
        if kind not in ("evict", "reinstate"):
            return
        with self._lock:
            if kind == "evict":
                changed = dst not in self._dead_keys
                self._dead_keys.add(dst)
            else:
                changed = dst in self._dead_keys
                self._dead_keys.discard(dst)
        if changed:
            self._changed(kind, dst, event)

    def _apply_snapshot(self, snapshot: Message) -> None:
        ejected = {
            d.get("dst")
            for d in snapshot.get("destinations", [])
            if d.get("state") == "ejected" and d.get("dst") in self._by_key
        }
        with self._lock:
            evicted = ejected - self._dead_keys
            reinstated = self._dead_keys - ejected
            self._dead_keys = set(ejected)
        for dst in sorted(evicted):
            self._changed("evict", dst, {"type": "evict", "dst": dst, "source": "snapshot"})
        for dst in sorted(reinstated):
            self._changed("reinstate", dst, {"type": "reinstate", "dst": dst, "source": "snapshot"})

    def _changed(self, kind: str, dst: str, event: Message) -> None:
        now = time.time()
        for proxy in self._by_key[dst]:
            if kind == "evict":
                self.stats["evictions"] += 1
                self.evicted_at[proxy] = now
                callback = self.on_evict
            else:
                self.stats["reinstatements"] += 1
                callback = self.on_reinstate
            if callback is not None:
                try:
                    callback(proxy, event)
                except Exception:  # a user callback must not kill the follower
                    log.exception("connmon: the %s callback for %s failed", kind, proxy)

    def _suspected(self, dst: str, event: Message) -> None:
        callback = self.on_suspect
        with self._lock:
            dead = dst in self._dead_keys
        if callback is None or dead:
            return
        for proxy in self._by_key[dst]:
            self.stats["suspects"] += 1
            try:
                callback(proxy, event)
            except Exception:  # a user callback must not kill the follower
                log.exception("connmon: the suspect callback for %s failed", proxy)

    def _subscribe_cmd(self) -> Dict[str, Any]:
        types = ["evict", "reinstate"]
        if self.on_suspect is not None:
            types.append("suspect")
        return {"types": types}


class _Backoff:
    def __init__(self, first: float, cap: float) -> None:
        self.first, self.cap = first, cap
        self.delay = first

    def next(self) -> float:
        delay = self.delay
        self.delay = min(self.cap, self.delay * 2)
        return delay * random.uniform(0.8, 1.2)

    def reset(self) -> None:
        self.delay = self.first


class _OutageLog:
    """Logs the start and the end of an outage once each, not every attempt."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.down = False
        self.ever_connected = False

    def failed(self, why: str) -> None:
        if self.down:
            return
        self.down = True
        if self.ever_connected:
            log.warning("connmon: lost the agent at %s (%s); keeping the last view and reconnecting", self.path, why)
        else:
            log.warning("connmon: no agent at %s (%s); every proxy counts as alive until one answers", self.path, why)

    def connected(self, version: str) -> None:
        if self.down or not self.ever_connected:
            log.info("connmon: following agent %s at %s", version, self.path)
        self.down = False
        self.ever_connected = True


class _Follower(PoolView):
    """What both live pools do around their connections to the agent (the I/O is theirs,
    sync or async): back off, log outages, count and resynchronise."""

    def __init__(self, proxies: Iterable[str], socket: str, backoff: Tuple[float, float], **view: Any) -> None:
        super().__init__(proxies, **view)
        self.socket = socket
        self._backoff = _Backoff(*backoff)
        self._outage = _OutageLog(socket)

    def _failed(self, why: str) -> None:
        self.connected = False
        self._outage.failed(why)
        self.ready.set()

    def _resynced(self, snapshot: Message) -> None:
        self._apply_snapshot(snapshot)
        self.stats["resyncs"] += 1

    def _following(self, client: Union[Client, AsyncClient]) -> None:
        """Counts a connection that has subscribed and applied its first snapshot."""
        self.stats["connects"] += 1
        if self._outage.ever_connected:
            self.stats["reconnects"] += 1
        self._outage.connected(str((client.hello or {}).get("version")))
        self._backoff.reset()
        self.connected = True
        self.synced.set()
        self.ready.set()

    def _lagged(self, event: Message) -> bool:
        """True for a ``lagged`` notice (counted and logged): the caller resynchronises."""
        if event.get("type") != "lagged":
            return False
        self.stats["lagged"] += 1
        log.info("connmon: missed %s messages; resynchronising from a snapshot", event.get("missed"))
        return True


class LivePool(_Follower):
    """A :class:`PoolView` followed by a background thread.

    ::

        pool = LivePool(["http://user:pw@10.0.0.7:3128", "10.0.0.8:3128"])
        pool.wait_synced(2)          # optional: wait for the first snapshot
        proxy = pool.choose()        # a proxy connmon has not evicted
        pool.close()

    Callbacks run on the follower thread; keep them short."""

    def __init__(
        self,
        proxies: Iterable[str],
        socket: str = DEFAULT_SOCKET,
        *,
        on_evict: Optional[Callback] = None,
        on_reinstate: Optional[Callback] = None,
        on_suspect: Optional[Callback] = None,
        resolve: bool = False,
        backoff: Tuple[float, float] = (0.1, 5.0),
        start: bool = True,
    ) -> None:
        super().__init__(proxies, socket, backoff, on_evict=on_evict, on_reinstate=on_reinstate,
                         on_suspect=on_suspect, resolve=resolve)
        self._stop = threading.Event()
        self._client: Optional[Client] = None
        self._client_lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="connmon-livepool", daemon=True)
        if start:
            self.start()

    def start(self) -> None:
        self._thread.start()

    def wait_synced(self, timeout: Optional[float] = None) -> bool:
        """Waits until the first snapshot has been applied; False on timeout."""
        return self.synced.wait(timeout)

    def wait_ready(self, timeout: Optional[float] = None) -> bool:
        """Waits until the first snapshot has been applied or the first connection
        attempt has failed (no agent); False on timeout."""
        return self.ready.wait(timeout)

    def close(self) -> None:
        """Stops following (the view stays readable)."""
        self._stop.set()
        with self._client_lock:
            if self._client is not None:
                self._client.shutdown()
        if self._thread.is_alive() and threading.current_thread() is not self._thread:
            self._thread.join(5)

    def __enter__(self) -> LivePool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _run(self) -> None:
        while not self._stop.is_set():
            why = self._follow_once()
            if self._stop.is_set():
                self.connected = False
                break
            self._failed(why)
            self._stop.wait(self._backoff.next())

    def _follow_once(self) -> str:
        try:
            client = Client(self.socket)
        except ConnmonError as err:
            return err.message
        except OSError as err:
            return str(err)
        with self._client_lock:
            if self._stop.is_set():
                client.close()
                return "stopped"
            self._client = client
        try:
            client.subscribe(**self._subscribe_cmd())
            self._resynced(client.snapshot())
            self._following(client)
            for event in client.events():
                if self._lagged(event):
                    self._resynced(client.snapshot())
                else:
                    self._apply_event(event)
            return "the agent said bye" if client.closed_by_agent else "the agent closed the connection"
        except (ConnmonError, OSError, ValueError) as err:
            return str(err)
        finally:
            with self._client_lock:
                self._client = None
            client.close()


class AsyncLivePool(_Follower):
    """The asyncio variant: ``async with AsyncLivePool(proxies) as pool:`` (or
    ``await pool.start()`` / ``await pool.close()``); the follower is a task on the
    running loop. Queries are plain methods, as in :class:`LivePool`."""

    def __init__(
        self,
        proxies: Iterable[str],
        socket: str = DEFAULT_SOCKET,
        *,
        on_evict: Optional[Callback] = None,
        on_reinstate: Optional[Callback] = None,
        on_suspect: Optional[Callback] = None,
        resolve: bool = False,
        backoff: Tuple[float, float] = (0.1, 5.0),
    ) -> None:
        super().__init__(proxies, socket, backoff, on_evict=on_evict, on_reinstate=on_reinstate,
                         on_suspect=on_suspect, resolve=resolve)
        self._task: Optional[asyncio.Task[None]] = None

    async def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def wait_synced(self, timeout: Optional[float] = None) -> bool:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(None, self.synced.wait, timeout)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None

    async def __aenter__(self) -> AsyncLivePool:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def _run(self) -> None:
        while True:
            self._failed(await self._follow_once())
            await asyncio.sleep(self._backoff.next())

    async def _follow_once(self) -> str:
        client = AsyncClient(self.socket)
        try:
            await client._open()
        except ConnmonError as err:
            return err.message
        except OSError as err:
            return str(err)
        try:
            await client.subscribe(**self._subscribe_cmd())
            self._resynced(await client.snapshot())
            self._following(client)
            async for event in client.events():
                if self._lagged(event):
                    self._resynced(await client.snapshot())
                else:
                    self._apply_event(event)
            return "the agent said bye" if client.closed_by_agent else "the agent closed the connection"
        except (ConnmonError, OSError, ValueError) as err:
            return str(err)
        finally:
            await client.close()
