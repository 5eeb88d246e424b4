"""Several worker processes behind one port: any worker answers any request, exactly one of them (the one
holding the dispatch lock) starts runs, and killing that one hands the lock and the running container to
another worker.

Run as issue 3 names it: `inferserver serve --workers 4` (uvicorn's supervisor) and gunicorn with uvicorn
workers. Every request below opens its own connection, so requests are spread over the workers.
"""

from __future__ import annotations

import os
import re
import signal
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from .conftest import (
    SESSION_LABEL,
    Launcher,
    Server,
    _docker,
    containers_removed,
    gunicorn_command,
    serve_command,
    write_nifti,
)

WORKERS = 4
LAUNCHERS = {
    "uvicorn-workers": serve_command(WORKERS),
    "gunicorn": gunicorn_command(WORKERS),
}
INSTANCE_LABEL = "org.inferserver.instance"
WAITING = re.compile(rb"^Waiting, position in queue is (\d+)$")


@pytest.fixture(params=list(LAUNCHERS))
def launcher(request: pytest.FixtureRequest) -> Launcher:
    return LAUNCHERS[request.param]


def instance_containers(server: Server) -> list[str]:
    """`container-id session-id` of each container (running or not) of this server."""
    instance = (server.session_path / ".instance").read_text().strip()
    listing = _docker(
        "ps",
        "-a",
        "--filter",
        f"label={INSTANCE_LABEL}={instance}",
        "--format",
        f'{{{{.ID}}}} {{{{.Label "{SESSION_LABEL}"}}}}',
    )
    return listing.stdout.splitlines()


class ContainerWatch(threading.Thread):
    """Counts this server's model containers every 100 ms while the test runs; remembers the most seen at once."""

    def __init__(self, server: Server) -> None:
        super().__init__(daemon=True)
        self.server = server
        self.most = 0
        self.samples = 0
        self.seen: set[str] = set()  # session ids
        self.stopping = threading.Event()

    def run(self) -> None:
        while not self.stopping.is_set():
            found = instance_containers(self.server)
            self.seen.update(line.split()[1] for line in found)  # sessions that had a container
            self.most = max(self.most, len(found))
            self.samples += 1
            self.stopping.wait(0.1)

    def stop(self) -> None:
        self.stopping.set()
        self.join(30)


def lock_holders(server: Server) -> list[int]:
    """Pids with the dispatch lock file open: workers open it only to take the lock, and keep it only if they got it."""
    target = str(server.session_path / ".dispatch.lock")
    holders = set()
    for fd_dir in Path("/proc").glob("[0-9]*/fd"):
        try:
            fds = list(fd_dir.iterdir())
        except OSError:  # gone, or not ours to read
            continue
        for fd in fds:
            try:
                if os.readlink(fd) == target:
                    holders.add(int(fd_dir.parent.name))
            except OSError:
                continue
    return sorted(holders)


def workers_of(server: Server) -> list[int]:
    """Live worker processes of the server's supervisor (uvicorn's or gunicorn's master)."""
    children = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            cmdline = (stat.parent / "cmdline").read_bytes()
        except OSError:
            continue
        # uvicorn's spawned workers come with multiprocessing's resource tracker: not a worker.
        if int(fields[1]) == server.process.pid and fields[0] != "Z" and b"resource_tracker" not in cmdline:
            children.append(int(stat.parent.name))
    return children


def request(server: Server, method: str, path: str, **kwargs: object) -> httpx.Response:
    """One request on a connection of its own; a worker killed under it is retried on another connection."""
    for attempt in range(5):
        try:
            return httpx.request(method, server.url + path, timeout=60, **kwargs)
        except httpx.TransportError:
            if attempt == 4:
                raise
            time.sleep(0.2)
    raise AssertionError("unreachable")


def create_and_upload(server: Server, source: Path, seconds: int) -> str:
    body = {"inputs": {}, "params": {"seconds": {"value": seconds}}, "outputs": {}}
    created = request(server, "POST", "/models/sleep", json=body)
    assert created.status_code == 200, created.text
    session_id = created.json()["data"]["session_id"]
    upload = request(
        server,
        "PUT",
        f"/sessions/{session_id}/inputs/input_vol",
        content=source.read_bytes(),
        headers={"Content-Type": "application/octet-stream"},
    )
    assert upload.status_code == 200, upload.text
    return session_id


def follow(server: Server, session_id: str) -> list[bytes]:
    """The whole log stream of a session, read on a fresh connection, as lines."""
    with httpx.stream("GET", f"{server.url}/sessions/{session_id}/logs", timeout=120) as response:
        assert response.status_code == 200, response.read()
        return response.read().split(b"\n")


def wait_until(check: Callable[[], object], timeout: float, what: str) -> object:
    deadline = time.monotonic() + timeout
    while not (value := check()):
        assert time.monotonic() < deadline, f"timed out after {timeout} s waiting for {what}"
        time.sleep(0.05)
    return value


def status_of(server: Server, session_id: str) -> dict:
    return request(server, "GET", f"/sessions/{session_id}").json()["data"]


