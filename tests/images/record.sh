# record: writes its argv (NUL-separated) and environment into /data.
# /data is not in the image: the server must create it (it does so when it
# places the inputs), so no mkdir here.
set -e
: > /data/argv.bin
for arg in "$@"; do
    printf '%s\0' "$arg" >> /data/argv.bin
done
env | sort > /data/env.txt
echo "recorded $# arguments"
