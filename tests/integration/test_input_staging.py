"""INPUT_STAGING: inputs copied in through the archive API or bind-mounted read-only; the model sees the
same files at the same paths either way. The servers run under the systemd unit's UMask=0027, so uploads
are 0640 as in production."""

from __future__ import annotations

import copy
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from .conftest import (
    Server,
    create_and_upload,
    kill_server,
    run_remote,
    serve_command,
    start_server,
    stop_and_check,
    write_nifti,
    write_nrrd,
)
from .test_inference import (
    cli_copies_byte_for_byte,
    flags_ablinfer_builds,
    load_normalized,
)
from .test_recovery import assert_complete, sleeping_run

MODES = ["archive", "mount"]


def under_unit_umask(port: int) -> list[str]:
    """`inferserver serve` with the umask deploy/inferserver.service gives it: session files are 0640."""
    return ["sh", "-c", 'umask 0027 && exec "$@"', "sh", *serve_command()(port)]


@pytest.fixture(scope="module", params=MODES)
def staged(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, fixture_images: None
) -> Iterator[Server]:
    """A server per INPUT_STAGING mode, shared by the module's tests."""
    server = start_server(
        tmp_path_factory.mktemp(f"staging-{request.param}"), command=under_unit_umask, INPUT_STAGING=request.param
    )
    yield server
    stop_and_check([server])


def staging(server: Server) -> str:
    return server.settings["INPUT_STAGING"]


def final(server: Server, session_id: str) -> dict:
    return server.wait_status(session_id, {"complete", "failed"}, timeout=120)


def test_the_client_gets_the_copy_models_output_byte_for_byte(staged: Server, tmp_path: Path) -> None:
    cli_copies_byte_for_byte(staged, tmp_path)


def test_both_inputs_reach_the_paths_ablinfer_names_in_the_argv(staged: Server, tmp_path: Path) -> None:
    # Also the optional input, enabled: it is staged like the required one.
    volume, mask = write_nifti(tmp_path / "vol.nii", 0.1), write_nrrd(tmp_path / "mask.nrrd")
    argv_out = tmp_path / "argv.bin"
    config = {
        "inputs": {"volume": {"enabled": True, "value": str(volume)}, "mask": {"enabled": True, "value": str(mask)}},
        "params": {},
        "outputs": {"argv": {"enabled": True, "value": str(argv_out)}, "env": {"enabled": False}},
    }
    run_remote(staged, "record", copy.deepcopy(config))
    recorded = [a.decode() for a in argv_out.read_bytes().split(b"\0")[:-1]]
    assert recorded == flags_ablinfer_builds(load_normalized(staged, "record"), config)
    assert "-i" in recorded and "/data/volume.nii" in recorded and "--mask=/data/mask.nrrd" in recorded


def test_a_model_running_as_another_user_reads_a_0640_upload(staged: Server, tmp_path: Path) -> None:
    source = write_nifti(tmp_path / "in.nii.gz", 1)
    with staged.client() as client:
        session_id = create_and_upload(client, "nonroot", source)
        status = final(staged, session_id)
        assert status["status"] == "complete", status
        assert client.get(f"/sessions/{session_id}/outputs/output_vol").content == source.read_bytes()
        assert "nonroot: running as 1000:1000" in client.get(f"/sessions/{session_id}/logs").text
    session = staged.session_path / session_id
    assert stat.S_IMODE(session.stat().st_mode) == 0o750  # no other host user reaches the input through it
    upload = stat.S_IMODE((session / "inputs" / "input_vol.nii.gz").stat().st_mode)
    # Copied in, the archive gives the copy its own mode; mounted, the file itself must be readable.
    assert upload == (0o644 if staging(staged) == "mount" else 0o640)


def test_a_mounted_input_is_read_only_to_the_model(staged: Server, tmp_path: Path) -> None:
    source = write_nifti(tmp_path / "in.nii.gz", 0.1)
    with staged.client() as client:
        session_id = create_and_upload(client, "overwrite", source)
        status = final(staged, session_id)
        log = client.get(f"/sessions/{session_id}/logs").text
        if staging(staged) == "archive":  # the model writes into its own copy
            assert status["status"] == "complete", status
            assert client.get(f"/sessions/{session_id}/outputs/output_vol").content == b"changed by the model\n"
        else:
            assert status["status"] == "failed", status
            assert status["info"].startswith("model exited with status "), status
            assert "Read-only file system" in log
    # The upload itself is untouched either way.
    assert (staged.session_path / session_id / "inputs" / "input_vol.nii.gz").read_bytes() == source.read_bytes()


def test_a_mount_source_the_engine_cannot_see_fails_the_run_naming_the_setting(make_server, tmp_path: Path) -> None:
    missing = "/nonexistent/inferserver-sessions"
    server = make_server(INPUT_STAGING="mount", MOUNT_SOURCE_PATH=missing)
    with server.client() as client:
        session_id = create_and_upload(client, "copy", write_nifti(tmp_path / "in.nii.gz", 0.1))
    status = server.wait_status(session_id, {"complete", "failed"}, timeout=30)
    assert status["status"] == "failed", status
    assert "bind source path does not exist" in status["info"]
    assert f"{missing}/{session_id}/inputs/input_vol.nii.gz" in status["info"]
    assert f"MOUNT_SOURCE_PATH={missing}" in status["info"] and "INPUT_STAGING=archive" in status["info"]


def test_a_mounted_run_is_re_attached_after_a_kill(make_server, tmp_path: Path) -> None:
    server, session_id, expected = sleeping_run(make_server, tmp_path, 3, INPUT_STAGING="mount")
    kill_server(server)
    assert_complete(make_server.restart(server), session_id, expected)
