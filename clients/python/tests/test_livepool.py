"""LivePool / AsyncLivePool against a real agent: snapshot at connect, lagged → resync,
bye → reconnect (logging once), keys, callbacks, the asyncio variant."""

import asyncio
import logging
import socket
import threading
import time

import pytest
from harness import Agent, agent_config, free_port, wait_until

from connmon import AsyncLivePool, Client, LivePool, proxy_key, proxy_keys


def refuse(dst: str) -> None:
    host, port = dst.rsplit(":", 1)
    try:
        socket.create_connection((host, int(port)), timeout=5).close()
    except ConnectionRefusedError:
        return
    raise AssertionError(f"{dst} accepted a connection")


def closed_dsts(n: int, addr: str = "127.0.0.1") -> list:
    dsts: list = []
    while len(dsts) < n:
        dst = f"{addr}:{free_port(addr)}"
        if dst not in dsts:
            dsts.append(dst)
    return dsts


@pytest.fixture
def agent(tmp_path):
    a = Agent(str(tmp_path), agent_config(pool=[])).start()
    yield a
    a.stop()


def test_keys_accept_urls_userinfo_ipv6_and_ip_port():
    assert proxy_key("http://user:pw@1.2.3.4:8080") == "1.2.3.4:8080"
    assert proxy_key("1.2.3.4:8080") == "1.2.3.4:8080"
    assert proxy_key("http://[2001:DB8:0::7]:3128") == "[2001:db8::7]:3128"
    assert proxy_key("[2001:db8::7]:3128") == "[2001:db8::7]:3128"
    assert proxy_key("socks5://u:p@[::ffff:10.0.0.1]:1080") == "10.0.0.1:1080"
    assert proxy_key("http://9.9.9.9") == "9.9.9.9:80"
    with pytest.raises(ValueError, match="host name"):
        proxy_key("http://localhost:3128")
    assert proxy_keys("http://localhost:3128", resolve=True)[0] in ("127.0.0.1:3128", "[::1]:3128")
    pool = LivePool(["http://u:p@127.0.0.1:1", "127.0.0.2:2"], socket="/nonexistent", start=False)
    assert pool.is_dead("http://127.0.0.1:1") is False
    assert pool.alive() == ["http://u:p@127.0.0.1:1", "127.0.0.2:2"]


def test_snapshot_at_connect_knows_earlier_evictions(agent):
    dead, alive = closed_dsts(2)
    refuse(dead)
    with Client(agent.socket) as c:
        wait_until(lambda: any(d["dst"] == dead and d["state"] == "ejected" for d in c.snapshot()["destinations"]),
                   10, f"{dead} ejected")
    evicted = []
    pool = LivePool([f"http://u:p@{dead}", alive], socket=agent.socket, on_evict=lambda p, e: evicted.append((p, e)))
    try:
        assert pool.wait_synced(10), "the pool did not sync"
        assert pool.is_dead(dead)
        assert pool.is_dead(f"http://{dead}")
        assert not pool.is_dead(alive)
        assert pool.alive() == [alive]
        assert pool.choose() == alive
        assert pool.choose(exclude=[alive]) == alive, "an excluded live proxy beats a dead one"
        assert evicted == [(f"http://u:p@{dead}", {"type": "evict", "dst": dead, "source": "snapshot"})]
    finally:
        pool.close()


def test_follows_evict_and_reinstate_with_callbacks(agent):
    a, b = closed_dsts(2)
    seen = []
    changed = threading.Event()

    def note(kind):
        def cb(proxy, event):
            seen.append((kind, proxy, event["type"]))
            changed.set()
        return cb

    with LivePool([a, b], socket=agent.socket, on_evict=note("evict"), on_reinstate=note("reinstate")) as pool:
        assert pool.wait_synced(10)
        refuse(a)
        wait_until(lambda: pool.is_dead(a), 10, f"{a} dead")
        assert pool.alive() == [b]
        assert [pool.choose(exclude=[a]) for _ in range(3)] == [b, b, b]
        with Client(agent.socket) as c:
            c.reinstate(a)
        wait_until(lambda: not pool.is_dead(a), 10, f"{a} reinstated")
        assert ("evict", a, "evict") in seen and ("reinstate", a, "reinstate") in seen
        # round-robin over the live ones
        assert {pool.choose() for _ in range(4)} == {a, b}


