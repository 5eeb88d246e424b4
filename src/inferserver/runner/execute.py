"""One run from image to outputs: pull, create, stage inputs, start, follow the log, wait, collect, remove."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

from ..config import GpuMode
from ..sizes import human_size
from .docker import LABEL_SESSION, DockerBackend, EngineUnavailable
from .jobs import EngineLost, LogSink, RunFailed, RunJob, RunLimits, RunOutcome, StartedCallback
from .logcap import CappedLog
from .outputs import OutputGuard, write_failure
from .tarstream import WriteFailed

logger = logging.getLogger(__name__)

# How long the log copy may trail the container's exit before we stop waiting for it.
LOG_DRAIN_SECONDS = 10.0
# Cancel a run's task with this message to leave its container running (server shutdown).
DETACH = "detach"
# Exit statuses of a container stopped by a signal from outside (SIGKILL, SIGTERM): maybe by a stopping engine.
STOPPED_EXITS = {137, 143}
# How long after such an exit the engine may take to stop answering, when it is the engine shutting down.
ENGINE_GONE_SECONDS = 5.0
ENGINE_GONE_POLL = 0.25
# What dockerd answers when no device driver (NVIDIA container toolkit) can serve a GPU request.
NO_GPU_DRIVER = "could not select device driver"
# What dockerd answers at create when a bind mount's source is not on its host.
NO_BIND_SOURCE = "bind source path does not exist"


EndedCallback = Callable[[RunOutcome], Awaitable[None]]
T = TypeVar("T")


async def _ignore(outcome: RunOutcome) -> None:
    pass


async def _uncancelled(work: Awaitable[T]) -> T:
    """Await `work` to its end even if cancelled meanwhile, however often; the first cancellation is raised
    afterwards (then in place of `work`'s own result or error). The dispatcher cancels a cancelled run again at
    each tick: a second cancel must not cut short the container's removal (which is bounded by its own timeout)."""
    task = asyncio.ensure_future(work)
    cancelled: asyncio.CancelledError | None = None
    while not task.done():
        try:
            await asyncio.wait({task})
        except asyncio.CancelledError as exc:
            cancelled = cancelled or exc
    if cancelled is not None:
        if not task.cancelled():
            task.exception()  # retrieved: the cancel is what the caller asked for
        raise cancelled
    return task.result()


def exit_reason(exit_code: int, oom_killed: bool, memory: int) -> str:
    if oom_killed:
        return f"exceeded the memory limit of {human_size(memory)}"
    return f"model exited with status {exit_code}"


def input_mounts(job: RunJob) -> list[dict[str, Any]]:
    """Read-only bind mounts of the inputs staged by mount: the model must not change what was uploaded."""
    return [
        {"Type": "bind", "Source": i.mount_source, "Target": i.container, "ReadOnly": True} for i in job.mounted_inputs
    ]


def limits_config(limits: RunLimits) -> dict[str, Any]:
    """HostConfig fields that bound what the container may use and do."""
    config: dict[str, Any] = {
        "Memory": limits.memory,
        "MemorySwap": limits.memory,  # equal to Memory: no swap on top of it
        "PidsLimit": limits.pids,
        "ShmSize": limits.shm_size,
        # A model needs no privileges: no capabilities, no setuid gains; an init reaps its zombies.
        "CapDrop": ["ALL"],
        "SecurityOpt": ["no-new-privileges"],
        "Init": True,
    }
    if limits.cpus:
        config["NanoCpus"] = round(limits.cpus * 1e9)
    return config


class Runner:
    """One engine's calls for runs. With `hold_on_loss`, an engine that stops answering raises EngineLost
    (container left alone) instead of failing the run: another engine may take it over."""

    def __init__(
        self, backend: DockerBackend, gpus: GpuMode, network: str = "none", *, hold_on_loss: bool = False
    ) -> None:
        self.backend = backend
        self.gpus = gpus
        self.network = network
        self.hold_on_loss = hold_on_loss
        self._engine_gpus: bool | None = None  # learned in `auto` mode

    @property
    def gpu_requests_on(self) -> bool:
        """Whether runs ask for GPUs now (in `auto` mode: once the engine has shown it can serve them)."""
        return self.gpus is GpuMode.ALL or (self.gpus is GpuMode.AUTO and self._engine_gpus is True)

    async def wants_gpus(self, job: RunJob | None = None) -> bool:
        if job is not None and job.gpu_ids is not None:
            return bool(job.gpu_ids)
        if self.gpus is GpuMode.ALL:
            return True
        if self.gpus is GpuMode.NONE:
            return False
        if self._engine_gpus is None and await self.backend.has_nvidia_runtime():
            self._engine_gpus = True
        # Unknown yet: ask for GPUs; the first start tells whether the engine can give them.
        return self._engine_gpus is not False

    def container_config(self, job: RunJob, gpus: bool) -> dict[str, Any]:
        # No network unless the operator allows one: a model has no business calling out with patient data.
        host_config: dict[str, Any] = {"NetworkMode": self.network, **limits_config(job.limits)}
        if gpus and job.gpu_ids:  # these devices and no others: another run holds the rest
            host_config["DeviceRequests"] = [{"Driver": "", "DeviceIDs": list(job.gpu_ids), "Capabilities": [["gpu"]]}]
        elif gpus:
            host_config["DeviceRequests"] = [{"Driver": "", "Count": -1, "Capabilities": [["gpu"]]}]
        if job.mounted_inputs:
            host_config["Mounts"] = input_mounts(job)
        return {
            "Image": job.image,
            "Cmd": job.argv,  # the image's ENTRYPOINT receives these as arguments
            "Labels": {LABEL_SESSION: job.job_id, **job.labels},
            "Tty": False,
            "HostConfig": host_config,
        }

    async def run(
        self, job: RunJob, log: LogSink, on_started: StartedCallback, on_ended: EndedCallback = _ignore
    ) -> RunOutcome:
        """A whole run. Cancelled with DETACH, the container is left running for a later `attach`.

        `on_ended` gets the outcome as soon as it is known, before the container is removed."""
        container_id: str | None = None
        log = CappedLog(log, job.limits.log_bytes)
        try:
            await self.backend.ensure_image(job.image, log)
            container_id = await self._start(job, log, await self.wants_gpus(job))
            # Whole even if cancelled: the caller's record of the container must not land after its `cancelled`.
            await _uncancelled(on_started(container_id))
        except BaseException as exc:
            detaching = isinstance(exc, asyncio.CancelledError) and exc.args == (DETACH,)
            if self.hold_on_loss and isinstance(exc, EngineUnavailable):
                raise EngineLost(str(exc), container_id) from exc
            if container_id is not None and not detaching:
                await _uncancelled(self.backend.remove(container_id))
            if isinstance(exc, RunFailed):
                outcome = RunOutcome(False, str(exc))
                await on_ended(outcome)
                return outcome
            raise
        return await self._follow(job, container_id, log, on_ended)

    async def attach(
        self, job: RunJob, container_id: str, log: LogSink, on_ended: EndedCallback = _ignore, skip: int = 0
    ) -> RunOutcome:
        """Follow a started container to its end: log (after the first `skip` bytes), wait, collect, remove."""
        return await self._follow(job, container_id, CappedLog(log, job.limits.log_bytes, written=skip), on_ended, skip)

    async def _follow(
        self, job: RunJob, container_id: str, log: LogSink, on_ended: EndedCallback, skip: int = 0
    ) -> RunOutcome:
        try:
            outcome = await self._outcome(job, container_id, log, skip)
        except EngineLost:
            raise  # the container stays: it is re-attached, or removed as stale once its engine answers
        except asyncio.CancelledError as exc:
            if exc.args != (DETACH,):  # DETACH: the container keeps running for the next start to re-attach
                await _uncancelled(self.backend.remove(container_id))
            raise
        except BaseException:
            await _uncancelled(self.backend.remove(container_id))
            raise
        try:
            # Told before the container is removed: removing one that holds gigabytes takes a while (about
            # 0.45 s for the copy model's 2 GiB), and the client waits for `complete`, not for that.
            await on_ended(outcome)
        finally:
            # A finished run's container goes, also when the server starts stopping (DETACH) meanwhile.
            await _uncancelled(self.backend.remove(container_id))
        return outcome

    async def _outcome(self, job: RunJob, container_id: str, log: LogSink, skip: int) -> RunOutcome:
        """Log, wait, collect: how the run ended."""
        log_copy = asyncio.create_task(self.backend.follow_logs(container_id, SkipLog(log, skip)))
        try:
            try:
                # A re-attached run gets its whole time again from here: the engine's start time is not asked for.
                exit_code, oom_killed = await asyncio.wait_for(self.backend.wait(container_id), job.limits.timeout)
            except TimeoutError:
                # The container is killed and removed by the caller, like every container whose run has ended.
                return RunOutcome(False, f"timed out after {job.limits.timeout} s")
            await self._drain(log_copy, log)
            if exit_code in STOPPED_EXITS and not oom_killed and await self._engine_went_away():
                return RunOutcome(
                    False,
                    f"the Docker engine stopped during the run (it stopped the container: exit status {exit_code})",
                    exit_code,
                )
            if exit_code != 0:
                return RunOutcome(False, exit_reason(exit_code, oom_killed, job.limits.memory), exit_code)
            await self.collect(container_id, job)
            return RunOutcome(True, "", exit_code)
        except RunFailed as exc:
            if self.hold_on_loss and isinstance(exc, EngineUnavailable):
                raise EngineLost(str(exc), container_id) from exc
            return RunOutcome(False, str(exc))
        finally:
            if not log_copy.done():
                log_copy.cancel()  # the outcome is final: nothing may write into the log after it
                with contextlib.suppress(BaseException):
                    await log_copy
            elif not log_copy.cancelled():
                log_copy.exception()  # taken: an engine gone mid-stream is what wait() already reported

    async def _start(self, job: RunJob, log: LogSink, gpus: bool) -> str:
        """Create, stage the inputs, start; in `auto` mode, an engine without a GPU driver gets a CPU run."""
        try:
            container_id = await self._create(job, gpus)
        except RunFailed as exc:
            if job.mount_note and NO_BIND_SOURCE in str(exc):
                raise RunFailed(f"{exc} ({job.mount_note})") from exc
            raise
        try:
            # Mounted inputs need no copy; the outputs' directories are made here in both modes. A mount's
            # target (and its missing parents) the engine makes itself at start.
            await self.backend.put_files(container_id, job.copied_inputs, [o.container for o in job.outputs])
            await self.backend.start(container_id)
        except BaseException as exc:  # the container is not the caller's yet: remove it here
            await _uncancelled(self.backend.remove(container_id))
            if (
                isinstance(exc, RunFailed)
                and gpus
                and self.gpus is GpuMode.AUTO
                and job.gpu_ids is None
                and NO_GPU_DRIVER in str(exc)
            ):
                self._engine_gpus = False
                await log.write(b"inferserver: the Docker engine has no GPU support; running on the CPU\n")
                return await self._start(job, log, gpus=False)
            raise
        if gpus and self.gpus is GpuMode.AUTO and job.gpu_ids is None:
            self._engine_gpus = True
        return container_id

    async def _create(self, job: RunJob, gpus: bool) -> str:
        """Create the container. A cancel does not stop the engine from making it once asked: the create is
        awaited to its end and what it made is removed before the cancel goes on (nothing is left behind)."""
        creating = asyncio.ensure_future(self.backend.create(self.container_config(job, gpus), name=job.container_name))
        try:
            return await _uncancelled(creating)
        except asyncio.CancelledError:
            if not creating.cancelled() and creating.exception() is None:
                await _uncancelled(self.backend.remove(creating.result()))
            raise

    async def collect(self, container_id: str, job: RunJob) -> None:
        """Take every enabled output; name every missing one in a single reason. No partial file is left."""
        missing: list[str] = []
        for output in job.outputs:
            partial = output.host.with_name(f".{output.host.name}.partial")
            try:
                await self.backend.get_file(
                    container_id, output.container, partial, OutputGuard(output, job.limits, job.disk_note)
                )
            except FileNotFoundError:
                missing.append(f"{output.name} (expected at {output.container})")
                continue
            except WriteFailed as exc:
                _unlink(partial)
                raise write_failure(output, exc, job.disk_note) from exc
            except ValueError as exc:  # not a regular file, truncated archive
                _unlink(partial)
                raise RunFailed(f"output {output.name} at {output.container}: {exc}") from exc
            except BaseException:  # a limit, the engine, a cancel
                _unlink(partial)
                raise
            os.replace(partial, output.host)
        if missing:
            raise RunFailed("the model did not write output " + ", ".join(missing))

    async def _engine_went_away(self) -> bool:
        """A stopping dockerd stops its containers first and answers a little longer: wait for it to go."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + ENGINE_GONE_SECONDS
        while loop.time() < deadline:
            try:
                await self.backend.ping()
            except RunFailed:
                return True
            await asyncio.sleep(ENGINE_GONE_POLL)
        return False

    async def _drain(self, log_copy: asyncio.Task[None], log: LogSink) -> None:
        try:
            await asyncio.wait_for(log_copy, LOG_DRAIN_SECONDS)
        except (TimeoutError, RunFailed) as exc:
            log_copy.cancel()
            with contextlib.suppress(BaseException):
                await log_copy
            await log.write(f"inferserver: the container log may be incomplete: {exc or 'timed out'}\n".encode())


class SkipLog:
    """Drops the first `skip` bytes: a re-attached log stream repeats what the log file already holds."""

    def __init__(self, log: LogSink, skip: int) -> None:
        self.log = log
        self.skip = skip

    async def write(self, data: bytes) -> None:
        if self.skip:
            dropped = min(self.skip, len(data))
            self.skip -= dropped
            data = data[dropped:]
        if data:
            await self.log.write(data)


def _unlink(path: Path) -> None:
    """Remove a partial output; one that cannot go is logged, never a second failure on top of the first."""
    try:
        path.unlink()
    except FileNotFoundError:
        pass
    except OSError as exc:
        logger.warning("could not remove the partial output %s: %s", path, exc)
