"""Agent CPU per 100 000 events/s, per `--events` setting (issue #12).

connmon runs with `--output json` to a file (as in `cargo xtask bench`) and the given
`--events` value; `loadgen --mode M --threads T --duration S` connects to 127.0.0.1; the
agent's CPU (utime+stime from /proc/PID/stat) over the run, divided by the events it
reported (its final stats line: outcomes) per second, scaled to 100 000 events/s.

Usage (root): python3 bench/agent-cpu.py CONNMON LOADGEN [SECS] [ROUNDS]
Prints one row per (events, mode, threads): median over ROUNDS (default 3) runs.
"""
import json, os, signal, subprocess, sys, time

connmon, loadgen = sys.argv[1], sys.argv[2]
secs = sys.argv[3] if len(sys.argv) > 3 else "3"
rounds = int(sys.argv[4]) if len(sys.argv) > 4 else 3
d = "/tmp/connmon-agent-cpu"
os.makedirs(d, exist_ok=True)
open(f"{d}/c.toml", "w").write("")
tick = os.sysconf("SC_CLK_TCK")


def cpu(pid):
    f = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(f[11]) + int(f[12])) / tick


def run(events, mode, threads):
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
    c0, w0 = cpu(p.pid), time.time()
    subprocess.check_output([loadgen, "--mode", mode, "--threads", str(threads), "--duration", secs])
    time.sleep(0.2)  # the last poll period and drain
    c1, w1 = cpu(p.pid), time.time()
    p.send_signal(signal.SIGTERM)
    p.wait(timeout=20)
    stats = [json.loads(l) for l in open(out) if '"type":"stats"' in l.replace(" ", "")]
    last = stats[-1] if stats else {}
    events_n = sum((last.get("outcomes") or {}).values())
    lost = last.get("lost_events", 0)
    rate = events_n / (w1 - w0)
    pct = (c1 - c0) / (w1 - w0) * 100
    return rate, pct, pct / (rate / 100_000) if rate else float("nan"), lost


print("| --events | mode | load threads | events/s | agent CPU (% of a core) | per 100 000 events/s | lost |")
print("|---|---|---:|---:|---:|---:|---:|")
for events in ("failures", "all"):
    for mode in ("refused", "established"):
        for threads in (1, 2):
            rs = sorted((run(events, mode, threads) for _ in range(rounds)), key=lambda r: r[2])
            rate, pct, per, lost = rs[len(rs) // 2]
            print(f"| {events} | {mode} | {threads} | {rate:.0f} | {pct:.1f} | **{per:.1f}** | {lost} |", flush=True)
