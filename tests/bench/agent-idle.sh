#!/usr/bin/env bash
# Agent footprint while idle: a release dev cluster (3 coordinators, 2 agents
# with 8 simulated H100s sampled at 1 Hz), then each agent's resident memory
# (VmRSS) and CPU share (utime+stime from /proc) over a window.
#   cargo build --release --workspace --bins && tests/bench/agent-idle.sh [SECONDS]
set -euo pipefail
secs=${1:-60}
top=$(git rev-parse --show-toplevel)
dir=$(mktemp -d /tmp/gantry-idle-XXXX)
"$top/target/release/gantryctl" dev --dir "$dir/c" --gpus 8xH100-80GB >"$dir/dev.log" 2>&1 &
dev=$!
trap 'kill -TERM $dev 2>/dev/null; wait $dev 2>/dev/null; rm -rf "$dir"' EXIT
for _ in $(seq 1 300); do [ -f "$dir/c/cluster.json" ] && break; sleep 0.2; done
[ -f "$dir/c/cluster.json" ] || { cat "$dir/dev.log"; exit 1; }
sleep 5 # let start-up work finish
hz=$(getconf CLK_TCK)
for pid in $(python3 -c "import json;[print(p['pid']) for p in json.load(open('$dir/c/cluster.json'))['processes'] if p['role']=='agent']"); do
  (
    c0=$(awk '{print $14+$15}' /proc/$pid/stat); t0=$(date +%s.%N)
    sleep "$secs"
    c1=$(awk '{print $14+$15}' /proc/$pid/stat); t1=$(date +%s.%N)
    rss=$(awk '/VmRSS/{print $2}' /proc/$pid/status)
    python3 -c "print(f'agent pid $pid: rss {$rss/1024:.1f} MiB, cpu {($c1-$c0)/$hz/($t1-$t0)*100:.2f}% of one core over {$t1-$t0:.0f} s')"
  ) &
done
wait $(jobs -p | grep -v "^$dev$") 2>/dev/null || true
