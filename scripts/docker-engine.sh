#!/usr/bin/env bash
# Make sure a Docker engine answers, starting one if needed.
#
# Idempotent: exits 0 at once when `docker info` works. Otherwise installs
# Debian's docker.io when dockerd is missing, clears pid files left behind by a
# dead daemon (CI kills every process but keeps the filesystem), starts dockerd
# in the background and waits for it. With DOCKER_HOST set the engine is
# someone else's: it is only checked, never started.
#
# Environment: INFERSERVER_DOCKERD_LOG (default /var/log/inferserver-dockerd.log),
# INFERSERVER_DOCKERD_WAIT (seconds, default 60), INFERSERVER_DOCKERD_ARGS (extra
# dockerd flags, word-split, e.g. "--bridge=none --iptables=false").
set -euo pipefail

LOG=${INFERSERVER_DOCKERD_LOG:-/var/log/inferserver-dockerd.log}
WAIT=${INFERSERVER_DOCKERD_WAIT:-60}
read -r -a EXTRA_ARGS <<<"${INFERSERVER_DOCKERD_ARGS:-}"

say() { echo "docker-engine: $*" >&2; }

engine_up() { docker info >/dev/null 2>&1; }

if command -v docker >/dev/null 2>&1 && engine_up; then
    exit 0
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
        exit 0
    fi
    sleep 0.5
done

say "dockerd did not answer within ${WAIT}s; last lines of $LOG:"
tail -n 30 "$LOG" >&2 || true
exit 1
