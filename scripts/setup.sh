#!/usr/bin/env bash
# Set up this checkout on a fresh Debian machine, as far as a purpose needs and no further:
#
#   scripts/setup.sh serve   what `make serve` needs: a Docker engine that can start containers, .venv with the
#                            convert extra, and the images of the models in examples/models (the bone_threshold
#                            example, built on a Debian base made by debootstrap, and the copy fixture image)
#   scripts/setup.sh test    what `make test` needs: the engine, PostgreSQL, .venv with the convert, test and lint
#                            extras (it runs the lint checks before the tests),
#                            every fixture image, the example images, nginx and systemd-analyze
#   scripts/setup.sh lint    what `make lint` needs: .venv with the lint extra (ruff, mypy)
#   scripts/setup.sh         serve and test: everything
#
# Environment: INFERSERVER_VENV (default .venv in the checkout; `make VENV=...` sets it).
#
# Several purposes may be given at once; --plan lists the steps they take and does nothing. Safe to run again: each
# step is skipped when it is already done, and every step that installs or builds something says so on stderr.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
VENV=${INFERSERVER_VENV:-$ROOT/.venv}

say() { echo "setup: $*" >&2; }
die() { say "FAILED: $*"; exit 1; }

usage="usage: scripts/setup.sh [--plan] [serve] [test] [lint]  (none: serve and test)"
purposes=()
plan=0
for p in "$@"; do
    case $p in
        serve | test | lint) purposes+=("$p") ;;
        --plan) plan=1 ;;
        -h | --help) echo "$usage"; exit 0 ;;
        *) die "unknown purpose '$p' ($usage)" ;;
    esac
