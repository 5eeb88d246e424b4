# bigout: -i IN -o OUT --mib N; writes N MiB of zeros to OUT (a large output to stage out), ignoring IN.
set -e
in= out= mib=
while [ "$#" -gt 0 ]; do
    case "$1" in
        -i) in=$2; shift 2 ;;
        -o) out=$2; shift 2 ;;
        --mib) mib=$2; shift 2 ;;
        *) echo "bigout: unknown argument: $1" >&2; exit 2 ;;
    esac
done
if [ -z "$in" ] || [ -z "$out" ] || [ -z "$mib" ]; then
    echo "bigout: usage: -i IN -o OUT --mib N" >&2
    exit 2
fi
dd if=/dev/zero of="$out" bs=1048576 count="$mib" 2>/dev/null
echo "bigout: wrote $mib MiB"
