"""Loaded by schemathesis (SCHEMATHESIS_HOOKS) in test_schemathesis.py: the tus PATCH body is raw bytes like
application/octet-stream, a media type schemathesis has no serializer for by itself."""

import schemathesis

schemathesis.serializer.alias("application/offset+octet-stream", "application/octet-stream")
