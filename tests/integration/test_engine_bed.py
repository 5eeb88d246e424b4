"""The engine test bed itself (tests/integration/engine_bed.py): three private dockerds, each answering over its
own `--tlsverify` listener only to the bed's client certificate, each with fake GPUs, each surviving a `kill -9`
with its `--live-restore` containers still running, and none disturbing the system engine's `docker0`.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import ssl
import subprocess
from pathlib import Path
from typing import Any

import aiodocker
import aiohttp
import asyncssh
import pytest
from aiodocker.ssh import SSHConnector

from .engine_bed import TLS13_REFUSAL, BedEngine, EngineBed, bed_for_a_test, tls12
from .gpu_engine import environ

BUSYBOX_IMAGE = "inferserver-test/sleep:1"  # any fixture image: busybox with /bin/sh


def https(engine: BedEngine) -> str:
    # aiodocker sends plain HTTP to a tcp:// URL even with an ssl_context: TLS needs the https:// form.
    return engine.url.replace("tcp://", "https://", 1)


def tls_docker(engine: BedEngine, context: ssl.SSLContext | None = None) -> aiodocker.Docker:
    return aiodocker.Docker(url=https(engine), ssl_context=context or engine.ssl_context())


async def run_to_end(docker: aiodocker.Docker, config: dict[str, Any]) -> str:
    """Run a container to its end over `docker` and return its output; the container is removed."""
    container = await docker.containers.run(config)
    try:
        result = await container.wait(timeout=60)
        output = "".join(await container.log(stdout=True, stderr=True))
        assert result["StatusCode"] == 0, (result, output)
        return output
    finally:
        await container.delete(force=True)


async def test_each_engine_is_its_own_daemon_reached_over_tls_with_the_bed_certificates(bed: EngineBed) -> None:
    identities = set()
    for engine in bed.engines:
        async with tls_docker(engine) as docker:
            info = await docker.system.info()
        assert info["DockerRootDir"] == str(engine.engine.data_root), engine.name
        assert info["LiveRestoreEnabled"] is True, engine.name  # from its daemon.json, as the docs set it
        identities.add(info["ID"])
        assert engine.entry() == {
            "name": engine.name,
            "url": engine.url,
            "tls_ca": engine.tls_ca,
            "tls_cert": engine.tls_cert,
            "tls_key": engine.tls_key,
            "gpus": ["0", "1"],
        }
    assert len(identities) == len(bed.engines) == 3
    assert len({engine.port for engine in bed.engines}) == 3


def test_the_docker_cli_check_from_the_docs_answers(bed: EngineBed) -> None:
    """docs/scale-out.md has the operator check an engine with `docker --tlsverify ... version`."""
    engine = bed.engines[0]
    env = {k: v for k, v in os.environ.items() if k not in ("DOCKER_HOST", "DOCKER_CONTEXT", "DOCKER_TLS_VERIFY")}
    result = subprocess.run(
        [
            "docker", "--tlsverify", f"--tlscacert={engine.tls_ca}", f"--tlscert={engine.tls_cert}",
            f"--tlskey={engine.tls_key}", "-H", engine.url, "version", "--format", "{{.Server.Os}}",
        ],
        env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert (result.returncode, result.stdout.strip()) == (0, "linux"), result.stderr


async def refusal(engine: BedEngine, context: ssl.SSLContext) -> str:
    """What aiodocker says when `engine` refuses the client `context` presents."""
    async with tls_docker(engine, context) as docker:
        with pytest.raises(aiodocker.DockerError) as refused:
            await docker.system.info()
    assert refused.value.status == 900  # aiodocker's "cannot connect"
    return refused.value.message


@pytest.mark.parametrize("client", ["from another CA", "none"])
async def test_a_client_certificate_the_engine_does_not_accept_is_refused(bed: EngineBed, client: str) -> None:
    engine = bed.engines[1]

    def context() -> ssl.SSLContext:
        if client == "none":
            return engine.ssl_context(with_client=False)
        return engine.ssl_context(bed.wrong_client)

    assert TLS13_REFUSAL.search(await refusal(engine, context()))
    assert "SSLV3_ALERT_BAD_CERTIFICATE" in await refusal(engine, tls12(context()))
    # The same engine still serves the right certificate.
    async with tls_docker(engine) as docker:
        assert (await docker.system.info())["DockerRootDir"] == str(engine.engine.data_root)


async def test_an_engine_is_not_trusted_without_the_bed_ca(bed: EngineBed) -> None:
    engine = bed.engines[0]
    context = ssl.create_default_context()  # the system's CAs: not the bed's
    context.load_cert_chain(engine.client.cert, engine.client.key)
    async with tls_docker(engine, context) as docker:
        with pytest.raises(aiodocker.DockerError) as untrusted:
            await docker.system.info()
    assert untrusted.value.status == 900
    assert "certificate verify failed: unable to get local issuer certificate" in untrusted.value.message


async def test_plain_http_is_refused(bed: EngineBed) -> None:
    engine = bed.engines[0]
    async with aiodocker.Docker(url=engine.url) as docker:
        with pytest.raises(aiodocker.DockerError) as refused:
            await docker.system.info()
    assert refused.value.status == 400
    assert "Client sent an HTTP request to an HTTPS server." in refused.value.message


async def test_a_gpu_request_gets_the_fake_gpus_on_each_engine(bed: EngineBed) -> None:
    for engine in bed.engines:
        hooks_before = len(engine.engine.hook_calls())
        async with tls_docker(engine) as docker:
            output = await run_to_end(
                docker,
                {
                    "Image": BUSYBOX_IMAGE,
                    "Entrypoint": ["/bin/sh", "-c", 'echo "gpus=$NVIDIA_VISIBLE_DEVICES"'],
                    "HostConfig": {
                        "NetworkMode": "none",
                        "DeviceRequests": [{"Driver": "nvidia", "DeviceIDs": ["1"], "Capabilities": [["gpu"]]}],
                    },
                },
            )
        assert output.strip() == "gpus=1", (engine.name, output)
        assert [stage for stage, _ in engine.engine.hook_calls()[hooks_before:]] == ["prestart"], engine.name


async def test_a_killed_engine_restarted_keeps_its_live_restore_container_running(bed: EngineBed) -> None:
    engine = bed.engines[1]
    async with tls_docker(engine) as docker:
        container = await docker.containers.run(
            {"Image": BUSYBOX_IMAGE, "Entrypoint": ["/bin/sleep", "300"], "HostConfig": {"NetworkMode": "none"}}
        )
        before = (await container.show())["State"]
    try:
        engine.kill9()
        os.kill(before["Pid"], 0)  # the container's process outlives its daemon
        async with tls_docker(engine) as docker:
            with pytest.raises(aiodocker.DockerError) as down:
                await docker.system.info()  # while the daemon is down, its port refuses connections
        assert down.value.status == 900, down.value
        assert f"Connect call failed ('127.0.0.1', {engine.port})" in down.value.message, down.value.message
        engine.restart()
        async with tls_docker(engine) as docker:
            after = (await (await docker.containers.get(container.id)).show())["State"]
        assert (after["Running"], after["Pid"], after["StartedAt"]) == (True, before["Pid"], before["StartedAt"])
        assert engine.containers(running_only=True) == [container.id]
    finally:
        engine.engine.docker("rm", "-f", container.id)
    assert engine.containers() == []
    assert host_has_docker0()


async def test_a_disconnected_engine_refuses_connections_and_keeps_its_container_running(bed: EngineBed) -> None:
    engine = bed.engines[2]
    async with tls_docker(engine) as docker:
        ticking = "while true; do echo tick; sleep 0.2; done"
        container = await docker.containers.run(
            {"Image": BUSYBOX_IMAGE, "Entrypoint": ["/bin/sh", "-c", ticking], "HostConfig": {"NetworkMode": "none"}}
        )
        logs = container.log(stdout=True, follow=True)
        assert await anext(logs) == "tick\n"
        engine.disconnect()
        with pytest.raises(aiodocker.DockerError) as cut:
            await docker.system.info()
        assert f"Connect call failed ('127.0.0.1', {engine.port})" in cut.value.message, cut.value.message
        # A stream open when the network went ends too (here at once, with the connection), not left hanging.
        async with asyncio.timeout(10):
            with contextlib.suppress(aiodocker.DockerError, aiohttp.ClientError):
                async for _ in logs:
                    pass
    try:
        assert engine.is_up()
        assert engine.containers(running_only=True) == [container.id]
        engine.reconnect()
        async with tls_docker(engine) as docker:
            state = (await (await docker.containers.get(container.id)).show())["State"]
        assert state["Running"] is True
    finally:
        engine.engine.docker("rm", "-f", container.id)


def test_the_host_docker0_survives_the_bed(bed: EngineBed) -> None:
    assert all(engine.is_up() for engine in bed.engines)
    assert host_has_docker0()


def host_has_docker0() -> bool:
    return Path("/sys/class/net/docker0").exists()


async def test_the_first_engine_is_also_reached_over_ssh_with_the_key_in_its_home(bed: EngineBed) -> None:
    engine = bed.engines[0]
    assert engine.ssh is not None
    assert engine.ssh_entry() == {"name": "gpu1", "url": engine.ssh.url, "gpus": ["0", "1"]}
    # As a server would: the plain ssh:// URL, its user's ~/.ssh holding the key and the host's key.
    with environ(HOME=str(engine.ssh.home)):
        async with aiodocker.Docker(url=engine.ssh.url) as docker:
            info = await docker.system.info()
            output = await run_to_end(
                docker, {"Image": BUSYBOX_IMAGE, "Entrypoint": ["/bin/echo", "over ssh"], "HostConfig": {}}
            )
    assert info["DockerRootDir"] == str(engine.engine.data_root)
    assert output.strip() == "over ssh"


async def test_ssh_with_a_key_the_engine_host_does_not_know_is_refused(bed: EngineBed) -> None:
    engine = bed.engines[0]
    assert engine.ssh is not None
    stranger = asyncssh.generate_private_key("ssh-ed25519")
    connector = SSHConnector(engine.ssh.url, known_hosts=str(engine.ssh.known_hosts), client_keys=[stranger])
    async with aiodocker.Docker(url="unix://localhost", connector=connector) as docker:
        with pytest.raises(aiodocker.DockerError) as refused:
            await docker.system.info()
    assert refused.value.status == 900
    assert "Permission denied" in refused.value.message, refused.value.message


async def test_the_per_test_fixture_brings_a_killed_or_cut_off_engine_back(engine_bed: EngineBed) -> None:
    killed, cut = engine_bed.engines[0], engine_bed.engines[1]
    killed.kill9()
    cut.disconnect()
    steps = bed_for_a_test(engine_bed)
    next(steps)
    for engine in engine_bed.engines:
        async with tls_docker(engine) as docker:
            assert (await docker.system.info())["DockerRootDir"] == str(engine.engine.data_root), engine.name
    with pytest.raises(StopIteration):
        next(steps)
