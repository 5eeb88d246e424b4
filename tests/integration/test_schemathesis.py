"""schemathesis against the schema `inferserver serve` itself serves: every operation, random valid and
invalid requests, no 5xx, and every answer (status, content type, body) as the schema declares it.

Bounded: 15 examples per operation and phase, at most 40 s in all, a per-request timeout (≈2000
requests in about 45 s here). What it creates is harmless: sessions of the test models that wait for inputs (each an
empty directory under the test's own SESSION_PATH), small check bodies, uploads to sessions that do not exist.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from .conftest import Server, start_server, stop_and_check

CONFIG = Path(__file__).with_name("schemathesis.toml")
HOOKS = Path(__file__).with_name("schemathesis_hooks.py")  # a serializer for tus PATCH bodies
CHECKS = ",".join(
    [
        "not_a_server_error",
        "status_code_conformance",
        "content_type_conformance",
        "response_schema_conformance",
        "response_headers_conformance",
    ]
)


def test_schemathesis_finds_no_5xx_and_no_schema_violation(tmp_path: Path, fixture_images: None) -> None:
    # Schemathesis creates hundreds of sessions; MAX_SESSIONS' deliberate 503 (tested in test_limits) is not a crash.
    server: Server = start_server(tmp_path / "server", MAX_SESSIONS="1000000")
    try:
        proc = subprocess.run(
            [
                sys.executable,
                "-m",
                "schemathesis.cli",
                "--config-file",
                str(CONFIG),
                "run",
                f"{server.url}/openapi.json",
                "--checks",
                CHECKS,
                "--mode",
                "all",  # valid and invalid requests
                "--max-examples",
                "15",
                "--max-time",
                "40",
                "--request-timeout",
                "10",
                "--report",
                "junit",
                "--report-junit-path",
                str(tmp_path / "schemathesis.xml"),
            ],
            capture_output=True,
            text=True,
            timeout=300,
            env={**os.environ, "NO_COLOR": "1", "SCHEMATHESIS_HOOKS": str(HOOKS)},
        )
    finally:
        stop_and_check([server])
    report = proc.stdout + proc.stderr
    assert proc.returncode == 0, report
    assert "Traceback" not in server.output() and " 500 " not in server.output(), server.output()
    sessions = [d / "inputs" for d in server.session_path.iterdir() if (d / "inputs").is_dir()]
    assert sessions, "schemathesis created no session: the run never reached the session operations"
    assert all(not any(inputs.iterdir()) for inputs in sessions), "schemathesis got an input stored"
