#!/usr/bin/env bash
# Build the server's own image (Dockerfile) offline: from the local Debian-made base image
# (scripts/build-base-image.sh) with inferserver and its dependencies as wheels built here on the host.
#
#   scripts/build-image.sh [--force]
#
# Skipped when the image's label org.inferserver.source-hash matches the hash of everything the image is built
# from (Dockerfile, pyproject.toml, README.md, src/, deploy/gunicorn.conf.py, this script, the base image's id).
# Environment: INFERSERVER_IMAGE (default inferserver/server:local), INFERSERVER_BASE_IMAGE (default
# inferserver-base/python:bookworm; built when it is that one), PYTHON (pip to build wheels; default .venv's).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
IMAGE=${INFERSERVER_IMAGE:-inferserver/server:local}
BASE=${INFERSERVER_BASE_IMAGE:-inferserver-base/python:bookworm}
PYTHON=${PYTHON:-$ROOT/.venv/bin/python}
LABEL=org.inferserver.source-hash
SAY_PREFIX=build-image
source "$ROOT/scripts/image-build-args.sh"  # say, die, docker_build

if [[ $BASE == inferserver-base/python:bookworm ]]; then
    scripts/build-base-image.sh || die "building the base image $BASE failed"
fi
base_id=$(docker image inspect -f '{{.Id}}' "$BASE" 2>/dev/null) || die "no base image $BASE"

hash=$( (
    echo "$base_id"
    find Dockerfile .dockerignore pyproject.toml README.md deploy/gunicorn.conf.py src scripts/build-image.sh \
        -type f ! -path '*/__pycache__/*' ! -path '*.egg-info/*' -print0 | sort -z | xargs -0 sha256sum
) | sha256sum | cut -d' ' -f1)
if [[ ${1:-} != --force ]] && [[ $(docker image inspect -f "{{ index .Config.Labels \"$LABEL\" }}" "$IMAGE" 2>/dev/null) == "$hash" ]]; then
    exit 0
fi

# The wheels must fit the base image's Python: pip builds them for the interpreter it runs in.
want=$(docker run --rm --entrypoint python3 "$BASE" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
have=$("$PYTHON" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
[[ $want == "$have" ]] || die "$BASE has Python $want but $PYTHON is $have; set PYTHON to a Python $want"

say "building wheels of inferserver and its dependencies into build/wheels"
rm -rf build/wheels
mkdir -p build/wheels
log=$(mktemp)
trap 'rm -f "$log"' EXIT
"$PYTHON" -m pip wheel -q --disable-pip-version-check '.[deploy,convert]' -w build/wheels >"$log" 2>&1 || { cat "$log" >&2; die "pip wheel failed"; }

say "building $IMAGE from $BASE"
# --network none: the build must not reach any index, so a missing wheel fails here instead of fetching it.
docker_build -q --network none --build-arg BASE="$BASE" --label "$LABEL=$hash" -t "$IMAGE" . >"$log" 2>&1 || { cat "$log" >&2; die "docker build failed"; }
say "built $IMAGE"
