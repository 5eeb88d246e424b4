# fail: prints to both streams and exits 3.
echo "fail: starting"
echo "fail: something went wrong" >&2
exit 3
