"""Real components for the package's tests and the scraper benchmark: a connmon agent
(``CONNMON_BIN``), tinyproxy proxies on loopback addresses, a local HTTP target, the
agent's own record of connects, and a Scrapy crawl run in a child process (see
``crawl.py``).

Everything runs in the caller's network namespace: tests/tests/python_scrapy.rs runs
pytest inside a namespace it created, whose 10.200.0.2 is a blackholed neighbour
(a permanent neighbour entry with a MAC nobody has: SYNs vanish).
"""

from __future__ import annotations

import datetime
import http.server
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from typing import Any, Dict, List, Optional, Tuple

HERE = os.path.dirname(os.path.abspath(__file__))
PACKAGE_DIR = os.path.dirname(HERE)
BLACKHOLE = os.environ.get("CONNMON_TEST_BLACKHOLE", "10.200.0.2")

sys.path.insert(0, PACKAGE_DIR)

from connmon import Client  # noqa: E402


def connmon_bin() -> str:
    path = os.environ.get("CONNMON_BIN") or os.path.join(PACKAGE_DIR, "../../target/debug/connmon")
    if not os.access(path, os.X_OK):
        raise RuntimeError(f"no connmon binary at {path} (set CONNMON_BIN)")
    return path


def netns_inode() -> int:
    return os.stat("/proc/self/ns/net").st_ino


def parse_ts(ts: str) -> float:
    """RFC 3339 with nanoseconds ("2026-11-24T01:17:44.066783939Z") → epoch seconds."""
    whole, _, frac = ts.rstrip("Z").partition(".")
    base = datetime.datetime.strptime(whole, "%Y-%m-%dT%H:%M:%S").replace(tzinfo=datetime.timezone.utc)
    return base.timestamp() + (float("0." + frac) if frac else 0.0)


def free_port(addr: str = "127.0.0.1") -> int:
    s = socket.socket(socket.AF_INET6 if ":" in addr else socket.AF_INET)
    s.bind((addr, 0))
    port = s.getsockname()[1]
    s.close()
    return port


def patience() -> int:
    """The factor every deadline of the root tests is stretched by (tests/src/timing.rs):
    ``CONNMON_TEST_PATIENCE`` when set, else 1. A deadline ends as soon as what it waits
    for happens; it is never a latency goal (those are benchmark figures)."""
    value = os.environ.get("CONNMON_TEST_PATIENCE", "").strip()
    if not value:
        return 1
    if not value.isdigit() or int(value) < 1:
        raise ValueError(f"CONNMON_TEST_PATIENCE must be a positive integer, not {value!r}")
    return int(value)


def wait_until(pred: Any, timeout: float, what: str, step: float = 0.05) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = pred()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(step)


class Agent:
    """``connmon run`` with its own config, socket and state file; restartable."""

    def __init__(self, workdir: str, config: str) -> None:
        self.dir = workdir
        self.socket = os.path.join(workdir, "connmon.sock")
        self.config = os.path.join(workdir, "connmon.toml")
        self.state = os.path.join(workdir, "state.json")
        with open(self.config, "w") as f:
            f.write(config)
        self.proc: Optional[subprocess.Popen[bytes]] = None
        self.starts = 0

    def start(self) -> "Agent":
        self.starts += 1
        self.log = open(os.path.join(self.dir, f"agent-{self.starts}.log"), "wb")
        self.proc = subprocess.Popen(
            [connmon_bin(), "run", "--output", "json", "--config", self.config, "--socket", self.socket,
             "--state-file", self.state],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=self.log,
            env=dict(os.environ, RUST_LOG="info"),
        )
        def ready() -> bool:
            assert self.proc is not None and self.proc.poll() is None, f"connmon exited: {self.stderr()}"
            try:
                with Client(self.socket, timeout=2) as c:
                    c.ping()
                return "attached to" in self.stderr()
            except Exception:
                return False
        wait_until(ready, 30, "the agent's socket")
        return self

    def stderr(self) -> str:
        with open(os.path.join(self.dir, f"agent-{self.starts}.log"), "rb") as f:
            return f.read().decode(errors="replace")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def restart(self) -> None:
        self.stop()
        self.start()


