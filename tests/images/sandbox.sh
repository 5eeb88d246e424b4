# sandbox: -o OUT; reports what the container may use and do, one "key: value" line each.
set -e
[ "$1" = "-o" ] && [ -n "$2" ] || { echo "sandbox: usage: -o OUT" >&2; exit 2; }
out=$2
first() { for f in "$@"; do [ -r "$f" ] && { cat "$f"; return; }; done; echo none; }
{
    echo "CapEff: $(awk '/^CapEff:/ {print $2}' /proc/self/status)"
    echo "NoNewPrivs: $(awk '/^NoNewPrivs:/ {print $2}' /proc/self/status)"
    echo "net: $(ls /sys/class/net | tr '\n' ' ')"
    echo "shm: $(awk '$2 == "/dev/shm" {print $4}' /proc/mounts)"
    echo "pid1: $(cat /proc/1/comm)"
    # cgroup v2 first, then v1
    echo "memory: $(first /sys/fs/cgroup/memory.max /sys/fs/cgroup/memory/memory.limit_in_bytes)"
    echo "memsw: $(first /sys/fs/cgroup/memory.swap.max /sys/fs/cgroup/memory/memory.memsw.limit_in_bytes)"
    echo "pids: $(first /sys/fs/cgroup/pids.max /sys/fs/cgroup/pids/pids.max)"
    echo "cpu: $(first /sys/fs/cgroup/cpu.max /sys/fs/cgroup/cpu/cpu.cfs_quota_us)"
} > "$out"
cat "$out"
