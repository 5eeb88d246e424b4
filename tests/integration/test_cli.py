"""`inferserver models check | models pull | run` as a user types them."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from ..conftest import TEST_MODELS
from .conftest import write_nifti


def inferserver(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "inferserver", *args],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, **env},
    )


def test_help_lists_every_command() -> None:
    result = inferserver("--help")
    assert result.returncode == 0
    for command in ("serve", "models", "run"):
        assert f"    {command} " in result.stdout, result.stdout
    models = inferserver("models", "--help")
    assert "check" in models.stdout and "pull" in models.stdout


def test_models_check_passes_the_test_models() -> None:
    result = inferserver("models", "check", str(TEST_MODELS))
    assert result.returncode == 0, result.stderr
    assert f"ok {TEST_MODELS / 'copy.json'}: copy 1.0" in result.stdout


def test_models_check_names_each_file_it_cannot_serve(shared_specs: Path) -> None:
    deepinfer = shared_specs / "deepinfer"
    result = inferserver("models", "check", str(deepinfer))
    assert result.returncode == 1
    point_vec = sorted(line for line in result.stderr.splitlines() if "point_vec" in line)
    not_a_volume = "type: Input should be 'volume' or 'segmentation' (got 'point_vec')"
    assert point_vec == [
        f"{deepinfer / 'LymphNodeSegmenter.gpu.json'}: inputs/InputFiducialList/{not_a_volume}",
        f"{deepinfer / 'LymphNodeSegmenter.json'}: inputs/InputFiducialList/{not_a_volume}",
        f"{deepinfer / 'ProstateNeedleFinder.json'}: outputs/OutputFiducialList/{not_a_volume}",
    ]


def test_models_check_defaults_to_model_path(tmp_path: Path) -> None:
    (tmp_path / "bad.json").write_text("[1, 2]")
    result = inferserver("models", "check", INFERSERVER_MODEL_PATH=str(tmp_path))
    assert result.returncode == 1
    assert f"{tmp_path / 'bad.json'}: the spec must be a JSON object, not list" in result.stderr


def test_models_pull_names_the_image_it_cannot_pull(tmp_path: Path, fixture_images: None) -> None:
    for name in ("absent", "copy"):
        (tmp_path / f"{name}.json").write_text((TEST_MODELS / f"{name}.json").read_text())
    result = inferserver("models", "pull", str(tmp_path))
    assert result.returncode == 1
    assert "inferserver-test/copy:1: present" in result.stderr
    assert "could not pull 1 of 2 images: inferserver-test/absent:1" in result.stderr, result.stderr


def test_run_copies_an_input_byte_for_byte(tmp_path: Path, fixture_images: None) -> None:
    source = write_nifti(tmp_path / "ct.nii.gz", 2)
    out = tmp_path / "out.nii.gz"
    result = inferserver(
        "run", str(TEST_MODELS / "copy.json"), "--input", f"input_vol={source}", "--output", f"output_vol={out}"
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert out.read_bytes() == source.read_bytes()
    assert "copy: wrote" in result.stdout  # the model's own log
    assert "inferserver: running copy 1.0 (inferserver-test/copy:1)" in result.stderr
    assert "inferserver: complete" in result.stderr


def test_run_by_id_with_a_param(tmp_path: Path, fixture_images: None) -> None:
    source = write_nifti(tmp_path / "ct.nii.gz", 1)
    out = tmp_path / "out.nii.gz"
    result = inferserver(
        "run",
        "sleep",
        "-i",
        f"input_vol={source}",
        "-p",
        "seconds=0",
        "-o",
        f"output_vol={out}",
        INFERSERVER_MODEL_PATH=str(TEST_MODELS),
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "sleeping 0" in result.stdout
    assert out.read_bytes() == source.read_bytes()


def test_run_of_a_failing_model_says_why(tmp_path: Path, fixture_images: None) -> None:
    source = write_nifti(tmp_path / "ct.nii.gz", 1)
    out = tmp_path / "out.nii.gz"
    result = inferserver(
        "run", str(TEST_MODELS / "fail.json"), "--input", f"input_vol={source}", "--output", f"output_vol={out}"
    )
    assert result.returncode == 1
    assert "fail: something went wrong" in result.stdout
    assert "inferserver: run failed: model exited with status 3" in result.stderr
    assert not out.exists()


def test_run_refuses_a_bad_param_naming_it(tmp_path: Path) -> None:
    source = write_nifti(tmp_path / "ct.nii.gz", 1)
    result = inferserver(
        "run",
        str(TEST_MODELS / "sleep.json"),
        "-i",
        f"input_vol={source}",
        "-p",
        "seconds=999",
        "-o",
        f"output_vol={tmp_path / 'o'}",
    )
    assert result.returncode == 2
    assert "params/seconds: 999 is outside the allowed range [0, 600]" in result.stderr
