#!/usr/bin/env bash
# Make sure a Docker engine answers and can start a container, starting one if needed.
#
# Idempotent: when `docker info` works it only checks that a container starts. Otherwise installs
# Debian's docker.io when dockerd is missing, clears pid files left behind by a
# dead daemon (CI kills every process but keeps the filesystem), starts dockerd
# in the background and waits for it. With DOCKER_HOST set the engine is
# someone else's: it is only checked, never started.
#
# The check starts `busybox true` with no network in a fixture image when there is one, else in a one-file busybox
# image it imports (offline, inferserver-engine-check:1); on a local engine it also checks that the default bridge's
# interface (docker0) exists, which every RUN step of a `docker build` needs. When either fails it says what is
# wrong and how to fix it, and exits 1.
#
# Environment: INFERSERVER_DOCKERD_LOG (default /var/log/inferserver-dockerd.log),
# INFERSERVER_DOCKERD_WAIT (seconds, default 60), INFERSERVER_DOCKERD_ARGS (extra
# dockerd flags, word-split, e.g. "--bridge=none --iptables=false").
set -euo pipefail

LOG=${INFERSERVER_DOCKERD_LOG:-/var/log/inferserver-dockerd.log}
WAIT=${INFERSERVER_DOCKERD_WAIT:-60}
read -r -a EXTRA_ARGS <<<"${INFERSERVER_DOCKERD_ARGS:-}"

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
CACHE=${INFERSERVER_CACHE:-$ROOT/.cache}
CHECK_IMAGE=inferserver-engine-check:1
say() { echo "docker-engine: $*" >&2; }
die() { say "$*"; exit 1; }
source "$ROOT/scripts/busybox.sh"

engine_up() { docker info >/dev/null 2>&1; }

WORK=
trap '[[ -z $WORK ]] || rm -rf "$WORK"' EXIT

# Sets IMAGE to an image that has /bin/busybox: a fixture image when one is there, else a one-file image imported
# from a rootfs holding only busybox (no registry needed).
check_image() {
    for IMAGE in inferserver-test/copy:1 "$CHECK_IMAGE"; do
        docker image inspect "$IMAGE" >/dev/null 2>&1 && return 0
    done
    local busybox
    busybox=$(busybox_binary "$CACHE") || return 1
    WORK=$(mktemp -d)
    install -D -m 0755 "$busybox" "$WORK/rootfs/bin/busybox"
    tar -C "$WORK/rootfs" --numeric-owner --owner=0 --group=0 -c . | docker import - "$CHECK_IMAGE" >/dev/null ||
        die "docker import of a one-file busybox image ($CHECK_IMAGE) failed"
    say "built $CHECK_IMAGE (one file, busybox: to check that the engine starts containers)"
    IMAGE=$CHECK_IMAGE
}

# docker build runs each RUN step on the default bridge network: with its interface gone (deleted after dockerd
# started) every build fails, and the legacy builder leaves the step's container behind.
bridge_present() {
    [[ -z ${DOCKER_HOST:-} ]] || return 0  # someone else's engine: its host's interfaces are not visible here
    local name
    # No default bridge at all (dockerd --bridge=none): nothing to look for.
    name=$(docker network inspect bridge -f '{{index .Options "com.docker.network.bridge.name"}}' 2>/dev/null) ||
        return 0
    name=${name:-docker0}
    [[ -e /sys/class/net/$name ]] && return 0
    say "the engine's default bridge network has no interface $name on this host (deleted after dockerd started?):"
    say "  containers on the bridge network and every RUN step of a docker build (examples/build.sh) fail without it."
    say "  Fix: restart dockerd, which creates $name again (systemctl restart docker, or stop dockerd and run"
    say "  scripts/docker-engine.sh)."
    return 1
}

containers_start() {
    local out
    check_image || return 1
    if ! out=$(docker run --rm --network none --entrypoint /bin/busybox "$IMAGE" true 2>&1); then
        say "the engine answers but cannot start a container (docker run --rm --network none $IMAGE):"
        sed 's/^/    /' <<<"$out" >&2
        if grep -q -e docker0 -e 'network bridge' <<<"$out"; then
            say "  the host's docker0 bridge is missing or broken. Fix: restart dockerd, which creates docker0 again."
        else
            say "  see dockerd's log ($LOG when scripts/docker-engine.sh started it; else journalctl -u docker)."
        fi
        return 1
    fi
    bridge_present
}

if command -v docker >/dev/null 2>&1 && engine_up; then
    containers_start
    exit
fi

if [[ -n "${DOCKER_HOST:-}" ]]; then
    say "DOCKER_HOST=$DOCKER_HOST is set but 'docker info' fails there; not starting a local engine"
    docker info >&2 || true
    exit 1
fi

if [[ $(id -u) -ne 0 ]]; then
    say "no Docker engine answers and starting one needs root (run as root, or set DOCKER_HOST)"
    exit 1
fi

if ! command -v dockerd >/dev/null 2>&1 || ! command -v docker >/dev/null 2>&1; then
    say "installing docker.io"
    export DEBIAN_FRONTEND=noninteractive
    if ! apt-get install -y -q docker.io >/dev/null 2>&1; then
        apt-get update -q >/dev/null
        apt-get install -y -q docker.io >/dev/null
    fi
fi

# A pid file whose process is gone makes dockerd refuse to start
# ("pid file found, ensure docker is not running").
clear_stale_pidfile() {
    local f=$1 pid
    [[ -f $f ]] || return 0
    pid=$(tr -dc '0-9' <"$f" || true)
    if [[ -n $pid ]] && kill -0 "$pid" 2>/dev/null; then
        # Alive: only a problem if it is not what the file claims to be.
        if grep -qs -e dockerd -e containerd "/proc/$pid/comm"; then
            return 0
        fi
    fi
    say "removing stale $f${pid:+ (pid $pid not running)}"
    rm -f "$f"
}
clear_stale_pidfile /var/run/docker.pid
clear_stale_pidfile /var/run/docker/containerd/containerd.pid
clear_stale_pidfile /run/containerd/containerd.pid

# A daemon that is alive but not answering yet (just started by someone else):
# wait for it rather than starting a second one.
if ! [[ -f /var/run/docker.pid ]]; then
    mkdir -p "$(dirname "$LOG")"
    say "starting dockerd (log: $LOG)"
    nohup dockerd ${EXTRA_ARGS[@]+"${EXTRA_ARGS[@]}"} >>"$LOG" 2>&1 </dev/null &
    disown || true
fi

for ((i = 0; i < WAIT * 2; i++)); do
    if engine_up; then
        say "engine is up"
        containers_start
        exit
    fi
    sleep 0.5
done

say "dockerd did not answer within ${WAIT}s; last lines of $LOG:"
tail -n 30 "$LOG" >&2 || true
exit 1
