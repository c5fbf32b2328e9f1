# Sourced by the bench scripts. `start_dev BIN_DIR NAME` starts a dev
# cluster of 1 coordinator and 1 agent (process runtime) from BIN_DIR in a
# fresh /tmp/NAME-XXXX, waits until it is ready and stops it (and removes
# the directory) when the script exits. Sets `dir`, `dev` and `sock`.
# `pid_of ROLE` prints the pid of the first process of ROLE.
start_dev() {
  local bin=$1
  dir=$(mktemp -d "/tmp/$2-XXXX")
  PATH="$bin:$PATH" "$bin/gantryctl" dev --dir "$dir/c" --coordinators 1 --agents 1 --runtime process >"$dir/dev.log" 2>&1 &
  dev=$!
  trap 'kill -TERM $dev 2>/dev/null; wait $dev 2>/dev/null; rm -rf "$dir"' EXIT
  for _ in $(seq 1 600); do grep -q "cluster ready" "$dir/dev.log" 2>/dev/null && break; sleep 0.2; done
  grep -q "cluster ready" "$dir/dev.log" || { cat "$dir/dev.log"; exit 1; }
  sock="$dir/c/coordinator-1/admin.sock"
}

pid_of() {
  python3 -c "import json;print([p['pid'] for p in json.load(open('$dir/c/cluster.json'))['processes'] if p['role']=='$1'][0])"
}
