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
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ..config import Settings
from ..runner.docker import LABEL_ATTEMPT, LABEL_ENGINE, LABEL_INSTANCE, LABEL_MODEL, LABEL_SESSION
from ..runner.execute import DETACH
from ..runner.jobs import EngineLost, FileTransfer, RunFailed, RunJob, RunOutcome
from ..sessions.manager import SessionManager
from ..sessions.state import QueuePlace, SessionPlan, Signals, Status
from ..sessions.store import SessionRow, Store
from ..specs.command import build_argv, container_path
from .engines import PING_EVERY, Engine, EnginePool, hold_key, split_hold
from .forecast import Going, Queued, RunTimes, Shape, forecast_pool
from .gpupool import Demand, GpuPool
from .instance import instance_id
from .janitor import Janitor
from .leadership import Leadership, leadership_for
from .placement import Room, place
from .runlimits import limits_for
from .staging import input_transfers, let_models_read, mount_note

logger = logging.getLogger(__name__)

TICK = 0.5  # how often the queue is looked at when nothing in this process says it changed
ENGINE_RETRY = 2.0
MAX_ATTEMPTS = 3  # a run interrupted this many times (server restarts, vanished containers) fails
RUN_TIMES_SEED = 200  # complete runs read back at start for the start-time estimates
ESTIMATE_SLACK = 15.0  # seconds an estimate may drift before the published forecast is rewritten
# After a step (or the recovery) fails unexpectedly: the pause before the next try, doubled at each failure in a row
# up to the most. Dispatching goes on: a bug hit by one session must not stop every run of the server.
STEP_PAUSE = 0.5
STEP_PAUSE_MOST = 30.0
# The orphan sweep runs when a run failed, and at least this often: a container whose removal failed (an engine
# slow to answer) or that an engine finished making after a sweep is not left until some later failure.
SWEEP_EVERY = 60.0


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


@dataclass(frozen=True)
class LostRun:
    """A run whose engine stopped answering: its container, and since when (monotonic) it waits for the engine."""

    engine: str
    container_id: str | None
    since: float


def job_for(
    plan: SessionPlan,
    instance: str,
    settings: Settings,
    gpu_ids: list[str] | None = None,
    engine: str = "",
    attempt: int = 0,
) -> RunJob:
    spec, config = plan.spec, plan.config
    return RunJob(
        job_id=plan.id,
        image=spec.image,
        argv=build_argv(spec, config),
        inputs=input_transfers(plan, settings),
        outputs=[FileTransfer(n, plan.output_path(n), container_path(spec, n)) for n in config.enabled_outputs()],
        limits=limits_for(settings, spec),
        labels={LABEL_MODEL: spec.id, LABEL_INSTANCE: instance, LABEL_ENGINE: engine, LABEL_ATTEMPT: str(attempt)},
        gpu_ids=gpu_ids,
        mount_note=mount_note(settings),
        disk_note=f"SESSION_PATH ({settings.SESSION_PATH})",
        attempt=attempt,
    )


