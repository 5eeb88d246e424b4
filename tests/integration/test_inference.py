"""Whole inferences driven by the real ablinfer client against `inferserver serve` and a real Docker engine."""

from __future__ import annotations

import copy
import subprocess
import sys
from pathlib import Path

import pytest
from ablinfer.base import DispatchBase, DispatchException
from ablinfer.model import normalize_model_config

from .conftest import QuietRemote, Server, run_remote, write_nifti


def cli_copies_byte_for_byte(server: Server, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    """ablinfer's command line runs the copy model on a 20 MB volume; the output has the input's bytes."""
    source = write_nifti(tmp_path / "ct.nii.gz", 23)  # float noise gzips to ~20 MB
    assert source.stat().st_size > 20_000_000
    result_path = tmp_path / "out.nii.gz"
    proc = subprocess.run(
        [sys.executable, "-m", "ablinfer.cli", "-s", server.url, "copy", "-i", str(source), "-o", str(result_path)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert result_path.read_bytes() == source.read_bytes()
    return proc


def test_cli_copies_a_20mb_nifti_byte_for_byte(backend_server: Server, tmp_path: Path) -> None:
    proc = cli_copies_byte_for_byte(backend_server, tmp_path)
    assert "copy: wrote" in proc.stdout  # the container's own log line reached the client


def flags_ablinfer_builds(spec: dict, config: dict) -> list[str]:
    """What ablinfer's own DispatchBase._make_flags builds for this spec and configuration."""

    class Flags(DispatchBase):
        _make_fmap = _save_input = _run_command = _load_output = lambda *a: None  # type: ignore[assignment]

    dispatch = Flags()
    dispatch.model = spec
    dispatch.model_config = normalize_model_config(spec, copy.deepcopy(config))
    return dispatch._make_flags(dispatch._make_fmap_helper(spec["docker"]["data_path"]))


@pytest.mark.parametrize(
    "params",
    [
        {
            "count": {"value": 42},
            "ratio": {"value": 0.25},
            "smooth": {"value": True},
            "fast": {"value": False},
            "mode": {"value": "accurate"},
            "label": {"value": "inner ear = left"},
        },
        {
            "count": {"value": 0},
            "ratio": {"value": 1.0},
            "smooth": {"value": False},
            "fast": {"value": True},
            "mode": {"value": "fast"},
            "label": {"value": "bone"},
        },
    ],
    ids=["bools-flipped", "bools-default"],
)
def test_argv_equals_ablinfer_make_flags(module_server: Server, tmp_path: Path, params: dict) -> None:
    volume = write_nifti(tmp_path / "vol.nii", 0.1)
    argv_out, env_out = tmp_path / "argv.bin", tmp_path / "env.txt"
    config = {
        "inputs": {"volume": {"enabled": True, "value": str(volume)}, "mask": {"enabled": False}},
        "params": params,
        "outputs": {"argv": {"enabled": True, "value": str(argv_out)}, "env": {"enabled": True, "value": str(env_out)}},
    }
    server_spec = QuietRemote({"base_url": module_server.url}).get_model("record")
    run_remote(module_server, "record", copy.deepcopy(config))

    recorded = argv_out.read_bytes().split(b"\0")[:-1]
    expected = flags_ablinfer_builds(server_spec, config)
    assert [a.decode() for a in recorded] == expected
    assert "--mask=" not in " ".join(expected)  # the optional input stayed disabled
    assert "PATH=" in env_out.read_text()  # the optional output was collected


def load_normalized(server: Server, model_id: str) -> dict:
    return QuietRemote({"base_url": server.url}).get_model(model_id)


def copy_config(source: Path, dest: Path, **params: object) -> dict:
    return {
        "inputs": {"input_vol": {"enabled": True, "value": str(source)}},
        "params": {k: {"value": v} for k, v in params.items()},
        "outputs": {"output_vol": {"enabled": True, "value": str(dest)}},
    }


def last_session(server: Server) -> str:
    sessions = [p for p in server.session_path.iterdir() if p.is_dir()]
    return max(sessions, key=lambda p: p.stat().st_mtime).name


def test_failing_model_fails_the_session_and_keeps_its_log(module_server: Server, tmp_path: Path) -> None:
    source = write_nifti(tmp_path / "in.nii.gz", 0.1)
    lines: list[str] = []
    dispatch = QuietRemote({"base_url": module_server.url})
    with pytest.raises(DispatchException, match="failed"):
        dispatch.run(
            dispatch.get_model("fail"),
            copy_config(source, tmp_path / "out.nii.gz"),
            progress=lambda s, a, b, text: lines.append(text),
        )
    assert any("fail: something went wrong" in line for line in lines), lines  # stderr reached the client

    session_id = last_session(module_server)
    with module_server.client() as client:
        status = client.get(f"/sessions/{session_id}").json()["data"]
        assert status["status"] == "failed"
        assert status["info"] == "model exited with status 3"
        log = client.get(f"/sessions/{session_id}/logs").text
        assert "fail: starting" in log and "fail: something went wrong" in log
        assert client.get(f"/sessions/{session_id}/outputs/output_vol").status_code == 400


def run_to_failure(server: Server, model_id: str, tmp_path: Path) -> dict:
    """Run a copy-shaped model through the client, which must raise; return the session's final status."""
    source = write_nifti(tmp_path / "in.nii.gz", 0.1)
    dispatch = QuietRemote({"base_url": server.url})
    with pytest.raises(DispatchException):
        dispatch.run(
            dispatch.get_model(model_id), copy_config(source, tmp_path / "out.nii.gz"), progress=lambda *a: None
        )
    return server.wait_status(last_session(server), {"failed"})


def test_model_without_output_fails_naming_the_output(module_server: Server, tmp_path: Path) -> None:
    status = run_to_failure(module_server, "noout", tmp_path)
    assert status["status"] == "failed"
    assert "did not write output output_vol (expected at /data/output_vol.nii.gz)" in status["info"]


def test_absent_image_fails_with_the_pull_error(module_server: Server, tmp_path: Path) -> None:
    status = run_to_failure(module_server, "absent", tmp_path)
    assert status["status"] == "failed"
    assert status["info"].startswith("could not pull image inferserver-test/absent:1"), status
