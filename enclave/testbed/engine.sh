#!/usr/bin/env bash
# Start the local Docker engine that the testbed, the tests, CI and the demo share.
#
# Idempotent: if an engine already answers on /var/run/docker.sock nothing is done.
# The engine never gets a bridge (docker0 / 172.17.x), never touches iptables and never
# turns on IP forwarding: every container we run uses the host network and all test
# traffic stays on 127.0.0.0/8. Storage is vfs: slow and space-hungry (a full copy per
# layer), but it works on any backing filesystem and needs no kernel overlay support.
#
# Client/daemon versions: Debian's docker.io brings dockerd 20.10 (API 1.41); a newer
# client (e.g. /usr/local/bin/docker 28.x, API 1.50) and the Python SDK negotiate down to
# 1.41 on their own, so DOCKER_API_VERSION is deliberately left unset.
set -euo pipefail

SOCK=/var/run/docker.sock
PIDFILE=/var/run/enclave-dockerd.pid
LOG=/var/log/enclave-dockerd.log
WAIT_SECONDS=${ENCLAVE_ENGINE_WAIT:-60}

die() { echo "engine.sh: $*" >&2; exit 1; }

[ "$(id -u)" -eq 0 ] || die "must run as root (installs packages and starts dockerd)"

engine_answers() { docker -H "unix://$SOCK" info >/dev/null 2>&1; }

# Packages the controller needs: the engine, debootstrap for the offline host image,
# and the OpenSSH client (Ansible's ssh connection, ssh-keygen for the testbed key).
need=()
command -v dockerd >/dev/null 2>&1 || need+=(docker.io)
command -v debootstrap >/dev/null 2>&1 || need+=(debootstrap)
command -v ssh-keygen >/dev/null 2>&1 || need+=(openssh-client)
if [ "${#need[@]}" -gt 0 ]; then
    export DEBIAN_FRONTEND=noninteractive
    apt_log=$(mktemp)
    trap 'rm -f "$apt_log"' EXIT
    apt-get update >"$apt_log" 2>&1 || { tail -n 5 "$apt_log" >&2; die "apt-get update failed"; }
    apt-get install -y --no-install-recommends "${need[@]}" >"$apt_log" 2>&1 \
        || { tail -n 5 "$apt_log" >&2; die "apt-get install ${need[*]} failed"; }
fi
command -v docker >/dev/null 2>&1 || die "no docker client on PATH"

no_bridge() {
    # The flags below forbid a bridge; if one exists, some engine was started without them.
    if [ -e /sys/class/net/docker0 ]; then
        die "a docker0 bridge exists: remove it ('ip link del docker0') and restart the engine with --bridge=none"
    fi
}

if engine_answers; then
    no_bridge
    exit 0
fi

# A stale pidfile from a dead engine would make dockerd refuse to start.
if [ -f "$PIDFILE" ] && ! kill -0 "$(cat "$PIDFILE")" 2>/dev/null; then
    rm -f "$PIDFILE"
fi

started=""
if [ ! -f "$PIDFILE" ]; then
    # setsid + nohup: the engine must outlive the shell (CI step, pytest session) that started it.
    setsid nohup dockerd --iptables=false --ip-forward=false --bridge=none --storage-driver=vfs \
        --host "unix://$SOCK" --pidfile "$PIDFILE" >>"$LOG" 2>&1 </dev/null &
    started=$!
fi

for _ in $(seq "$WAIT_SECONDS"); do
    if engine_answers; then
        no_bridge
        exit 0
    fi
    if [ -n "$started" ] && ! kill -0 "$started" 2>/dev/null; then
        die "dockerd exited at start: $(tail -n 1 "$LOG")"
    fi
    sleep 1
done
die "dockerd did not answer on $SOCK within ${WAIT_SECONDS}s (see $LOG)"
