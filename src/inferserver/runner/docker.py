"""Thin async calls over the Docker Engine API, through aiodocker: images, containers, archives, logs.

aiodocker's own `get_archive` reads the whole tar into memory and its log stream decodes text, so
archives and logs go through its `_query` helper here and are streamed as bytes.
"""

from __future__ import annotations

import asyncio
import json
import logging
import ssl
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import aiodocker
import aiohttp
from aiodocker.exceptions import DockerError
from aiodocker.multiplexed import MultiplexedResult

from .jobs import FileTransfer, LogSink, RunFailed
from .tarstream import SizeGuard, TarMember, extract_single_file, parents_of, tar_stream

logger = logging.getLogger(__name__)

LABEL_SESSION = "org.inferserver.session"
LABEL_MODEL = "org.inferserver.model"
LABEL_INSTANCE = "org.inferserver.instance"  # which server (SESSION_PATH) a container belongs to
LABEL_ENGINE = "org.inferserver.engine"  # the engine (ENGINES name) the run was placed on
LABEL_ATTEMPT = "org.inferserver.attempt"  # the session's attempt: a stale container of an earlier one is known
ARCHIVE_CHUNK = 1 << 20
# aiohttp offers gzip by default and dockerd then gzips the archive on the fly: 8x slower for a volume
# that is usually compressed already. Ask for the bytes as they are.
IDENTITY = {"Accept-Encoding": "identity"}
SIGKILL_EXIT = 137  # 128 + SIGKILL: what an OOM kill looks like from the exit status
OOM_FLAG_POLLS = 10
OOM_FLAG_INTERVAL = 0.1
# Removing a container holding gigabytes takes about half a second; an engine taking this long is stuck.
REMOVE_TIMEOUT = 20.0


class EngineUnavailable(RunFailed):
    """The Docker engine cannot be reached."""


def engine_error(exc: BaseException) -> RunFailed:
    """Turn an aiodocker/aiohttp failure into the reason a user reads."""
    if isinstance(exc, DockerError):
        if exc.status == 900:  # aiodocker's code for "could not connect"
            return EngineUnavailable(f"Docker engine unreachable: {exc.message}")
        return RunFailed(f"Docker engine error {exc.status}: {exc.message}")
    if isinstance(exc, (aiohttp.ClientError, OSError)):
        return EngineUnavailable(f"Docker engine unreachable: {exc}")
    return RunFailed(f"Docker engine error: {exc!r}")


def split_image(image: str) -> tuple[str, str]:
    """`repo/name:tag` → (`repo/name`, `tag`); `name@sha256:…` → (`name`, `sha256:…`); a registry port is not a tag."""
    if "@" in image:
        name, digest = image.split("@", 1)
        return name, digest
    name, sep, tag = image.rpartition(":")
    if not sep or "/" in tag:
        return image, "latest"
    return name, tag


