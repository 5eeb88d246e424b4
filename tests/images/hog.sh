# hog: -o OUT --megabytes N; holds N MiB in a shell variable (so the shell itself is what the kernel's
# OOM killer picks, and the container exits 137), then writes OUT.
set -e
out= mb=
while [ "$#" -gt 0 ]; do
    case "$1" in
        -o) out=$2; shift 2 ;;
        --megabytes) mb=$2; shift 2 ;;
        *) echo "hog: unknown argument: $1" >&2; exit 2 ;;
    esac
done
if [ -z "$out" ] || [ -z "$mb" ]; then
    echo "hog: usage: -o OUT --megabytes N" >&2
    exit 2
fi
echo "hog: taking $mb MiB"
held=$(head -c $((mb * 1048576)) /dev/zero | tr '\0' x)
echo "hog: holding ${#held} bytes"
echo "held ${#held} bytes" > "$out"
