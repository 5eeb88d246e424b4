"""DockerBackend.get_file drops the engine's archive stream at once on every failure and cancel; remove is bounded.

An engine that streams an archive nobody reads blocks on it and holds the container: its removal hangs. A real
dockerd cannot be made to stream forever or to stall a removal on demand, so a small HTTP server on a unix
socket stands in for it here (DOCKER_HOST points the backend at it), and notes when the client drops the
connection.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import tarfile
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp import web

from inferserver.runner.docker import DockerBackend
from inferserver.runner.jobs import RunFailed
from inferserver.runner.tarstream import WriteFailed

MiB = 1 << 20
CLOSE_SECONDS = 2.0  # the engine must see the connection go within this


class EndlessEngine:
    """Answers the archive request with a member of `size` bytes it streams slowly, forever if need be."""

    def __init__(self, size: int = 1 << 40, cut_after: int | None = None) -> None:
        self.size = size
        self.cut_after = cut_after  # bytes after which the engine itself drops the connection
        self.sent = 0
        self.dropped = asyncio.Event()  # the client closed the connection under a write
        self.unstuck = asyncio.Event()

    async def version(self, request: web.Request) -> web.Response:
        return web.json_response({"ApiVersion": "1.41"})

    async def archive(self, request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "application/x-tar"})
        await response.prepare(request)
        info = tarfile.TarInfo("out.bin")
        info.size = self.size
        await response.write(info.tobuf(tarfile.PAX_FORMAT))
        try:
            while self.sent < self.size:
                if self.cut_after is not None and self.sent >= self.cut_after:
                    assert request.transport is not None
                    request.transport.close()
                    return response
                await response.write(bytes(MiB))
                self.sent += MiB
                await asyncio.sleep(0.001)
        except (ConnectionError, RuntimeError):  # aiohttp: "Cannot write to closing transport"
            self.dropped.set()
            raise
        return response

    async def delete(self, request: web.Request) -> web.Response:
        await self.unstuck.wait()  # an engine stuck on the container
        return web.Response(status=204)


@pytest.fixture
async def engine(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest
) -> AsyncIterator[EndlessEngine]:
    fake = EndlessEngine(**getattr(request, "param", {}))
    app = web.Application()
    app.router.add_get("/version", fake.version)
    app.router.add_get("/v1.41/containers/{cid}/archive", fake.archive)
    app.router.add_delete("/v1.41/containers/{cid}", fake.delete)
    runner = web.AppRunner(app)
    await runner.setup()
    sock = tmp_path / "engine.sock"
    await web.UnixSite(runner, str(sock)).start()
    monkeypatch.setenv("DOCKER_HOST", f"unix://{sock}")
    yield fake
    fake.unstuck.set()
    await runner.cleanup()


@pytest.fixture
async def backend(engine: EndlessEngine) -> AsyncIterator[DockerBackend]:
    backend = DockerBackend()
    yield backend
    await backend.close()


async def wait_for_bytes(path: Path, at_least: int) -> None:
    # The backend writes the file from a worker thread, which signals nothing: poll.
    while not path.exists() or path.stat().st_size < at_least:  # noqa: ASYNC110, ASYNC240  # no Event; O(1) syscall
        await asyncio.sleep(0.01)


async def test_a_cancel_drops_the_archive_stream_at_once(
    engine: EndlessEngine, backend: DockerBackend, tmp_path: Path
) -> None:
    dest = tmp_path / "out.partial"
    copy = asyncio.create_task(backend.get_file("c1", "/data/out.bin", dest))
    await asyncio.wait_for(wait_for_bytes(dest, 4 * MiB), 10)
    copy.cancel()
    with pytest.raises(asyncio.CancelledError):
        await copy
    await asyncio.wait_for(engine.dropped.wait(), CLOSE_SECONDS)


async def test_a_full_disk_is_our_write_error_not_the_engine_and_drops_the_stream(
    engine: EndlessEngine, backend: DockerBackend
) -> None:
    with pytest.raises(WriteFailed) as failed:
        await backend.get_file("c1", "/data/out.bin", Path("/dev/full"))  # every write: ENOSPC
    assert failed.value.error.errno == errno.ENOSPC
    assert failed.value.path == Path("/dev/full")
    await asyncio.wait_for(engine.dropped.wait(), CLOSE_SECONDS)


async def test_a_refusal_by_the_guard_mid_stream_drops_the_stream(
    engine: EndlessEngine, backend: DockerBackend, tmp_path: Path
) -> None:
    seen: list[tuple[int, int]] = []

    def guard(size: int, written: int) -> None:
        seen.append((size, written))
        if written >= 8 * MiB:
            raise RunFailed("over the limit")

    with pytest.raises(RunFailed, match="over the limit"):
        await backend.get_file("c1", "/data/out.bin", tmp_path / "out.partial", guard)
    assert seen[0] == (1 << 40, 0)  # the header's size, before the first byte
    await asyncio.wait_for(engine.dropped.wait(), CLOSE_SECONDS)


@pytest.mark.parametrize("engine", [{"size": 64 * MiB, "cut_after": 4 * MiB}], indirect=True)
async def test_an_engine_dropping_the_stream_is_an_engine_error(
    engine: EndlessEngine, backend: DockerBackend, tmp_path: Path
) -> None:
    with pytest.raises(RunFailed) as failed:
        await backend.get_file("c1", "/data/out.bin", tmp_path / "out.partial")
    assert not isinstance(failed.value, WriteFailed)
    assert str(failed.value).startswith("Docker engine")


async def test_a_removal_the_engine_does_not_answer_gives_up_after_its_timeout(
    engine: EndlessEngine, backend: DockerBackend, caplog: pytest.LogCaptureFixture
) -> None:
    started = time.monotonic()
    with caplog.at_level(logging.WARNING, logger="inferserver.runner.docker"):
        backend.remove_timeout = 0.3
        await backend.remove("c1")
    assert time.monotonic() - started < 2
    assert "could not remove container c1: the engine did not answer within 0.3 s" in caplog.text
