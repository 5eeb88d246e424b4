"""A pool of Docker engines behind one server (issue 13), on the TLS engine bed (tests/integration/engine_bed.py):
three private dockerds with two fake GPUs each, reached over TLS with client certificates.

Runs spread over every engine and never share a device of one engine at once (seen from inside the
containers); an engine killed with two runs on it is waited for ENGINE_GRACE, then its runs go elsewhere and
its stale containers are removed once it is back; back within the grace, its runs are re-attached and their
logs carry on without repeats; an engine that refuses our client certificate is named, and the others serve.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from .conftest import Server, ServerFactory, containers_removed, create_and_upload, run_remote, write_nifti
from .engine_bed import EngineBed
from .test_gpu_pool import Record, assert_no_device_shared_in_time, create, most_at_once, record_of

# /readyz of a one-worker server with every engine answering (no engines_down): it dispatches its own runs.
READY = {"status": "ok", "dispatch": "dispatcher"}
RUNNING_ON = re.compile(r"^inferserver: running on engine (\S+?)(?:, GPUs (\S+))?$", re.MULTILINE)


def pool_server(make_server: ServerFactory, entries: list[dict], **settings: str) -> Server:
    return make_server(ENGINES=json.dumps(entries), GPUS_PER_RUN="1", **settings)


def log_of(server: Server, session_id: str) -> str:
    with server.client() as client:
        response = client.get(f"/sessions/{session_id}/logs")
    assert response.status_code == 200, response.text
    return response.text


def placements(server: Server, session_id: str) -> list[tuple[str, str]]:
    """(engine, GPUs) of each start of the session's run, from its log as it stands (the log endpoint would
    stream until the run ends)."""
    text = (server.session_path / session_id / "log").read_text(errors="replace")
    return [(m.group(1), m.group(2) or "") for m in RUNNING_ON.finditer(text)]


def wait_for(check: Callable[[], bool], what: str, timeout: float = 60) -> float:
    """Seconds until `check` holds; fails naming `what` after `timeout`."""
    began = time.monotonic()
    while not check():
        assert time.monotonic() - began < timeout, f"{what}: not within {timeout} s"
        time.sleep(0.1)
    return time.monotonic() - began


def status(server: Server, session_id: str) -> dict:
    with server.client() as client:
        data: dict = client.get(f"/sessions/{session_id}").json()["data"]
    return data


def test_twelve_ablinfer_sessions_spread_over_three_engines_byte_identical(
    bed: EngineBed, make_server: ServerFactory, tmp_path: Path
) -> None:
    server = pool_server(make_server, bed.entries())
    sources = [write_nifti(tmp_path / f"in{i}.nii.gz", 0.2, seed=i) for i in range(12)]

    def one(i: int) -> Path:
        dest = tmp_path / f"out{i}.nii.gz"
        config = {
            "inputs": {"input_vol": {"enabled": True, "value": str(sources[i])}},
            "params": {"seconds": {"value": 3}},
            "outputs": {"output_vol": {"enabled": True, "value": str(dest)}},
        }
        run_remote(server, "sleep", config)
        return dest

    with ThreadPoolExecutor(12) as pool:
        outputs = list(pool.map(one, range(12)))
    assert [o.read_bytes() for o in outputs] == [s.read_bytes() for s in sources]
    sessions = [p.name for p in server.session_path.iterdir() if p.is_dir()]
    assert len(sessions) == 12
    where = [placements(server, sid) for sid in sessions]
    assert all(len(w) == 1 for w in where), where  # each ran once, on one engine
    assert {w[0][0] for w in where} == {"gpu1", "gpu2", "gpu3"}, where
    assert all(w[0][1] in ("0", "1") for w in where), where  # one GPU of its engine's pool each
    with server.client() as client:
        metrics = client.get("/metrics").text
    for name in ("gpu1", "gpu2", "gpu3"):
        assert f'inferserver_engine_up{{engine="{name}"}} 1.0' in metrics
        assert f'inferserver_gpu_busy{{engine="{name}",gpu="0"}} 0.0' in metrics
        finished = rf'inferserver_engine_finished_runs_total{{engine="{name}",outcome="complete"}} [1-9]'
        assert re.search(finished, metrics), metrics


def test_no_device_of_an_engine_is_used_by_two_runs_at_once_seen_from_inside(
    bed: EngineBed, make_server: ServerFactory
) -> None:
    server = pool_server(make_server, bed.entries())
    with server.client() as client:
        ids = [create(client, "gpuwork", seconds=3) for _ in range(12)]
        views, overviews = [], []
        deadline = time.monotonic() + 120
        while any(status(server, sid)["status"] not in ("complete", "failed") for sid in ids):
            assert time.monotonic() < deadline, server.output()
            views.append(client.get("/gpus").json()["data"])
            overviews.append(client.get("/operator/overview").json()["data"])
            time.sleep(0.3)
    records = {sid: record_of(server, sid) for sid in ids}
    by_engine: dict[str, list[Record]] = {}
    for sid, record in records.items():
        [(engine, gpus)] = placements(server, sid)
        assert record.devices == (gpus,), (record, gpus)  # what the container saw is what the server gave it
        by_engine.setdefault(engine, []).append(record)
    assert sorted(by_engine) == ["gpu1", "gpu2", "gpu3"]
    for engine_records in by_engine.values():
        assert_no_device_shared_in_time(engine_records)
        assert most_at_once(engine_records) <= 2
    assert most_at_once(list(records.values())) > 2  # the engines ran side by side
    # GET /gpus showed each engine with its own pool while they worked.
    assert any(sum(e["gpus_busy"] for e in v["engines"]) == 6 for v in views), views
    assert all([e["name"] for e in v["engines"]] == ["gpu1", "gpu2", "gpu3"] for v in views)
    check_operator_views(overviews, {sid: placements(server, sid)[0] for sid in ids})


def check_operator_views(overviews: list[dict], placed: dict[str, tuple[str, str]]) -> None:
    """The operator view named each working session's engine and its GPU there (the device id as the engine's pool
    lists it), and showed every engine's pool with its holders. The view reads statuses, holds and placements one
    after the other: a run that starts or ends in between may show without them, in that one answer only."""
    pools = [[(g["engine"], g["device"]) for g in v["gpus"]] for v in overviews]
    assert all(p == [(e, d) for e in ("gpu1", "gpu2", "gpu3") for d in ("0", "1")] for p in pools), pools[0]
    shown: list[str] = []  # the engine of each working session in each answer
    unknown = 0
    for view in overviews:
        for s in view["sessions"]:
            engine, device = placed[s["session_id"]]
            if s["status"] != "working":
                assert s["engine"] is None, s  # a finished or queued run is placed nowhere
            elif s["engine"] is None:
                unknown += 1
            else:
                assert (s["engine"], s["gpus"]) in ((engine, [device]), (engine, [])), (s, engine, device)
                shown.append(engine)
        for g in view["gpus"]:
            if g["session_id"]:
                assert placed[g["session_id"]] == (g["engine"], g["device"]), g
    assert set(shown) == {"gpu1", "gpu2", "gpu3"}, shown  # seen while they ran
    assert unknown <= max(2, len(shown) // 10), (unknown, len(shown))
    assert any(len([g for g in v["gpus"] if g["session_id"]]) == 6 for v in overviews)


def start_two_on_gpu2(server: Server, tmp_path: Path, long: int) -> tuple[list[str], list[str], dict[str, bytes]]:
    """Six sessions, two per engine (placement goes gpu1, gpu2, gpu3, gpu1, gpu2, gpu3): gpu2's two sleep `long`
    seconds, the others 5 s (long enough for that order to hold). Returns (gpu2's, the others', the inputs'
    bytes), once gpu2's are running."""
    inputs: dict[str, bytes] = {}
    ids = []
    with server.client() as client:
        for i in range(6):
            source = write_nifti(tmp_path / f"in{i}.nii.gz", 0.05, seed=i)
            sid = create_and_upload(client, "sleep", source, seconds=long if i in (1, 4) else 5)
            inputs[sid] = source.read_bytes()
            ids.append(sid)
            wait_for(lambda sid=sid: bool(placements(server, sid)), f"session {i} placed")
    on_gpu2 = [sid for sid in ids if placements(server, sid)[0][0] == "gpu2"]
    assert on_gpu2 == [ids[1], ids[4]], [placements(server, sid) for sid in ids]
    for sid in on_gpu2:
        wait_for(lambda sid=sid: status(server, sid)["info"] == "running", "gpu2's runs started")
    return on_gpu2, [sid for sid in ids if sid not in on_gpu2], inputs


