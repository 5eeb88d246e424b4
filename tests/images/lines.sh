# lines: -i IN -o OUT --count N --delay D; prints N lines D seconds apart, then copies IN to OUT.
set -e
in= out= count= delay=
while [ "$#" -gt 0 ]; do
    case "$1" in
        -i) in=$2; shift 2 ;;
        -o) out=$2; shift 2 ;;
        --count) count=$2; shift 2 ;;
        --delay) delay=$2; shift 2 ;;
        *) echo "lines: unknown argument: $1" >&2; exit 2 ;;
    esac
done
if [ -z "$in" ] || [ -z "$out" ] || [ -z "$count" ] || [ -z "$delay" ]; then
    echo "lines: usage: -i IN -o OUT --count N --delay D" >&2
    exit 2
fi
i=1
while [ "$i" -le "$count" ]; do
    echo "line $i"
    if [ "$i" -lt "$count" ]; then sleep "$delay"; fi
    i=$((i + 1))
done
cp "$in" "$out"