def test_every_worker_serves_one_queue_with_one_dispatcher(make_server, launcher: Launcher, tmp_path: Path) -> None:
    server = make_server(command=launcher, WORKER_THREADS="1")
    wait_until(lambda: len(workers_of(server)) == WORKERS, 30, f"{WORKERS} worker processes")
    sources = [write_nifti(tmp_path / f"in{i}.nii.gz", 0.05, seed=i) for i in range(6)]
    watch = ContainerWatch(server)
    watch.start()
    try:
        sessions = [create_and_upload(server, source, seconds=1) for source in sources]
        with ThreadPoolExecutor(len(sessions)) as pool:
            logs = list(pool.map(lambda sid: follow(server, sid), sessions))
        holders = lock_holders(server)
    finally:
        watch.stop()

    for session_id, source, log in zip(sessions, sources, logs, strict=True):
        assert status_of(server, session_id)["status"] == "complete", (log, server.output())
        assert b"sleeping 1" in log and b"done" in log, log
        output = request(server, "GET", f"/sessions/{session_id}/outputs/output_vol")
        assert output.status_code == 200 and output.content == source.read_bytes()
        positions = [int(m.group(1)) for line in log if (m := WAITING.match(line))]
        assert positions == sorted(positions, reverse=True), f"queue positions went up: {positions}"
    assert any(WAITING.match(line) for line in logs[-1]), "the last session never saw itself queued"
    assert len(holders) == 1 and holders[0] in workers_of(server), (holders, workers_of(server))
    assert watch.samples > 20 and watch.seen == set(sessions), (watch.samples, watch.seen)
    assert watch.most == 1, f"{watch.most} model containers ran at once with WORKER_THREADS=1"
    assert containers_removed(lambda: instance_containers(server)) == []


def test_no_worker_answers_a_stale_status_after_a_change(make_server, launcher: Launcher, tmp_path: Path) -> None:
    """Status answers come from each worker's memory while no session changed: a change made by one worker
    (the upload) or by the dispatcher must reach every worker's next answer, not after some delay."""
    server = make_server(command=launcher)
    wait_until(lambda: len(workers_of(server)) == WORKERS, 30, f"{WORKERS} worker processes")
    body = {"inputs": {}, "params": {"seconds": {"value": 2}}, "outputs": {}}
    session_id = request(server, "POST", "/models/sleep", json=body).json()["data"]["session_id"]
    polls = 8 * WORKERS  # each on a fresh connection: every worker answers some of them and caches the answer
    before = [status_of(server, session_id) for _ in range(polls)]
    assert all(s["status"] == "waiting" and s["needed"] == ["input_vol"] for s in before), before

    source = write_nifti(tmp_path / "in.nii.gz", 0.05)
    upload = request(
        server,
        "PUT",
        f"/sessions/{session_id}/inputs/input_vol",
        content=source.read_bytes(),
        headers={"Content-Type": "application/octet-stream"},
    )
    assert upload.status_code == 200, upload.text
    after = [status_of(server, session_id) for _ in range(polls)]
    assert all(s["status"] != "waiting" and s["needed"] == [] for s in after), after

    wait_until(lambda: status_of(server, session_id)["status"] == "complete", 60, "the run to complete")
    done = [status_of(server, session_id) for _ in range(polls)]
    assert all(s["status"] == "complete" for s in done), done


def test_killing_the_dispatching_worker_hands_over_the_running_container(
    make_server, launcher: Launcher, tmp_path: Path
) -> None:
    server = make_server(command=launcher, WORKER_THREADS="1")
    wait_until(lambda: len(workers_of(server)) == WORKERS, 30, f"{WORKERS} worker processes")
    source = write_nifti(tmp_path / "in.nii.gz", 0.05)
    session_id = create_and_upload(server, source, seconds=5)
    wait_until(lambda: status_of(server, session_id)["info"] == "running", 30, "the run to start")
    [container] = [line.split()[0] for line in instance_containers(server)]
    [dispatcher] = lock_holders(server)

    os.kill(dispatcher, signal.SIGKILL)
    killed_at = time.monotonic()
    successor = wait_until(lambda: [p for p in lock_holders(server) if p != dispatcher], 30, "another dispatcher")
    took_over = time.monotonic() - killed_at
    assert status_of(server, session_id)["status"] == "working"  # still the same run, not re-queued

    final = wait_until(
        lambda: (s := status_of(server, session_id))["status"] in ("complete", "failed") and s, 60, "the session to end"
    )
    assert final["status"] == "complete", (final, server.output())
    assert request(server, "GET", f"/sessions/{session_id}/outputs/output_vol").content == source.read_bytes()
    log = request(server, "GET", f"/sessions/{session_id}/logs").content.split(b"\n")
    assert log.count(b"sleeping 5") == 1 and log.count(b"done") == 1, log  # re-attached, not re-run
    assert containers_removed(lambda: instance_containers(server)) == []
    assert container not in _docker("ps", "-aq", "--no-trunc").stdout
    # The supervisor replaced the dead worker.
    wait_until(
        lambda: len(workers_of(server)) == WORKERS and dispatcher not in workers_of(server),
        30,
        "the dead worker to be replaced",
    )
    print(f"dispatch lock taken over by pid {successor} {took_over:.2f} s after kill -9 of pid {dispatcher}")