def agent_config(pool: List[str], bus_capacity: int = 16384, syn_retransmits: int = 1) -> str:
    members = ", ".join(json.dumps(m) for m in pool)
    return (
        "[agent]\n"
        f"bus_capacity = {bus_capacity}\n"
        "[policy]\n"
        # By default a blackholed proxy is evicted at its first SYN retransmit (~1 s)
        # instead of the second (~3 s, connmon's default, which emits `suspect` at the first).
        f"syn_retransmits = {syn_retransmits}\n"
        "max_ejection_percent = 100\n"
        'base_ejection = "5m"\n'
        "outage_min_destinations = 100000\n"
        f"pool = [{members}]\n"
    )


class Tinyproxy:
    """A real tinyproxy (Debian's) listening on ``addr:port``."""

    def __init__(self, workdir: str, addr: str, port: Optional[int] = None) -> None:
        self.addr = addr
        self.port = port or free_port(addr)
        self.conf = os.path.join(workdir, f"tinyproxy-{addr}-{self.port}.conf")
        with open(self.conf, "w") as f:
            f.write(
                f"Port {self.port}\nListen {addr}\nTimeout 30\nMaxClients 200\n"
                "LogLevel Critical\nDisableViaHeader Yes\nUser nobody\nGroup nogroup\n"
            )
        self.proc: Optional[subprocess.Popen[bytes]] = None

    @property
    def url(self) -> str:
        return f"http://{self.addr}:{self.port}"

    def start(self) -> "Tinyproxy":
        self.proc = subprocess.Popen(["tinyproxy", "-d", "-c", self.conf], stdin=subprocess.DEVNULL,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        def up() -> bool:
            try:
                socket.create_connection((self.addr, self.port), timeout=1).close()
                return True
            except OSError:
                assert self.proc is not None and self.proc.poll() is None, "tinyproxy exited"
                return False
        wait_until(up, 10, f"tinyproxy on {self.addr}:{self.port}")
        return self

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:  # noqa: N802
        server: Any = self.server
        time.sleep(server.delay)
        body = f"<html><body><h1>{self.path}</h1></body></html>".encode()
        with server.lock:
            server.hits += 1
        self.send_response(200)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


class _Server(http.server.ThreadingHTTPServer):
    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a proxy killed mid-request breaks the pipe: expected here


class Target:
    """The site being crawled: every path answers 200 after ``delay`` seconds."""

    def __init__(self, delay: float = 0.05, addr: str = "127.0.0.1") -> None:
        self.server: Any = _Server((addr, 0), _Handler)
        self.server.daemon_threads = True
        self.server.delay = delay
        self.server.hits = 0
        self.server.lock = threading.Lock()
        self.url = f"http://{addr}:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class ConnectLog:
    """The agent's own record of every connect and eviction (a socket subscriber):
    the ground truth for "no connect to a proxy after it was evicted"."""

    def __init__(self, socket_path: str, dsts: List[str]) -> None:
        self.dsts = set(dsts)
        self.netns = netns_inode()
        self.connects: List[Dict[str, Any]] = []
        self.evicts: List[Dict[str, Any]] = []
        self.client = Client(socket_path)
        self.client.subscribe(types=["connect", "evict", "reinstate"])
        self.lagged = 0
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        for event in self.client.events():
            if event.get("type") == "lagged":
                self.lagged += 1
            elif event.get("dst") in self.dsts:
                if event["type"] == "connect":
                    # The agent's own handshake checks (`"probe": true`, [checks]) are
                    # connmon verifying a node, not a request of the scraper.
                    if event.get("probe"):
                        continue
                    if event.get("netns") in (None, self.netns):
                        event["start"] = parse_ts(event["ts"]) - (event.get("duration_us") or 0) / 1e6
                        self.connects.append(event)
                else:
                    self.evicts.append(event)

    def close(self) -> None:
        self.client.shutdown()
        self.thread.join(5)
        self.client.close()

    def connects_to(self, dst: str, after: float = 0.0) -> List[Dict[str, Any]]:
        return [c for c in self.connects if c["dst"] == dst and c["start"] >= after]

    def agent_intervals(self) -> Dict[str, List[Tuple[float, float]]]:
        """dst → the agent's ejections [evict ts, reinstate ts) seen by this log."""
        return intervals((parse_ts(e["ts"]), e["type"], e["dst"]) for e in self.evicts)

    def connects_within(self, spans: Dict[str, List[Tuple[float, float]]]) -> List[Dict[str, Any]]:
        """The connects that started while their dst was inside one of ``spans``."""
        return [c for c in self.connects
                if any(a <= c["start"] < b for a, b in spans.get(c["dst"], []))]


def intervals(history: Any) -> Dict[str, List[Tuple[float, float]]]:
    """``(time, "evict" | "reinstate", dst or proxy URL)`` in time order → dst → the
    spans during which it was evicted (an open one ends at infinity)."""
    spans: Dict[str, List[Tuple[float, float]]] = {}
    open_since: Dict[str, float] = {}
    for t, kind, who in sorted(history):
        dst = who.split("//", 1)[-1].rsplit("@", 1)[-1]
        if kind == "evict":
            open_since.setdefault(dst, t)
        elif dst in open_since:
            spans.setdefault(dst, []).append((open_since.pop(dst), t))
    for dst, t in open_since.items():
        spans.setdefault(dst, []).append((t, float("inf")))
    return spans


def crawl(spec: Dict[str, Any], timeout: float = 90) -> Dict[str, Any]:
    """Runs one Scrapy crawl (``crawl.py``) in a child process; returns its report."""
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump(spec, f)
        spec_path = f.name
    out_path = spec_path + ".out"
    env = dict(os.environ, PYTHONPATH=PACKAGE_DIR + os.pathsep + os.environ.get("PYTHONPATH", ""),
               PYTHONDONTWRITEBYTECODE="1")
    proc = subprocess.run([sys.executable, os.path.join(HERE, "crawl.py"), spec_path, out_path], env=env,
                          capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0 or not os.path.exists(out_path):
        raise AssertionError(f"crawl failed ({proc.returncode}):\n{proc.stderr[-6000:]}")
    with open(out_path) as f:
        report: Dict[str, Any] = json.load(f)
    report["log"] = proc.stderr
    os.unlink(spec_path)
    os.unlink(out_path)
    return report


def start_crawl(spec: Dict[str, Any]) -> "subprocess.Popen[str]":
    """Like :func:`crawl` but returns the running child; finish with :func:`finish_crawl`."""
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump(spec, f)
        spec_path = f.name
    env = dict(os.environ, PYTHONPATH=PACKAGE_DIR + os.pathsep + os.environ.get("PYTHONPATH", ""),
               PYTHONDONTWRITEBYTECODE="1")
    proc = subprocess.Popen([sys.executable, os.path.join(HERE, "crawl.py"), spec_path, spec_path + ".out"],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    proc.spec_path = spec_path  # type: ignore[attr-defined]
    return proc


def finish_crawl(proc: "subprocess.Popen[str]", timeout: float = 90) -> Dict[str, Any]:
    _, stderr = proc.communicate(timeout=timeout)
    out_path = proc.spec_path + ".out"  # type: ignore[attr-defined]
    if proc.returncode != 0 or not os.path.exists(out_path):
        raise AssertionError(f"crawl failed ({proc.returncode}):\n{stderr[-6000:]}")
    with open(out_path) as f:
        report: Dict[str, Any] = json.load(f)
    report["log"] = stderr
    return report
