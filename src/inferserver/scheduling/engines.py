"""The Docker engines runs are placed on: one DockerBackend, Runner and GpuPool per engine, and whether it answers.

Unset ENGINES, the pool holds one engine, `local` (DOCKER_HOST or the local socket, GPUS, WORKER_THREADS): the
dispatcher has one code path, and a single engine is a pool of one. Each runner stays one engine's calls.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
from collections.abc import Iterator
from dataclasses import dataclass

from ..config import EngineEntry, GpuMode, Settings, SettingsError
from ..runner.docker import DockerBackend
from ..runner.execute import Runner
from ..runner.jobs import RunFailed
from .gpupool import GpuPool

logger = logging.getLogger(__name__)

PING_SECONDS = 2.0  # an engine slower than this to answer a ping is taken as down
PING_EVERY = 1.0  # how often the dispatcher asks each engine


def hold_key(engine: str, device: str) -> str:
    """A GPU hold's key in the store: device ids repeat across engines (gpu2:0, gpu3:0). Engine names have no ':'."""
    return f"{engine}:{device}"


def split_hold(key: str) -> tuple[str, str]:
    engine, _, device = key.partition(":")
    return engine, device


# A connection cut mid-handshake (an engine gone behind a TCP forwarder) is no refusal of our certificate.
_CUT = (ssl.SSLEOFError, ssl.SSLZeroReturnError, ssl.SSLSyscallError)


def _tls_error(exc: BaseException) -> BaseException | None:
    """The TLS refusal behind an engine error (a certificate or alert), if that is what it was."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, ssl.SSLError) and not isinstance(seen, _CUT):
            return seen
        inner = getattr(seen, "os_error", None)  # aiohttp's connector errors keep the ssl error here
        if isinstance(inner, ssl.SSLError) and not isinstance(inner, _CUT):
            return inner
        seen = seen.__cause__ or seen.__context__
    return None


@dataclass
class Engine:
    entry: EngineEntry
    backend: DockerBackend
    runner: Runner
    gpus: GpuPool
    legacy: bool = False  # the one unnamed engine of an unset ENGINES: its errors read as they always did
    problem: str | None = None  # why it does not answer; None: it answers (or was not asked yet)
    down_since: float | None = None  # wall clock of the first failed ping in a row
    checked: float = 0.0  # monotonic time of the last ping

    @property
    def name(self) -> str:
        return self.entry.name

    @property
    def up(self) -> bool:
        return self.problem is None

    @property
    def where(self) -> str:
        return self.entry.url or "DOCKER_HOST or the local socket"

    def explain(self, exc: BaseException) -> str:
        """An engine error as an operator reads it: the engine's name and address, and for TLS the files in play
        (their paths only)."""
        if self.legacy:
            return str(exc)
        tls = _tls_error(exc)
        if tls is not None:
            return (
                f"engine {self.name} ({self.where}): TLS handshake failed: {tls} (client certificate "
                f"{self.entry.tls_cert}, CA {self.entry.tls_ca})"
            )
        return f"engine {self.name} ({self.where}): {exc}"

    async def check(self) -> str | None:
        """Ask the engine, keeping nothing: why it does not answer, or None."""
        try:
            async with asyncio.timeout(PING_SECONDS):
                await self.backend.ping()
        except RunFailed as exc:
            return self.explain(exc)
        except TimeoutError:
            where = "Docker engine" if self.legacy else f"engine {self.name} ({self.where})"
            return f"{where} unreachable: no answer to a ping within {PING_SECONDS:g} s"
        return None

    async def ping(self) -> str | None:
        """`check`, kept as the engine's state (the dispatcher's view: up or down, since when)."""
        self.checked = time.monotonic()
        problem = await self.check()
        if problem is not None and self.down_since is None:
            self.down_since = time.time()
        elif problem is None:
            self.down_since = None
        self.problem = problem
        return problem


def engine_ssl(entry: EngineEntry) -> ssl.SSLContext | None:
    """The engine's TLS context; SettingsError naming the engine and its files (paths only) when they do not load."""
    try:
        return entry.ssl_context()
    except (OSError, ssl.SSLError) as exc:  # a file that opens but is no certificate or key
        raise SettingsError(
            f"setting ENGINES is invalid: engine {entry.name!r}: cannot load its TLS files (tls_ca {entry.tls_ca}, "
            f"tls_cert {entry.tls_cert}, tls_key {entry.tls_key}): {exc}"
        ) from None


def build_engine(entry: EngineEntry, settings: Settings, hold_on_loss: bool) -> Engine:
    context = engine_ssl(entry)
    backend = DockerBackend(entry.docker_url or None, context)
    mode = entry.gpus if isinstance(entry.gpus, GpuMode) else GpuMode.NONE
    runner = Runner(backend, mode, settings.CONTAINER_NETWORK, hold_on_loss=hold_on_loss)
    return Engine(entry, backend, runner, GpuPool(entry.pool), legacy=settings.ENGINES is None)


class EnginePool:
    """Every engine, in the order ENGINES lists them."""

    def __init__(self, settings: Settings) -> None:
        self.named = settings.ENGINES is not None
        # Runs on a lost engine wait this long for it, then go elsewhere; a single engine keeps today's way
        # (the run fails naming the engine): there is nowhere else to go.
        self.grace: float | None = settings.ENGINE_GRACE if self.named else None
        self.engines = {e.name: build_engine(e, settings, hold_on_loss=self.named) for e in settings.engines}
        for entry in settings.engines:
            if entry.insecure:
                logger.warning(
                    "engine %s (%s) is reached over plain TCP (insecure: true): anyone who can reach it can run "
                    "containers as root on that host",
                    entry.name,
                    entry.url,
                )

    def __iter__(self) -> Iterator[Engine]:
        return iter(self.engines.values())

    def get(self, name: str) -> Engine | None:
        return self.engines.get(name)

    def only(self) -> Engine | None:
        """The one engine of a pool of one (runs recorded before engines were named belong to it)."""
        return next(iter(self.engines.values())) if len(self.engines) == 1 else None

    @property
    def gpu_count(self) -> int:
        return max((e.gpus.size for e in self), default=0)

    async def refresh(self, every: float = 0.0) -> list[Engine]:
        """Ping the engines not asked within `every` seconds, all at once; the engines whose state changed."""
        now = time.monotonic()
        due = [e for e in self if now - e.checked >= every]
        before = {e.name: e.up for e in due}
        await asyncio.gather(*(e.ping() for e in due))
        changed = [e for e in due if e.up != before[e.name]]
        for engine in changed:
            if engine.up:
                logger.info("engine %s answers again", engine.name)
            else:
                logger.warning("%s; it gets no new runs", engine.problem)
        return changed

    async def problems(self) -> dict[str, str]:
        """Every engine that does not answer now, asked all at once, with why (nothing kept)."""
        answers = await asyncio.gather(*(e.check() for e in self))
        return {e.name: problem for e, problem in zip(self, answers, strict=True) if problem is not None}

    async def close(self) -> None:
        for engine in self:
            await engine.backend.close()
