"""INPUT_STAGING in the sessions layer: which inputs are mounted from where, the note for a refused mount,
and the mode a mounted input gets."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest

from inferserver.config import Settings, load_settings
from inferserver.scheduling.dispatch import job_for
from inferserver.scheduling.staging import let_models_read, mount_source
from inferserver.sessions.state import SessionFiles, SessionPlan
from inferserver.specs.model import ModelSpec
from inferserver.specs.runconfig import SessionRequest, validate_run_config

from ..conftest import TEST_MODELS

pytestmark = pytest.mark.usefixtures("clean_env")

SESSION = "5d0c1a52-94a4-4c36-9a0e-6f1c8d7f0b11"


def record_plan(session_path: Path) -> SessionPlan:
    """The record model with both its inputs enabled, in a session directory under `session_path`."""
    spec = ModelSpec.from_raw(json.loads((TEST_MODELS / "record.json").read_text()))
    config = validate_run_config(spec, SessionRequest.model_validate({"inputs": {"mask": {"enabled": True}}}))
    plan = SessionPlan(id=SESSION, spec=spec, config=config, files=SessionFiles(session_path / SESSION))
    plan.files.create()
    for name in config.enabled_inputs():
        plan.input_path(name).write_bytes(b"voxels")
        plan.input_path(name).chmod(0o640)  # as an upload is written under the unit's UMask=0027
    return plan


def settings(tmp_path: Path, **values: str) -> Settings:
    return load_settings(SESSION_PATH=tmp_path / "sessions", **values)


def test_archive_staging_mounts_nothing(tmp_path: Path) -> None:
    s = settings(tmp_path)
    job = job_for(record_plan(s.SESSION_PATH), "inst", s)
    assert [i.mount_source for i in job.inputs] == [None, None]
    assert job.mounted_inputs == [] and job.mount_note == ""


def test_mount_staging_mounts_each_input_from_its_session_file(tmp_path: Path) -> None:
    s = settings(tmp_path, INPUT_STAGING="mount")
    plan = record_plan(s.SESSION_PATH)
    job = job_for(plan, "inst", s)
    assert [(i.name, i.container, i.mount_source) for i in job.inputs] == [
        ("volume", "/data/volume.nii", str(plan.input_path("volume"))),
        ("mask", "/data/mask.nrrd", str(plan.input_path("mask"))),
    ]
    assert job.copied_inputs == []
    # The same container paths, hence the same argv, as archive staging.
    archive = job_for(plan, "inst", settings(tmp_path))
    assert [i.container for i in archive.inputs] == [i.container for i in job.inputs]
    assert archive.argv == job.argv


def test_mount_source_path_maps_session_path_to_the_engines_host(tmp_path: Path) -> None:
    s = settings(tmp_path, INPUT_STAGING="mount", MOUNT_SOURCE_PATH="/srv/inferserver")
    job = job_for(record_plan(s.SESSION_PATH), "inst", s)
    assert [i.mount_source for i in job.inputs] == [
        f"/srv/inferserver/{SESSION}/inputs/volume.nii",
        f"/srv/inferserver/{SESSION}/inputs/mask.nrrd",
    ]
    assert "MOUNT_SOURCE_PATH=/srv/inferserver" in job.mount_note
    assert "INPUT_STAGING=archive" in job.mount_note


def test_the_note_without_mount_source_path_names_session_path(tmp_path: Path) -> None:
    s = settings(tmp_path, INPUT_STAGING="mount")
    note = job_for(record_plan(s.SESSION_PATH), "inst", s).mount_note
    assert f"SESSION_PATH={s.SESSION_PATH}" in note and "set MOUNT_SOURCE_PATH" in note


def test_a_relative_session_path_gives_an_absolute_source(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    s = load_settings(SESSION_PATH="sessions", INPUT_STAGING="mount")
    assert mount_source(Path("sessions/x/inputs/a.nii"), s) == str(tmp_path / "sessions/x/inputs/a.nii")


def test_a_file_outside_session_path_is_its_own_source(tmp_path: Path) -> None:
    s = settings(tmp_path, INPUT_STAGING="mount", MOUNT_SOURCE_PATH="/srv/inferserver")
    assert mount_source(tmp_path / "elsewhere" / "a.nii", s) == str(tmp_path / "elsewhere" / "a.nii")


def test_mounted_inputs_become_readable_by_any_user(tmp_path: Path) -> None:
    s = settings(tmp_path, INPUT_STAGING="mount")
    plan = record_plan(s.SESSION_PATH)
    let_models_read(job_for(plan, "inst", s))
    assert [stat.S_IMODE(plan.input_path(n).stat().st_mode) for n in ("volume", "mask")] == [0o644, 0o644]


def test_copied_inputs_and_linked_user_files_keep_their_mode(tmp_path: Path) -> None:
    s = settings(tmp_path)
    plan = record_plan(s.SESSION_PATH)
    let_models_read(job_for(plan, "inst", s))  # archive staging: the tar gives the copy its own mode
    assert stat.S_IMODE(plan.input_path("volume").stat().st_mode) == 0o640
    # `inferserver run` links the user's own files in: never ours to chmod.
    users = tmp_path / "users.nii"
    users.write_bytes(b"voxels")
    users.chmod(0o600)
    plan.input_path("volume").unlink()
    plan.input_path("volume").symlink_to(users)
    mounted = settings(tmp_path, INPUT_STAGING="mount")
    let_models_read(job_for(plan, "inst", mounted))
    assert stat.S_IMODE(users.stat().st_mode) == 0o600
