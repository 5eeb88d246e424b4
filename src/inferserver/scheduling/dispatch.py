"""The dispatcher: the one process holding the dispatch lock starts queued runs, recovers runs after a
restart, stops cancelled runs and has the janitor clean up. Every worker process runs one; all but one wait
for the lock.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path

from ..config import Settings
from ..runner.docker import LABEL_INSTANCE, LABEL_MODEL, LABEL_SESSION, DockerBackend
from ..runner.execute import DETACH, Runner
from ..runner.jobs import FileTransfer, RunFailed, RunJob, RunOutcome
from ..sessions.manager import SessionManager
from ..sessions.state import QueuePlace, SessionPlan, Signals, Status
from ..sessions.store import SessionRow, Store
from ..specs.command import build_argv, container_path
from .forecast import Going, Queued, RunTimes, forecast
from .gpupool import Demand, GpuPool, pick
from .instance import instance_id
from .janitor import Janitor
from .leadership import Leadership, leadership_for
from .runlimits import limits_for
from .staging import input_transfers, let_models_read, mount_note

logger = logging.getLogger(__name__)

TICK = 0.5  # how often the queue is looked at when nothing in this process says it changed
ENGINE_RETRY = 2.0
MAX_ATTEMPTS = 3  # a run interrupted this many times (server restarts, vanished containers) fails
RUN_TIMES_SEED = 200  # complete runs read back at start for the start-time estimates
ESTIMATE_SLACK = 15.0  # seconds an estimate may drift before the published forecast is rewritten


class SessionLog:
    """The run's log file; every write wakes this process's log readers."""

    def __init__(self, path: Path, signals: Signals, session_id: str) -> None:
        self.path = path
        self.signals = signals
        self.session_id = session_id
        self.failed = False

    async def write(self, data: bytes) -> None:
        # Small appends to the page cache, an O(1) local syscall each: cheaper inline than a thread hop per frame
        # (a chatty model writes thousands), and inline they stay in the order they were written.
        try:
            with open(self.path, "ab") as log:  # noqa: ASYNC230
                log.write(data)
        except OSError as exc:
            # Our disk (full SESSION_PATH), not the engine: the log misses lines, but the run goes on and
            # its outcome is still recorded with the true reason.
            if not self.failed:
                logger.warning("session %s: could not write its log %s: %s", self.session_id, self.path, exc)
            self.failed = True
            return
        self.signals.notify(self.session_id)


def job_for(plan: SessionPlan, instance: str, settings: Settings, gpu_ids: list[str] | None = None) -> RunJob:
    spec, config = plan.spec, plan.config
    return RunJob(
        job_id=plan.id,
        image=spec.image,
        argv=build_argv(spec, config),
        inputs=input_transfers(plan, settings),
        outputs=[FileTransfer(n, plan.output_path(n), container_path(spec, n)) for n in config.enabled_outputs()],
        limits=limits_for(settings, spec),
        labels={LABEL_MODEL: spec.id, LABEL_INSTANCE: instance},
        gpu_ids=gpu_ids,
        mount_note=mount_note(settings),
        disk_note=f"SESSION_PATH ({settings.SESSION_PATH})",
    )


class Dispatcher:
    def __init__(
        self, settings: Settings, store: Store, manager: SessionManager, runner: Runner, backend: DockerBackend
    ) -> None:
        self.settings = settings
        self.store = store
        self.manager = manager
        self.runner = runner
        self.backend = backend
        self.signals = manager.signals
        # An flock in SESSION_PATH with SQLite, PostgreSQL's advisory lock with PostgreSQL (scheduling/leadership.py).
        self.leadership: Leadership = leadership_for(settings.DATABASE_URL, settings.SESSION_PATH)
        self.instance = instance_id(settings.SESSION_PATH)
        self.janitor = Janitor(settings, store, manager)
        self.running: dict[str, asyncio.Task[None]] = {}
        self.engine_problem: str | None = None
        # A run failed, perhaps with its engine away so that its container could not be removed: look again.
        self.orphans_possible = False
        self.pool = GpuPool(settings.gpu_pool)
        self.overtaken: dict[str, int] = {}  # queued session -> later runs that took GPUs before it
        self.run_times = RunTimes()
        self._running_since: dict[str, tuple[str, float]] = {}  # session -> (model id, start time)
        self._published: dict[str, QueuePlace] | None = None
        self._next_cleanup = time.monotonic() + max(settings.CLEANUP_TIMER, 0)
        # Observer (metrics): outcome, seconds queued, seconds run.
        self.run_ended: Callable[[str, float | None, float | None], None] = lambda outcome, queued, ran: None

    async def run_forever(self) -> None:
        """Wait to lead; lead until leadership is lost (then wait again) or the process stops."""
        while True:
            try:
                await self.leadership.acquire()
            except asyncio.CancelledError:  # shutting down while waiting: the waiting connection goes too
                await self.leadership.release()
                raise
            logger.info("this process dispatches runs (pid %d)", os.getpid())
            try:
                leading = asyncio.create_task(self._lead(), name="inferserver-leading")
                lost = asyncio.create_task(self.leadership.lost(), name="inferserver-leadership-lost")
                try:
                    await asyncio.wait({leading, lost}, return_when=asyncio.FIRST_COMPLETED)
                finally:
                    for task in (leading, lost):
                        task.cancel()
                    await asyncio.gather(leading, lost, return_exceptions=True)
                if not leading.cancelled() and (crash := leading.exception()) is not None:
                    raise crash
                reason = lost.result() if lost.done() and not lost.cancelled() else leading.result()
                # It cannot know whether it still leads: not one more start. Its runs go on, unfollowed, for the
                # next leader's recovery to re-attach, exactly as after a restart.
                logger.warning("this process stops dispatching: %s (pid %d)", reason, os.getpid())
            finally:
                await self.detach_all()
                await self.leadership.release()
            self._forget_leading()

    async def _lead(self) -> str:
        """Dispatch; return why this process must stop (its leadership is no longer sure)."""
        await self.recover()
        while True:
            token = self.manager.dispatch_wakeup.token()
            if not self.leadership.sure():
                return "its dispatch lock is no longer confirmed (the process was stopped, or PostgreSQL is slow)"
            await self.step()
            await self.manager.dispatch_wakeup.wait(token, TICK)

    def _forget_leading(self) -> None:
        """What only a leader knows: a later lead starts from the store, as a restarted server does."""
        self.pool = GpuPool(self.settings.gpu_pool)
        self.overtaken = {}
        self._published = None
        self.orphans_possible = False

    async def step(self) -> None:
        await self.stop_cancelled()
        await self.start_queued()
        if self.orphans_possible:
            with contextlib.suppress(RunFailed):  # the engine is still away: next tick
                await self.remove_orphans()
                self.orphans_possible = False
        if self.settings.CLEANUP_TIMER != -1 and time.monotonic() >= self._next_cleanup:
            self._next_cleanup = time.monotonic() + self.settings.CLEANUP_TIMER
            await self.janitor.cleanup()

    # -- starting runs --------------------------------------------------------------------

    async def start_queued(self) -> None:
        free = self.settings.WORKER_THREADS - len(self.running)
        queue = await self.store.queue()
        # Runs wait for the engine; they are not failed for its absence.
        if queue and free > 0 and await self.engine_ready(queue):
            rows = {row.id: row for row in queue}
            demands = await self.demands(queue)
            for start in pick(demands, self.pool.free(), free, self.overtaken):
                await self._start(rows[start.session_id], start.devices)
            queue = [rows[d.session_id] for d in demands if d.session_id not in self.running]
            self.signals.notify_all()  # queue positions moved
        # Only what this step looked at: a session queued since keeps its FIFO place until the next step.
        await self.publish_forecast(queue)

    def gpus_needed(self, row: SessionRow) -> int:
        """GPUs of the pool the run needs: its spec's `inferserver.gpus`, else GPUS_PER_RUN; 0 without a pool."""
        asked = self.manager.plan(row).spec.gpus
        if not self.pool.size:
            return 0
        return self.settings.gpus_per_run if asked is None else asked

    async def demands(self, queue: list[SessionRow]) -> list[Demand]:
        """The queue as the pool sees it; a run needing more GPUs than the pool has fails: it could never start."""
        demands = []
        for row in queue:
            need = self.gpus_needed(row)
            if need > self.pool.size:
                reason = (
                    f"model {row.model_id} asks for {need} GPUs; this server has {self.pool.size} "
                    f"(GPUS={','.join(self.pool.devices)})"
                )
                if await self.store.update(
                    row.id, when={Status.READY}, status=Status.FAILED, info=reason, finished=time.time()
                ):
                    self.manager.status_changed(row.id)
                    logger.info("session %s failed: %s", row.id, reason)
                continue
            demands.append(Demand(row.id, need))
        return demands

    async def _start(self, row: SessionRow, devices: tuple[str, ...]) -> None:
        # Held (and recorded) before the run is `working`: a recovery never sees a run without its GPUs.
        self.pool.hold(row.id, devices)
        await self.store.hold_gpus(row.id, devices)
        self.overtaken.pop(row.id, None)
        if await self.store.update(
            row.id, when={Status.READY}, status=Status.WORKING, info="starting", started=time.time()
        ):
            self.manager.status_changed(row.id)
            logger.info("session %s working%s", row.id, f" on GPU {','.join(devices)}" if devices else "")
            self._spawn(row, gpu_ids=self.job_gpus(row, devices))
        else:  # cancelled meanwhile
            await self.release_gpus(row.id)

    def job_gpus(self, row: SessionRow, devices: tuple[str, ...]) -> list[str] | None:
        """The run's device request: its own devices from the pool; without one, none for a CPU-only model
        and otherwise whatever the GPUS mode gives (None)."""
        if self.pool.size:
            return list(devices)
        return [] if self.manager.plan(row).spec.gpus == 0 else None

    async def release_gpus(self, session_id: str) -> None:
        self.pool.release(session_id)
        await self.store.release_gpus(session_id)

    async def publish_forecast(self, queue: list[SessionRow]) -> None:
        """Write each queued session's place and estimated start for every worker's log streams."""
        now = time.time()
        going = []
        for session_id, (model_id, since) in self._running_since.items():
            takes = self.run_times.estimate(model_id)
            going.append(Going(self.pool.held_by(session_id), None if takes is None else max(takes - (now - since), 0)))
        queued = [
            Queued(Demand(row.id, min(self.gpus_needed(row), self.pool.size)), self.run_times.estimate(row.model_id))
            for row in queue
        ]
        self.overtaken = {k: v for k, v in self.overtaken.items() if k in {row.id for row in queue}}
        places = forecast(going, queued, self.pool.devices, self.settings.WORKER_THREADS, self.overtaken, now)
        if self._published is not None and same_forecast(self._published, places):
            return
        await self.store.set_forecast(places)
        self._published = places

    async def engine_ready(self, queue: list[SessionRow]) -> bool:
        try:
            await self.backend.ping()
        except RunFailed as exc:
            if self.engine_problem != str(exc):
                logger.warning("runs are waiting: %s", exc)
                self.engine_problem = str(exc)
            # Every queued session says why it waits, also one queued after the engine went away.
            reason = f"waiting for the Docker engine ({exc})"
            for row in queue:
                if row.info != reason:
                    await self.store.update(row.id, when={Status.READY}, info=reason)
            return False
        if self.engine_problem is not None:
            logger.info("the Docker engine answers again")
            self.engine_problem = None
            for row in await self.store.queue():
                await self.store.update(row.id, when={Status.READY}, info="")
        return True

    def _spawn(self, row: SessionRow, container_id: str | None = None, gpu_ids: list[str] | None = None) -> None:
        task = asyncio.create_task(self.execute(row, container_id, gpu_ids), name=f"inferserver-run-{row.id}")
        self.running[row.id] = task
        self._running_since[row.id] = (row.model_id, row.started if container_id and row.started else time.time())

        def done(_: asyncio.Task[None]) -> None:
            self.running.pop(row.id, None)
            self._running_since.pop(row.id, None)
            self.manager.dispatch_wakeup.notify()  # a slot is free

        task.add_done_callback(done)

    async def execute(self, row: SessionRow, attach_to: str | None, gpu_ids: list[str] | None = None) -> None:
        """Run (or follow a recovered container to its end) and record the outcome."""
        plan = self.manager.plan(row)
        job = job_for(plan, self.instance, self.settings, gpu_ids)
        log = SessionLog(plan.files.log, self.signals, row.id)

        async def started(container_id: str) -> None:
            # Shielded: a leader that stops now (DETACH) still records its container, so the next leader
            # re-attaches it rather than re-queueing the run and removing the container as an orphan.
            await asyncio.shield(
                self.store.update(
                    row.id, container_id=container_id, info="running", log_offset=plan.files.log.stat().st_size
                )
            )
            self.signals.notify(row.id)

        recorded = False

        async def ended(outcome: RunOutcome) -> None:
            # Recorded as soon as it is known; the runner removes the container afterwards.
            nonlocal recorded
            recorded = True
            await self._finish(row.id, log, outcome)

        try:
            if attach_to is None:
                let_models_read(job)
                await self.runner.run(job, log, started, ended)
            else:
                skip = plan.files.log.stat().st_size - (row.log_offset or 0)
                await self.runner.attach(job, attach_to, log, ended, skip=max(skip, 0))
        except asyncio.CancelledError as exc:
            if exc.args != (DETACH,) and not recorded:
                await asyncio.shield(self._finish(row.id, log, RunOutcome(False, "cancelled")))
            raise
        except Exception as exc:  # a bug must still end the session, never leave it `working`
            logger.exception("session %s: run crashed", row.id)
            if not recorded:
                await self._finish(row.id, log, RunOutcome(False, f"internal error: {exc!r}"))

    async def _finish(self, session_id: str, log: SessionLog, outcome: RunOutcome) -> None:
        view = await self.store.get(session_id)
        started = view.row.started if view and view.row.started else time.time()
        if outcome.ok:
            status, info = Status.COMPLETE, f"finished in {time.time() - started:.1f} s"
            if view is not None:
                self.run_times.add(view.row.model_id, time.time() - started)
        else:
            status, info = Status.FAILED, outcome.reason
            await log.write(f"inferserver: run failed: {outcome.reason}\n".encode())
            self.orphans_possible = True
        await self.store.update(session_id, status=status, info=info, finished=time.time(), container_id=None)
        await self.release_gpus(session_id)
        self.manager.status_changed(session_id)
        logger.info("session %s %s: %s", session_id, status.value, info)
        queued_at = view.row.queued_at if view else None
        self.run_ended(status.value, started - queued_at if queued_at else None, time.time() - started)

    # -- cancellation ---------------------------------------------------------------------

    async def stop_cancelled(self) -> None:
        for row in await self.store.with_status(Status.WORKING):
            if not row.cancel_requested:
                continue
            task = self.running.get(row.id)
            if task is not None:
                task.cancel()  # the runner removes the container; execute() records `cancelled`
            else:  # not ours to follow (e.g. recovery still pending): stop it directly
                if row.container_id:
                    await self.backend.remove(row.container_id)
                await self.store.update(
                    row.id,
                    when={Status.WORKING},
                    status=Status.FAILED,
                    info="cancelled",
                    finished=time.time(),
                    container_id=None,
                )
                await self.release_gpus(row.id)
                self.manager.status_changed(row.id)

    # -- recovery after a restart ---------------------------------------------------------

    async def recover(self) -> None:
        """Re-attach surviving containers, re-queue runs whose container is gone, remove orphans."""
        while True:
            try:
                await self._recover_once()
                return
            except RunFailed as exc:  # engine down: the API serves meanwhile; try again
                logger.warning("recovery waits for the Docker engine: %s", exc)
                await asyncio.sleep(ENGINE_RETRY)

    async def _recover_once(self) -> None:
        working = await self.store.with_status(Status.WORKING)
        holds = await self.store.gpu_holds()
        for session_id in set(holds) - {row.id for row in working}:  # its run ended while the holds were written
            await self.store.release_gpus(session_id)
        for model_id, seconds in await self.store.run_times(RUN_TIMES_SEED):
            self.run_times.add(model_id, seconds)
        for row in working:
            container_id = row.container_id
            info = await self.backend.inspect(container_id) if container_id else None
            if container_id and info is not None:
                logger.info("session %s: re-attaching to container %s", row.id, container_id[:12])
                # The container keeps the GPUs it was given; GPUS may have changed since: keep what is still ours.
                self.pool.hold(row.id, [d for d in holds.get(row.id, []) if d in self.pool.devices])
                self._spawn(row, container_id)
                continue
            await self.release_gpus(row.id)  # re-queued or failed: a new start gets devices anew
            attempts = row.attempts + 1
            if attempts >= MAX_ATTEMPTS:
                await self.store.update(
                    row.id,
                    status=Status.FAILED,
                    finished=time.time(),
                    container_id=None,
                    info=f"the run was interrupted {attempts} times (server restarts); giving up",
                )
            else:
                # Its original queue place: queued_at is kept, so it runs before later sessions.
                await self.store.update(
                    row.id,
                    status=Status.READY,
                    container_id=None,
                    attempts=attempts,
                    info="re-queued: its container was gone after a server restart",
                )
                logger.info("session %s: container gone, re-queued", row.id)
        await self.janitor.release_dead_claims()
        self.janitor.remove_partial_uploads(time.time())
        await self.remove_orphans()

    async def remove_orphans(self) -> None:
        """Remove this server's containers whose session no run of this dispatcher follows (RunFailed: no engine)."""
        for container in await self.backend.containers_labelled(LABEL_INSTANCE, self.instance):
            session_id = container.get("Labels", {}).get(LABEL_SESSION, "?")
            if session_id not in self.running:
                logger.info("removing orphan container %s (session %s)", container["Id"][:12], session_id)
                await self.backend.remove(container["Id"])

    async def detach_all(self) -> None:
        """At shutdown: leave running containers running; the next start re-attaches them."""
        tasks = list(self.running.values())
        for task in tasks:
            task.cancel(DETACH)
        await asyncio.gather(*tasks, return_exceptions=True)
        # The runs left going keep their GPUs (in the store) for the next dispatcher to re-attach with.


def same_forecast(old: dict[str, QueuePlace], new: dict[str, QueuePlace]) -> bool:
    """Same places, and no estimate moved by more than ESTIMATE_SLACK (or appeared or vanished)."""
    if old.keys() != new.keys():
        return False
    for session_id, place in new.items():
        before = old[session_id]
        if before.position != place.position or (before.starts_at is None) != (place.starts_at is None):
            return False
        if (
            place.starts_at is not None
            and before.starts_at is not None  # as the test above made sure; said again for the type checker
            and abs(place.starts_at - before.starts_at) > ESTIMATE_SLACK
        ):
            return False
    return True
