#!/usr/bin/env bash
# Everything the bench needs, then the bench itself (bench/run.py); results land in bench/results/ and the
# README's table. Heavy (a 1 GiB volume through both servers, ~10 minutes on 2 cores): not run by CI.
# Usage: bench/run.sh [--big-mib N] [--small-mib N] [--streams 10,100,1000]
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
OLD_VENV=$ROOT/bench/.cache/oldvenv
say() { echo "bench: $*" >&2; }

# The old server as its docs prescribe: Debian's NGINX and uWSGI with its Python 3 plugin; wrk for load.
missing=()
for cmd in nginx uwsgi wrk curl; do command -v "$cmd" >/dev/null || missing+=("$cmd"); done
[[ -e /usr/lib/uwsgi/plugins/python3_plugin.so ]] || missing+=(plugin)
if (( ${#missing[@]} )); then
    say "installing nginx-light uwsgi-core uwsgi-plugin-python3 wrk curl"
    export DEBIAN_FRONTEND=noninteractive
    pkgs=(nginx-light uwsgi-core uwsgi-plugin-python3 wrk curl)
    apt-get install -y -q "${pkgs[@]}" >/dev/null 2>&1 || { apt-get update -q >/dev/null && apt-get install -y -q "${pkgs[@]}" >/dev/null; }
fi

# inferserver's own environment, engine and fixture images.
scripts/setup.sh
.venv/bin/python -c 'import matplotlib' 2>/dev/null || .venv/bin/python -m pip install -q --disable-pip-version-check matplotlib

# The old server's venv, built with the Python that Debian's uWSGI plugin embeds. Why each pin: bench/README.md.
PINS=(ablinfer==1.2.3 flask==1.1.4 werkzeug==1.0.1 jinja2==2.11.3 markupsafe==2.0.1 itsdangerous==1.1.0
      click==7.1.2 docker==7.1.0 requests==2.32.3 urllib3==1.26.20)
want=$(printf '%s\n' "${PINS[@]}" | sha256sum | cut -d' ' -f1)
if [[ $(cat "$OLD_VENV/.pins" 2>/dev/null) != "$want" ]]; then
    say "building the old server's venv in $OLD_VENV"
    rm -rf "$OLD_VENV"
    /usr/bin/python3 -m venv "$OLD_VENV"
    "$OLD_VENV/bin/python" -m pip install -q --disable-pip-version-check "${PINS[@]}"
    echo "$want" >"$OLD_VENV/.pins"
fi

# 1000 log streams need file descriptors: two per stream in NGINX, one each in the client and the server.
ulimit -n "$(ulimit -Hn)"
exec .venv/bin/python -m bench.run "$@"
