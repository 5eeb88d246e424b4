"""The queue and the log stream, as a client reading them sees them."""

from __future__ import annotations

import threading
import time
from pathlib import Path

from .conftest import SESSION_LABEL, Server, _docker, create_and_upload, read_log, write_nifti


def test_second_session_waits_at_position_one_then_runs(make_server, database: dict, tmp_path: Path) -> None:
    server = make_server(WORKER_THREADS="1", **database)
    source = write_nifti(tmp_path / "in.nii.gz", 0.1)
    with server.client() as client:
        first = create_and_upload(client, "sleep", source, seconds=3)
        while client.get(f"/sessions/{first}").json()["data"]["status"] != "working":
            time.sleep(0.05)  # the dispatcher takes the first run off the queue
        second = create_and_upload(client, "sleep", source, seconds=0)
        status = client.get(f"/sessions/{second}").json()["data"]
        assert status["status"] == "ready"
        assert status["info"] == "queued at position 1"
    lines = [line for _, line in read_log(server, second)]
    assert lines[0] == b"Waiting, position in queue is 1"
    assert b"sleeping 0" in lines and b"done" in lines
    assert lines.index(b"sleeping 0") > lines.index(b"Waiting, position in queue is 1")
    assert server.wait_status(first, {"complete"})["status"] == "complete"
    assert server.wait_status(second, {"complete"})["status"] == "complete"


def test_log_arrives_line_by_line_while_the_model_runs(module_server: Server, tmp_path: Path) -> None:
    source = write_nifti(tmp_path / "in.nii.gz", 0.1)
    with module_server.client() as client:
        session_id = create_and_upload(client, "lines", source, count=8, delay=0.5)
    timed = [(t, line) for t, line in read_log(module_server, session_id) if line.startswith(b"line ")]
    assert [line for _, line in timed] == [f"line {i}".encode() for i in range(1, 9)]
    spread = timed[-1][0] - timed[0][0]
    assert spread > 2.5, f"the lines arrived together ({spread:.2f} s apart), not as the model printed them"
    # The stream ends once the session is final: the status is already complete when it closes.
    with module_server.client() as client:
        assert client.get(f"/sessions/{session_id}").json()["data"]["status"] == "complete"


def test_keepalive_line_after_five_silent_seconds(module_server: Server, tmp_path: Path) -> None:
    source = write_nifti(tmp_path / "in.nii.gz", 0.1)
    with module_server.client() as client:
        session_id = create_and_upload(client, "sleep", source, seconds=7)
    lines = [line for _, line in read_log(module_server, session_id)]
    assert b"\0" in lines, lines
    assert lines.index(b"sleeping 7") < lines.index(b"\0") < lines.index(b"done")


def test_several_readers_each_get_the_whole_log(module_server: Server, tmp_path: Path) -> None:
    source = write_nifti(tmp_path / "in.nii.gz", 0.1)
    with module_server.client() as client:
        session_id = create_and_upload(client, "lines", source, count=5, delay=0.3)
    results: list[list[bytes]] = [[], [], []]

    def reader(index: int) -> None:
        results[index] = [line for _, line in read_log(module_server, session_id) if line.startswith(b"line ")]

    threads = [threading.Thread(target=reader, args=(i,)) for i in range(3)]
    for thread in threads:
        thread.start()
        time.sleep(0.4)  # later readers join mid-run and still start from the first line
    for thread in threads:
        thread.join(60)
    expected = [f"line {i}".encode() for i in range(1, 6)]
    assert results == [expected, expected, expected]
    # A finished session gives its whole log at once.
    assert [line for _, line in read_log(module_server, session_id) if line.startswith(b"line ")] == expected


def test_cancel_stops_the_running_container_and_drops_the_queued_run(
    make_server, database: dict, tmp_path: Path
) -> None:
    server = make_server(WORKER_THREADS="1", **database)
    source = write_nifti(tmp_path / "in.nii.gz", 0.1)
    with server.client() as client:
        running = create_and_upload(client, "sleep", source, seconds=60)
        queued = create_and_upload(client, "sleep", source, seconds=0)
        assert server.wait_status(running, {"working"})["status"] == "working"
        deadline = time.monotonic() + 30
        while not _docker("ps", "-q", "--filter", f"label={SESSION_LABEL}={running}").stdout.split():
            assert time.monotonic() < deadline, "the run's container never started"
            time.sleep(0.1)

        answer = client.delete(f"/sessions/{queued}")
        assert answer.status_code == 200, answer.text
        assert answer.json()["data"]["status"] == "failed" and answer.json()["data"]["info"] == "cancelled"
        answer = client.delete(f"/sessions/{running}")
        assert answer.status_code == 200, answer.text
        assert answer.json()["data"]["status"] == "failed" and answer.json()["data"]["info"] == "cancelled"

        assert _docker("ps", "-aq", "--filter", f"label={SESSION_LABEL}={running}").stdout.split() == []
        for session_id in (running, queued):
            assert client.get(f"/sessions/{session_id}").json()["data"] == {
                "status": "failed",
                "needed": [],
                "info": "cancelled",
            }
            assert client.delete(f"/sessions/{session_id}").status_code == 409  # already final
    # The cancelled queued run never started; the running one's log ends when it was stopped.
    assert b"sleeping 0" not in b"\n".join(line for _, line in read_log(server, queued))
    running_log = [line for _, line in read_log(server, running)]
    assert b"sleeping 60" in running_log and b"done" not in running_log
