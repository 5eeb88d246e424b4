"""What `make serve`, `make test` and `make lint` set up: scripts/setup.sh's steps per purpose (its --plan, which lists
the steps a run takes, from the same list the run walks) and the commands make runs (make -n)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from ..conftest import REPO

SETUP = REPO / "scripts" / "setup.sh"


def plan(*purposes: str) -> list[str]:
    env = {**os.environ, "INFERSERVER_VENV": "/nonexistent/venv"}
    result = subprocess.run(
        ["bash", str(SETUP), "--plan", *purposes], env=env, capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 0 and result.stderr == "", result.stderr
    return result.stdout.splitlines()


def test_serve_sets_up_only_the_engine_the_convert_extra_and_the_served_models_images() -> None:
    assert plan("serve") == [
        "engine: a Docker engine that starts containers (scripts/docker-engine.sh; Debian's docker.io)",
        "venv: /nonexistent/venv with inferserver and the extras convert",
        "copy_image: the fixture image inferserver-test/copy:1 (tests/images/build.sh copy)",
        "example_images: the example images inferserver-example/*:1 and their Debian base (examples/build.sh)",
    ]


def test_test_sets_up_the_rest() -> None:
    assert [line.split(":")[0] for line in plan("test")] == [
        "engine",
        "postgresql",
        "venv",
        "fixture_images",
        "example_images",
        "nginx",
        "systemd",
        "engine_bed",
        "chromium",
        "iptables",
        "wrk",
    ]
    # lint too: `make test` runs the lint checks before the tests.
    assert "venv: /nonexistent/venv with inferserver and the extras client convert lint test" in plan("test")


def test_no_purpose_is_serve_and_test_and_lint_only_the_lint_extra() -> None:
    assert plan() == plan("serve", "test") == plan("test")
    assert plan("lint") == ["venv: /nonexistent/venv with inferserver and the extras client lint"]
    assert "venv: /nonexistent/venv with inferserver and the extras client convert lint" in plan("serve", "lint")


def test_every_model_make_serve_serves_has_its_image_built_by_the_serve_steps() -> None:
    """examples/models names images of two kinds: the example models' and the copy fixture's."""
    images = {json.loads(p.read_text())["docker"]["image_name"] for p in (REPO / "examples" / "models").glob("*.json")}
    examples = {f"inferserver-example/{d.name}" for d in (REPO / "examples").iterdir() if (d / "Dockerfile").is_file()}
    assert images - examples == {"inferserver-test/copy"}
    assert any(line.startswith("copy_image: the fixture image inferserver-test/copy:1") for line in plan("serve"))


def test_an_unknown_purpose_is_refused_with_the_usage() -> None:
    result = subprocess.run(["bash", str(SETUP), "sevre"], capture_output=True, text=True, timeout=30)
    assert result.returncode == 1
    assert result.stderr == (
        "setup: FAILED: unknown purpose 'sevre' (usage: scripts/setup.sh [--plan] [serve] [test] "
        "[lint]  (none: serve and test))\n"
    )


def make_commands(target: str) -> list[str]:
    if shutil.which("make") is None:
        pytest.fail("make is missing (Debian's make)")
    result = subprocess.run(
        ["make", "--no-print-directory", "-n", target, "VENV=/v"], cwd=REPO, capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 0, result.stderr
    return result.stdout.splitlines()


def test_make_serve_sets_up_for_serving_only() -> None:
    commands = make_commands("serve")
    assert commands[0] == "INFERSERVER_VENV=/v scripts/setup.sh serve"
    assert commands[-1] == "/v/bin/inferserver serve --host 127.0.0.1 --port 8000"


def test_make_test_sets_up_for_testing_lints_and_prints_branch_coverage() -> None:
    commands = make_commands("test")
    assert commands[0] == "INFERSERVER_VENV=/v scripts/setup.sh test"
    assert commands[1] == make_commands("lint")[1]  # the lint checks, exactly as `make lint` runs them, first
    assert "/v/bin/python -m pytest --cov=inferserver --cov-branch --cov-report=term" in commands[2]


def test_a_lint_finding_fails_the_lint_checks_and_is_printed(tmp_path: Path) -> None:
    """The recipe line `make test` and `make lint` run, with this venv's real ruff and mypy, in a directory
    holding one file with an unused import: it exits 1 (make stops there) and shows the finding."""
    (tmp_path / "bad.py").write_text("import os\n")
    checks = make_commands("lint")[1].replace("/v/bin/", f"{Path(sys.executable).parent}/")
    result = subprocess.run(["bash", "-c", checks], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert result.returncode == 1, (result.stdout, result.stderr)
    assert "bad.py:1:8: F401 [*] `os` imported but unused" in result.stdout
    assert result.stderr.endswith("make: the lint checks above found problems\n")


def test_make_lint_runs_ruff_check_ruff_format_and_mypy() -> None:
    commands = "\n".join(make_commands("lint"))
    assert commands.startswith("INFERSERVER_VENV=/v scripts/setup.sh lint\n")
    for tool in (
        "/v/bin/ruff check --output-format concise .",
        "/v/bin/ruff format --check --output-format concise .",
        "/v/bin/mypy",
    ):
        assert tool in commands


def test_ci_still_runs_make_test() -> None:
    lines = (REPO / ".ci" / "run").read_text().splitlines()
    assert lines[-1] == "make test"