def output_of(server: Server, session_id: str) -> bytes:
    with server.client() as client:
        response = client.get(f"/sessions/{session_id}/outputs/output_vol")
    assert response.status_code == 200, response.text
    return response.content


def test_an_engine_killed_past_the_grace_loses_nothing_its_runs_finish_elsewhere(
    bed: EngineBed, make_server: ServerFactory, tmp_path: Path
) -> None:
    server = pool_server(make_server, bed.entries(), ENGINE_GRACE="5")
    gpu2 = bed.engine("gpu2")
    lost, others, inputs = start_two_on_gpu2(server, tmp_path, long=8)
    stale = set(gpu2.session_containers())
    assert {gpu2.session_containers()[c] for c in stale} == set(lost)
    for container in stale:  # labelled with its engine, session and attempt
        shown = gpu2.engine.docker("inspect", "--format", "{{json .Config.Labels}}", container).stdout
        labels = json.loads(shown)
        assert labels["org.inferserver.engine"] == "gpu2" and labels["org.inferserver.attempt"] == "0", labels
        assert labels["org.inferserver.session"] in lost
    gpu2.kill9()
    died = time.monotonic()
    for sid in lost:
        wait_for_info(server, sid, "engine gpu2 stopped answering; waiting up to 5 s (ENGINE_GRACE) for it")
    for sid in lost:
        wait_for(lambda sid=sid: len(placements(server, sid)) == 2, "re-placed after the grace", timeout=60)
    moved = time.monotonic() - died
    for sid in lost:
        first, second = placements(server, sid)
        assert first[0] == "gpu2" and second[0] in ("gpu1", "gpu3"), (first, second)
        assert "inferserver: re-queued: engine gpu2 did not answer within ENGINE_GRACE (5 s)" in log_of(server, sid)
    assert moved >= 5
    print(f"\nfrom gpu2's kill -9 to both its sessions running elsewhere: {moved:.1f} s")
    for sid in lost + others:
        assert server.wait_status(sid, {"complete", "failed"}, timeout=90)["status"] == "complete", server.output()
        assert output_of(server, sid) == inputs[sid]
    for sid in lost:
        assert status(server, sid)["status"] == "complete"
    # Back: its stale containers (still running under live-restore) are removed, their outputs never taken.
    gpu2.restart()
    assert containers_removed(lambda: [c for c in gpu2.containers() if c in stale], timeout=30) == []
    for sid in lost:
        assert output_of(server, sid) == inputs[sid]
        assert log_of(server, sid).count("sleeping 8") == 2  # one per attempt, the first cut short
    with server.client() as client:
        assert wait_for(lambda: client.get("/readyz").json()["data"] == READY, "all engines ready") < 10


