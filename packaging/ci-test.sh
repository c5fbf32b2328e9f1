#!/usr/bin/env bash
# Packaging test: builds the .deb and .rpm packages, checks their contents and
# metadata, installs the .debs into a fresh Debian root (debootstrap), runs the
# installed daemons from it and checks that the agent registers, then upgrades,
# removes and purges. Installs its own tools. Needs root (debootstrap, chroot).
#
#   bash packaging/ci-test.sh              # PROFILE=package-ci by default
#   KEEP_ROOT=1 bash packaging/ci-test.sh  # leave target/packaging-ci/root behind
#
# Ends with "N passed, M failed"; exits non-zero when anything failed.
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$(pwd)

CARGO_DEB_VERSION=3.8.0
CARGO_GENERATE_RPM_VERSION=0.21.1
SUITE=bookworm
export PROFILE=${PROFILE:-package-ci}
# Where cargo puts that profile's binaries (the dev profile builds into debug/).
BIN_DIR="$REPO/target/$PROFILE"
[ "$PROFILE" = dev ] && BIN_DIR="$REPO/target/debug"
WORK=$REPO/target/packaging-ci
ROOT=$WORK/root
PKGS=$REPO/target/packages
T0=$(date +%s)

passed=0 failed=0
pass() { passed=$((passed + 1)); echo "PASS: $*"; }
fail() { failed=$((failed + 1)); echo "FAIL: $*"; }
check() { # description, command...
    local what=$1; shift
    if "$@" >/dev/null 2>&1; then pass "$what"; else fail "$what"; fi
}
note() { echo "-- $* ($(($(date +%s) - T0))s)"; }
in_root() { chroot "$ROOT" "$@"; }

PIDS=()
cleanup() {
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    for m in proc dev/pts dev; do
        mountpoint -q "$ROOT/$m" 2>/dev/null && umount -l "$ROOT/$m" || true
    done
    if [ -z "${KEEP_ROOT:-}" ] && [ -d "$ROOT" ]; then rm -rf "$ROOT"; fi
}
trap cleanup EXIT

