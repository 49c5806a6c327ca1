"""Paired in-kernel cost per connect: several connmon binaries attached AT THE SAME TIME,
measured over the same `loadgen` runs (bpf_stats run_time_ns / connects per agent).

On a shared, noisy machine a paired run compares variants far better than runs made one
after the other. One bias to know: the agent whose programs run first on a socket pays for
allocating the socket's `bpf_local_storage` (the second agent only adds its element to
it), ~0.7-0.9 us per connect on the 6.18 VM. Run both orders (A,B then B,A): with
d1 = A-B (A first) and d2 = B-A (B first), the first-position penalty is (d1+d2)/2 and
B's gain over A is (d1-d2)/2.

Usage (root): python3 bench/kernel-cost-ab.py BIN_A,BIN_B refused,established ROUNDS SECS [LOADGEN]
(LOADGEN defaults to target/release/loadgen; scratch in /tmp/hp-PID, removed at the end).
"""
import json, os, subprocess, sys, time, signal
bins = sys.argv[1].split(",")
modes = sys.argv[2].split(",")
rounds = int(sys.argv[3]); secs = sys.argv[4]
lg = sys.argv[5] if len(sys.argv) > 5 else "target/release/loadgen"
procs = []
for i, b in enumerate(bins):
    d = f"/tmp/hp-{os.getpid()}/run{i}"; os.makedirs(d, exist_ok=True)
    open(f"{d}/c.toml", "w").write("")
    for f in ("state.json", "s.sock"):
        try: os.remove(f"{d}/{f}")
        except OSError: pass
    p = subprocess.Popen([b, "run", "--output", "json", "--stats-interval", "0s", "--config", f"{d}/c.toml",
        "--state-file", f"{d}/state.json", "--socket", f"{d}/s.sock"], stdout=open(f"{d}/out.json", "w"), stderr=open(f"{d}/err.txt", "w"))
    procs.append((b, p, d))
for b, p, d in procs:
    t0 = time.time()
    while "attached to" not in open(f"{d}/err.txt").read() + open(f"{d}/out.json").read():
        if p.poll() is not None or time.time() - t0 > 60:
            print(b, open(f"{d}/err.txt").read()); [q.kill() for _, q, _ in procs]; sys.exit(1)
        time.sleep(0.05)
open("/proc/sys/kernel/bpf_stats_enabled", "w").write("1")
names = {pr["id"]: pr.get("name", "?") for pr in json.loads(subprocess.check_output(["bpftool", "prog", "show", "--json"]))}
def stats(pid):
    s = {}
    for fd in os.listdir(f"/proc/{pid}/fdinfo"):
        try: t = open(f"/proc/{pid}/fdinfo/{fd}").read()
        except OSError: continue
        kv = dict(l.split(":", 1) for l in t.splitlines() if ":" in l)
        if "run_time_ns" in kv and "prog_id" in kv:
            i = int(kv["prog_id"]); s[names.get(i, str(i))] = (int(kv["run_time_ns"]), int(kv["run_cnt"]))
    return s
try:
    for mode in modes:
        for threads in (1, 2):
            res = {b: [] for b in bins}
            for _ in range(rounds):
                before = {b: stats(p.pid) for b, p, _ in procs}
                o = json.loads(subprocess.check_output([lg, "--mode", mode, "--threads", str(threads), "--duration", secs]))
                n = o["connects"]
                for b, p, _ in procs:
                    a = stats(p.pid); bb = before[b]
                    per = {k: ((a[k][0]-bb.get(k,(0,0))[0])/n, (a[k][1]-bb.get(k,(0,0))[1])/n) for k in a}
                    res[b].append((sum(v[0] for v in per.values()), per))
            for b in bins:
                tots = sorted(r[0] for r in res[b])
                best = min(res[b], key=lambda r: r[0])
                detail = "; ".join(f"{k} {t:.0f} ({c:.2f}r)" for k, (t, c) in sorted(best[1].items()) if c > 0)
                print(f"{mode:11} t={threads} {os.path.basename(b):16} best={tots[0]:6.0f} median={tots[len(tots)//2]:6.0f} | {detail}", flush=True)
finally:
    for _, p, _ in procs: p.send_signal(signal.SIGTERM)
    for _, p, _ in procs: p.wait(timeout=20)
    open("/proc/sys/kernel/bpf_stats_enabled", "w").write("0")
    import shutil; shutil.rmtree(f"/tmp/hp-{os.getpid()}", ignore_errors=True)