class DockerBackend:
    """One aiodocker client for one engine, created on first use so the API starts without an engine.

    `url` None: DOCKER_HOST or the local socket; `ssl_context`: TLS with verification and our client certificate."""

    def __init__(self, url: str | None = None, ssl_context: ssl.SSLContext | None = None) -> None:
        self.url = url
        self.ssl_context = ssl_context
        self._client: aiodocker.Docker | None = None
        self._info: dict[str, Any] | None = None
        # How long remove() waits for the engine before it gives up (an attribute, not a parameter: remove() is a
        # cleanup that never raises, so its bound is its own, not a caller's asyncio.timeout).
        self.remove_timeout = REMOVE_TIMEOUT

    def client(self) -> aiodocker.Docker:
        if self._client is None:
            try:
                self._client = aiodocker.Docker(url=self.url, ssl_context=self.ssl_context)
            except Exception as exc:  # no DOCKER_HOST and no local socket
                raise EngineUnavailable(f"Docker engine unreachable: {exc}") from exc
        return self._client

    async def close(self) -> None:
        if self._client is not None:
            await self._client.close()
            self._client = None

    async def info(self) -> dict[str, Any]:
        if self._info is None:
            try:
                self._info = dict(await self.client().system.info())
            except (DockerError, aiohttp.ClientError, OSError) as exc:
                raise engine_error(exc) from exc
        return self._info

    async def has_nvidia_runtime(self) -> bool:
        return "nvidia" in (await self.info()).get("Runtimes", {})

    async def ensure_image(self, image: str, log: LogSink) -> None:
        """Pull the image when it is absent, writing pull progress into the run's log."""
        if await self.has_image(image):
            return
        await log.write(f"inferserver: image {image} is not on this host, pulling it\n".encode())
        last_status = ""

        async def note(event: dict[str, Any]) -> None:
            nonlocal last_status
            status = " ".join(str(event[k]) for k in ("id", "status") if event.get(k))
            if status and status != last_status and "progressDetail" not in status:
                last_status = status
                await log.write(f"inferserver: pull: {status}\n".encode())

        await self.pull(image, note)

    async def has_image(self, image: str) -> bool:
        try:
            await self.client().images.inspect(image)
            return True
        except DockerError as exc:
            if exc.status != 404:
                raise engine_error(exc) from exc
        except (aiohttp.ClientError, OSError) as exc:
            raise engine_error(exc) from exc
        return False

    async def pull(self, image: str, on_event: Callable[[dict[str, Any]], Awaitable[None]]) -> None:
        """Pull `image`, handing each progress event to `on_event`; RunFailed says why a pull failed."""
        name, tag = split_image(image)
        try:
            async for event in self.client().images.pull(name, tag=tag, stream=True):
                if "error" in event:
                    raise RunFailed(f"could not pull image {image}: {event['error']}")
                await on_event(event)
        except DockerError as exc:
            if exc.status == 900:
                raise engine_error(exc) from exc
            raise RunFailed(f"could not pull image {image}: {exc.message}") from exc
        except (aiohttp.ClientError, OSError) as exc:
            raise engine_error(exc) from exc
        if not await self.has_image(image):
            raise RunFailed(f"could not pull image {image}: the engine reports it still absent")

    async def create(self, config: dict[str, Any], name: str) -> str:
        try:
            container = await self.client().containers.create(config, name=name)
        except (DockerError, aiohttp.ClientError, OSError) as exc:
            raise engine_error(exc) from exc
        return container.id

    async def put_files(self, container_id: str, files: list[FileTransfer], dirs_for: Sequence[str] = ()) -> None:
        """Place host files at their container paths from one tar stream generated on the fly.

        The directories of `dirs_for` (the outputs' paths) are made too: a model without inputs must
        still find the directory it writes its outputs into.
        """
        members: list[TarMember] = []
        seen_dirs: set[str] = set()
        for path, source in [(t.container, t.host) for t in files] + [(p, None) for p in dirs_for]:
            arcname = path.lstrip("/")
            for parent in parents_of(arcname):
                if parent not in seen_dirs:
                    seen_dirs.add(parent)
                    # World-writable and sticky like /tmp: the model may run as any user and writes its outputs here.
                    members.append(TarMember(arcname=parent, source=None, mode=0o1777))
            if source is not None:
                members.append(TarMember(arcname=arcname, source=source, mode=0o644))
        await self._request(
            f"containers/{container_id}/archive",
            "PUT",
            params={"path": "/"},
            data=tar_stream(members, chunk_size=ARCHIVE_CHUNK),
            headers={"Content-Type": "application/x-tar"},
        )

    async def get_file(self, container_id: str, path: str, dest: Path, guard: SizeGuard | None = None) -> int:
        """Stream one file out of the container to `dest`: FileNotFoundError when it is absent, ArchiveError
        when it is not a file, WriteFailed when our disk fails, RunFailed from the engine or from `guard`."""
        docker = self.client()
        try:
            async with docker._query(
                f"containers/{container_id}/archive",
                method="GET",
                params={"path": path},
                timeout=None,
                headers=IDENTITY,
            ) as response:
                try:
                    return await extract_single_file(response.content.iter_chunked(ARCHIVE_CHUNK), dest, guard)
                finally:
                    # Dropped, never drained or released: while dockerd still writes an archive nobody reads,
                    # it holds the container, and removing it hangs (even `docker rm -f`). aiodocker's
                    # _query leaves the response open on exit.
                    response.close()
        except DockerError as exc:
            if exc.status == 404:
                raise FileNotFoundError(path) from exc
            raise engine_error(exc) from exc
        except (aiohttp.ClientError, OSError) as exc:  # the connection: our own disk's errors are WriteFailed
            raise engine_error(exc) from exc

    async def start(self, container_id: str) -> None:
        await self._request(f"containers/{container_id}/start", "POST")

    async def follow_logs(self, container_id: str, log: LogSink) -> None:
        """Copy stdout and stderr into `log` frame by frame until the container stops."""
        docker = self.client()
        params = {"stdout": True, "stderr": True, "follow": True}
        try:
            async with docker._query(
                f"containers/{container_id}/logs", params=params, timeout=None, headers=IDENTITY
            ) as response:
                try:
                    async for frame in MultiplexedResult(response, raw=False):
                        await log.write(frame)
                finally:
                    response.close()  # cancelled: drop the stream now, not when the response is collected
        except (DockerError, aiohttp.ClientError, OSError) as exc:
            raise engine_error(exc) from exc

    async def wait(self, container_id: str) -> tuple[int, bool]:
        """Exit status, and whether the kernel killed it for memory."""
        try:
            container = docker_container(self.client(), container_id)
            result = await container.wait(timeout=None)
            state = (await container.show())["State"]
            exit_code = int(result.get("StatusCode", state.get("ExitCode", -1)))
            # dockerd may record the OOM event just after the exit (seen on a busy host): a SIGKILLed
            # container gets a short while for the flag to show before we call it a plain kill.
            for _ in range(OOM_FLAG_POLLS):
                if exit_code != SIGKILL_EXIT or state.get("OOMKilled"):
                    break
                await asyncio.sleep(OOM_FLAG_INTERVAL)
                state = (await container.show())["State"]
        except (DockerError, aiohttp.ClientError, OSError) as exc:
            raise engine_error(exc) from exc
        return exit_code, bool(state.get("OOMKilled"))

    async def ping(self) -> None:
        """RunFailed (EngineUnavailable) when the engine does not answer."""
        try:
            async with self.client()._query("_ping", timeout=aiohttp.ClientTimeout(total=5)) as response:
                await response.read()
        except (DockerError, aiohttp.ClientError, OSError, TimeoutError) as exc:
            raise engine_error(exc) from exc

    async def inspect(self, container_id: str) -> dict[str, Any] | None:
        """The container's state, or None when the engine has no such container."""
        try:
            return await docker_container(self.client(), container_id).show()
        except DockerError as exc:
            if exc.status == 404:
                return None
            raise engine_error(exc) from exc
        except (aiohttp.ClientError, OSError) as exc:
            raise engine_error(exc) from exc

    async def containers_labelled(self, label: str, value: str) -> list[dict[str, Any]]:
        """Every container, running or not, carrying `label=value` (their list entries: Id, Labels, State)."""
        filters = json.dumps({"label": [f"{label}={value}"]})
        try:
            async with self.client()._query("containers/json", params={"all": "true", "filters": filters}) as response:
                containers: list[dict[str, Any]] = json.loads(await response.read())  # the engine's JSON list
                return containers
        except (DockerError, aiohttp.ClientError, OSError) as exc:
            raise engine_error(exc) from exc

    async def remove(self, container_id: str) -> None:
        """Remove the container and its anonymous volumes. Never raises and never waits
        longer than `remove_timeout` (it runs in cleanup and shutdown paths); a container left is removed later
        as an orphan."""
        timeout = self.remove_timeout
        try:
            async with asyncio.timeout(timeout):
                await docker_container(self.client(), container_id).delete(force=True, v=True)
        except DockerError as exc:
            if exc.status != 404:
                logger.warning("could not remove container %s: %s", container_id, exc.message)
        except TimeoutError:
            logger.warning(
                "could not remove container %s: the engine did not answer within %g s", container_id, timeout
            )
        except Exception as exc:  # engine gone: nothing more we can do here
            logger.warning("could not remove container %s: %r", container_id, exc)

    async def _request(self, path: str, method: str, **kwargs: Any) -> Any:
        try:
            async with self.client()._query(path, method=method, timeout=None, **kwargs) as response:
                body = await response.read()
        except (DockerError, aiohttp.ClientError, OSError) as exc:
            raise engine_error(exc) from exc
        return json.loads(body) if body.strip() else None


def docker_container(docker: aiodocker.Docker, container_id: str) -> aiodocker.containers.DockerContainer:
    return docker.containers.container(container_id)
