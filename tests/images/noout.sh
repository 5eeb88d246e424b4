# noout: succeeds without writing its output.
echo "noout: finished without writing anything"
exit 0
