#!/usr/bin/env bash
# Build the offline fixture images inferserver-test/<name>:1, one per
# tests/images/<name>.sh, from Debian's busybox-static (no registry needed).
#
# An image is rebuilt only when its label org.inferserver.fixture-hash differs
# from the sha256 of its script plus this file, so editing a script rebuilds it.
# Usage: build.sh [--force] [NAME...]
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
CACHE=${INFERSERVER_CACHE:-$ROOT/.cache}
REPO=inferserver-test
TAG=1
LABEL=org.inferserver.fixture-hash

SAY_PREFIX=images
source "$ROOT/scripts/image-build-args.sh"
source "$ROOT/scripts/busybox.sh"
parse_build_args "$@"
if [[ ${#names[@]} -eq 0 ]]; then
    for f in "$HERE"/*.sh; do
        n=$(basename "$f" .sh)
        [[ $n == build ]] || names+=("$n")
    done
fi

docker info >/dev/null 2>&1 || die "no Docker engine answers (run scripts/docker-engine.sh)"

fixture_hash() {
    cat "$HERE/$1.sh" "$HERE/build.sh" | sha256sum | cut -d' ' -f1
}

build_one() {
    local name=$1 image=$REPO/$1:$TAG hash current rootfs
    [[ -f $HERE/$name.sh ]] || die "no script $HERE/$name.sh"
    hash=$(fixture_hash "$name")
    current=$(docker image inspect -f "{{index .Config.Labels \"$LABEL\"}}" "$image" 2>/dev/null || true)
    if [[ $force -eq 0 && $current == "$hash" ]]; then
        return 0
    fi
    rootfs=$(mktemp -d "$WORK/$name.XXXX")
    mkdir -p "$rootfs/bin" "$rootfs/tmp"
    chmod 1777 "$rootfs/tmp"
    install -m 0755 "$BUSYBOX" "$rootfs/bin/busybox"
    # The equivalent of `busybox --install -s`: a symlink per applet.
    local applet
    while read -r applet; do
        [[ -n $applet && $applet != bin/busybox ]] || continue
        mkdir -p "$rootfs/$(dirname "$applet")"
        ln -sf /bin/busybox "$rootfs/$applet"
    done < <("$BUSYBOX" --list-full)
    [[ -L $rootfs/bin/sh ]] || ln -sf /bin/busybox "$rootfs/bin/sh"
    install -m 0755 "$HERE/$name.sh" "$rootfs/model.sh"
    # A script's `# fixture-user: UID:GID` line makes the image run as that user (the image's USER).
    local user changes=(--change 'ENTRYPOINT ["/bin/sh","/model.sh"]' --change "LABEL $LABEL=$hash")
    user=$(sed -n 's/^# fixture-user: *//p' "$HERE/$name.sh")
    [[ -z $user ]] || changes+=(--change "USER $user")
    # No /data: the server has to create it when it places the inputs.
    tar -C "$rootfs" --numeric-owner --owner=0 --group=0 -c . |
        docker import "${changes[@]}" - "$image" >/dev/null
    rm -rf "$rootfs"
    say "built $image"
}

WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
BUSYBOX=$(busybox_binary "$CACHE")
for n in "${names[@]}"; do
    build_one "$n"
done
