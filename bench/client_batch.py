"""Wall time of `inferserver client batch` over 12 volumes with -j 1 and with -j 4, on one engine with 2 fake GPUs.

A script, not a test. It starts a private dockerd that believes it has NVIDIA GPUs (tests/integration/gpu_engine.py),
`inferserver serve` on it with GPUS=0,1 GPUS_PER_RUN=1 WORKER_THREADS=4 (so two runs at once, one GPU each), and
runs the client over 12 distinct real volumes (nibabel's anatomical.nii, one voxel and the descrip changed) with
the `sleep` fixture model (sleeps --seconds, then copies its input to its output). Each -j gets a fresh output
folder; every output is checked against its input. With two GPUs, -j 4 can at best halve the wall time: two runs
on the GPUs, two more uploading or queued.

    .venv/bin/python bench/client_batch.py [--volumes 12] [--seconds 3]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.integration.conftest import stop_server  # noqa: E402
from tests.integration.gpu_engine import start_engine, start_server_on, stop_engine  # noqa: E402
from tests.integration.test_client_cli import client_env, volume  # noqa: E402


def batch_seconds(url: str, volumes: Path, results: Path, jobs: int, seconds: int, home: Path) -> float:
    argv = [sys.executable, "-m", "inferserver", "client", "batch", "sleep", str(volumes), str(results)]
    argv += ["-j", str(jobs), "-p", f"seconds={seconds}", "--url", url]
    started = time.monotonic()
    done = subprocess.run(argv, env=client_env(home), capture_output=True, text=True, timeout=1800)
    wall = time.monotonic() - started
    if done.returncode != 0:
        raise SystemExit(f"client batch -j {jobs} exited {done.returncode}:\n{done.stdout}\n{done.stderr}")
    for source in volumes.iterdir():
        stem = source.name.removesuffix(".nii.gz")
        if (results / stem / "output_vol.nii.gz").read_bytes() != source.read_bytes():
            raise SystemExit(f"-j {jobs}: output of {source.name} differs from its input")
    return wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--volumes", type=int, default=12)
    parser.add_argument("--seconds", type=int, default=3, help="each run's sleep (default: %(default)s)")
    args = parser.parse_args()
    os.environ.pop("INFERSERVER_URL", None)
    with tempfile.TemporaryDirectory(prefix="client-batch-") as tmp_name:
        tmp = Path(tmp_name)
        volumes = tmp / "volumes"
        volumes.mkdir()
        for n in range(1, args.volumes + 1):
            volume(volumes / f"case{n:02d}.nii.gz", 1000 + n)
        engine = start_engine(["inferserver-test/sleep:1"])
        try:
            server = start_server_on(engine.host, tmp / "server", GPUS="0,1", GPUS_PER_RUN="1", WORKER_THREADS="4")
            try:
                walls = {
                    jobs: batch_seconds(server.url, volumes, tmp / f"out-j{jobs}", jobs, args.seconds, tmp / "home")
                    for jobs in (1, 4)
                }
            finally:
                stop_server(server)
        finally:
            stop_engine(engine)
    print(f"client batch, {args.volumes} volumes, sleep {args.seconds} s each, 2 fake GPUs (GPUS_PER_RUN=1):")
    for jobs, wall in walls.items():
        print(f"  -j {jobs}: {wall:6.1f} s wall ({wall / args.volumes:.2f} s per volume)")
    print(f"  speed-up -j 4 / -j 1: {walls[1] / walls[4]:.2f}x (at most 2x with 2 GPUs)")


if __name__ == "__main__":
    main()