# ---------------------------------------------------------------- tools
note "tools"
need_apt=()
command -v rpm >/dev/null || need_apt+=(rpm)
command -v debootstrap >/dev/null || need_apt+=(debootstrap)
command -v python3 >/dev/null || need_apt+=(python3)
if [ ${#need_apt[@]} -gt 0 ]; then
    apt-get update -q >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${need_apt[@]}" >/dev/null
fi

# The Debian root downloads while the tools and packages build.
cleanup
rm -rf "$WORK" && mkdir -p "$WORK"
MIRROR=$(sed -n 's/^URIs: *\(http[^ ]*debian\)$/\1/p' /etc/apt/sources.list.d/debian.sources 2>/dev/null | head -1)
MIRROR=${MIRROR:-http://deb.debian.org/debian}
(
    s=$(date +%s)
    debootstrap --variant=minbase --include=adduser,systemd,procps,init-system-helpers \
        "$SUITE" "$ROOT" "$MIRROR" >"$WORK/debootstrap.log" 2>&1
    echo "$(($(date +%s) - s))" >"$WORK/debootstrap.seconds"
) &
DEBOOTSTRAP_PID=$!

installed_version() { cargo install --list | sed -n "s/^$1 v\([^:]*\):$/\1/p"; }
for tool in "cargo-deb $CARGO_DEB_VERSION" "cargo-generate-rpm $CARGO_GENERATE_RPM_VERSION"; do
    set -- $tool
    if [ "$(installed_version "$1")" != "$2" ]; then
        note "cargo install $1 $2"
        cargo install --locked --quiet "$1@$2"
    fi
done

# ---------------------------------------------------------------- build
note "build.sh (PROFILE=$PROFILE)"
bash packaging/build.sh
# The same binaries as version 0.1.0-2, for the upgrade test.
DEB_REVISION=2 RPM_RELEASE=2 NO_BUILD=1 OUT="$WORK/upgrade" bash packaging/build.sh >/dev/null
VERSION=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)

# ---------------------------------------------------------------- package contents
note "package contents and metadata"
deb() { echo "$PKGS/${1}_${VERSION}-1_amd64.deb"; }
rpmf() { echo "$PKGS/${1}-${VERSION}-1.x86_64.rpm"; }
has_line() { grep -qxF -- "$2" <<<"$1"; }
for pkg in gantry-coordinator gantry-agent gantryctl; do
    check "$pkg: .deb and .rpm built" test -s "$(deb $pkg)" -a -s "$(rpmf $pkg)"
done
deb_files() { dpkg-deb -c "$(deb "$1")" | awk '{print $6}' | sed 's|^\./|/|'; }
for pkg_role in gantry-coordinator:coordinator:8 gantry-agent:agent:8 gantryctl::1; do
    IFS=: read -r pkg role section <<<"$pkg_role"
    files=$(deb_files "$pkg")
    rfiles=$(rpm -qlp "$(rpmf "$pkg")" 2>/dev/null)
    expect=(/usr/bin/$pkg /usr/share/man/man$section/$pkg.$section.gz
        /usr/share/bash-completion/completions/$pkg /usr/share/fish/vendor_completions.d/$pkg.fish)
    if [ -n "$role" ]; then
        expect+=(/usr/lib/systemd/system/$pkg.service /etc/gantry/$role.toml)
    fi
    for f in "${expect[@]}"; do
        check "$pkg.deb contains $f" has_line "$files" "$f"
        check "$pkg.rpm contains $f" has_line "$rfiles" "$f"
    done
    check "$pkg.deb has zsh completion (vendor-completions)" has_line "$files" "/usr/share/zsh/vendor-completions/_$pkg"
    check "$pkg.rpm has zsh completion (site-functions)" has_line "$rfiles" "/usr/share/zsh/site-functions/_$pkg"
    check "$pkg.deb metadata: package and version" \
        bash -c "dpkg-deb -I '$(deb "$pkg")' | grep -q '^ Package: $pkg\$' && dpkg-deb -I '$(deb "$pkg")' | grep -q '^ Version: $VERSION-1\$'"
    check "$pkg.rpm metadata: name and version" \
        bash -c "rpm -qip '$(rpmf "$pkg")' 2>/dev/null | grep -q '^Name *: $pkg\$' && rpm -qip '$(rpmf "$pkg")' 2>/dev/null | grep -q '^Version *: $VERSION\$'"
    if [ -n "$role" ]; then
        check "$pkg.deb marks /etc/gantry/$role.toml as conffile" \
            bash -c "dpkg-deb -f '$(deb "$pkg")' >/dev/null && dpkg-deb -I '$(deb "$pkg")' conffiles | grep -qx /etc/gantry/$role.toml"
        check "$pkg.rpm marks /etc/gantry/$role.toml as config" \
            bash -c "rpm -qp --configfiles '$(rpmf "$pkg")' 2>/dev/null | grep -qx /etc/gantry/$role.toml"
        check "$pkg.deb postinst enables, restarts only on upgrade" \
            bash -c "dpkg-deb -I '$(deb "$pkg")' postinst | grep -q 'deb-systemd-helper enable' && dpkg-deb -I '$(deb "$pkg")' postinst | grep -q 'try-restart' && ! dpkg-deb -I '$(deb "$pkg")' postinst | grep -q 'deb-systemd-invoke start'"
        check "$pkg.rpm scriptlets enable, stop on removal, restart on upgrade" \
            bash -c "s=\$(rpm -qp --scripts '$(rpmf "$pkg")' 2>/dev/null); grep -q 'enable $pkg' <<<\"\$s\" && grep -q 'disable --now $pkg' <<<\"\$s\" && grep -q 'try-restart $pkg' <<<\"\$s\""
        man=$(gzip -dc "$BIN_DIR/gen/$pkg.$section.gz")
        check "$pkg man page documents --config" grep -q -- 'config' <<<"$man"
    fi
done
check "gantry-coordinator.deb depends on adduser" bash -c "dpkg-deb -f '$(deb gantry-coordinator)' Depends | grep -q adduser"
check "gantry-coordinator.deb recommends gantryctl" bash -c "dpkg-deb -f '$(deb gantry-coordinator)' Recommends | grep -q gantryctl"
check "gantry-coordinator.rpm creates the gantry user in %pre" \
    bash -c "rpm -qp --scripts '$(rpmf gantry-coordinator)' 2>/dev/null | grep -q 'useradd -r -g gantry'"
# Every commented-out example in the shipped configs is valid once uncommented.
for role in coordinator agent; do
    sed 's/^#\([a-z_]* = \)/\1/; s/^#\[/[/; s/^#\([0-9] = \)/\1/' "packaging/config/$role.toml" | grep -v '^#' >"$WORK/$role-uncommented.toml"
    check "packaging/config/$role.toml: examples parse when uncommented" \
        "$BIN_DIR/gantry-$role" --config "$WORK/$role-uncommented.toml" --print-config
done

# ---------------------------------------------------------------- Debian root
note "waiting for debootstrap"
if ! wait "$DEBOOTSTRAP_PID"; then
    tail -n 20 "$WORK/debootstrap.log"
    fail "debootstrap $SUITE"
    echo "$passed passed, $failed failed"
    exit 1
fi
pass "debootstrap --variant=minbase $SUITE in $(cat "$WORK/debootstrap.seconds")s"
mount -t proc proc "$ROOT/proc"
mkdir -p "$ROOT/tmp/pkgs" "$ROOT/tmp/upgrade"
cp "$PKGS"/*.deb "$ROOT/tmp/pkgs/"
cp "$WORK"/upgrade/*.deb "$ROOT/tmp/upgrade/"

note "install"
debs_in_root() { # directory in the root, revision
    for p in gantryctl gantry-coordinator gantry-agent; do echo "$1/${p}_${VERSION}-$2_amd64.deb"; done
}
# shellcheck disable=SC2046
if in_root dpkg -i $(debs_in_root /tmp/pkgs 1) >"$WORK/install.log" 2>&1; then
    pass "dpkg -i of the three packages"
else
    cat "$WORK/install.log"
    fail "dpkg -i of the three packages"
    echo "$passed passed, $failed failed"
    exit 1
fi
for f in /usr/bin/gantry-coordinator /usr/bin/gantry-agent /usr/bin/gantryctl \
    /usr/lib/systemd/system/gantry-coordinator.service /usr/lib/systemd/system/gantry-agent.service \
    /etc/gantry/coordinator.toml /etc/gantry/agent.toml \
    /usr/share/man/man8/gantry-coordinator.8.gz /usr/share/man/man1/gantryctl.1.gz \
    /usr/share/bash-completion/completions/gantryctl; do
    check "installed: $f" test -e "$ROOT$f"
done
check "user gantry is a system user with no login shell" \
    bash -c "e=\$(chroot '$ROOT' getent passwd gantry) && uid=\$(cut -d: -f3 <<<\"\$e\") && [ \"\$uid\" -lt 1000 ] && grep -q ':/usr/sbin/nologin$' <<<\"\$e\""
check "group gantry exists" in_root getent group gantry
stat_is() { [ "$(chroot "$ROOT" stat -c '%U:%G %a' "$1")" = "$2" ]; } # names as the root knows them
check "/var/lib/gantry/coordinator is gantry:gantry 750" stat_is /var/lib/gantry/coordinator "gantry:gantry 750"
check "/var/lib/gantry/agent is root:root 700" stat_is /var/lib/gantry/agent "root:root 700"
check "/etc/gantry/pki is root:gantry 750" stat_is /etc/gantry/pki "root:gantry 750"
for pkg_role in gantry-coordinator:coordinator gantry-agent:agent; do
    IFS=: read -r pkg role <<<"$pkg_role"
    check "dpkg marks /etc/gantry/$role.toml as conffile of $pkg" \
        bash -c "chroot '$ROOT' dpkg-query -W -f='\${Conffiles}' $pkg | grep -q '/etc/gantry/$role.toml'"
    check "$pkg.service enabled on install" bash -c "[ \"\$(chroot '$ROOT' systemctl is-enabled $pkg.service)\" = enabled ]"
    check "$pkg.service not started on install (postinst starts nothing)" \
        bash -c "! pgrep -f \"^/usr/bin/$pkg \" >/dev/null"
done
verify() { # prints systemd-analyze's complaints; fails on any
    local out
    out=$(in_root systemd-analyze verify --man=no "$@" 2>&1) && [ -z "$out" ] || { echo "$out"; return 1; }
}
if verify /usr/lib/systemd/system/gantry-coordinator.service /usr/lib/systemd/system/gantry-agent.service; then
    pass "systemd-analyze verify of the installed units"
else
    fail "systemd-analyze verify of the installed units"
fi
check "gantry-agent.service keeps workloads on stop (KillMode=process)" \
    grep -qx 'KillMode=process' "$ROOT/usr/lib/systemd/system/gantry-agent.service"

# ---------------------------------------------------------------- run the installed daemons
note "run the installed daemons"
free_port() { python3 -c 'import socket; s=socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
QUIC=$(free_port)
METRICS=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
# Certificates where the shipped configs expect them (their comments say how).
in_root gantryctl certs init --dir /root/pki >/dev/null
in_root gantryctl certs issue --dir /root/pki --role coordinator --name coord-1 >/dev/null
in_root gantryctl certs issue --dir /root/pki --role agent --name ci-node >/dev/null
in_root install -m 0644 /root/pki/ca.pem /etc/gantry/pki/ca.pem
in_root install -m 0644 /root/pki/coordinator-coord-1.pem /etc/gantry/pki/coordinator.pem
in_root install -m 0640 -g gantry /root/pki/coordinator-coord-1.key /etc/gantry/pki/coordinator.key
in_root install -m 0644 /root/pki/agent-ci-node.pem /etc/gantry/pki/agent.pem
in_root install -m 0600 /root/pki/agent-ci-node.key /etc/gantry/pki/agent.key
# The only local changes: drop-ins with test ports and simulated GPUs.
mkdir -p "$ROOT/etc/systemd/system/gantry-coordinator.service.d" "$ROOT/etc/systemd/system/gantry-agent.service.d"
cat >"$ROOT/etc/systemd/system/gantry-coordinator.service.d/ci.conf" <<EOF
[Service]
ExecStart=
ExecStart=/usr/bin/gantry-coordinator --config /etc/gantry/coordinator.toml --id 1 --listen 127.0.0.1:$QUIC --initial-member 1=127.0.0.1:$QUIC
EOF
cat >"$ROOT/etc/systemd/system/gantry-agent.service.d/ci.conf" <<EOF
[Service]
ExecStart=
ExecStart=/usr/bin/gantry-agent --config /etc/gantry/agent.toml --coordinator 127.0.0.1:$QUIC --gpu-backend sim --sim-gpus 2xL4-24GB --metrics-listen 127.0.0.1:$METRICS
EOF
if verify /usr/lib/systemd/system/gantry-coordinator.service /usr/lib/systemd/system/gantry-agent.service; then
    pass "systemd-analyze verify with the test drop-ins"
else
    fail "systemd-analyze verify with the test drop-ins"
fi
exec_start() { grep '^ExecStart=.' "$ROOT/etc/systemd/system/$1.service.d/ci.conf" | sed 's/^ExecStart=//'; }

# What systemd would provide: /run/gantry (RuntimeDirectory=), a notify socket
# and a watchdog. A small listener records what the daemons send.
install -d -m 0750 -o "$(in_root id -u gantry)" -g "$(in_root id -g gantry)" "$ROOT/run/gantry"
mkdir -p "$ROOT/run/ci"
chmod 0777 "$ROOT/run/ci"
python3 - "$ROOT/run/ci/notify" "$WORK/notify.log" <<'EOF' &
import os, socket, sys
path, log = sys.argv[1], sys.argv[2]
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
s.bind(path)
os.chmod(path, 0o666)
with open(log, "a", buffering=1) as out:
    while True:
        for line in s.recv(4096).decode().splitlines():
            out.write(line + "\n")
EOF
PIDS+=($!)
sleep 0.5
export NOTIFY_SOCKET=/run/ci/notify WATCHDOG_USEC=2000000
# shellcheck disable=SC2046
chroot --userspec=gantry:gantry "$ROOT" $(exec_start gantry-coordinator) >"$WORK/coordinator.log" 2>&1 &
COORD=$!
PIDS+=($COORD)
# shellcheck disable=SC2046
chroot "$ROOT" $(exec_start gantry-agent) >"$WORK/agent.log" 2>&1 &
AGENT=$!
PIDS+=($AGENT)
unset NOTIFY_SOCKET WATCHDOG_USEC

wait_for() { # seconds, command...
    local until=$(($(date +%s) + $1)); shift
    while [ "$(date +%s)" -lt "$until" ]; do "$@" >/dev/null 2>&1 && return 0; sleep 0.3; done
    return 1
}
registered() {
    chroot --userspec=gantry:gantry "$ROOT" gantryctl --json nodes |
        python3 -c 'import json,sys; n=[x for x in json.load(sys.stdin) if x["name"]=="ci-node"]; sys.exit(0 if n and n[0]["status"]=="ready" and n[0]["gpu_count"]==2 else 1)'
}
if wait_for 60 registered; then
    pass "the installed agent registers with the installed coordinator (gantryctl nodes, as user gantry)"
else
    fail "the installed agent registers with the installed coordinator"
    # `tail -20` with two files is refused in POSIX mode; -n works everywhere.
    tail -n 20 "$WORK/coordinator.log" "$WORK/agent.log"
    chroot --userspec=gantry:gantry "$ROOT" gantryctl nodes || true
fi
check "admin socket is group gantry, mode 660" stat_is /run/gantry/coordinator.sock "gantry:gantry 660"
check "sd_notify: both daemons sent READY=1" bash -c "[ \$(grep -c '^READY=1$' '$WORK/notify.log') -ge 2 ]"
check "sd_notify: STATUS= follows Raft (leader=1)" grep -q '^STATUS=leader=1 ' "$WORK/notify.log"
check "sd_notify: agent STATUS says registered" grep -q '^STATUS=registered with leader' "$WORK/notify.log"
check "sd_notify: watchdog pings at WATCHDOG_USEC/2" wait_for 5 bash -c "[ \$(grep -c '^WATCHDOG=1$' '$WORK/notify.log') -ge 4 ]"

note "reload (SIGHUP)"
sed -i 's/^#telemetry_interval_ms = 1000/telemetry_interval_ms = 500/' "$ROOT/etc/gantry/agent.toml"
kill -HUP "$AGENT" # chroot exec()s the daemon: same pid
check "agent reload applies telemetry_interval_ms" \
    wait_for 10 grep -q 'configuration reloaded applied=\["telemetry_interval_ms"\] needs_restart=\[\]' "$WORK/agent.log"
check "sd_notify: RELOADING=1 on SIGHUP" grep -q '^RELOADING=1$' "$WORK/notify.log"
sed -i 's/^#log_level = "info"/log_level = "debug"/; s/^#node_down_after_secs = 10/node_down_after_secs = 20/' \
    "$ROOT/etc/gantry/coordinator.toml"
kill -HUP "$COORD"
check "coordinator reload applies log_level, names node_down_after_secs as needing a restart" \
    wait_for 10 grep -q 'configuration reloaded applied=\["log_level"\] needs_restart=\["node_down_after_secs"\]' "$WORK/coordinator.log"

note "graceful stop (SIGTERM)"
kill -TERM "$AGENT"
check "agent exits 0 on SIGTERM" wait "$AGENT"
check "agent leaves workloads alone on stop" grep -q 'running workloads are left alone' "$WORK/agent.log"
kill -TERM "$COORD"
check "coordinator exits 0 on SIGTERM" wait "$COORD"
check "coordinator steps down as leader before exiting" grep -q 'leader stepping down' "$WORK/coordinator.log"
check "sd_notify: STOPPING=1" grep -q '^STOPPING=1$' "$WORK/notify.log"
rm -f "$ROOT/etc/systemd/system/gantry-coordinator.service.d/ci.conf" "$ROOT/etc/systemd/system/gantry-agent.service.d/ci.conf"
rmdir "$ROOT/etc/systemd/system/gantry-coordinator.service.d" "$ROOT/etc/systemd/system/gantry-agent.service.d"

# ---------------------------------------------------------------- upgrade
note "upgrade"
echo '# edited by the operator' >>"$ROOT/etc/gantry/agent.toml"
touch "$ROOT/var/lib/gantry/coordinator/keep-me"
# shellcheck disable=SC2046
if in_root dpkg -i $(debs_in_root /tmp/upgrade 2) >"$WORK/upgrade.log" 2>&1; then
    pass "dpkg -i of version $VERSION-2 over $VERSION-1"
else
    cat "$WORK/upgrade.log"
    fail "dpkg -i of version $VERSION-2 over $VERSION-1"
fi
check "upgraded to $VERSION-2" bash -c "[ \"\$(chroot '$ROOT' dpkg-query -W -f='\${Version}' gantry-agent)\" = '$VERSION-2' ]"
check "upgrade keeps the edited /etc/gantry/agent.toml" grep -q '^# edited by the operator$' "$ROOT/etc/gantry/agent.toml"
check "upgrade keeps the edited /etc/gantry/coordinator.toml" grep -q '^log_level = "debug"$' "$ROOT/etc/gantry/coordinator.toml"
check "upgrade keeps data in /var/lib/gantry" test -e "$ROOT/var/lib/gantry/coordinator/keep-me"
check "services still enabled after upgrade" \
    bash -c "[ \"\$(chroot '$ROOT' systemctl is-enabled gantry-agent.service)\" = enabled ] && [ \"\$(chroot '$ROOT' systemctl is-enabled gantry-coordinator.service)\" = enabled ]"

# ---------------------------------------------------------------- remove and purge
note "remove"
in_root dpkg -r gantry-agent gantry-coordinator gantryctl >"$WORK/remove.log" 2>&1 && pass "dpkg -r" || fail "dpkg -r"
check "remove deletes the binaries and units" \
    bash -c "! test -e '$ROOT/usr/bin/gantry-agent' && ! test -e '$ROOT/usr/lib/systemd/system/gantry-coordinator.service'"
check "remove disables the services" \
    bash -c "! test -e '$ROOT/etc/systemd/system/multi-user.target.wants/gantry-agent.service' || ! chroot '$ROOT' systemctl is-enabled gantry-agent.service | grep -qx enabled"
check "remove keeps configs and data" \
    bash -c "test -e '$ROOT/etc/gantry/agent.toml' && test -e '$ROOT/var/lib/gantry/coordinator/keep-me'"
note "purge"
in_root dpkg -P gantry-agent gantry-coordinator gantryctl >"$WORK/purge.log" 2>&1 && pass "dpkg -P" || fail "dpkg -P"
check "purge deletes configs" bash -c "! test -e '$ROOT/etc/gantry/agent.toml' && ! test -e '$ROOT/etc/gantry/coordinator.toml'"
check "purge deletes /var/lib/gantry/{coordinator,agent}" \
    bash -c "! test -e '$ROOT/var/lib/gantry/coordinator' && ! test -e '$ROOT/var/lib/gantry/agent'"
check "purge leaves no enablement symlinks" bash -c "! ls '$ROOT'/etc/systemd/system/*/gantry-* 2>/dev/null | grep -q ."

note "done"
ls -l "$PKGS"
echo "packaging: $passed passed, $failed failed in $(($(date +%s) - T0))s"
echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
