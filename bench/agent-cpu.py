"""Agent CPU per 100 000 events/s, per `--events` setting (issue #12).

connmon runs with `--output json` to a file (as in `cargo xtask bench`) and the given
`--events` value; `loadgen --mode M --threads T --duration S [--rate R]` connects to
127.0.0.1; the agent's CPU (the run time of all its threads in ns, from
/proc/PID/task/*/schedstat; user/system split from /proc/PID/stat's ticks) over the run, divided by the events it reported (its final stats line: outcomes) per second,
scaled to 100 000 events/s. The rate reached is printed next to it: on a small host it
is far below 100 000/s, and at low rates the reader's fixed cost (its poll timer) makes
the per-100 000 figure an extrapolation that overstates the cost per event.

Usage (root):
  python3 bench/agent-cpu.py CONNMON LOADGEN [SECS] [ROUNDS]
      [--events failures,all] [--modes refused,established] [--threads 1,2]
      [--rate N] [--ab OTHER_CONNMON]

Prints one row per (binary, events, mode, threads), with the agent's context switches
per second (wake-ups) next to its CPU: the median (by CPU per event) over
ROUNDS (default 3) runs. Rounds are interleaved — every configuration (and with `--ab`,
both binaries, in alternating order) runs once per round — so a change in the host's
load hits every row alike.
"""
import argparse, json, os, signal, subprocess, sys, time

ap = argparse.ArgumentParser()
ap.add_argument("connmon")
ap.add_argument("loadgen")
ap.add_argument("secs", nargs="?", default="3")
ap.add_argument("rounds", nargs="?", type=int, default=3)
ap.add_argument("--events", default="failures,all")
ap.add_argument("--modes", default="refused,established")
ap.add_argument("--threads", default="1,2")
ap.add_argument("--rate", type=int, default=0, help="paced connects/s in total (0: as fast as possible)")
ap.add_argument("--ab", help="a second connmon binary, run alternately with the first")
args = ap.parse_args()

d = "/tmp/connmon-agent-cpu"
os.makedirs(d, exist_ok=True)
open(f"{d}/c.toml", "w").write("")
tick = os.sysconf("SC_CLK_TCK")


def cpu(pid):
    """(user, system, total) CPU seconds of every thread. utime/stime come in clock
    ticks (10 ms: one tick is 0.3 % of a core over a 3 s run, the whole cost of a
    quiet agent), so the total is the sum of the threads' nanosecond run times
    (/proc/PID/task/*/schedstat); the split is from the ticks."""
    f = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    ns = 0
    for t in os.listdir(f"/proc/{pid}/task"):
        try:
            ns += int(open(f"/proc/{pid}/task/{t}/schedstat").read().split()[0])
        except OSError:
            pass
    return int(f[11]) / tick, int(f[12]) / tick, ns / 1e9


def switches(pid):
    """Context switches into the agent's threads so far (each is a wake-up: on a VM
    the largest fixed cost of the reader)."""
    n = 0
    for t in os.listdir(f"/proc/{pid}/task"):
        try:
            for line in open(f"/proc/{pid}/task/{t}/status"):
                if line.startswith(("voluntary_ctxt_switches", "nonvoluntary_ctxt_switches")):
                    n += int(line.split()[1])
        except OSError:
            pass
    return n


def run(connmon, events, mode, threads):
    for f in ("state.json", "s.sock"):
        try:
            os.remove(f"{d}/{f}")
        except OSError:
            pass
    out, err = f"{d}/out.json", f"{d}/err.txt"
    p = subprocess.Popen(
        [connmon, "run", "--output", "json", "--events", events, "--stats-interval", "0s",
         "--config", f"{d}/c.toml", "--state-file", f"{d}/state.json", "--socket", f"{d}/s.sock"],
        stdout=open(out, "w"), stderr=open(err, "w"))
    t0 = time.time()
    while "attached to" not in open(err).read() + open(out).read():
        if p.poll() is not None or time.time() - t0 > 60:
            sys.exit(f"connmon did not start: {open(err).read()}")
        time.sleep(0.05)
    time.sleep(0.2)  # start-up work (BTF, loading) is not the steady state
    (u0, s0, c0), x0, w0 = cpu(p.pid), switches(p.pid), time.time()
    gen = [args.loadgen, "--mode", mode, "--threads", str(threads), "--duration", args.secs]
    if args.rate:
        gen += ["--rate", str(args.rate)]
    subprocess.check_output(gen)
    time.sleep(0.2)  # the last poll period and drain
    (u1, s1, c1), x1, w1 = cpu(p.pid), switches(p.pid), time.time()
    p.send_signal(signal.SIGTERM)
    p.wait(timeout=20)
    stats = [json.loads(l) for l in open(out) if '"type":"stats"' in l.replace(" ", "")]
    last = stats[-1] if stats else {}
    events_n = sum((last.get("outcomes") or {}).values())
    lost = last.get("lost_events", 0)
    secs = w1 - w0
    rate = events_n / secs
    user, sys_ = (u1 - u0) / secs * 100, (s1 - s0) / secs * 100
    pct = (c1 - c0) / secs * 100
    per = pct / (rate / 100_000) if rate else float("nan")
    return dict(rate=rate, pct=pct, user=user, sys=sys_, per=per, lost=lost, wakeups=(x1 - x0) / secs)


binaries = [args.connmon] + ([args.ab] if args.ab else [])
configs = [(e, m, int(t)) for e in args.events.split(",") for m in args.modes.split(",")
           for t in args.threads.split(",")]
results = {}
for r in range(args.rounds):
    order = binaries if r % 2 == 0 else binaries[::-1]
    for cfg in configs:
        for b in order:
            results.setdefault((b, cfg), []).append(run(b, *cfg))

label = len(binaries) > 1
print(("| binary " if label else "") + "| --events | mode | load threads | events/s | agent CPU (% of a core; ticks: user + sys) | µs per event | per 100 000 events/s (all rounds) | wake-ups/s | lost |")
print(("|---" if label else "") + "|---|---|---:|---:|---:|---:|---:|---:|---:|")
for cfg in configs:
    for b in binaries:
        rs = sorted(results[(b, cfg)], key=lambda r: r["per"])
        m = rs[len(rs) // 2]
        every = " / ".join(f"{x['per']:.1f}" for x in results[(b, cfg)])
        events, mode, threads = cfg
        print((f"| {b} " if label else "")
              + f"| {events} | {mode} | {threads} | {m['rate']:.0f} | {m['pct']:.1f} ({m['user']:.1f} + {m['sys']:.1f}) "
              f"| {m['per'] / 10:.2f} | **{m['per']:.1f}** ({every}) | {m['wakeups']:.0f} | {sum(x['lost'] for x in rs)} |", flush=True)
