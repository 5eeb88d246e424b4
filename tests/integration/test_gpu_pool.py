"""GPU-aware scheduling against a private dockerd with a fake NVIDIA hook (tests/integration/gpu_engine.py):
with GPUS listing ids each run gets its own devices through DeviceIDs, runs go in parallel up to the pool,
never two on one device at once, a CPU-only model passes a run waiting for GPUs, and the queue line says
where a run really stands.

The gpuwork fixture model writes `<start> <end> <NVIDIA_VISIBLE_DEVICES>` (times from the host kernel's
/proc/uptime, shared by every container) so the test sees what each container was given and when it ran.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from .conftest import Server, containers_removed, kill_server, restart_server
from .gpu_engine import Engine, engine_fixture, environ, leftover_containers, start_server_on

gpu_engine = engine_fixture(["inferserver-test/gpuwork:1"])

POOL = ["0", "1", "2", "3"]
WORK_SECONDS = 3


@dataclass(frozen=True)
class Record:
    session_id: str
    start: float
    end: float
    devices: tuple[str, ...]


def serve(servers: list[Server], engine_host: str, tmp: Path, **settings: str) -> Server:
    """A server on the GPU engine, stopped at the end of the test."""
    server = start_server_on(engine_host, tmp, **settings)
    servers.append(server)
    return server


def create(client: httpx.Client, model: str = "gpuwork", seconds: int = WORK_SECONDS) -> str:
    """A session of a model without inputs: queued at once."""
    body = {"inputs": {}, "params": {"seconds": {"value": seconds}}, "outputs": {}}
    response = client.post(f"/models/{model}", json=body)
    assert response.status_code == 200, response.text
    return response.json()["data"]["session_id"]


def record_of(server: Server, session_id: str, timeout: float = 120) -> Record:
    status = server.wait_status(session_id, {"complete", "failed"}, timeout=timeout)
    assert status["status"] == "complete", (status, server.output())
    with server.client() as client:
        response = client.get(f"/sessions/{session_id}/outputs/record")
    assert response.status_code == 200, response.text
    start, end, *devices = response.text.split()
    return Record(session_id, float(start), float(end), tuple(devices[0].split(",")) if devices else ())


def run_all(server: Server, count: int, watch_gpus: bool = False) -> tuple[list[Record], float, list[dict]]:
    """Queue `count` gpuwork sessions at once, wait for all: their records, the wall time, GET /gpus views."""
    views: list[dict] = []
    with server.client() as client:
        began = time.monotonic()
        ids = [create(client) for _ in range(count)]
        while watch_gpus and any(
            client.get(f"/sessions/{sid}").json()["data"]["status"] not in ("complete", "failed") for sid in ids
        ):
            views.append(client.get("/gpus").json()["data"])
            time.sleep(0.2)
        records = [record_of(server, sid) for sid in ids]
        wall = time.monotonic() - began
    return records, wall, views


def most_at_once(records: list[Record]) -> int:
    edges = sorted([(r.start, 1) for r in records] + [(r.end, -1) for r in records])  # an end sorts before a start
    running = peak = 0
    for _, step in edges:
        running += step
        peak = max(peak, running)
    return peak


def assert_no_device_shared_in_time(records: list[Record]) -> None:
    for a in records:
        for b in records:
            if a is not b and set(a.devices) & set(b.devices):
                assert a.end <= b.start or b.end <= a.start, f"{a} and {b} used a GPU at the same time"


@pytest.fixture(scope="module")
def wall_times(request: pytest.FixtureRequest) -> dict[str, float]:
    """Wall times of the eight-run tests, written to the terminal at the end of the module (for the issue note)."""
    times: dict[str, float] = {}
    yield times
    capture = request.config.pluginmanager.getplugin("capturemanager")
    with capture.global_and_fixture_disabled():  # shown in a normal (captured, -q) run too
        for name, seconds in times.items():
            print(f"\n8 runs of {WORK_SECONDS} s, {name}: {seconds:.1f} s wall time", end="")
        print()


def test_one_gpu_each_four_at_once_never_two_on_a_device(
    gpu_engine: Engine, servers: list[Server], tmp_path: Path, wall_times: dict[str, float]
) -> None:
    # WORKER_THREADS above the pool: the GPUs, not the worker count, must be what limits the runs.
    server = serve(
        servers, gpu_engine.host, tmp_path / "server", GPUS=",".join(POOL), GPUS_PER_RUN="1", WORKER_THREADS="8"
    )
    records, wall, views = run_all(server, 8, watch_gpus=True)
    wall_times["GPUS=0,1,2,3 GPUS_PER_RUN=1 WORKER_THREADS=8"] = wall
    assert all(len(r.devices) == 1 and r.devices[0] in POOL for r in records), records
    assert_no_device_shared_in_time(records)
    assert most_at_once(records) == 4, records
    # GET /gpus showed the pool while it worked: every device held by one of these sessions, none by two.
    ids = {r.session_id for r in records}
    held = [d for v in views for d in v["devices"] if d["session_id"] is not None]
    assert views and all([d["id"] for d in v["devices"]] == POOL for v in views)
    assert held and all(d["session_id"] in ids for d in held)
    assert any(sum(d["session_id"] is not None for d in v["devices"]) == 4 for v in views), views
    with server.client() as client:
        after = client.get("/gpus").json()["data"]
    free = [{"id": d, "session_id": None} for d in POOL]
    assert after == {
        "gpus": "0,1,2,3",
        "per_run": 1,
        "devices": free,
        "engines": [
            {
                "name": "local",
                "up": True,
                "problem": None,
                "devices": free,
                "gpus_busy": 0,
                "gpus_free": 4,
                "runs": 0,
                "max_runs": 8,
                "labels": {},
            }
        ],
    }
    assert containers_removed(lambda: leftover_containers(gpu_engine)) == []


def test_the_old_way_one_run_at_a_time_with_every_gpu(
    gpu_engine: Engine, servers: list[Server], tmp_path: Path, wall_times: dict[str, float]
) -> None:
    server = serve(servers, gpu_engine.host, tmp_path / "server", GPUS="all", WORKER_THREADS="1")
    records, wall, _ = run_all(server, 8)
    wall_times["old behaviour: GPUS=all WORKER_THREADS=1"] = wall
    assert all(r.devices == ("all",) for r in records), records
    assert most_at_once(records) == 1


def test_two_gpus_each_go_in_pairs(gpu_engine: Engine, servers: list[Server], tmp_path: Path) -> None:
    server = serve(
        servers, gpu_engine.host, tmp_path / "server", GPUS=",".join(POOL), GPUS_PER_RUN="2", WORKER_THREADS="8"
    )
    records, _, _ = run_all(server, 4)
    assert all(len(set(r.devices)) == 2 and set(r.devices) <= set(POOL) for r in records), records
    assert_no_device_shared_in_time(records)
    assert most_at_once(records) == 2, records


def test_a_cpu_only_model_passes_a_run_waiting_for_gpus_and_positions_follow_the_real_order(
    gpu_engine: Engine, servers: list[Server], tmp_path: Path
) -> None:
    server = serve(servers, gpu_engine.host, tmp_path / "server", GPUS="0,1", WORKER_THREADS="2")
    with server.client() as client:
        seed = record_of(server, create(client, "gpuwork_cpu", seconds=1))  # a run time for the estimate
        assert seed.devices == ()
        first = create(client, "gpuwork", seconds=10)  # both GPUs (GPUS_PER_RUN defaults to all of them)
        assert server.wait_status(first, {"working"})["status"] == "working"
        waiting = create(client, "gpuwork", seconds=1)  # needs both GPUs: waits for `first`
        cpu = create(client, "gpuwork_cpu", seconds=3)  # needs none: takes the second worker slot at once
        assert server.wait_status(cpu, {"working"}, timeout=10)["status"] == "working"
        later_cpu = create(client, "gpuwork_cpu", seconds=1)  # both slots busy: waits, but for `cpu` only
        # `later_cpu` came last but starts next (when `cpu` ends, long before `first` frees the GPUs).
        expect = {later_cpu: "queued at position 1", waiting: "queued at position 2"}
        deadline = time.monotonic() + 10
        while {sid: client.get(f"/sessions/{sid}").json()["data"]["info"] for sid in expect} != expect:
            assert time.monotonic() < deadline, (expect, server.output())
            time.sleep(0.1)
        # The line the ablinfer client prints: an estimate only where the runs ahead have a known run time.
        assert first_line(server, later_cpu) == "Waiting, position in queue is 1 (about 1 min)"
        assert first_line(server, waiting) == "Waiting, position in queue is 2"
    records = {sid: record_of(server, sid) for sid in (first, waiting, cpu, later_cpu)}
    assert records[first].devices == ("0", "1") and records[waiting].devices == ("0", "1")
    assert records[cpu].devices == () and records[later_cpu].devices == ()  # no device request at all
    assert records[cpu].start < records[first].end <= records[waiting].start
    assert records[later_cpu].start < records[waiting].start


def first_line(server: Server, session_id: str) -> str:
    with (
        httpx.Client(base_url=server.url, timeout=30) as client,
        client.stream("GET", f"/sessions/{session_id}/logs") as response,
    ):
        assert response.status_code == 200
        for line in response.iter_lines():
            return line
    raise AssertionError("the log stream ended without a line")


def test_a_spec_asks_for_its_own_gpu_count_and_more_than_the_pool_fails_saying_so(
    gpu_engine: Engine, servers: list[Server], tmp_path: Path
) -> None:
    server = serve(servers, gpu_engine.host, tmp_path / "three", GPUS="0,1,2", GPUS_PER_RUN="1")
    with server.client() as client:
        assert record_of(server, create(client, "gpuwork_pair", seconds=0)).devices == ("0", "1")
        assert record_of(server, create(client, "gpuwork", seconds=0)).devices == ("0",)
    small = serve(servers, gpu_engine.host, tmp_path / "one", GPUS="0")
    with small.client() as client:
        session_id = create(client, "gpuwork_pair", seconds=0)
    status = small.wait_status(session_id, {"complete", "failed"})
    assert status["status"] == "failed"
    assert status["info"] == "model gpuwork_pair asks for 2 GPUs; this server has 1 (GPUS=0)"


def test_a_run_keeps_its_gpus_across_a_server_kill_and_new_runs_get_the_others(
    gpu_engine: Engine, servers: list[Server], tmp_path: Path
) -> None:
    server = serve(servers, gpu_engine.host, tmp_path / "server", GPUS="0,1", GPUS_PER_RUN="1", WORKER_THREADS="4")
    with server.client() as client:
        long = create(client, seconds=8)
        # Its container recorded (info `running`), not only `working`: killed before that, the restarted server
        # rightly re-queues the run (its container unknown), and its GPU is free for a moment.
        deadline = time.monotonic() + 30
        while (data := client.get(f"/sessions/{long}").json()["data"])["info"] != "running":
            assert data["status"] in ("ready", "working"), data
            assert time.monotonic() < deadline, server.output()
            time.sleep(0.05)
        before = client.get("/gpus").json()["data"]["devices"]
    [held] = [d["id"] for d in before if d["session_id"] == long]
    pool = [("local", d, long if d == held else None) for d in ("0", "1")]
    assert operator_view_of(server, long) == ("local", [held], pool)  # device ids as GPUS lists them
    kill_server(server)
    with_env_host = restart_on(server, gpu_engine)
    servers.append(with_env_host)
    with with_env_host.client() as client:
        assert client.get("/gpus").json()["data"]["devices"] == before  # rebuilt from the store
    assert operator_view_of(with_env_host, long) == ("local", [held], pool)
    with with_env_host.client() as client:
        others = [create(client, seconds=1) for _ in range(2)]
    records = [record_of(with_env_host, sid) for sid in others]
    assert all(r.devices == tuple(d for d in ("0", "1") if d != held) for r in records), (held, records)
    assert record_of(with_env_host, long).devices == (held,)
    assert_no_device_shared_in_time([*records, record_of(with_env_host, long)])


Holder = tuple[str, str, str | None]  # engine, device, session holding it


def operator_view_of(server: Server, session_id: str) -> tuple[str | None, list[str], list[Holder]]:
    """What GET /operator/overview says of a session (its engine, its GPUs) and of the pool (engine, device, holder)."""
    with server.client() as client:
        view = client.get("/operator/overview").json()["data"]
    [session] = [s for s in view["sessions"] if s["session_id"] == session_id]
    return session["engine"], session["gpus"], [(g["engine"], g["device"], g["session_id"]) for g in view["gpus"]]


def restart_on(server: Server, engine: Engine) -> Server:
    with environ(DOCKER_HOST=engine.host):
        return restart_server(server)
