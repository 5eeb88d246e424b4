# overwrite: -i IN -o OUT; writes into its own input, then copies it to OUT. Staged by bind mount
# (INPUT_STAGING=mount) the input is read-only and the write fails.
set -e
[ "$1" = "-i" ] && [ "$3" = "-o" ] || { echo "overwrite: usage: -i IN -o OUT (got: $*)" >&2; exit 2; }
echo "changed by the model" > "$2"
cp "$2" "$4"
