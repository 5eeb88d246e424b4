#!/usr/bin/env bash
# Build the example models' images (examples/<name>/Dockerfile -> inferserver-example/<name>:1).
#
# By default they build offline from the local Debian base (scripts/build-base-image.sh, built first when
# missing); BASE=python:3.12-slim examples/build.sh builds them from a registry instead. An image is rebuilt
# only when its label org.inferserver.example-hash differs from the hash of its directory, this script and
# the base image's id (contents only: the hash is the same wherever the checkout is). Usage: build.sh [--force] [NAME...]
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/.." && pwd)
LOCAL_BASE=${INFERSERVER_BASE_IMAGE:-inferserver-base/python:bookworm}
BASE=${BASE:-$LOCAL_BASE}
REPO=inferserver-example
TAG=1
LABEL=org.inferserver.example-hash

SAY_PREFIX=examples
source "$ROOT/scripts/image-build-args.sh"
parse_build_args "$@"
if [[ ${#names[@]} -eq 0 ]]; then
    for f in "$HERE"/*/Dockerfile; do names+=("$(basename "$(dirname "$f")")"); done
fi

docker info >/dev/null 2>&1 || die "no Docker engine answers (run scripts/docker-engine.sh)"
if [[ $BASE == "$LOCAL_BASE" ]]; then
    INFERSERVER_BASE_IMAGE=$LOCAL_BASE "$ROOT/scripts/build-base-image.sh" || die "building the base image $LOCAL_BASE failed"
fi
base_id=$(docker image inspect -f '{{.Id}}' "$BASE" 2>/dev/null || echo "$BASE")

build_one() {
    local name=$1 dir=$HERE/$1 image=$REPO/$1:$TAG hash current
    [[ -f $dir/Dockerfile ]] || die "no $dir/Dockerfile"
    hash=$( (cd "$dir" && find . -type f ! -name '*.pyc' -print0 | sort -z | xargs -0 sha256sum
             sha256sum <"$HERE/build.sh"; echo "$base_id") | sha256sum | cut -d' ' -f1)
    current=$(docker image inspect -f "{{index .Config.Labels \"$LABEL\"}}" "$image" 2>/dev/null || true)
    if [[ $force -eq 0 && $current == "$hash" ]]; then
        return 0
    fi
    say "building $image from $BASE"
    if ! docker_build --build-arg "BASE=$BASE" --label "$LABEL=$hash" -t "$image" "$dir" >"$LOG" 2>&1; then
        tail -n 40 "$LOG" >&2
        die "docker build of $image failed"
    fi
    say "built $image"
}

LOG=$(mktemp)
trap 'rm -f "$LOG"' EXIT
for n in "${names[@]}"; do
    build_one "$n"
done
