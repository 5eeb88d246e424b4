#!/usr/bin/env bash
# Set up this checkout on a fresh Debian machine: a running Docker engine, the
# Python environment in .venv (with the convert extra), the offline test images,
# the example models' images, and nginx and systemd-analyze for the deployment
# tests. Safe to run again:
# each step is skipped when it is already done.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
VENV=$ROOT/.venv
STAMP=$VENV/.inferserver-installed

say() { echo "setup: $*" >&2; }
die() { say "FAILED: $*"; exit 1; }

apt_install() {
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -q "$@" >/dev/null 2>&1 && return 0
    apt-get update -q >/dev/null && apt-get install -y -q "$@" >/dev/null
}

# 1. Docker engine
scripts/docker-engine.sh || die "no Docker engine (see the messages above)"

# 2. PostgreSQL from Debian's packages: the integration tests run the server on it too (DATABASE_URL);
#    they start a throwaway cluster of their own, so the packaged one need not run.
if ! compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null; then
    say "installing postgresql"
    apt_install postgresql || die "apt-get install postgresql failed"
fi

# 2b. Python environment
command -v python3 >/dev/null || die "python3 is missing"
python3 -c 'import sys; sys.exit(sys.version_info < (3, 11))' || die "Python >= 3.11 is needed, found $(python3 -V)"
if [[ ! -x $VENV/bin/python ]]; then
    say "creating $VENV"
    if ! python3 -m venv "$VENV" >/dev/null 2>&1; then
        rm -rf "$VENV"
        say "installing python3-venv"
        apt_install python3-venv || die "apt-get install python3-venv failed"
        python3 -m venv "$VENV" || die "python3 -m venv failed"
    fi
fi
want=$(cat pyproject.toml <("$VENV/bin/python" -V 2>&1) | sha256sum | cut -d' ' -f1)
if [[ $(cat "$STAMP" 2>/dev/null) != "$want" ]] || ! "$VENV/bin/python" -c 'import inferserver' 2>/dev/null; then
    say "installing inferserver with its convert and test extras into $VENV"
    rm -f "$STAMP"
    log=$(mktemp)
    if ! "$VENV/bin/python" -m pip install -q --disable-pip-version-check -e '.[convert,test]' >"$log" 2>&1; then
        cat "$log" >&2
        rm -f "$log"
        die "pip install -e '.[convert,test]' failed"
    fi
    rm -f "$log"
    echo "$want" >"$STAMP"
fi

# 3. Test images
tests/images/build.sh || die "building the test images failed"

# 4. Example models (served by `make serve`, run by the tests on real data)
examples/build.sh || die "building the example model images failed"

# 5. Tools the deployment tests drive: Debian's nginx (the shipped site) and systemd-analyze (the unit).
if ! command -v nginx >/dev/null && [[ ! -x /usr/sbin/nginx ]]; then
    say "installing nginx"
    apt_install nginx || die "apt-get install nginx failed"
fi
if ! command -v systemd-analyze >/dev/null; then
    say "installing systemd (for systemd-analyze)"
    apt_install systemd || die "apt-get install systemd failed"
fi
