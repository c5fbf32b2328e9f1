#!/usr/bin/env bash
# Submissions committed per second through the admin socket, one build
# (BIN_DIR): a dev cluster of 1 coordinator and 1 agent; N one-replica
# workloads that stay pending (a label no node has, so nothing starts),
# submitted three ways on fresh names: one client one at a time, 8 clients
# one at a time, and one batch (POST /v1/workload-batches, one Raft entry).
#   tests/bench/batch-submit.sh BIN_DIR [N]
set -euo pipefail
bin=${1:?usage: batch-submit.sh BIN_DIR [N]}
n=${2:-2000}
. "$(dirname "$0")/dev-cluster.sh"
start_dev "$bin" gantry-batch
BENCH_DIR=$(dirname "$0") python3 - "$sock" "$n" <<'PY'
import json, os, sys, threading, time
sys.path.insert(0, os.environ["BENCH_DIR"])
from admin_http import client, spec as sleep_spec
sock, n = sys.argv[1], int(sys.argv[2])
req = client(sock)
def spec(name):
    return sleep_spec(name, labels=[{"equals": {"key": "pool", "value": "none-has-it"}}])
t = time.perf_counter()
for i in range(n): req("POST", "/v1/workloads", spec(f"one{i}"))
one = time.perf_counter() - t
t = time.perf_counter()
threads = [threading.Thread(target=lambda k=k: [req("POST", "/v1/workloads", spec(f"par{i}")) for i in range(k, n, 8)]) for k in range(8)]
[x.start() for x in threads]; [x.join() for x in threads]
par = time.perf_counter() - t
t = time.perf_counter()
r = json.loads(req("POST", "/v1/workload-batches", {"specs": [spec(f"bat{i}") for i in range(n)]}))
bat = time.perf_counter() - t
assert len(r) == n and len({x["log_index"] for x in r}) == 1, "one entry"
print(json.dumps({"workloads": n, "single_client_per_s": round(n / one), "clients_8_per_s": round(n / par),
                  "batch_per_s": round(n / bat), "batch_s": round(bat, 3)}))
PY
