#!/usr/bin/env bash
# End-to-end check of the gantry-infer image on the local Docker engine:
# build it, run it, check /health, /v1/infer and a refusal, check the port
# the agent assigns through GANTRY_PORT_HTTP, stop it and check it exited
# cleanly on SIGTERM. Prints "N passed, M failed"; exits non-zero on failure.
# SKIP_BUILD=1 reuses an existing image; IMAGE=... picks another tag.
set -uo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
image="${IMAGE:-gantry-infer:dev}"
passed=0
failed=0
containers=()
work="$(mktemp -d)"

cleanup() {
    for c in "${containers[@]}"; do docker rm -f "$c" >/dev/null 2>&1; done
    rm -rf "$work"
}
trap cleanup EXIT

pass() { passed=$((passed + 1)); echo "ok   $1"; }
fail() { failed=$((failed + 1)); echo "FAIL $1${2:+: $2}"; }
finish() { echo "$passed passed, $failed failed"; [ "$failed" -eq 0 ]; exit; }

# expect NAME WANT_STATUS STATUS BODY NEEDLE...: status equal, every needle in body.
expect() {
    local name="$1" want="$2" status="$3" body="$4"
    shift 4
    if [ "$status" != "$want" ]; then fail "$name" "status $status, want $want; body: $body"; return; fi
    for needle in "$@"; do
        case "$body" in
            *"$needle"*) ;;
            *) fail "$name" "body lacks $needle; body: $body"; return ;;
        esac
    done
    pass "$name"
}

# http METHOD URL [BODY]: sets $status and $body.
http() {
    local args=(-sS -o "$work/body" -w '%{http_code}' -X "$1" "$2")
    [ $# -ge 3 ] && args+=(-H 'Content-Type: application/json' --data-binary "$3")
    status="$(curl "${args[@]}" 2>"$work/curl.err")" || status="curl-error: $(cat "$work/curl.err")"
    body="$(cat "$work/body" 2>/dev/null)"
}

# start NAME CONTAINER_PORT DOCKER_RUN_ARGS...: runs the image detached with the
# container port published on an ephemeral 127.0.0.1 port; sets $cid and $url
# once /health answers (polled, up to 30 s).
start() {
    local name="$1" cport="$2"
    shift 2
    cid="$(docker run -d -p "127.0.0.1::$cport" "$@" "$image")" || { fail "$name: docker run"; return 1; }
    containers+=("$cid")
    local hostport
    hostport="$(docker port "$cid" "$cport/tcp" | head -n1)"
    url="http://$hostport"
    for _ in $(seq 300); do
        curl -sf -o /dev/null "$url/health" && { pass "$name: answers on $hostport"; return 0; }
        [ "$(docker inspect -f '{{.State.Running}}' "$cid")" = true ] || break
        sleep 0.1
    done
    fail "$name: never answered /health" "$(docker logs "$cid" 2>&1 | tail -n 5)"
    return 1
}

if [ "${SKIP_BUILD:-0}" != 1 ]; then
    if "$here/build-image.sh"; then pass "build-image.sh"; else fail "build-image.sh"; finish; fi
fi

size="$(docker image inspect -f '{{.Size}}' "$image" 2>/dev/null)" || { fail "image $image exists"; finish; }
if [ "$size" -lt $((20 * 1024 * 1024)) ]; then pass "image size $((size / 1024)) KiB < 20 MiB"; else fail "image size" "$size bytes"; fi
user="$(docker image inspect -f '{{.Config.User}}' "$image")"
if [ "$user" = "65534:65534" ]; then pass "runs as 65534:65534"; else fail "image user" "$user"; fi

row="[0.1,-0.2,0.3,-0.4,0.5,-0.6,0.7,-0.8,0.9,-1.0,1.1,-1.2,1.3,-1.4,1.5,-1.6]"

if start "default port" 8080 -e NVIDIA_VISIBLE_DEVICES=GPU-x -e GANTRY_ALLOC_ID=alloc-test; then
    http GET "$url/health"
    expect "GET /health" 200 "$status" "$body" '"status":"ok"' '"model":"tiny-mlp"' \
        '"NVIDIA_VISIBLE_DEVICES":"GPU-x"' '"GANTRY_ALLOC_ID":"alloc-test"'
    http POST "$url/v1/infer" '{"inputs":['"$row,$row"']}'
    expect "POST /v1/infer" 200 "$status" "$body" '"outputs":[[' '],[' '"argmax":[' \
        '"model":"tiny-mlp"' '"NVIDIA_VISIBLE_DEVICES":"GPU-x"'
    http POST "$url/v1/infer" '{"inputs":['"$row"',[1,2,3]]}'
    expect "POST /v1/infer refuses a short row" 400 "$status" "$body" \
        '{"error":"inputs[1]: expected 16 numbers, got 3"}'
    http GET "$url/nope"
    expect "unknown route" 404 "$status" "$body" '"error":'

    started=$SECONDS
    docker stop -t 10 "$cid" >/dev/null
    code="$(docker inspect -f '{{.State.ExitCode}}' "$cid")"
    if [ "$code" = 0 ] && [ $((SECONDS - started)) -lt 5 ]; then
        pass "docker stop: SIGTERM handled, exit 0 in $((SECONDS - started)) s"
    else
        fail "docker stop" "exit code $code after $((SECONDS - started)) s"
    fi
fi

if start "GANTRY_PORT_HTTP=9090" 9090 -e GANTRY_PORT_HTTP=9090; then
    http GET "$url/health"
    expect "GET /health on the assigned port" 200 "$status" "$body" '"GANTRY_PORT_HTTP":"9090"'
fi

finish
