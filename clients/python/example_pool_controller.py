"""A minimal pool controller: keeps the set of proxies a scraper may use, taking a proxy
out the moment connmon evicts it and putting it back when connmon reinstates it.

    python3 example_pool_controller.py [--socket PATH] [--exit-after N]

It prints one line per change ("dead ADDR (reason)" / "good ADDR") and the live count.
Replace the prints with your own rotation (a Redis set, HAProxy, a Scrapy middleware).
For a ready-made, reconnecting version of this loop use ``connmon.LivePool``.
"""

import argparse

from connmon_client import Client, DEFAULT_SOCKET


class ProxyPool:
    """The proxies currently usable; connmon's decisions drive it."""

    def __init__(self):
        self.dead = {}

    def mark_dead(self, dst, reason, until):
        self.dead[dst] = (reason, until)

    def mark_good(self, dst):
        self.dead.pop(dst, None)

    def usable(self, dst):
        return dst not in self.dead

    def resync(self, snapshot):
        """Replaces the dead set with the snapshot's ejections; returns (dead, good) changes."""
        ejected = {
            d["dst"]: (d.get("ejection_reason"), d.get("ejected_until"))
            for d in snapshot["destinations"]
            if d["state"] == "ejected" and d.get("role") == "proxy"
        }
        newly_dead = sorted(set(ejected) - set(self.dead))
        newly_good = sorted(set(self.dead) - set(ejected))
        self.dead = ejected
        return newly_dead, newly_good


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--socket", default=DEFAULT_SOCKET)
    parser.add_argument("--exit-after", type=int, default=None, help="stop after N changes")
    args = parser.parse_args()
    pool = ProxyPool()
    changes = 0
    with Client(args.socket) as connmon:
        connmon.subscribe(types=["evict", "reinstate"], roles=["proxy"])
        print(f"connected to connmon {connmon.hello['version']}", flush=True)
        # connmon does not re-announce ejections: start from a snapshot.
        dead, _ = pool.resync(connmon.snapshot())
        print(f"{len(dead)} proxies already dead: {' '.join(dead)}", flush=True)
        for event in connmon.events():
            if event["type"] == "evict":
                pool.mark_dead(event["dst"], event["reason"], event["ejection"]["until"])
                print(f"dead {event['dst']} ({event['reason']}, until {event['ejection']['until']})", flush=True)
            elif event["type"] == "reinstate":
                pool.mark_good(event["dst"])
                print(f"good {event['dst']}", flush=True)
            elif event["type"] == "lagged":
                # Decisions may have been missed: resynchronise from a snapshot.
                dead, good = pool.resync(connmon.snapshot())
                print(
                    f"missed {event['missed']} messages; resynchronised: "
                    f"{len(dead)} newly dead, {len(good)} back, {len(pool.dead)} dead in all",
                    flush=True,
                )
                continue
            changes += 1
            if args.exit_after is not None and changes >= args.exit_after:
                break


if __name__ == "__main__":
    main()