def wait_for_info(server: Server, session_id: str, text: str) -> str:
    wait_for(lambda: text in status(server, session_id)["info"], f"info says {text!r}", timeout=30)
    info: str = status(server, session_id)["info"]
    return info


def test_an_engine_back_within_the_grace_gets_its_runs_re_attached_log_without_repeats(
    bed: EngineBed, make_server: ServerFactory, tmp_path: Path
) -> None:
    server = pool_server(make_server, bed.entries(), ENGINE_GRACE="60")
    gpu2 = bed.engine("gpu2")
    lost, others, inputs = start_two_on_gpu2(server, tmp_path, long=8)
    gpu2.kill9()
    for sid in lost:
        wait_for_info(server, sid, "engine gpu2 stopped answering; waiting up to 60 s (ENGINE_GRACE)")
    with server.client() as client:
        ready = client.get("/readyz")
        assert ready.status_code == 200  # two engines answer
        [down] = ready.json()["data"]["engines_down"]
        assert down.startswith(f"engine gpu2 ({gpu2.url}): "), down
        metrics = client.get("/metrics").text
        assert 'inferserver_engine_up{engine="gpu2"} 0.0' in metrics
        assert 'inferserver_engine_up{engine="gpu1"} 1.0' in metrics
    gpu2.restart()
    for sid in lost + others:
        assert server.wait_status(sid, {"complete", "failed"}, timeout=90)["status"] == "complete", server.output()
        assert output_of(server, sid) == inputs[sid]
    for sid in lost:
        assert placements(server, sid) == [("gpu2", placements(server, sid)[0][1])]  # never moved
        log = log_of(server, sid)
        lines = log.splitlines()
        assert lines.count("sleeping 8") == 1 and lines.count("done") == 1, log  # carried on, no line twice


def test_an_engine_refusing_our_client_certificate_is_named_and_the_others_serve(
    bed: EngineBed, make_server: ServerFactory, tmp_path: Path
) -> None:
    gpu2 = bed.engine("gpu2")
    wrong = {"tls_cert": str(bed.wrong_client.cert), "tls_key": str(bed.wrong_client.key)}
    entries = [e.entry(**wrong) if e is gpu2 else e.entry() for e in bed.engines]
    server = pool_server(make_server, entries)
    with server.client() as client:
        ready = client.get("/readyz")
        assert ready.status_code == 200, ready.text
        [down] = ready.json()["data"]["engines_down"]
        assert down.startswith(f"engine gpu2 ({gpu2.url}): TLS handshake failed: "), down
        assert f"client certificate {bed.wrong_client.cert}" in down
        print(f"\n/readyz names the engine: {down}")
        engines = {e["name"]: e for e in client.get("/gpus").json()["data"]["engines"]}
        assert [engines[n]["up"] for n in ("gpu1", "gpu2", "gpu3")] == [True, False, True]
        ids = [create(client, "gpuwork", seconds=1) for _ in range(6)]
    for sid in ids:
        record_of(server, sid)
        assert placements(server, sid)[0][0] in ("gpu1", "gpu3")
    assert "engine gpu2" in server.output() and "TLS handshake failed" in server.output()
    assert "PRIVATE KEY" not in server.output()