def test_lagged_resynchronises_from_a_snapshot(tmp_path):
    # A 16-message bus and a follower stuck in its callback: the agent drops messages
    # for it and sends `lagged`; the evictions it missed come back from the snapshot.
    agent = Agent(str(tmp_path), agent_config(pool=[], bus_capacity=16)).start()
    try:
        first, *rest = closed_dsts(1000)
        gate = threading.Event()
        from_snapshot = []

        def on_evict(proxy, event):
            gate.wait(30)
            if event.get("source") == "snapshot":
                from_snapshot.append(proxy)

        pool = LivePool([first, *rest], socket=agent.socket, on_evict=on_evict)
        try:
            assert pool.wait_synced(10)
            refuse(first)  # the follower blocks in on_evict for this one
            wait_until(lambda: pool.stats["evictions"] >= 1, 10, "the first eviction")
            for dst in rest:
                refuse(dst)
            # Let the agent's queue for this client overflow before reading on.
            with Client(agent.socket) as c:
                wait_until(lambda: c.snapshot()["server"]["lagged_notices"] >= 1, 20, "a lagged notice")
            gate.set()
            wait_until(lambda: pool.stats["lagged"] >= 1, 20, "the pool to read the lagged notice")
            everyone = {first, *rest}
            wait_until(lambda: set(pool.dead()) == everyone, 20,
                       "every eviction after the resync (missing: {})".format(everyone - set(pool.dead())))
            wait_until(lambda: pool.stats["resyncs"] >= 2, 20, "the resync to finish")
            assert from_snapshot, "no eviction came back from the snapshot: nothing was lost?"
        finally:
            gate.set()
            pool.close()
    finally:
        agent.stop()


def test_bye_reconnect_keeps_the_last_view_and_logs_once(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="connmon")
    dead, alive = closed_dsts(2)
    agent = Agent(str(tmp_path), agent_config(pool=[])).start()
    pool = LivePool([dead, alive], socket=agent.socket, backoff=(0.05, 0.2))
    try:
        assert pool.wait_synced(10)
        refuse(dead)
        wait_until(lambda: pool.is_dead(dead), 10, f"{dead} dead")
        agent.stop()  # the agent says bye
        wait_until(lambda: not pool.connected, 10, "the pool to notice the bye")
        time.sleep(1.5)  # many reconnect attempts (backoff capped at 0.2 s)
        assert pool.is_dead(dead), "the last view is kept while disconnected"
        lost = [r for r in caplog.records if "lost the agent" in r.getMessage()]
        assert len(lost) == 1, [r.getMessage() for r in caplog.records]
        agent.start()  # the state file brings the ejection back
        wait_until(lambda: pool.connected, 20, "the reconnect")
        assert pool.stats["reconnects"] == 1, pool.stats
        assert pool.is_dead(dead)
        with Client(agent.socket) as c:
            c.reinstate(dead)
        wait_until(lambda: not pool.is_dead(dead), 10, "the reinstate from the new agent")
        assert sum("following agent" in r.getMessage() for r in caplog.records) == 2
    finally:
        pool.close()
        agent.stop()


def test_no_agent_means_every_proxy_is_alive_and_one_warning(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="connmon")
    a, b = closed_dsts(2)
    pool = LivePool([a, b], socket=str(tmp_path / "none.sock"), backoff=(0.02, 0.05))
    try:
        assert pool.wait_ready(5)
        time.sleep(0.5)
        assert not pool.connected and pool.alive() == [a, b]
        warnings = [r for r in caplog.records if "no agent at" in r.getMessage()]
        assert len(warnings) == 1, [r.getMessage() for r in caplog.records]
    finally:
        pool.close()


def test_async_live_pool(agent):
    a, b = closed_dsts(2)

    async def scenario():
        async with AsyncLivePool([a, b], socket=agent.socket) as pool:
            assert await pool.wait_synced(10)
            refuse(a)
            for _ in range(200):
                if pool.is_dead(a):
                    break
                await asyncio.sleep(0.05)
            return pool.alive(), pool.choose()

    alive, chosen = asyncio.run(asyncio.wait_for(scenario(), 20))
    assert alive == [b] and chosen == b


def test_the_example_controller_resynchronises_from_a_snapshot(agent):
    import os
    import sys

    from harness import PACKAGE_DIR

    sys.path.insert(0, PACKAGE_DIR)
    from example_pool_controller import ProxyPool

    sys.path.remove(PACKAGE_DIR)
    dead, alive = closed_dsts(2)
    pool = ProxyPool()
    pool.mark_dead(alive, "refused", "later")  # stale: the snapshot must clear it
    refuse(dead)
    with Client(agent.socket) as c:
        wait_until(lambda: any(d["dst"] == dead and d["state"] == "ejected" for d in c.snapshot()["destinations"]),
                   10, f"{dead} ejected")
        newly_dead, newly_good = pool.resync(c.snapshot())
    # (the agent has no pool: other processes' refused connects may be ejected too)
    assert dead in newly_dead and newly_good == [alive], (newly_dead, newly_good)
    assert not pool.usable(dead) and pool.usable(alive)
    assert os.path.exists(os.path.join(PACKAGE_DIR, "example_pool_controller.py"))


def test_ipv6_proxy_urls_match_the_agents_dst(agent):
    port = free_port("::1")
    url = f"http://user:pw@[::1]:{port}"
    with LivePool([url, "127.0.0.1:9"], socket=agent.socket) as pool:
        assert pool.wait_synced(10)
        try:
            socket.create_connection(("::1", port), timeout=5).close()
        except ConnectionRefusedError:
            pass
        wait_until(lambda: pool.is_dead(url), 10, f"{url} dead")
        assert pool.is_dead(f"[::1]:{port}") and pool.alive() == ["127.0.0.1:9"]
