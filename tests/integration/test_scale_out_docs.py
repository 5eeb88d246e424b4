"""docs/scale-out.md's TLS set-up, done as written: its openssl commands (steps 1 and 2) run in an empty
directory, its daemon.json (step 3) given to a private engine with the files they made, its ENGINES entry shaped
as the test bed's. The engine must then answer the client certificate the docs made, and only that one.
"""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiodocker
import pytest

from ..conftest import REPO
from .certs import KeyPair
from .engine_bed import BedEngine, launch_tls_engine, ready_tls_engine, stop_tls_engine, tls12

DOC = REPO / "docs" / "scale-out.md"
SECTION = "## Setting up a GPU host's Docker engine for TLS"
DOC_HOST_IP = "192.0.2.12"  # the example host's address in the docs; the engine here is on loopback


def section() -> str:
    text = DOC.read_text()
    start = text.index(SECTION)
    end = text.find("\n## ", start + len(SECTION))
    return text[start : end if end != -1 else len(text)]


def blocks(language: str) -> list[str]:
    return re.findall(rf"^```{language}\n(.*?)^```", section(), flags=re.MULTILINE | re.DOTALL)


def run_certificate_steps(directory: Path) -> None:
    """Steps 1 and 2: every sh block that runs openssl, in order, in `directory`."""
    script = "\n".join(block for block in blocks("sh") if "openssl req" in block)
    assert script.count("openssl req") == 3, script  # the CA, a host, the server's client certificate
    result = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", script.replace(DOC_HOST_IP, "127.0.0.1")],
        cwd=directory,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr


def docs_daemon_json(directory: Path) -> dict[str, Any]:
    """Step 3's daemon.json, its /etc/docker/tls files being the ones step 2 made (as step 3 installs them)."""
    (config,) = [json.loads(block) for block in blocks("json") if "tlsverify" in block]
    assert isinstance(config, dict), config
    installed = {"ca.pem": "ca.pem", "server-cert.pem": "gpu2-cert.pem", "server-key.pem": "gpu2-key.pem"}
    for key, value in config.items():
        if isinstance(value, str) and value.startswith("/etc/docker/tls/"):
            config[key] = str(directory / installed[value.removeprefix("/etc/docker/tls/")])
    return config


@pytest.fixture(scope="module")
def docs_engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BedEngine]:
    directory = tmp_path_factory.mktemp("docs-ca")
    run_certificate_steps(directory)
    client = KeyPair(directory / "inferserver-cert.pem", directory / "inferserver-key.pem")
    engine = launch_tls_engine("gpu2", docs_daemon_json(directory), client)
    try:
        ready_tls_engine(engine, [])
        yield engine
    finally:
        stop_tls_engine(engine)


def test_the_docs_commands_make_a_ca_and_certificates_their_check_accepts(docs_engine: BedEngine) -> None:
    directory = docs_engine.ca.parent
    verified = subprocess.run(
        ["openssl", "verify", "-CAfile", "ca.pem", "gpu2-cert.pem", "inferserver-cert.pem"],
        cwd=directory,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert verified.stdout == "gpu2-cert.pem: OK\ninferserver-cert.pem: OK\n", verified.stderr
    # umask 077 at step 1: every key readable by its owner only.
    for key in ("ca-key.pem", "gpu2-key.pem", "inferserver-key.pem"):
        assert (directory / key).stat().st_mode & 0o777 == 0o600, key


async def test_an_engine_set_up_as_the_docs_say_answers_the_docs_client_certificate(docs_engine: BedEngine) -> None:
    url = docs_engine.url.replace("tcp://", "https://", 1)
    async with aiodocker.Docker(url=url, ssl_context=docs_engine.ssl_context()) as docker:
        info = await docker.system.info()
    assert info["DockerRootDir"] == str(docs_engine.engine.data_root)
    assert info["LiveRestoreEnabled"] is True


async def test_the_docs_host_certificate_is_refused_as_a_client_certificate(docs_engine: BedEngine) -> None:
    """The docs say dockerd refuses a certificate made for servers only (no clientAuth)."""
    directory = docs_engine.ca.parent
    host_pair = KeyPair(directory / "gpu2-cert.pem", directory / "gpu2-key.pem")
    url = docs_engine.url.replace("tcp://", "https://", 1)
    async with aiodocker.Docker(url=url, ssl_context=tls12(docs_engine.ssl_context(host_pair))) as docker:
        with pytest.raises(aiodocker.DockerError) as refused:
            await docker.system.info()
    assert refused.value.status == 900
    assert "SSLV3_ALERT_BAD_CERTIFICATE" in refused.value.message, refused.value.message


def test_the_docs_engines_entry_has_the_fields_the_test_bed_gives(docs_engine: BedEngine) -> None:
    (entry,) = [json.loads(block) for block in blocks("json") if '"tls_key"' in block]
    assert set(entry) == set(docs_engine.entry())
    assert entry["url"] == "tcp://gpu2:2376"
    assert all(Path(entry[key]).parent == Path("/etc/inferserver/tls") for key in ("tls_ca", "tls_cert", "tls_key"))