def test_a_server_restart_recovers_runs_on_every_engine(
    bed: EngineBed, make_server: ServerFactory, tmp_path: Path
) -> None:
    from .conftest import kill_server

    server = pool_server(make_server, bed.entries())
    inputs = {}
    with server.client() as client:
        for i in range(3):
            source = write_nifti(tmp_path / f"in{i}.nii.gz", 0.05, seed=i)
            sid = create_and_upload(client, "sleep", source, seconds=6)
            inputs[sid] = source.read_bytes()
    for sid in inputs:
        wait_for(lambda sid=sid: status(server, sid)["info"] == "running", "runs started")
    assert {placements(server, sid)[0][0] for sid in inputs} == {"gpu1", "gpu2", "gpu3"}
    kill_server(server)
    again = make_server.restart(server)
    for sid in inputs:
        assert again.wait_status(sid, {"complete", "failed"}, timeout=60)["status"] == "complete", again.output()
        assert output_of(again, sid) == inputs[sid]
        assert len(placements(again, sid)) == 1  # re-attached, not run again
    assert "re-attaching to container" in again.output()


def test_models_pull_pulls_on_every_engine_naming_the_one_that_fails(bed: EngineBed, tmp_path: Path) -> None:
    from ..conftest import TEST_MODELS
    from .test_cli import inferserver

    for name in ("absent", "copy"):
        (tmp_path / f"{name}.json").write_text((TEST_MODELS / f"{name}.json").read_text())
    result = inferserver("models", "pull", str(tmp_path), INFERSERVER_ENGINES=json.dumps(bed.entries()))
    assert result.returncode == 1
    for name in ("gpu1", "gpu2", "gpu3"):
        assert f"inferserver-test/copy:1 on engine {name}: present" in result.stderr, result.stderr
    failed = ", ".join(f"inferserver-test/absent:1 on engine {name}" for name in ("gpu1", "gpu2", "gpu3"))
    assert f"could not pull 3 of 6 images: {failed}" in result.stderr, result.stderr


def test_a_run_lost_with_its_engine_three_times_fails_naming_the_engine(
    bed: EngineBed, make_server: ServerFactory, tmp_path: Path
) -> None:
    gpu2 = bed.engine("gpu2")
    server = pool_server(make_server, [gpu2.entry()], ENGINE_GRACE="2")
    source = write_nifti(tmp_path / "in.nii.gz", 0.05)
    with server.client() as client:
        sid = create_and_upload(client, "sleep", source, seconds=60)
    for attempt in range(1, 4):
        wait_for(lambda attempt=attempt: len(placements(server, sid)) == attempt, f"attempt {attempt} placed")
        wait_for(lambda: status(server, sid)["info"] == "running", f"attempt {attempt} running")
        gpu2.kill9()
        wait_for(lambda: status(server, sid)["status"] != "working", "the grace ran out", timeout=30)
        gpu2.restart()
    final = server.wait_status(sid, {"complete", "failed"}, timeout=30)
    assert final["status"] == "failed", final
    assert final["info"].startswith("engine gpu2 was lost during the run (engine gpu2 ("), final
    assert final["info"].endswith("; the run was interrupted 3 times, giving up"), final
    assert f"inferserver: run failed: {final['info']}" in log_of(server, sid)
    assert containers_removed(gpu2.containers, timeout=30) == []  # the three stale containers went


def test_an_engine_over_ssh_takes_runs_beside_a_tls_one(bed: EngineBed, make_server: ServerFactory) -> None:
    from .gpu_engine import environ

    gpu1, gpu3 = bed.engine("gpu1"), bed.engine("gpu3")
    assert gpu1.ssh is not None
    with environ(HOME=str(gpu1.ssh.home)):  # the server's key and known_hosts, as aiodocker's SSH transport reads
        server = pool_server(make_server, [gpu1.ssh_entry(), gpu3.entry()])
    with server.client() as client:
        ids = [create(client, "gpuwork", seconds=2) for _ in range(4)]
    records = {sid: record_of(server, sid) for sid in ids}
    assert {placements(server, sid)[0][0] for sid in ids} == {"gpu1", "gpu3"}
    assert all(r.devices in (("0",), ("1",)) for r in records.values()), records
