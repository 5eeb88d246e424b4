"""scripts/docker-engine.sh's check that the engine can start a container, and what it says when it cannot.

The failures (an engine that answers but cannot start containers, the host's docker0 bridge gone) cannot be made on
the shared engine on demand, so a fake `docker` first on PATH plays them: it answers each command as the real CLI
does in that situation and records the commands it was given. tests/integration/test_build_scripts.py runs the
script against the real engine.
"""

from __future__ import annotations

import os
import subprocess
import tarfile
from dataclasses import dataclass
from pathlib import Path

from ..conftest import REPO

SCRIPT = REPO / "scripts" / "docker-engine.sh"

# The real engine's answer when docker0 was deleted under a running dockerd and a container joins the bridge.
NO_DOCKER0 = (
    "docker: Error response from daemon: failed to create endpoint sad_lamarr on network bridge: adding "
    "interface veth1c0ffee to bridge docker0 failed: could not find bridge docker0: route ip+net: no such "
    "network interface."
)

FAKE_DOCKER = r"""#!/bin/bash
echo "$*" >>"$FAKE_LOG"
case "$1 $2" in
    "info "*) exit 0 ;;
    "image inspect") [[ " $FAKE_IMAGES " == *" $3 "* ]] && exit 0; exit 1 ;;
    "import -") cat >"$FAKE_IMPORTED"; exit 0 ;;
    "network inspect") echo "$FAKE_BRIDGE"; exit 0 ;;
    "run "*) [[ -z $FAKE_RUN_ERROR ]] && exit 0; echo "$FAKE_RUN_ERROR" >&2; exit 125 ;;
esac
echo "fake docker: unexpected command: $*" >&2
exit 99
"""


@dataclass
class Run:
    returncode: int
    stderr: str
    commands: list[str]


def run_script(
    tmp_path: Path, *, images: str = "inferserver-test/copy:1", bridge: str = "lo", run_error: str = ""
) -> Run:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    docker = bin_dir / "docker"
    docker.write_text(FAKE_DOCKER)
    docker.chmod(0o755)
    log = tmp_path / "docker.log"
    log.write_text("")
    # A cached busybox where busybox_binary looks (unless Debian's busybox-static is installed: then /bin/busybox).
    busybox = tmp_path / "cache" / "busybox-static" / "root" / "bin" / "busybox"
    busybox.parent.mkdir(parents=True, exist_ok=True)
    busybox.write_bytes(b"\x7fELF fake busybox")
    busybox.chmod(0o755)
    env = {
        **os.environ,
        "PATH": f"{bin_dir}:{os.environ['PATH']}",
        "FAKE_LOG": str(log),
        "FAKE_IMAGES": images,
        "FAKE_BRIDGE": bridge,
        "FAKE_RUN_ERROR": run_error,
        "FAKE_IMPORTED": str(tmp_path / "imported.tar"),
        "INFERSERVER_CACHE": str(tmp_path / "cache"),
    }
    env.pop("DOCKER_HOST", None)
    result = subprocess.run(["bash", str(SCRIPT)], env=env, capture_output=True, text=True, timeout=60)
    return Run(result.returncode, result.stderr, log.read_text().splitlines())


def test_a_working_engine_starts_a_fixture_image_with_no_network_and_says_nothing(tmp_path: Path) -> None:
    run = run_script(tmp_path)
    assert (run.returncode, run.stderr) == (0, "")
    assert "run --rm --network none --entrypoint /bin/busybox inferserver-test/copy:1 true" in run.commands


def test_without_a_fixture_image_it_imports_a_one_file_busybox_image(tmp_path: Path) -> None:
    run = run_script(tmp_path, images="")
    assert run.returncode == 0, run.stderr
    assert "import - inferserver-engine-check:1" in run.commands
    assert "run --rm --network none --entrypoint /bin/busybox inferserver-engine-check:1 true" in run.commands
    with tarfile.open(tmp_path / "imported.tar") as tar:
        files = [m.name for m in tar.getmembers() if m.isfile()]
    assert files == ["./bin/busybox"]
    assert "docker-engine: built inferserver-engine-check:1" in run.stderr


def test_an_engine_that_cannot_start_a_container_says_so_with_the_engine_s_error(tmp_path: Path) -> None:
    error = "docker: Error response from daemon: OCI runtime create failed: unable to apply cgroup configuration."
    run = run_script(tmp_path, run_error=error)
    assert run.returncode == 1
    assert (
        "docker-engine: the engine answers but cannot start a container "
        "(docker run --rm --network none inferserver-test/copy:1):"
    ) in run.stderr
    assert f"    {error}" in run.stderr
    assert "see dockerd's log (/var/log/inferserver-dockerd.log" in run.stderr


def test_a_missing_docker0_in_the_engine_s_error_is_named_with_the_fix(tmp_path: Path) -> None:
    run = run_script(tmp_path, run_error=NO_DOCKER0)
    assert run.returncode == 1
    assert "the host's docker0 bridge is missing or broken. Fix: restart dockerd, which creates docker0 again." in (
        run.stderr
    )


def test_a_bridge_interface_missing_on_the_host_is_named_with_the_fix(tmp_path: Path) -> None:
    run = run_script(tmp_path, bridge="inferserver-nosuch0")
    assert run.returncode == 1
    assert (
        "docker-engine: the engine's default bridge network has no interface inferserver-nosuch0 on this host "
        "(deleted after dockerd started?):"
    ) in run.stderr
    assert "Fix: restart dockerd, which creates inferserver-nosuch0 again" in run.stderr
