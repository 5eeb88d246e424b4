"""Sessions from creation to outputs: the domain calls the api makes. State lives in the store, so any
worker process can answer any request; runs are started by the one process that holds the dispatch lock.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import secrets
import shutil
import socket
import time
import uuid
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

from ..config import Settings
from ..specs.directory import ModelDirectory
from ..specs.errors import ConfigError
from ..specs.model import ModelSpec
from ..specs.runconfig import RunConfig, SessionRequest, validate_run_config
from ..volumes.convert import Converter, ConvertLimits
from .changes import ChangeCache
from .errors import Conflict, InvalidInput, NotFound, WrongState
from .logstream import follow_log
from .quotas import UploadLimits, at_capacity, check_disk, check_room, out_of_space_is_507
from .state import LIVE, SessionFiles, SessionPlan, Signal, Signals, Status
from .store import SessionRow, SessionView, Store
from .uploads import UploadResult, place_file, receive_file
from .watch import StatusWatch

logger = logging.getLogger(__name__)

UPLOAD_HEARTBEAT = 10.0  # seconds between an upload's "still alive" marks
UPLOAD_STALE = 60.0  # a claim not renewed for this long belongs to a dead process
CANCEL_WAIT = 30.0
PLAN_CACHE = 1024


class SessionManager:
    def __init__(self, settings: Settings, models: ModelDirectory, store: Store, signals: Signals) -> None:
        self.settings = settings
        self.models = models
        self.store = store
        self.signals = signals
        self.root = settings.SESSION_PATH
        self.dispatch_wakeup = Signal()  # this process's dispatcher, if it holds the lock
        self.watch = StatusWatch(store, signals)
        self._described: ChangeCache[tuple[Status, tuple[str, ...], str]] = ChangeCache(store.changes)
        self._plans: OrderedDict[str, SessionPlan] = OrderedDict()
        self._owner_prefix = f"{socket.gethostname()}:{os.getpid()}"
        disk = UploadLimits.from_settings(settings).check_disk  # a conversion's result is held to the reserve too
        self.converter = Converter(ConvertLimits.from_settings(settings), disk)

    # -- creation and lookup -------------------------------------------------------------

    async def create(self, model_id: str, request: SessionRequest) -> str:
        loaded = self.models.models.get(model_id)
        if loaded is None:
            raise NotFound(f"unknown model {model_id!r}")
        try:
            config = validate_run_config(loaded.spec, request, max_string_bytes=self.settings.MAX_STRING_PARAM_BYTES)
        except ConfigError as exc:
            raise InvalidInput(str(exc)) from exc
        check_room(await self.live_count(), self.settings.MAX_SESSIONS)  # cheap early refusal, without a lock
        # Sessions are metadata too: a disk under its reserve takes none (their rows and directories filled it).
        spec, wire_config = loaded.spec.wire(), config.to_json()
        check_disk(self.root, self.settings.DISK_RESERVE_BYTES, "a new session", len(json.dumps([spec, wire_config])))
        session_id = str(uuid.uuid4())  # random: ids are unguessable
        files = SessionFiles(self.root / session_id)
        with out_of_space_is_507("a new session"):
            files.create()
        now = time.time()
        row = SessionRow(
            id=session_id,
            model_id=model_id,
            spec=spec,
            config=wire_config,
            status=Status.WAITING.value,
            info="",
            created=now,
            updated=now,
            cancel_requested=False,
            attempts=0,
        )
        inputs = [name for name in loaded.spec.inputs if config.inputs[name]]
        try:
            added = await self.store.add(row, inputs, max_live=self.settings.MAX_SESSIONS)
        except BaseException:
            shutil.rmtree(files.root, ignore_errors=True)
            raise
        if not added:  # others were created meanwhile: the serialized count is the one that decides
            shutil.rmtree(files.root, ignore_errors=True)
            raise at_capacity(self.settings.MAX_SESSIONS)
        if await self.store.queue_if_complete(session_id):  # a model without enabled inputs is ready at once
            self.dispatch_wakeup.notify()
        logger.info("session %s created for model %s", session_id, model_id)
        return session_id

    async def view(self, session_id: str) -> SessionView:
        view = await self.store.get(_valid_id(session_id))
        if view is None:
            raise NotFound(f"unknown session {session_id!r}")
        return view

    def plan(self, row: SessionRow) -> SessionPlan:
        """The session's spec and configuration as objects (parsed once per process)."""
        plan = self._plans.get(row.id)
        if plan is None:
            spec = ModelSpec.from_raw(row.spec)
            plan = SessionPlan(row.id, spec, RunConfig.from_json(row.config), SessionFiles(self.root / row.id))
            self._plans[row.id] = plan
            if len(self._plans) > PLAN_CACHE:
                self._plans.popitem(last=False)
        return plan

    async def position(self, session_id: str) -> int | None:
        return await self.store.position(session_id)

    async def describe(self, session_id: str) -> tuple[Status, tuple[str, ...], str]:
        """status, needed inputs, info — as `GET /sessions/{sid}` reports them; from memory while no
        session has changed since it was last read (in any worker process)."""
        return await self._described.get(session_id, lambda: self._describe(session_id))

    async def _describe(self, session_id: str) -> tuple[Status, tuple[str, ...], str]:
        view = await self.view(session_id)
        info = view.row.info
        if view.status is Status.READY and (position := await self.position(session_id)) is not None:
            info = f"queued at position {position}" + (f"; {info}" if info else "")
        return view.status, tuple(view.needed), info

    # -- inputs ---------------------------------------------------------------------------

    async def upload(self, session_id: str, name: str, chunks: AsyncIterator[bytes]) -> UploadResult:
        """Receive an input. Of concurrent uploads of one input at most one is taken (200): the others, and any
        that completes once the session was queued or cancelled, get Conflict (409) and leave no file."""

        async def receive(staged: Path, extension: str) -> UploadResult:
            return await receive_file(chunks, staged, label=f"input {name}", expected_ext=extension, **self._landing)

        return await self._take_input(session_id, name, receive)

    async def land_received(self, session_id: str, name: str, source: Path, sha256: str, tus_id: str) -> UploadResult:
        """Make a finished resumable upload's file (`source`, left in place) the input, exactly as `upload` takes
        a body: type check, conversion, the claim and the same landing; the tus upload `tus_id` is marked finished
        in the landing's own transaction."""

        async def place(staged: Path, extension: str) -> UploadResult:
            return await place_file(
                source, staged, sha256=sha256, label=f"input {name}", expected_ext=extension, **self._landing
            )

        return await self._take_input(session_id, name, place, tus_id=tus_id)

    async def check_input(self, session_id: str, name: str) -> SessionPlan:
        """The session's plan if it waits for input `name` (NotFound, WrongState otherwise)."""
        view = await self.view(session_id)
        plan = self.plan(view.row)
        _check_enabled(plan, "input", name)
        if view.status is not Status.WAITING:
            raise WrongState(f"session is {view.status.value}: it takes no more inputs")
        return plan

    async def _take_input(
        self,
        session_id: str,
        name: str,
        produce: Callable[[Path, str], Awaitable[UploadResult]],
        *,
        tus_id: str | None = None,
    ) -> UploadResult:
        """The one landing path of PUT and tus: claim the input, let `produce(staged, extension)` write the file
        under a name of its own, then land it (409 when another upload or a state change came first)."""
        plan = await self.check_input(session_id, name)
        owner = f"{self._owner_prefix}:{secrets.token_hex(4)}"
        if not await self.store.claim_upload(session_id, name, owner, time.time() - UPLOAD_STALE):
            raise await self._not_taken(session_id, name, "is already being uploaded")
        dest = plan.input_path(name)
        # Received in full (and converted) under a name of its own first; it becomes the input only once
        # the store has taken it (_land). The ".upload-<pid>-" in the name lets the janitor remove leftovers.
        extension = plan.spec.inputs[name].extension
        staged = dest.with_name(f".{dest.name}.upload-{os.getpid()}-{secrets.token_hex(4)}{extension}")
        landing: asyncio.Task[None] | None = None
        beat = asyncio.create_task(self._heartbeat(session_id, name, owner))
        try:
            with out_of_space_is_507(f"input {name}"):  # the reserve is checked as bytes come; others share the disk
                result = await produce(staged, extension)
            # Shielded: a request cancelled now must not split the store's decision from the rename.
            landing = asyncio.create_task(self._land(session_id, name, owner, staged, dest, tus_id))
            await asyncio.shield(landing)
        finally:
            beat.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await beat
            if landing is not None:
                await asyncio.wait([landing])  # the claim is held until the file is in place
            with contextlib.suppress(FileNotFoundError):
                staged.unlink()
            queued = await asyncio.shield(self.store.release_upload(session_id, name, owner))
        logger.info("session %s: input %s received (%d bytes)", session_id, name, result.size)
        if queued:
            logger.info("session %s queued", session_id)
            self.dispatch_wakeup.notify()
        return result

    @property
    def _landing(self) -> dict[str, Any]:
        """How every input is taken: CHECK_INPUT_FILETYPES, CONVERT_INPUTS and this process's converter."""
        return {
            "check_types": self.settings.CHECK_INPUT_FILETYPES,
            "convert": self.settings.CONVERT_INPUTS,
            "converter": self.converter,
        }

    async def _land(self, session_id: str, name: str, owner: str, staged: Path, dest: Path, tus_id: str | None) -> None:
        if not await self.store.land_upload(session_id, name, owner, finished_tus=tus_id):
            raise await self._not_taken(session_id, name, "was not stored: another upload of it took over")
        os.replace(staged, dest)

    async def _not_taken(self, session_id: str, name: str, busy: str) -> Conflict:
        """Why an upload was refused: the session moved on (queued, cancelled, gone), or another upload has the
        input (`busy` says so)."""
        status = await self.store.status_of(session_id)
        if status is not Status.WAITING:
            now = "gone" if status is None else status.value
            return Conflict(f"input {name} was not stored: the session no longer waits for inputs (it is {now})")
        return Conflict(f"input {name} {busy}")

    async def _heartbeat(self, session_id: str, name: str, owner: str) -> None:
        while True:
            await asyncio.sleep(UPLOAD_HEARTBEAT)
            await self.store.heartbeat(session_id, name, owner)

    # -- reading results ------------------------------------------------------------------

    async def log_stream(self, session_id: str) -> AsyncIterator[bytes]:
        view = await self.view(session_id)
        if view.status is Status.WAITING:
            raise WrongState("session is still waiting for inputs: its run has not been queued")
        plan = self.plan(view.row)
        stream = follow_log(
            plan.files.log,
            status=lambda: self.watch.status(session_id),
            position=lambda: self.store.queue_place(session_id),
            signal=self.signals.of(session_id),
            touch=lambda: self.store.touch(session_id),
        )
        return self._watched(session_id, stream)

    async def _watched(self, session_id: str, stream: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
        with self.watch.following(session_id):
            async for chunk in stream:
                yield chunk

    def status_changed(self, session_id: str) -> None:
        """This process changed the session's status: wake its readers, who must not see a cached one."""
        self.watch.changed(session_id)
        self.signals.notify(session_id)

    async def output_file(self, session_id: str, name: str) -> Path:
        view = await self.view(session_id)
        plan = self.plan(view.row)
        _check_enabled(plan, "output", name)
        if view.status is not Status.COMPLETE:
            raise WrongState(f"session is {view.status.value}, not complete")
        await self.store.touch(session_id)
        return plan.output_path(name)

    # -- cancellation ---------------------------------------------------------------------

    async def cancel(self, session_id: str) -> SessionView:
        """Cancel a waiting, queued or running session; it ends `failed` with info `cancelled`."""
        view = await self.view(session_id)
        if view.status.final:
            raise Conflict(f"session is already {view.status.value}")
        if await self.store.update(
            session_id,
            when={Status.WAITING, Status.READY},
            status=Status.FAILED,
            info="cancelled",
            finished=time.time(),
        ):
            self.status_changed(session_id)
        else:  # working (or it just started): the dispatcher stops the container
            await self.store.update(session_id, when={Status.WORKING}, cancel_requested=True)
            self.dispatch_wakeup.notify()
            deadline = time.monotonic() + CANCEL_WAIT
            # The dispatcher may be another worker process: its status change reaches us only through the store.
            view = await self.view(session_id)
            while not view.status.final and time.monotonic() < deadline:
                await asyncio.sleep(0.1)
                view = await self.view(session_id)
        logger.info("session %s cancelled", session_id)
        return await self.view(session_id)

    # -- housekeeping ---------------------------------------------------------------------

    async def count_by_status(self) -> dict[str, int]:
        """How many sessions are in each status (metrics read this at scrape time)."""
        return {status.value: count for status, count in (await self.store.count_by_status()).items()}

    async def live_count(self) -> int:
        counts = await self.store.count_by_status()
        return sum(counts[s] for s in LIVE)

    def prepare_root(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        if not os.access(self.root, os.W_OK):
            raise PermissionError(f"SESSION_PATH {self.root} is not writable")

    async def close(self) -> None:
        await self.watch.close()

    def forget(self, session_id: str) -> None:
        self._plans.pop(session_id, None)
        self.signals.forget(session_id)


def _valid_id(session_id: str) -> str:
    """Only canonical UUIDs reach the store or the filesystem."""
    try:
        if str(uuid.UUID(session_id)) == session_id:
            return session_id
    except ValueError:
        pass
    raise NotFound(f"unknown session {session_id!r}")


def _check_enabled(plan: SessionPlan, kind: str, name: str) -> None:
    """404 for a name the model does not have, 400 for one this session did not enable."""
    declared = plan.spec.inputs if kind == "input" else plan.spec.outputs
    enabled = plan.config.inputs if kind == "input" else plan.config.outputs
    if name not in declared:
        raise NotFound(f"model {plan.spec.id} has no {kind} {name!r}")
    if not enabled[name]:
        raise WrongState(f"{kind} {name} was not enabled in this session")
