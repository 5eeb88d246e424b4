#!/usr/bin/env bash
# Build a local Python base image from Debian packages, for machines with no image registry.
#
#   scripts/build-base-image.sh            # builds inferserver-base/python:bookworm unless it is current
#   scripts/build-base-image.sh --force
#
# The image holds Debian bookworm's python3 with venv (pip comes with it) and numpy, scipy, nibabel: enough for the
# example model (examples/) and for the server's own image (Dockerfile, wheels installed offline).
# Dockerfiles take their base as a build arg (ARG BASE=python:3.12-slim online), so the same file builds
# from this image offline: docker build --build-arg BASE=inferserver-base/python:bookworm ...
set -euo pipefail

IMAGE=${INFERSERVER_BASE_IMAGE:-inferserver-base/python:bookworm}
PACKAGES=python3-minimal,python3-venv,python3-numpy,python3-scipy,python3-nibabel,ca-certificates
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
say() { echo "build-base-image: $*" >&2; }

# Rebuild when the recipe changes: the hash of this script is the image's label.
recipe=$(sha256sum "${BASH_SOURCE[0]}" | cut -d' ' -f1)
if [[ ${1:-} != --force ]] && [[ $(docker image inspect -f '{{ index .Config.Labels "org.inferserver.recipe" }}' "$IMAGE" 2>/dev/null) == "$recipe" ]]; then
    exit 0
fi

command -v debootstrap >/dev/null || {
    say "installing debootstrap"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q debootstrap >/dev/null 2>&1 ||
        { apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q debootstrap >/dev/null; }
}

# Use the mirror this machine's apt already uses (the only one reachable here).
mirror=$(grep -hE '^(URIs:|deb )' /etc/apt/sources.list.d/*.sources /etc/apt/sources.list 2>/dev/null |
    grep -v security | grep -oE 'https?://[^ ]+/debian' | head -n1 || true)
[[ -n $mirror ]] || { say "no Debian mirror found in /etc/apt sources"; exit 1; }

work=$(mktemp -d /var/tmp/inferserver-base.XXXXXX)
trap 'rm -rf "$work"' EXIT
say "debootstrap bookworm ($PACKAGES) — about a minute"
if ! debootstrap --variant=minbase --include="$PACKAGES" bookworm "$work/rootfs" "$mirror" >"$work/log" 2>&1; then
    tail -n 30 "$work/log" >&2
    say "debootstrap failed"
    exit 1
fi
rm -rf "$work/rootfs"/var/cache/apt/archives/*.deb "$work/rootfs"/var/lib/apt/lists/*
tar -C "$work/rootfs" -c . | docker import \
    --change 'ENV LANG=C.UTF-8 PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change "LABEL org.inferserver.recipe=$recipe" \
    --change 'CMD ["python3"]' - "$IMAGE" >/dev/null
say "built $IMAGE"
