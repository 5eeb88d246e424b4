# Sourced by the scripts that make images offline (tests/images/build.sh, scripts/docker-engine.sh):
# busybox_binary prints the path of a static busybox from Debian's busybox-static, the installed copy when the
# package is installed, else its .deb fetched with apt-get and unpacked into $1 (a cache directory).
# The caller defines say and die.
busybox_binary() {
    local dir=$1/busybox-static
    if [[ $(dpkg-query -W -f='${Status}' busybox-static 2>/dev/null) == "install ok installed" ]]; then
        echo /bin/busybox
        return
    fi
    if [[ ! -x $dir/root/bin/busybox ]]; then
        say "fetching busybox-static into $dir"
        rm -rf "$dir"
        mkdir -p "$dir"
        if ! (cd "$dir" && apt-get download busybox-static >/dev/null 2>&1); then
            apt-get update -q >/dev/null || die "apt-get update failed"
            (cd "$dir" && apt-get download busybox-static >/dev/null) || die "apt-get download busybox-static failed"
        fi
        dpkg -x "$dir"/busybox-static_*.deb "$dir/root"
    fi
    echo "$dir/root/bin/busybox"
}
