"""The setup's Docker scripts against the real engine: a failed image build leaves no container behind, and
scripts/docker-engine.sh passes on an engine that starts containers."""

from __future__ import annotations

import os
import re
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from ..conftest import REPO

SCRIPTS = REPO / "scripts"


def bash(script: str, cwd: Path = REPO) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["bash", "-c", script], cwd=cwd, capture_output=True, text=True, timeout=300)


@pytest.fixture
def one_file_image(docker_engine: None, tmp_path: Path) -> Iterator[str]:
    """A throwaway image holding only busybox, so the containers made from it are this test's alone."""
    tag = f"inferserver-buildtest/{uuid.uuid4().hex[:12]}:1"
    found = bash(
        f'say() {{ echo "$*" >&2; }}; die() {{ exit 1; }}; source "{SCRIPTS}/busybox.sh"; '
        f'busybox_binary "{REPO}/.cache"'
    )
    assert found.returncode == 0, found.stderr
    rootfs = tmp_path / "rootfs"
    (rootfs / "bin").mkdir(parents=True)
    (rootfs / "bin" / "busybox").write_bytes(Path(found.stdout.strip()).read_bytes())
    (rootfs / "bin" / "busybox").chmod(0o755)
    imported = bash(f'tar -C "{rootfs}" --owner=0 --group=0 -c . | docker import - {tag}')
    assert imported.returncode == 0, imported.stderr
    yield tag
    leftovers = containers_from(tag)
    if leftovers:
        subprocess.run(["docker", "rm", "-f", *leftovers], capture_output=True)
    subprocess.run(["docker", "rmi", "-f", tag], capture_output=True)


def containers_from(image: str) -> list[str]:
    listed = subprocess.run(["docker", "ps", "-aq", "--filter", f"ancestor={image}"], capture_output=True, text=True)
    return listed.stdout.split()


def test_a_failed_docker_build_leaves_no_container_behind(one_file_image: str, tmp_path: Path) -> None:
    context = tmp_path / "context"
    context.mkdir()
    (context / "Dockerfile").write_text(f'FROM {one_file_image}\nRUN ["/bin/busybox", "sh", "-c", "exit 3"]\n')
    built = bash(
        f'SAY_PREFIX=test; source "{SCRIPTS}/image-build-args.sh"; docker_build -t {one_file_image}-x "{context}"'
    )
    assert built.returncode != 0
    assert "returned a non-zero code: 3" in built.stdout + built.stderr
    assert containers_from(one_file_image) == []


def test_a_failed_example_build_leaves_no_container_and_keeps_the_image(one_file_image: str) -> None:
    """examples/build.sh on a base with no shell: its first RUN step fails in a container that must not stay."""
    image = "inferserver-example/bone_threshold:1"
    before = subprocess.run(["docker", "image", "inspect", "-f", "{{.Id}}", image], capture_output=True, text=True)
    result = subprocess.run(
        ["bash", str(REPO / "examples" / "build.sh"), "bone_threshold"],
        env={**os.environ, "BASE": one_file_image},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 1
    assert f"examples: docker build of {image} failed" in result.stderr
    assert containers_from(one_file_image) == []
    after = subprocess.run(["docker", "image", "inspect", "-f", "{{.Id}}", image], capture_output=True, text=True)
    assert after.stdout == before.stdout


def test_the_build_scripts_build_through_docker_build() -> None:
    """Every `docker build` of the setup goes through docker_build (--rm --force-rm), none around it."""
    scripts = [
        REPO / "examples" / "build.sh",
        SCRIPTS / "build-image.sh",
        SCRIPTS / "build-base-image.sh",
        REPO / "tests" / "images" / "build.sh",
    ]
    for script in scripts:
        # `docker build` run as a command (at the start of a line, maybe after `if !`), not in a message
        assert not re.search(r"^\s*(if\s+)?(!\s*)?docker build\b", script.read_text(), re.M), script
    for script in scripts[:2]:
        assert "docker_build " in script.read_text(), script


def test_docker_engine_script_passes_on_the_running_engine(docker_engine: None) -> None:
    result = subprocess.run(["bash", str(SCRIPTS / "docker-engine.sh")], capture_output=True, text=True, timeout=120)
    assert (result.returncode, result.stderr) == (0, "")
