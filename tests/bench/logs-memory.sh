#!/usr/bin/env bash
# What reading a large process log costs the agent, for one build (BIN_DIR):
# a dev cluster of 1 coordinator and 1 agent (process runtime); one workload
# writes BYTES (default 60,000,000, under log_max_mib so nothing rotates) to
# stdout; `gantryctl logs ID` reads all of it. Prints the bytes received, the
# agent's peak RSS (VmHWM) before and after, and the seconds taken.
#   tests/bench/logs-memory.sh BIN_DIR [BYTES]
# Run two builds one after the other to compare them (docs/BENCHMARKS.md).
set -euo pipefail
bin=${1:?usage: logs-memory.sh BIN_DIR [BYTES]}
bytes=${2:-60000000}
. "$(dirname "$0")/dev-cluster.sh"
start_dev "$bin" gantry-logs
agent=$(pid_of agent)
cat >"$dir/w.toml" <<T
name = "big"
command = "/bin/sh"
args = ["-c", "head -c $bytes /dev/zero | tr '\\\\0' 'x'; sleep 600"]
T
"$bin/gantryctl" --socket "$sock" run "$dir/w.toml" >/dev/null
log=""
for _ in $(seq 1 600); do
  log=$(ls -d "$dir"/c/node-1/data/allocs/big.* 2>/dev/null | head -1 || true)
  [ -n "$log" ] && [ "$(stat -c %s "$log/stdout.log" 2>/dev/null || echo 0)" -ge "$bytes" ] && break
  sleep 0.2
done
id=$(basename "$log")
hwm() { awk '/VmHWM/ {print $2}' "/proc/$agent/status"; }
before=$(hwm)
start=$(date +%s.%N)
got=$("$bin/gantryctl" --socket "$sock" logs "$id" | wc -c)
end=$(date +%s.%N)
echo "bytes=$got agent_peak_rss_kib_before=$before agent_peak_rss_kib_after=$(hwm) seconds=$(echo "$end - $start" | bc)"
