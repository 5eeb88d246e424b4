"""Peak RSS of `inferserver serve` while a large volume goes up, through a container and back down.

A script, not a test: it starts the server on the copy fixture model (tests/models, images from
tests/images/build.sh, a running Docker engine), uploads a SIZE file with a NIfTI-1 header, waits for the
run, downloads the output, checks the bytes, and prints the server's resident memory before and at its
peak (VmHWM from /proc) with each phase's throughput.

    .venv/bin/python bench/roundtrip_memory.py [--size-mib 1024]
"""

from __future__ import annotations

import argparse
import hashlib
import sys
import tempfile
import time
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.files import nifti_gz_like  # noqa: E402
from tests.integration.conftest import start_server, stop_server  # noqa: E402


def memory_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mib", type=int, default=1024)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir="/var/tmp") as tmp_name:
        tmp = Path(tmp_name)
        source = tmp / "in.nii.gz"
        digest = nifti_gz_like(source, args.size_mib)
        size = source.stat().st_size
        server = start_server(tmp / "server")
        pid = server.process.pid
        try:
            with httpx.Client(base_url=server.url, timeout=None) as client:
                baseline = memory_kib(pid, "VmRSS")
                sid = client.post("/models/copy", json={}).json()["data"]["session_id"]
                started = time.monotonic()
                with source.open("rb") as body:
                    answer = client.put(
                        f"/sessions/{sid}/inputs/input_vol",
                        content=body,
                        headers={"Content-Type": "application/octet-stream"},
                    )
                upload_s = time.monotonic() - started
                assert answer.json()["data"]["sha256"] == digest, answer.text
                while (status := client.get(f"/sessions/{sid}").json()["data"])["status"] not in ("complete", "failed"):
                    time.sleep(0.05)
                run_s = time.monotonic() - started - upload_s
                assert status["status"] == "complete", status
                received = hashlib.sha256()
                started = time.monotonic()
                with client.stream("GET", f"/sessions/{sid}/outputs/output_vol") as response:
                    for chunk in response.iter_raw(1 << 20):
                        received.update(chunk)
                download_s = time.monotonic() - started
                assert received.hexdigest() == digest, "downloaded bytes differ"
                peak = memory_kib(pid, "VmHWM")
        finally:
            stop_server(server)
    mib = size / (1 << 20)
    print(f"file: {mib:.0f} MiB, bytes identical after upload -> container -> download")
    print(
        f"server RSS before: {baseline / 1024:.1f} MiB, peak: {peak / 1024:.1f} MiB, "
        f"growth: {(peak - baseline) / 1024:.1f} MiB"
    )
    print(
        f"upload {mib / upload_s:.0f} MiB/s, run incl. staging in and out {run_s:.1f} s, "
        f"download {mib / download_s:.0f} MiB/s"
    )


if __name__ == "__main__":
    main()
