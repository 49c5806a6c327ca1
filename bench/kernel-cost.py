"""Ad hoc in-kernel cost per connect (bpf_stats), the method of `CONNMON_BENCH_ONLY=kernel-cost cargo xtask bench`.

Usage (root): python3 bench/kernel-cost.py CONNMON_BINARY|bpftrace LABEL [connmon run flags]
Uses /work/main/target/release/loadgen (LG below); 2 s runs, best of 2; scratch in /tmp/hp.
"""
import json, subprocess, sys, time, os, signal
binary, label = sys.argv[1], sys.argv[2]
LG="/work/main/target/release/loadgen"
open("/proc/sys/kernel/bpf_stats_enabled","w").write("1")
out=open(f"/tmp/hp/{label}.out","w"); err=open(f"/tmp/hp/{label}.err","w")
extra = sys.argv[3:]
if binary=="bpftrace":
    p=subprocess.Popen(["bpftrace","-e","tracepoint:sock:inet_sock_set_state /args->protocol == 6 && args->oldstate == 2/ { @[ntop(args->daddr), args->dport] = count(); }"],stdout=err,stderr=err)
else:
    p=subprocess.Popen([binary,"run","--output","json","--stats-interval","0s","--state-file",f"/tmp/hp/{label}.state","--socket",f"/tmp/hp/{label}.sock"]+extra,stdout=out,stderr=err)
for _ in range(400):
    time.sleep(0.05)
    t=open(f"/tmp/hp/{label}.err").read()
    if "attached to" in t or "Attaching" in t: break
time.sleep(1)
names={q["id"]:q["name"] for q in json.loads(subprocess.check_output(["bpftool","prog","show","--json"]))}
def stats():
    d={}; seen=set()
    for fd in os.listdir(f"/proc/{p.pid}/fdinfo"):
        try: kv=dict(l.split(":",1) for l in open(f"/proc/{p.pid}/fdinfo/{fd}").read().splitlines() if ":" in l)
        except Exception: continue
        if "prog_type" not in kv or "run_time_ns" not in kv: continue
        i=int(kv["prog_id"]); 
        if i in seen: continue
        seen.add(i); n=names.get(i,str(i))
        t,c=d.get(n,(0,0)); d[n]=(t+int(kv["run_time_ns"]),c+int(kv["run_cnt"]))
    return d
for mode in ["refused","established"]:
    for th in [1,2]:
        best=None
        for r in range(2):
            b=stats(); o=json.loads(subprocess.check_output([LG,"--mode",mode,"--threads",str(th),"--duration","2"])); a=stats()
            n=o["connects"]; tot=sum(a[k][0]-b.get(k,(0,0))[0] for k in a)
            per={k:((a[k][0]-b.get(k,(0,0))[0])/n,(a[k][1]-b.get(k,(0,0))[1])/n) for k in a}
            if best is None or tot/n<best[0]: best=(tot/n,n,per,o["rate"])
        print(f"{label} {mode} threads={th} ns/connect={best[0]:.0f} connects={best[1]} rate={best[3]:.0f} "+" ".join(f"{k}={v[0]:.0f}ns/{v[1]:.2f}runs" for k,v in best[2].items() if v[1]>0), flush=True)
p.send_signal(signal.SIGTERM); p.wait()
print((open(f"/tmp/hp/{label}.out").read().strip().splitlines() or [""])[-1][:400])
