# gpuwork: -o OUT --seconds N; writes "<start> <end> <NVIDIA_VISIBLE_DEVICES>" into OUT, the times from the
# host kernel's /proc/uptime (shared by every container: comparable across runs) around a sleep of N.
set -e
out= seconds=
while [ "$#" -gt 0 ]; do
    case "$1" in
        -o) out=$2; shift 2 ;;
        --seconds) seconds=$2; shift 2 ;;
        *) echo "gpuwork: unknown argument: $1" >&2; exit 2 ;;
    esac
done
read start _ < /proc/uptime
echo "gpuwork on GPUs '${NVIDIA_VISIBLE_DEVICES:-}' for $seconds s"
sleep "$seconds"
read end _ < /proc/uptime
mkdir -p "$(dirname "$out")"
echo "$start $end ${NVIDIA_VISIBLE_DEVICES:-}" > "$out"
