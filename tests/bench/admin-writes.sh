#!/usr/bin/env bash
# Raft write latency through the admin socket as the state grows, and the
# leader's memory once the workloads are gone, for one build (BIN_DIR):
# a dev cluster of 1 coordinator and 1 agent (process runtime); N one-replica
# sleep workloads submitted by 8 clients; the median and p99 of 200
# sequential label writes with 0 and with N workloads; the leader's RSS at
# start, with N workloads, and after every one was stopped.
#   tests/bench/admin-writes.sh BIN_DIR [N]
# Run two builds one after the other to compare them (docs/BENCHMARKS.md).
set -euo pipefail
bin=${1:?usage: admin-writes.sh BIN_DIR [N]}
n=${2:-2000}
. "$(dirname "$0")/dev-cluster.sh"
start_dev "$bin" gantry-writes
pid=$(pid_of coordinator)
BENCH_DIR=$(dirname "$0") python3 - "$sock" "$pid" "$n" <<'EOF'
import json, os, statistics, sys, threading, time
sys.path.insert(0, os.environ["BENCH_DIR"])
from admin_http import client, spec as sleep_spec
sock, pid, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
req = client(sock)
def rss():
    return int([l for l in open(f"/proc/{pid}/status") if l.startswith("VmRSS")][0].split()[1]) / 1024
def spec(i):
    return sleep_spec(f"b{i}", env={"X": "y" * 200})
def writes(label):
    ts = []
    for i in range(200):
        t = time.perf_counter(); req("PUT", "/v1/nodes/node-1/labels", {"set": {"bench": str(i)}}); ts.append(time.perf_counter() - t)
    ts.sort()
    print(f"{label}: label write median {statistics.median(ts)*1e3:.1f} ms, p99 {ts[int(len(ts)*0.99)-1]*1e3:.1f} ms")
def parallel(f):
    t = time.perf_counter()
    threads = [threading.Thread(target=lambda k=k: [f(i) for i in range(k, n, 8)]) for k in range(8)]
    [x.start() for x in threads]; [x.join() for x in threads]
    return time.perf_counter() - t
print(f"leader RSS at start {rss():.1f} MiB")
writes("0 workloads")
took = parallel(lambda i: req("POST", "/v1/workloads", spec(i)))
print(f"{n} submissions from 8 clients in {took:.1f} s ({n/took:.0f}/s)")
print(f"leader RSS with {n} workloads {rss():.1f} MiB")
writes(f"{n} workloads")
took = parallel(lambda i: req("DELETE", f"/v1/workloads/b{i}"))
deadline = time.time() + 300
while json.loads(req("GET", "/v1/workloads")) and time.time() < deadline:
    time.sleep(1)
time.sleep(5)
print(f"leader RSS after stopping all {rss():.1f} MiB")
EOF
