# nonroot: -i IN -o OUT; copies IN to OUT as a user other than root, and says who it is.
# fixture-user: 1000:1000
set -e
[ "$1" = "-i" ] && [ "$3" = "-o" ] || { echo "nonroot: usage: -i IN -o OUT (got: $*)" >&2; exit 2; }
echo "nonroot: running as $(id -u):$(id -g)"
cp "$2" "$4"
