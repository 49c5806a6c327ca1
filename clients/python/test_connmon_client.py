"""Tests of connmon_client against a real running agent.

    CONNMON_SOCKET=/path/to/connmon.sock python3 -m unittest -v test_connmon_client

The agent must run with no pool configured (every destination may be evicted),
`policy.max_ejection_percent = 100` (each test evicts one more) and, for the unprivileged
test, `agent.socket_group = "nogroup"`; tests/tests/python_client.rs starts one that way.
"""

import asyncio
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import unittest

from connmon_client import AsyncClient, Client, ConnmonError

SOCKET = os.environ.get("CONNMON_SOCKET", "/run/connmon/connmon.sock")
CLIENT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "connmon_client.py")
# The unprivileged child needs an interpreter uid 65534 can run (not one under /root).
SYSTEM_PYTHON = "/usr/bin/python3" if os.access("/usr/bin/python3", os.X_OK) else sys.executable


def refused_connect():
    """Connects to a closed loopback port; returns the destination as connmon writes it."""
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()
    try:
        socket.create_connection(("127.0.0.1", port), timeout=5).close()
    except ConnectionRefusedError:
        return f"127.0.0.1:{port}"
    raise AssertionError(f"port {port} accepted a connection")


class SyncClientTest(unittest.TestCase):
    def test_hello_and_ping(self):
        with Client(SOCKET, timeout=10) as c:
            self.assertEqual(c.hello["v"], 1)
            self.assertIn("subscribe", c.hello["capabilities"])
            pong = c.ping()
            self.assertEqual(pong["type"], "pong")
            self.assertEqual(pong["id"], 1)

    def test_subscribe_receives_the_evict_for_a_refused_connect(self):
        with Client(SOCKET, timeout=10) as c:
            ok = c.subscribe(types=["evict"], roles=["proxy"])
            self.assertEqual(ok["types"], ["evict"])
            dst = refused_connect()
            for event in c.events():
                if event["type"] == "evict" and event["dst"] == dst:
                    self.assertEqual(event["reason"], "refused")
                    self.assertEqual(event["role"], "proxy")
                    self.assertGreater(event["ejection"]["duration_ms"], 0)
                    break

    def test_snapshot_lists_destinations(self):
        dst = refused_connect()
        with Client(SOCKET, timeout=10) as c:
            for _ in range(50):
                snap = c.snapshot()
                rows = [d for d in snap["destinations"] if d["dst"] == dst]
                if rows:
                    break
                time.sleep(0.1)
            self.assertEqual(snap["type"], "snapshot")
            self.assertEqual(rows[0]["outcomes"]["refused"], 1)
            self.assertIn("lagged_messages", snap["server"])

    def test_bad_arguments_raise(self):
        with Client(SOCKET, timeout=10) as c:
            with self.assertRaises(ConnmonError) as err:
                c.evict("not-an-address")
            self.assertEqual(err.exception.code, "invalid_argument")
            self.assertEqual(c.ping()["type"], "pong")

    def test_no_agent_is_a_clear_error(self):
        with self.assertRaises(ConnmonError) as err:
            Client(SOCKET + ".missing")
        self.assertIn("no agent is running", str(err.exception))

    def test_state_changing_commands_are_forbidden_as_non_root(self):
        if os.geteuid() != 0:
            self.skipTest("needs root to run the client as uid 65534")
        # uid 65534 may not reach this checkout (a fresh clone can sit in a 0700
        # directory): run a world-readable copy of the client.
        shared = tempfile.mkdtemp(prefix="connmon-client-")
        os.chmod(shared, 0o755)
        client = shutil.copy(CLIENT, shared)
        os.chmod(client, 0o644)
        self.addCleanup(shutil.rmtree, shared, True)
        run = lambda *args: subprocess.run(
            [SYSTEM_PYTHON, client, "--socket", SOCKET, *args],
            user=65534, group=65534, extra_groups=[], capture_output=True, text=True, timeout=10,
        )
        snap = run("snapshot")
        self.assertEqual(snap.returncode, 0, snap.stderr)
        denied = run("evict", "127.0.0.1:1")
        self.assertEqual(denied.returncode, 1)
        self.assertIn("forbidden", denied.stderr)


class AsyncClientTest(unittest.TestCase):
    def test_async_reader_receives_the_evict(self):
        async def scenario():
            async with AsyncClient(SOCKET) as c:
                await c.subscribe(types=["evict"])
                dst = refused_connect()
                async for event in c.events():
                    if event["dst"] == dst:
                        return event, (await c.ping())

        event, pong = asyncio.run(asyncio.wait_for(scenario(), timeout=10))
        self.assertEqual(event["type"], "evict")
        self.assertEqual(pong["type"], "pong")


if __name__ == "__main__":
    unittest.main()
