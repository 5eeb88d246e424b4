# sleep: -i IN -o OUT --seconds N (any order); sleeps N then copies IN to OUT.
set -e
in= out= seconds=
while [ "$#" -gt 0 ]; do
    case "$1" in
        -i) in=$2; shift 2 ;;
        -o) out=$2; shift 2 ;;
        --seconds) seconds=$2; shift 2 ;;
        --seconds=*) seconds=${1#--seconds=}; shift ;;
        *) echo "sleep: unknown argument: $1" >&2; exit 2 ;;
    esac
done
if [ -z "$in" ] || [ -z "$out" ] || [ -z "$seconds" ]; then
    echo "sleep: usage: -i IN -o OUT --seconds N" >&2
    exit 2
fi
echo "sleeping $seconds"
sleep "$seconds"
cp "$in" "$out"
echo "done"
