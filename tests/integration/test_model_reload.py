"""The model directory changes under a running server: add, change, break, delete."""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from ..conftest import TEST_MODELS
from .conftest import Server, load_spec, start_server, stop_and_check, write_nifti

WITHIN = 10.0  # the registry looks every 2 s


def eventually(check: Callable[[], Any], what: str) -> Any:
    deadline = time.monotonic() + WITHIN
    while not (result := check()):
        assert time.monotonic() < deadline, f"not within {WITHIN} s: {what}"
        time.sleep(0.2)
    return result


@pytest.fixture
def live_dir(tmp_path: Path, fixture_images: None) -> Iterator[tuple[Server, Path]]:
    models = tmp_path / "models"
    models.mkdir()
    shutil.copy(TEST_MODELS / "sleep.json", models)
    server = start_server(tmp_path / "server", model_path=models)
    yield server, models
    stop_and_check([server])


def copy2_spec(version: str) -> dict:
    spec = load_spec("copy")
    return {**spec, "id": "copy2", "version": version}


def test_add_change_break_delete_without_restart(live_dir: tuple[Server, Path], tmp_path: Path) -> None:
    server, models = live_dir
    spec_file = models / "copy2.json"
    source = write_nifti(tmp_path / "ct.nii.gz", 1)
    with server.client() as client:
        assert client.get("/models").json()["data"] == ["sleep"]

        spec_file.write_text(json.dumps(copy2_spec("1.0")))
        eventually(lambda: "copy2" in client.get("/models").json()["data"], "a new spec is served")
        old_session = client.post("/models/copy2", json={}).json()["data"]["session_id"]

        spec_file.write_text(json.dumps(copy2_spec("2.0")))
        eventually(lambda: client.get("/models/copy2").json()["data"]["version"] == "2.0", "a changed spec is served")
        # The session created before the change still runs, with the spec it started with.
        client.put(f"/sessions/{old_session}/inputs/input_vol", content=source.read_bytes()).raise_for_status()
        assert server.wait_status(old_session, {"complete", "failed"})["status"] == "complete"
        assert client.get(f"/sessions/{old_session}/outputs/output_vol").content == source.read_bytes()

        spec_file.write_text('{"id": "copy2", "version": ')
        eventually(lambda: f"{spec_file}: not valid JSON" in server.output(), "the broken file is logged")
        assert "still serving its previous version 2.0" in server.output()
        assert client.get("/models/copy2").json()["data"]["version"] == "2.0"

        spec_file.unlink()
        eventually(lambda: client.get("/models/copy2").status_code == 404, "a removed spec is gone")
        assert client.get("/models").json()["data"] == ["sleep"]


def test_an_old_session_runs_with_the_argv_of_its_own_spec(live_dir: tuple[Server, Path], tmp_path: Path) -> None:
    """The new version drops --seconds, which the sleep image insists on: only the old spec's argv succeeds."""
    server, models = live_dir
    spec = load_spec("sleep")
    source = write_nifti(tmp_path / "ct.nii.gz", 1)
    with server.client() as client:
        sid = client.post("/models/sleep", json={"params": {"seconds": {"value": 0}}}).json()["data"]["session_id"]
        (models / "sleep.json").write_text(json.dumps({**spec, "params": {}, "version": "9"}))
        eventually(lambda: client.get("/models/sleep").json()["data"]["version"] == "9", "the change is served")
        client.put(f"/sessions/{sid}/inputs/input_vol", content=source.read_bytes()).raise_for_status()
        assert server.wait_status(sid, {"complete", "failed"}, timeout=60)["status"] == "complete"
