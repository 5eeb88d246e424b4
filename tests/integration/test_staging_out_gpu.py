"""A cancel while an output is staged out frees the run's GPUs at once, not only its slot: the next run waiting
for the same device starts within seconds (private dockerd with a fake NVIDIA hook, tests/integration/gpu_engine.py).
"""

from __future__ import annotations

import time
from pathlib import Path

from .conftest import Server, containers_removed, create_and_upload, write_nifti
from .gpu_engine import Engine, engine_fixture, leftover_containers, start_server_on
from .test_gpu_pool import create, record_of
from .test_staging_out import outputs_left, wait_staging_out

gpu_engine = engine_fixture(["inferserver-test/bigout:1", "inferserver-test/gpuwork:1"])


def test_a_cancel_during_staging_out_frees_the_runs_gpu(
    gpu_engine: Engine, servers: list[Server], tmp_path: Path
) -> None:
    # One GPU in the pool, two runs at once allowed: only the device keeps the second run waiting.
    server = start_server_on(gpu_engine.host, tmp_path / "server", GPUS="0", WORKER_THREADS="2")
    servers.append(server)
    source = write_nifti(tmp_path / "in.nii.gz", 0.1)
    with server.client() as client:
        big = create_and_upload(client, "bigout", source, mib=2048)
        wait_staging_out(server, big)
        waiting = create(client, seconds=0)
        time.sleep(1)  # a dispatcher tick or two: it stays queued while the GPU is held
        assert client.get(f"/sessions/{waiting}").json()["data"]["status"] == "ready"
        assert client.get("/gpus").json()["data"]["devices"][0]["session_id"] == big, client.get("/gpus").text

        started = time.monotonic()
        answer = client.delete(f"/sessions/{big}")
        assert answer.json()["data"]["info"] == "cancelled", answer.text
    data = server.wait_status(waiting, {"working", "complete", "failed"}, timeout=30)
    took = time.monotonic() - started
    assert data["status"] in {"working", "complete"}, data
    assert took < 5, f"the run waiting for GPU 0 started {took:.1f} s after the cancel"
    assert record_of(server, waiting).devices == ("0",)
    assert outputs_left(server, big) == []
    assert containers_removed(lambda: leftover_containers(gpu_engine), timeout=10) == []
