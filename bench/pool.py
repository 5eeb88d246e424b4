"""A pool of engines against one: 12 runs of a model sleeping 10 s, one TLS engine with one GPU versus three
engines of one GPU each (the engine bed of tests/integration/engine_bed.py), and what placement costs per run.

    PYTHONPATH=src .venv/bin/python -m bench.pool [--runs 12] [--seconds 10]

Wall time is from the first upload to the last output downloaded. The overhead per run is what the pool adds
over the model's own sleep: (wall - ceil(runs / engines) * seconds) / ceil(runs / engines), i.e. per round of
runs side by side, and the time `placement.place` itself takes for the whole queue (median of 1000).
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from inferserver.scheduling.placement import Need, Room, place
from tests.integration.conftest import Server, create_and_upload, start_server, stop_server, write_nifti
from tests.integration.engine_bed import EngineBed, start_bed, stop_bed


def one_pool(bed: EngineBed, engines: int, runs: int, seconds: int, work: Path) -> float:
    """Wall seconds of `runs` sleep sessions on the bed's first `engines` engines, one GPU each."""
    entries = [e.entry(gpus=["0"]) for e in bed.engines[:engines]]
    server = start_server(work / f"pool{engines}", ENGINES=json.dumps(entries), GPUS_PER_RUN="1")
    try:
        sources = [write_nifti(work / f"in{engines}-{i}.nii.gz", 0.05, seed=i) for i in range(runs)]
        began = time.monotonic()

        def session(i: int) -> bytes:
            with server.client() as client:
                sid = create_and_upload(client, "sleep", sources[i], seconds=seconds)
            return finish(server, sid)

        with ThreadPoolExecutor(runs) as pool:
            outputs = list(pool.map(session, range(runs)))
        wall = time.monotonic() - began
        assert outputs == [s.read_bytes() for s in sources], "an output differs from its input"
        return wall
    finally:
        stop_server(server)


def finish(server: Server, session_id: str) -> bytes:
    status = server.wait_status(session_id, {"complete", "failed"}, timeout=900)
    assert status["status"] == "complete", status
    with server.client() as client:
        return client.get(f"/sessions/{session_id}/outputs/output_vol").content


def placement_seconds(runs: int, engines: int) -> float:
    queue = [Need(f"s{i}", 1) for i in range(runs)]
    rooms = [Room(f"gpu{i}", ("0",), 1) for i in range(engines)]
    times = []
    for _ in range(1000):
        began = time.perf_counter()
        place(queue, rooms, {})
        times.append(time.perf_counter() - began)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=12)
    parser.add_argument("--seconds", type=int, default=10)
    args = parser.parse_args()
    bed = start_bed(["inferserver-test/sleep:1"])
    try:
        with tempfile.TemporaryDirectory(prefix="inferserver-pool-", dir="/var/tmp") as tmp:
            walls = {n: one_pool(bed, n, args.runs, args.seconds, Path(tmp)) for n in (1, 3)}
    finally:
        stop_bed(bed)
    for n, wall in walls.items():
        rounds = math.ceil(args.runs / n)
        overhead = (wall - rounds * args.seconds) / rounds
        print(
            f"{args.runs} runs of {args.seconds} s on {n} engine(s) of 1 GPU: {wall:.1f} s wall "
            f"(ideal {rounds * args.seconds} s; {overhead:.2f} s per round of runs side by side)"
        )
    print(f"three engines are {walls[1] / walls[3]:.2f}x faster than one")
    print(f"placement.place for {args.runs} queued runs over 3 engines: {placement_seconds(args.runs, 3) * 1e6:.0f} us")


if __name__ == "__main__":
    main()