class Dispatcher:
    def __init__(self, settings: Settings, store: Store, manager: SessionManager, engines: EnginePool) -> None:
        self.settings = settings
        self.store = store
        self.manager = manager
        self.engines = engines
        self.signals = manager.signals
        # An flock in SESSION_PATH with SQLite, PostgreSQL's advisory lock with PostgreSQL (scheduling/leadership.py).
        self.leadership: Leadership = leadership_for(settings.DATABASE_URL, settings.SESSION_PATH)
        self.instance = instance_id(settings.SESSION_PATH)
        self.janitor = Janitor(settings, store, manager)
        self.running: dict[str, asyncio.Task[None]] = {}
        self.engine_problem: str | None = None
        # A run failed, perhaps with its engine away so that its container could not be removed: look again.
        self.orphans_possible = False
        self.placed: dict[str, tuple[str, int]] = {}  # running or lost session -> (engine, attempt)
        self.lost: dict[str, LostRun] = {}
        self.overtaken: dict[str, int] = {}  # queued session -> later runs that took GPUs before it
        self.run_times = RunTimes()
        self._running_since: dict[str, tuple[str, float]] = {}  # session -> (model id, start time)
        self._published: dict[str, QueuePlace] | None = None
        self._next_cleanup = time.monotonic() + max(settings.CLEANUP_TIMER, 0)
        self._next_sweep = time.monotonic() + SWEEP_EVERY
        # Observer (metrics): outcome, seconds queued, seconds run, engine.
        self.run_ended: Callable[[str, float | None, float | None, str], None] = lambda outcome, q, ran, engine: None

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
        recovered = False
        failures = 0  # in a row
        while True:
            token = self.manager.dispatch_wakeup.token()
            if not self.leadership.sure():
                return "its dispatch lock is no longer confirmed (the process was stopped, or PostgreSQL is slow)"
            work, name = (self.step, "step") if recovered else (self.recover, "recovery")
            try:
                await work()
            except Exception as exc:  # a bug: logged, and tried again after a pause (the lead's loss still stops)
                failures += 1
                pause = min(STEP_PAUSE * 2 ** (failures - 1), STEP_PAUSE_MOST)
                part = failed_in(exc, work.__name__)
                where = f" in {part}" if part != work.__name__ else ""
                logger.exception(
                    "the dispatcher's %s failed%s (%d in a row); trying again in %g s", name, where, failures, pause
                )
                await asyncio.sleep(pause)
                continue
            recovered, failures = True, 0
            await self.manager.dispatch_wakeup.wait(token, TICK)

    def _forget_leading(self) -> None:
        """What only a leader knows: a later lead starts from the store, as a restarted server does."""
        for engine in self.engines:  # the runs detached keep their holds in the store, for the next recovery
            engine.gpus = GpuPool(engine.entry.pool)
        self.placed = {}
        self.lost = {}
        self.overtaken = {}
        self._published = None
        self.orphans_possible = False

    async def refresh_engines(self, every: float) -> None:
        for engine in await self.engines.refresh(every):
            if engine.up:  # back: its stale containers (runs moved elsewhere meanwhile) go
                self.orphans_possible = True

    async def step(self) -> None:
        await self.refresh_engines(PING_EVERY)
        await self.stop_cancelled()
        await self.follow_lost()
        if self.orphans_possible or time.monotonic() >= self._next_sweep:
            # First: a stale container still holds the GPUs a new run would be given.
            with contextlib.suppress(RunFailed):  # an engine is still away: next tick
                await self.remove_orphans()
                self.orphans_possible = False
                self._next_sweep = time.monotonic() + SWEEP_EVERY
        await self.start_queued()
        if self.settings.CLEANUP_TIMER != -1 and time.monotonic() >= self._next_cleanup:
            self._next_cleanup = time.monotonic() + self.settings.CLEANUP_TIMER
            await self.janitor.cleanup()

    # -- starting runs --------------------------------------------------------------------

    def going_on(self, engine: Engine) -> int:
        return sum(1 for name, _ in self.placed.values() if name == engine.name)

    def rooms(self) -> list[Room]:
        """What each engine that answers can take now."""
        return [
            Room(
                e.name, tuple(e.gpus.free()), e.entry.runs_at_once - self.going_on(e), self.going_on(e), e.entry.labels
            )
            for e in self.engines
            if e.up
        ]

    async def start_queued(self) -> None:
        queue = await self.store.queue()
        if queue:  # asked just before placing: a run is not sent to an engine gone since the last tick
            await self.refresh_engines(0)
        rooms = self.rooms()
        # Runs wait for an engine; they are not failed for its absence.
        if queue and await self.engine_ready(queue) and any(r.slots > 0 for r in rooms):
            rows = {row.id: row for row in queue}
            demands = await self.demands(queue)
            for start in place(demands, rooms, self.overtaken):
                engine = self.engines.get(start.engine)
                assert engine is not None  # placed on one of the rooms, made from the pool
                await self._start(rows[start.session_id], engine, start.devices)
            queue = [rows[d.session_id] for d in demands if d.session_id not in self.running]
            self.signals.notify_all()  # queue positions moved
        # Only what this step looked at: a session queued since keeps its FIFO place until the next step.
        await self.publish_forecast(queue)

    @property
    def has_pool(self) -> bool:
        return any(e.gpus.size for e in self.engines)

    def gpus_needed(self, row: SessionRow) -> int:
        """GPUs of an engine's pool the run needs: its spec's `inferserver.gpus`, else GPUS_PER_RUN; 0 without pools."""
        asked = self.manager.plan(row).spec.gpus
        if not self.has_pool:
            return 0
        return self.settings.run_gpus if asked is None else asked

    def need_of(self, row: SessionRow) -> Demand:
        return Demand(row.id, self.gpus_needed(row), self.manager.plan(row).spec.engine_labels)

    def never_fits(self, need: Demand, model_id: str) -> str | None:
        """Why no engine of the pool could ever run this, or None."""
        suiting = [e for e in self.engines if Room(e.name, (), 1, labels=e.entry.labels).suits(need)]
        if not suiting:
            wanted = ", ".join(f"{k}={v}" for k, v in sorted(need.labels.items()))
            return f"model {model_id} requires engine labels {wanted}; no engine of ENGINES has them"
        largest = max(e.gpus.size for e in suiting)
        if need.gpus <= largest:
            return None
        only = self.engines.only()
        if not self.engines.named and only is not None:
            devices = only.gpus.devices
            return f"model {model_id} asks for {need.gpus} GPUs; this server has {largest} (GPUS={','.join(devices)})"
        return f"model {model_id} asks for {need.gpus} GPUs; the largest engine of ENGINES it may run on has {largest}"

    async def demands(self, queue: list[SessionRow]) -> list[Demand]:
        """The queue as the pool sees it; a run no engine could ever take fails: it could never start."""
        demands = []
        for row in queue:
            need = self.need_of(row)
            reason = self.never_fits(need, row.model_id)
            if reason is not None:
                if await self.store.update(
                    row.id, when={Status.READY}, status=Status.FAILED, info=reason, finished=time.time()
                ):
                    self.manager.status_changed(row.id)
                    logger.info("session %s failed: %s", row.id, reason)
                continue
            demands.append(need)
        return demands

    async def _start(self, row: SessionRow, engine: Engine, devices: tuple[str, ...]) -> None:
        # Held (and recorded) before the run is `working`: a recovery never sees a run without its GPUs.
        engine.gpus.hold(row.id, devices)
        await self.store.hold_gpus(row.id, tuple(hold_key(engine.name, d) for d in devices))
        await self.store.place_run(row.id, engine.name, row.attempts)
        self.placed[row.id] = (engine.name, row.attempts)
        self.overtaken.pop(row.id, None)
        if await self.store.update(
            row.id, when={Status.READY}, status=Status.WORKING, info="starting", started=time.time()
        ):
            self.manager.status_changed(row.id)
            logger.info(
                "session %s working on engine %s%s",
                row.id,
                engine.name,
                f", GPU {','.join(devices)}" if devices else "",
            )
            self._spawn(row, engine, gpu_ids=self.job_gpus(row, devices))
        else:  # cancelled meanwhile
            await self.release_gpus(row.id)

    def job_gpus(self, row: SessionRow, devices: tuple[str, ...]) -> list[str] | None:
        """The run's device request: its own devices from its engine's pool; without pools, none for a CPU-only
        model and otherwise whatever the engine's GPUS mode gives (None)."""
        if self.has_pool:
            return list(devices)
        return [] if self.manager.plan(row).spec.gpus == 0 else None

    async def release_gpus(self, session_id: str) -> None:
        # The store first: a device must not look free here while its hold row is still there, or a start
        # placed meanwhile (the awaits let the dispatcher step run) would write a second hold on it.
        await self.store.release_gpus(session_id)
        await self.store.unplace_run(session_id)
        for engine in self.engines:
            engine.gpus.release(session_id)
        self.placed.pop(session_id, None)

    async def publish_forecast(self, queue: list[SessionRow]) -> None:
        """Write each queued session's place and estimated start for every worker's log streams."""
        now = time.time()
        going = []
        for session_id, (model_id, since) in self._running_since.items():
            takes = self.run_times.estimate(model_id)
            name = self.placed.get(session_id, ("", 0))[0]
            engine = self.engines.get(name)
            held = engine.gpus.held_by(session_id) if engine else ()
            going.append(Going(held, None if takes is None else max(takes - (now - since), 0), name))
        queued = [Queued(self.need_of(row), self.run_times.estimate(row.model_id)) for row in queue]
        self.overtaken = {k: v for k, v in self.overtaken.items() if k in {row.id for row in queue}}
        shapes = [Shape(e.name, e.gpus.devices, e.entry.runs_at_once, e.entry.labels) for e in self.engines if e.up]
        places = forecast_pool(going, queued, shapes, self.overtaken, now)
        if self._published is not None and same_forecast(self._published, places):
            return
        await self.store.set_forecast(places)
        self._published = places

    async def engine_ready(self, queue: list[SessionRow]) -> bool:
        """Whether an engine answers; if none does, every queued session says why it waits."""
        down = [e for e in self.engines if not e.up]
        if len(down) < len(self.engines.engines):
            if self.engine_problem is not None:
                logger.info("a Docker engine answers again")
                self.engine_problem = None
                for row in await self.store.queue():
                    await self.store.update(row.id, when={Status.READY}, info="")
            return True
        problem = "; ".join(e.problem or "" for e in down)
        if self.engine_problem != problem:
            logger.warning("runs are waiting: %s", problem)
            self.engine_problem = problem
        # Every queued session says why it waits, also one queued after the engine went away.
        reason = f"waiting for the Docker engine ({problem})"
        for row in queue:
            if row.info != reason:
                await self.store.update(row.id, when={Status.READY}, info=reason)
        return False

    def _spawn(
        self, row: SessionRow, engine: Engine, container_id: str | None = None, gpu_ids: list[str] | None = None
    ) -> None:
        task = asyncio.create_task(self.execute(row, engine, container_id, gpu_ids), name=f"inferserver-run-{row.id}")
        self.running[row.id] = task
        self._running_since[row.id] = (row.model_id, row.started if container_id and row.started else time.time())

        def done(_: asyncio.Task[None]) -> None:
            self.running.pop(row.id, None)
            self._running_since.pop(row.id, None)
            self.manager.dispatch_wakeup.notify()  # a slot is free

        task.add_done_callback(done)

    async def execute(
        self, row: SessionRow, engine: Engine, attach_to: str | None, gpu_ids: list[str] | None = None
    ) -> None:
        """Run (or follow a recovered container to its end) on `engine` and record the outcome."""
        plan = self.manager.plan(row)
        job = job_for(plan, self.instance, self.settings, gpu_ids, engine.name, row.attempts)
        log = SessionLog(plan.files.log, self.signals, row.id)

        async def started(container_id: str) -> None:
            # Shielded: a leader that stops now (DETACH) still records its container, so the next leader
            # re-attaches it rather than re-queueing the run and removing the container as an orphan.
            await asyncio.shield(self._record_container(row.id, container_id, plan.files.log.stat().st_size))
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
                if self.engines.named:
                    gpus = f", GPUs {','.join(gpu_ids)}" if gpu_ids else ""
                    await log.write(f"inferserver: running on engine {engine.name}{gpus}\n".encode())
                await engine.runner.run(job, log, started, ended)
            else:
                skip = plan.files.log.stat().st_size - (row.log_offset or 0)
                await engine.runner.attach(job, attach_to, log, ended, skip=max(skip, 0))
        except EngineLost as exc:
            await self._lose(row.id, engine, exc)
        except asyncio.CancelledError as exc:
            if exc.args != (DETACH,) and not recorded:
                await asyncio.shield(self._finish(row.id, log, RunOutcome(False, "cancelled")))
            raise
        except Exception as exc:  # a bug must still end the session, never leave it `working`
            logger.exception("session %s: run crashed", row.id)
            if not recorded:
                await self._finish(row.id, log, RunOutcome(False, f"internal error: {exc!r}"))

    async def _record_container(self, session_id: str, container_id: str, log_offset: int) -> None:
        await self.store.run_container(session_id, container_id)
        await self.store.update(session_id, container_id=container_id, info="running", log_offset=log_offset)

    async def _finish(self, session_id: str, log: SessionLog, outcome: RunOutcome) -> None:
        engine = self.placed.get(session_id, ("", 0))[0]
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
        self.manager.dispatch_wakeup.notify()  # its slot and GPUs are free now, before its container is removed
        self.manager.status_changed(session_id)
        logger.info("session %s %s: %s", session_id, status.value, info)
        queued_at = view.row.queued_at if view else None
        self.run_ended(status.value, started - queued_at if queued_at else None, time.time() - started, engine)

    # -- engine loss ----------------------------------------------------------------------

    async def _lose(self, session_id: str, engine: Engine, exc: EngineLost) -> None:
        """The run's engine stopped answering: keep the session `working` and its container, and wait for it."""
        await engine.ping()
        self.lost[session_id] = LostRun(engine.name, exc.container_id, time.monotonic())
        grace = self.engines.grace or 0
        info = f"engine {engine.name} stopped answering; waiting up to {grace:g} s (ENGINE_GRACE) for it"
        logger.warning("session %s: %s (%s)", session_id, info, exc)
        if await self.store.update(session_id, when={Status.WORKING}, info=info):
            self.manager.status_changed(session_id)

    async def follow_lost(self) -> None:
        """Re-attach lost runs whose engine answers again; re-queue those whose engine stayed away past the grace."""
        for session_id, lost in list(self.lost.items()):
            engine = self.engines.get(lost.engine)
            view = await self.store.get(session_id)
            if view is None or view.status is not Status.WORKING:  # cancelled or cleaned up meanwhile
                self.lost.pop(session_id)
                await self.release_gpus(session_id)
                continue
            if engine is not None and engine.up and lost.container_id:
                self.lost.pop(session_id)
                logger.info("session %s: engine %s answers again, re-attaching", session_id, engine.name)
                await self.store.update(session_id, when={Status.WORKING}, info="running")
                self.manager.status_changed(session_id)
                self._spawn(view.row, engine, lost.container_id)
            elif engine is None or engine.up or time.monotonic() - lost.since >= (self.engines.grace or 0):
                self.lost.pop(session_id)
                self.orphans_possible = True  # its container goes when its engine answers
                why = (engine.problem if engine is not None else None) or "no container to follow"
                await self.requeue(
                    view.row,
                    f"re-queued: engine {lost.engine} did not answer within ENGINE_GRACE "
                    f"({self.engines.grace or 0:g} s)",
                    f"engine {lost.engine} was lost during the run ({why})",
                )

    async def requeue(self, row: SessionRow, info: str, failure: str) -> None:
        """Back into the queue at its old place (queued_at kept), an attempt counted; after MAX_ATTEMPTS, failed."""
        await self.release_gpus(row.id)  # a new start gets devices (and an engine) anew
        attempts = row.attempts + 1
        log = SessionLog(self.manager.plan(row).files.log, self.signals, row.id)
        if attempts >= MAX_ATTEMPTS:
            reason = f"{failure}; the run was interrupted {attempts} times, giving up"
            await self.store.update(row.id, status=Status.FAILED, finished=time.time(), container_id=None, info=reason)
            await log.write(f"inferserver: run failed: {reason}\n".encode())
        else:
            await self.store.update(
                row.id, status=Status.READY, container_id=None, attempts=attempts, info=info, log_offset=None
            )
            await log.write(f"inferserver: {info}\n".encode())
        self.manager.status_changed(row.id)
        logger.info("session %s: %s", row.id, info if attempts < MAX_ATTEMPTS else "failed")

    # -- cancellation ---------------------------------------------------------------------

    async def stop_cancelled(self) -> None:
        for row in await self.store.with_status(Status.WORKING):
            if not row.cancel_requested:
                continue
            task = self.running.get(row.id)
            if task is not None:
                task.cancel()  # the runner removes the container; execute() records `cancelled`
            else:  # not ours to follow (recovery pending, its engine lost): stop it directly
                engine = await self.engine_of(row.id)
                if row.container_id and engine is not None:
                    await engine.backend.remove(row.container_id)  # an engine away: an orphan once it is back
                    self.orphans_possible = True
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

    async def engine_of(self, session_id: str) -> Engine | None:
        """The engine a working session's run was placed on (a run recorded before engines were named: the one)."""
        placed = (await self.store.placed_runs()).get(session_id)
        return self.engines.get(placed.engine) if placed else self.engines.only()

    async def _recover_once(self) -> None:
        await self.engines.refresh()
        working = await self.store.with_status(Status.WORKING)
        holds = await self.store.gpu_holds()
        placed = await self.store.placed_runs()
        for session_id in set(holds) - {row.id for row in working}:  # its run ended while the holds were written
            await self.store.release_gpus(session_id)
        for model_id, seconds in await self.store.run_times(RUN_TIMES_SEED):
            self.run_times.add(model_id, seconds)
        for row in working:
            where = placed.get(row.id)
            engine = self.engines.get(where.engine) if where else self.engines.only()
            container_id = row.container_id
            if engine is not None and container_id and self.engines.grace is not None and not engine.up:
                # Its engine is away: the run waits for it as for any lost engine, then goes elsewhere.
                self.resume_holds(row, engine, holds.get(row.id, []))
                self.lost[row.id] = LostRun(engine.name, container_id, time.monotonic())
                continue
            info = await engine.backend.inspect(container_id) if engine and container_id else None
            if engine is not None and container_id and info is not None:
                logger.info(
                    "session %s: re-attaching to container %s on engine %s", row.id, container_id[:12], engine.name
                )
                self.resume_holds(row, engine, holds.get(row.id, []))
                self._spawn(row, engine, container_id)
                continue
            # Its original queue place: queued_at is kept, so it runs before later sessions.
            await self.requeue(
                row,
                "re-queued: its container was gone after a server restart",
                "its container was gone after server restarts",
            )
        await self.janitor.release_dead_claims()
        self.janitor.remove_partial_uploads(time.time())
        await self.remove_orphans()

    def resume_holds(self, row: SessionRow, engine: Engine, keys: list[str]) -> None:
        """A recovered run keeps the GPUs it was given; GPUS or ENGINES may have changed since: keep what is still
        its engine's. A hold written before engines were named is a bare device id of the one engine."""
        devices = [split_hold(k)[1] if ":" in k and split_hold(k)[0] == engine.name else k for k in keys]
        engine.gpus.hold(row.id, [d for d in devices if d in engine.gpus.devices])
        self.placed[row.id] = (engine.name, row.attempts)

    async def remove_orphans(self) -> None:
        """Remove this server's containers, on every engine that answers, that no run of this dispatcher follows
        there (a stale container of an earlier attempt included); RunFailed: an engine went away meanwhile."""
        for engine in self.engines:
            if not engine.up:
                continue
            for container in await engine.backend.containers_labelled(LABEL_INSTANCE, self.instance):
                labels = container.get("Labels", {})
                session_id = labels.get(LABEL_SESSION, "?")
                ours = self.placed.get(session_id)  # None while a finished run's task removes its container
                attempt = labels.get(LABEL_ATTEMPT)
                if (session_id in self.running or session_id in self.lost) and (
                    ours is None or (ours[0] == engine.name and attempt in (None, str(ours[1])))
                ):
                    continue
                logger.info(
                    "removing orphan container %s (session %s) on engine %s",
                    container["Id"][:12],
                    session_id,
                    engine.name,
                )
                await engine.backend.remove(container["Id"])

    async def detach_all(self) -> None:
        """At shutdown: leave running containers running; the next start re-attaches them."""
        tasks = list(self.running.values())
        for task in tasks:
            task.cancel(DETACH)
        await asyncio.gather(*tasks, return_exceptions=True)
        # The runs left going keep their GPUs (in the store) for the next dispatcher to re-attach with.


def failed_in(exc: BaseException, caller: str) -> str:
    """The function `caller` had called when `exc` was raised (from its traceback): which part of a step failed."""
    names = [frame.name for frame in traceback.extract_tb(exc.__traceback__)]
    if caller in names and names.index(caller) + 1 < len(names):
        return names[names.index(caller) + 1]
    return caller


def same_forecast(old: dict[str, QueuePlace], new: dict[str, QueuePlace]) -> bool:
    """Same places, and no estimate moved by more than ESTIMATE_SLACK (or appeared or vanished)."""
    if old.keys() != new.keys():
        return False
    for session_id, spot in new.items():
        before = old[session_id]
        if before.position != spot.position or (before.starts_at is None) != (spot.starts_at is None):
            return False
        if (
            spot.starts_at is not None
            and before.starts_at is not None  # as the test above made sure; said again for the type checker
            and abs(spot.starts_at - before.starts_at) > ESTIMATE_SLACK
        ):
            return False
    return True
