# copy: -i IN -o OUT; copies IN to OUT.
set -e
if [ "$#" -ne 4 ] || [ "$1" != "-i" ] || [ "$3" != "-o" ]; then
    echo "copy: usage: -i IN -o OUT (got: $*)" >&2
    exit 2
fi
in=$2 out=$4
echo "copy: reading $in"
cp "$in" "$out"
echo "copy: wrote $(wc -c < "$out") bytes"
