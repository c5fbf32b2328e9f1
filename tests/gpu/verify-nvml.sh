#!/usr/bin/env bash
# Checks the nvml backend and GPU isolation on a host with an NVIDIA GPU
# (GPU 0 is used; nothing of its settings is changed):
#   A. `gantryctl gpus` against `nvidia-smi`, idle and under load; a
#      gantry-infer replica on a whole GPU; a CUDA workload (cuda_probe.py,
#      needs python3 with torch) on a whole GPU;
#   B. two CUDA workloads as MPS shares (25 % / 8 GiB and 50 % / 16 GiB)
#      side by side: SMs, memory limits, TFLOP/s, the daemon's lifecycle;
#   C. a `mig` sharing request for a GPU whose MIG mode is off is refused.
#
#   bash tests/gpu/verify-nvml.sh [BIN_DIR] [OUT_DIR]
# BIN_DIR holds gantryctl, gantry-coordinator, gantry-agent and gantry-infer
# (default target/release); OUT_DIR gets the log and `gpus --json` snapshots.
B=$(realpath "${1:-target/release}")
OUT=${2:-${OUT:-/tmp/gantry-gpu-check}}; mkdir -p "$OUT"
exec > >(tee "$OUT/log") 2>&1
export PATH=$PATH:/usr/local/nvidia/bin:/usr/local/cuda/bin
R=$(dirname "$(realpath "$0")"); PY=$(command -v python3)
echo "== host"; nvidia-smi; uname -r; ldd --version | head -1; docker version 2>&1 | head -2
echo "python $PY; mps: $(command -v nvidia-cuda-mps-control || find / -name nvidia-cuda-mps-control -type f 2>/dev/null | head -1)"
Q=index,uuid,name,memory.total,memory.used,utilization.gpu,temperature.gpu,power.draw,power.limit,pci.bus_id,mig.mode.current,compute_mode,ecc.mode.current
rm -rf /tmp/g1 /tmp/g2 /tmp/g3
ctl() { $B/gantryctl --socket /tmp/g$N/coordinator-1/admin.sock "$@"; }
start() { # N, extra dev args
  N=$1; shift
  $B/gantryctl dev --dir /tmp/g$N --coordinators 1 --agents 1 --gpu-backend nvml --runtime process --ready-timeout-secs 30 "$@" > /tmp/dev$N.log 2>&1 &
  DEV=$!
  for i in $(seq 1 60); do grep -q "cluster ready" /tmp/dev$N.log && break; kill -0 $DEV 2>/dev/null || break; sleep 0.5; done
  cat /tmp/dev$N.log
}
stopdev() { kill -INT $DEV; wait $DEV; echo "dev exit $?"; }
wl() { # name, gpu toml, env toml, health?
  cat > /tmp/$1.toml <<T
name = "$1"
command = "/bin/sh"
args = ["-c", "exec $PY $R/cuda_probe.py"]
stop_grace_s = 2
[env]
$3
[gpu]
$2
T
  ctl run /tmp/$1.toml
}
waitrun() { for i in $(seq 1 60); do ctl allocs $1 --json | grep -q '"actual": *"running"' && return; sleep 1; done; echo "not running"; ctl allocs $1; }
first() { ctl allocs $1 --json | python3 -c "import json,sys; print(json.load(sys.stdin)[0]['$2'])"; }

echo "== A: nvml inventory, idle"
start 1
nvidia-smi --query-gpu=$Q --format=csv
ctl nodes --json; ctl gpus; ctl gpus --json | tee $OUT/gpus-idle.json
echo "== A: gantry-infer, exclusive, process runtime"
cat > /tmp/infer.toml <<T
name = "infer"
command = "$B/gantry-infer"
[[ports]]
name = "http"
port = 8080
[health]
path = "/health"
port = "http"
interval_s = 0.5
[gpu]
mode = "exclusive"
T
ctl run /tmp/infer.toml --wait --timeout 60
ctl allocs infer
curl -s http://$(first infer endpoint)/health; echo
curl -s -XPOST http://$(first infer endpoint)/v1/infer -d '{"inputs":[[1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16]]}'; echo
ctl stop infer --wait
echo "== A: torch, exclusive"
wl probe 'mode = "exclusive"' 'LOAD_S = "40"
HOLD_GIB = "6"'
waitrun probe
sleep 25
nvidia-smi --query-gpu=$Q --format=csv; nvidia-smi --query-compute-apps=pid,process_name,used_memory --format=csv
ctl gpus; ctl gpus --json > $OUT/gpus-busy.json
ctl logs $(first probe id)
ctl stop probe --wait
stopdev

echo "== B: MPS 25% / 8 GiB and 50% / 16 GiB side by side"
start 2 --gpu-sharing 0=mps
ctl gpus
wl mps25 'mode = "mps"
compute_pct = 25
memory_mib = 8192' 'LOAD_S = "30"
HOLD_GIB = "2"
PROBE_GIB = "4,12"'
wl mps50 'mode = "mps"
compute_pct = 50
memory_mib = 16384' 'LOAD_S = "30"
HOLD_GIB = "2"
PROBE_GIB = "12,20"'
waitrun mps25; waitrun mps50
sleep 25
pgrep -af "^nvidia-cuda-mps"
ls -la /tmp/g2/node-1/data/mps/0/pipe
ctl gpus; ctl gpus --json > $OUT/gpus-mps.json
nvidia-smi
ctl allocs
echo "-- mps25 log"; ctl logs $(first mps25 id)
echo "-- mps50 log"; ctl logs $(first mps50 id)
echo "-- kill -9 the agent and start it again while the MPS replicas run"
APID=$(python3 -c "import json; print([p['pid'] for p in json.load(open('/tmp/g2/cluster.json'))['processes'] if p['name'] == 'node-1'][0])")
DPID=$(cat /tmp/g2/node-1/data/mps/0/pipe/nvidia-cuda-mps-control.pid)
CLIENTS=$(ctl allocs --json | python3 -c "import json,sys; print(sorted((a['id'], a['restarts']) for a in json.load(sys.stdin)))")
kill -9 $APID; sleep 1
$B/gantry-agent --config /tmp/g2/node-1/agent.toml >> /tmp/g2/node-1/log 2>&1 &
AGAIN=$!
sleep 6
echo "replicas before: $CLIENTS"
echo "replicas after:  $(ctl allocs --json | python3 -c "import json,sys; print(sorted((a['id'], a['restarts']) for a in json.load(sys.stdin)))")"
echo "MPS daemon pid before $DPID, after $(cat /tmp/g2/node-1/data/mps/0/pipe/nvidia-cuda-mps-control.pid)"
pgrep -af "cuda_probe.py"
ctl stop mps25 --wait; ctl stop mps50 --wait
sleep 3
pgrep -af "^nvidia-cuda-mps" || echo "no MPS daemon left"
ctl gpus
grep -i mps /tmp/g2/node-1/log | tail -8
echo "control.log: $(wc -l < /tmp/g2/node-1/data/mps/0/log/control.log) lines, $(grep -c "Unable to accept" /tmp/g2/node-1/data/mps/0/log/control.log) of them connection checks"; tail -8 /tmp/g2/node-1/data/mps/0/log/control.log
stopdev; kill $AGAIN 2>/dev/null; wait $AGAIN 2>/dev/null

echo "== C: MIG asked of a GPU whose MIG mode is off"
start 3 --gpu-sharing 0=mig
wait $DEV; echo "dev exit $?"
tail -5 /tmp/g3/node-1/log
