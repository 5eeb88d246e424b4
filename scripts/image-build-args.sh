# Sourced by the image build scripts (tests/images/build.sh, examples/build.sh, scripts/build-image.sh): their
# shared messages, command line `build.sh [--force] [NAME...]` and docker build. Set SAY_PREFIX before sourcing;
# after `parse_build_args "$@"`, $force is 0/1 and names() holds the names given (maybe none).
say() { echo "$SAY_PREFIX: $*" >&2; }
die() { say "$*"; exit 1; }

parse_build_args() {
    force=0
    names=()
    local a
    for a in "$@"; do
        case $a in
            --force) force=1 ;;
            -*) die "unknown option $a (usage: build.sh [--force] [NAME...])" ;;
            *) names+=("$a") ;;
        esac
    done
}

# docker build that leaves no container behind: the legacy builder keeps a failed step's container unless told
# --force-rm (--rm, the default, removes only the containers of steps that succeeded).
docker_build() {
    docker build --rm --force-rm "$@"
}