done
[[ ${#purposes[@]} -gt 0 ]] || purposes=(serve test)
wants() { [[ " ${purposes[*]} " == *" $1 "* ]]; }

installed=()  # what this run installed or created, for the closing line

apt_install() {
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -q "$@" >/dev/null 2>&1 && return 0
    apt-get update -q >/dev/null && apt-get install -y -q "$@" >/dev/null
}

# A Debian package, installed unless `check` (a shell condition) already holds.
need_package() {
    local package=$1 why=$2 check=$3
    eval "$check" && return 0
    say "installing $package ($why)"
    apt_install "$package" || die "apt-get install $package failed"
    installed+=("$package")
}

# Runs a helper script, passing its messages on and noting what it says it installed, fetched or built.
run_step() {
    local log rc=0 line
    log=$(mktemp)
    { "$@" 2>&1 >/dev/null | tee "$log" >&2; } || rc=$?
    while IFS= read -r line; do
        [[ $line =~ ^[a-z-]+:\ (installing|fetching|built)\ ([^ ]+) ]] && installed+=("${BASH_REMATCH[2]}")
    done <"$log"
    rm -f "$log"
    return "$rc"
}

need_engine() {
    run_step scripts/docker-engine.sh || die "no Docker engine that can start containers (see the messages above)"
}

# .venv with inferserver installed editable and the given extras. Each extra has a stamp holding the hash of
# pyproject.toml and the venv's Python, so an extra is installed again only when either changed, and installing
# one purpose's extras never undoes another's.
need_venv() {
    local extras=("$@") stale=() want e
    command -v python3 >/dev/null || die "python3 is missing"
    python3 -c 'import sys; sys.exit(sys.version_info < (3, 11))' || die "Python >= 3.11 is needed, found $(python3 -V)"
    if [[ ! -x $VENV/bin/python ]]; then
        say "creating $VENV"
        if ! python3 -m venv "$VENV" >/dev/null 2>&1; then
            rm -rf "$VENV"
            need_package python3-venv "python3 -m venv" false
            python3 -m venv "$VENV" || die "python3 -m venv failed"
        fi
        installed+=("$VENV")
    fi
    want=$(cat pyproject.toml <("$VENV/bin/python" -V 2>&1) | sha256sum | cut -d' ' -f1)
    for e in "${extras[@]}"; do
        [[ $(cat "$VENV/.inferserver-extra-$e" 2>/dev/null) == "$want" ]] || stale+=("$e")
    done
    if [[ ${#stale[@]} -eq 0 ]] && "$VENV/bin/python" -c 'import inferserver' 2>/dev/null; then
        return 0
    fi
    local spec
    spec=".[$(IFS=,; echo "${extras[*]}")]"
    say "installing inferserver with the extras ${extras[*]} into $VENV (pip install -e '$spec')"
    rm -f "${stale[@]/#/$VENV/.inferserver-extra-}"
    local log
    log=$(mktemp)
    if ! "$VENV/bin/python" -m pip install -q --disable-pip-version-check -e "$spec" >"$log" 2>&1; then
        cat "$log" >&2
        rm -f "$log"
        die "pip install -e '$spec' failed"
    fi
    rm -f "$log"
    for e in "${extras[@]}"; do echo "$want" >"$VENV/.inferserver-extra-$e"; done
    installed+=("inferserver[$(IFS=,; echo "${extras[*]}")] in $VENV")
}

extras=()
wants serve && extras+=(convert)
wants test && extras+=(convert test lint)  # `make test` runs the lint checks first
wants lint && extras+=(lint)
wants test && extras+=(client)  # tests/integration/test_client_cli.py runs `inferserver client`
wants lint && extras+=(client)  # mypy checks src/inferserver/cli/client against httpx's and rich's annotations
# Each extra once, in a stable order.
mapfile -t extras < <(printf '%s\n' ${extras[@]+"${extras[@]}"} | sort -u)

# The steps, each a function step_NAME; what the purposes need, in order.
step_engine() { need_engine; }
step_postgresql() {
    # The integration tests also run the server on PostgreSQL (DATABASE_URL), in a throwaway cluster of their own:
    # the packaged one need not run.
    need_package postgresql "the tests run the server on PostgreSQL too" \
        "compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null"
}
step_venv() { need_venv "${extras[@]}"; }
step_fixture_images() { run_step tests/images/build.sh || die "building the fixture images failed"; }
# examples/models/copy.json runs the copy fixture image: serving needs only that one.
step_copy_image() { run_step tests/images/build.sh copy || die "building the fixture image copy failed"; }
step_example_images() { run_step examples/build.sh || die "building the example model images failed"; }
# The deployment tests drive Debian's nginx (the shipped site) and systemd-analyze (the unit).
step_nginx() {
    need_package nginx "the deployment tests run the shipped site" \
        "command -v nginx >/dev/null || [[ -x /usr/sbin/nginx ]]"
}
step_systemd() { need_package systemd "systemd-analyze checks the shipped unit" "command -v systemd-analyze >/dev/null"; }
# The engine test bed (tests/integration/engine_bed.py) carries each private engine's TLS port to the host's
# loopback with socat, makes its CA and certificates with the openssl CLI, and reaches one engine over SSH through
# an sshd of its own (only the binary is needed: the bed starts it, nothing is enabled on the machine).
step_engine_bed() {
    need_package socat "the engine test bed forwards its TLS engines" "command -v socat >/dev/null"
    need_package openssl "the engine test bed makes its certificates" "command -v openssl >/dev/null"
    need_package openssh-server "the engine test bed's SSH engine" "[[ -x /usr/sbin/sshd ]]"
}
# The web page tests drive Debian's chromium (headless, WebGL through SwiftShader) with its chromedriver.
step_chromium() {
    need_package chromium "the web page tests run /ui/ in a real browser" "command -v chromium >/dev/null"
    need_package chromium-driver "selenium drives chromium through it" "command -v chromedriver >/dev/null"
}
# The two-host tests cut a host off from PostgreSQL without a FIN by dropping its packets.
step_iptables() {
    need_package iptables "the two-host tests drop a vanished host's packets" "command -v iptables >/dev/null"
}
# The status-under-load test drives wrk, as the issue measured it (bench/status_load.py uses it too).
step_wrk() { need_package wrk "the status-under-load test polls with 200 connections" "command -v wrk >/dev/null"; }

describe() {
    case $1 in
        engine) echo "a Docker engine that starts containers (scripts/docker-engine.sh; Debian's docker.io)" ;;
        postgresql) echo "Debian's postgresql" ;;
        venv) echo "$VENV with inferserver and the extras ${extras[*]}" ;;
        fixture_images) echo "every fixture image inferserver-test/*:1 (tests/images/build.sh)" ;;
        copy_image) echo "the fixture image inferserver-test/copy:1 (tests/images/build.sh copy)" ;;
        example_images) echo "the example images inferserver-example/*:1 and their Debian base (examples/build.sh)" ;;
        nginx) echo "Debian's nginx" ;;
        systemd) echo "Debian's systemd (systemd-analyze)" ;;
        engine_bed) echo "Debian's socat, openssl and openssh-server (the engine test bed)" ;;
        chromium) echo "Debian's chromium and chromium-driver (the web page tests)" ;;
        iptables) echo "Debian's iptables" ;;
        wrk) echo "Debian's wrk" ;;
    esac
}

steps=()
{ wants serve || wants test; } && steps+=(engine)
wants test && steps+=(postgresql)
steps+=(venv)
if wants test; then steps+=(fixture_images); elif wants serve; then steps+=(copy_image); fi
{ wants serve || wants test; } && steps+=(example_images)
wants test && steps+=(nginx systemd engine_bed chromium iptables wrk)

if [[ $plan -eq 1 ]]; then
    for step in "${steps[@]}"; do echo "$step: $(describe "$step")"; done
    exit 0
fi
for step in "${steps[@]}"; do "step_$step"; done

if [[ ${#installed[@]} -eq 0 ]]; then
    say "ready for ${purposes[*]}; nothing to install"
else
    say "ready for ${purposes[*]}; installed: $(IFS=';'; echo "${installed[*]}" | sed 's/;/; /g')"
fi
