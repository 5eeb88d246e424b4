"""Sessions from creation to outputs: the domain calls the api makes, and the runs they queue."""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

from ..config import Settings
from ..specs.command import build_argv, container_path
from ..specs.directory import ModelDirectory
from ..specs.errors import ConfigError
from ..specs.runconfig import SessionRequest, validate_run_config
from ..runner.execute import Runner
from ..runner.jobs import FileTransfer, RunJob
from ..runner.scheduler import Scheduler
from .errors import Conflict, InvalidInput, NotFound, WrongState
from .logstream import follow_log
from .state import Session, SessionFiles, Status
from .uploads import UploadResult, receive_file

logger = logging.getLogger(__name__)


class SessionLog:
    """The run's log file; every write wakes the session's log readers."""

    def __init__(self, session: Session) -> None:
        self.session = session

    async def write(self, data: bytes) -> None:
        # Small appends to the page cache: cheaper inline than a thread hop per frame.
        with open(self.session.files.log, "ab") as log:
            log.write(data)
        self.session.changed.notify()


class SessionManager:
    def __init__(self, settings: Settings, models: ModelDirectory, runner: Runner, scheduler: Scheduler) -> None:
        self.settings = settings
        self.models = models
        self.runner = runner
        self.scheduler = scheduler
        self.sessions: dict[str, Session] = {}
        self.root = settings.SESSION_PATH
        scheduler.on_change = self._queue_moved

    # -- creation and lookup -------------------------------------------------------------

    def create(self, model_id: str, request: SessionRequest) -> Session:
        loaded = self.models.models.get(model_id)
        if loaded is None:
            raise NotFound(f"unknown model {model_id!r}")
        try:
            config = validate_run_config(loaded.spec, request)
        except ConfigError as exc:
            raise InvalidInput(str(exc)) from exc
        session_id = str(uuid.uuid4())  # random: ids are unguessable
        files = SessionFiles(self.root / session_id)
        files.create()
        session = Session(id=session_id, spec=loaded.spec, config=config, files=files)
        session.needed = [name for name in loaded.spec.inputs if config.inputs[name]]
        self.sessions[session_id] = session
        logger.info("session %s created for model %s", session_id, model_id)
        if not session.needed:  # a model without enabled inputs is ready at once
            self._enqueue(session)
        return session

    def get(self, session_id: str) -> Session:
        session = self.sessions.get(session_id)
        if session is None:
            raise NotFound(f"unknown session {session_id!r}")
        return session

    def position(self, session: Session) -> int | None:
        return self.scheduler.position(session.id)

    # -- inputs ---------------------------------------------------------------------------

    async def upload(self, session_id: str, name: str, chunks: AsyncIterator[bytes]) -> UploadResult:
        session = self.get(session_id)
        _check_enabled(session, "input", name)
        if session.status is not Status.WAITING:
            raise WrongState(f"session is {session.status.value}: it takes no more inputs")
        if name in session.uploading:
            raise Conflict(f"input {name} is already being uploaded")
        session.uploading.add(name)
        session.touch()
        try:
            result = await receive_file(
                chunks,
                session.input_path(name),
                label=f"input {name}",
                expected_ext=session.spec.inputs[name].extension,
                check_types=self.settings.CHECK_INPUT_FILETYPES,
            )
        finally:
            session.uploading.discard(name)
        logger.info("session %s: input %s received (%d bytes)", session.id, name, result.size)
        if name in session.needed:
            session.needed.remove(name)
        session.touch()
        if not session.needed and not session.uploading and session.status is Status.WAITING:
            self._enqueue(session)
        return result

    # -- runs -----------------------------------------------------------------------------

    def _enqueue(self, session: Session) -> None:
        session.set_status(Status.READY)
        self.scheduler.submit(session.id, lambda: self._execute(session))
        logger.info("session %s queued at position %s", session.id, self.position(session))

    def _queue_moved(self) -> None:
        for session in self.sessions.values():
            if session.status is Status.READY:
                session.changed.notify()

    def job_for(self, session: Session) -> RunJob:
        spec, config = session.spec, session.config
        return RunJob(
            job_id=session.id,
            image=spec.image,
            argv=build_argv(spec, config),
            inputs=[
                FileTransfer(name, session.input_path(name), container_path(spec, name))
                for name in config.enabled_inputs()
            ],
            outputs=[
                FileTransfer(name, session.output_path(name), container_path(spec, name))
                for name in config.enabled_outputs()
            ],
            labels={"org.inferserver.model": spec.id},
        )

    async def _execute(self, session: Session) -> None:
        session.started = time.time()
        session.set_status(Status.WORKING, "starting")
        log = SessionLog(session)

        async def started(container_id: str) -> None:
            session.container_id = container_id
            session.info = "running"
            session.changed.notify()

        try:
            job = self.job_for(session)
            outcome = await self.runner.run(job, log, started)
        except asyncio.CancelledError:
            session.set_status(Status.FAILED, "cancelled: the server shut down during the run")
            raise
        except Exception as exc:  # a bug must still end the session, never leave it `working`
            logger.exception("session %s: run crashed", session.id)
            session.set_status(Status.FAILED, f"internal error: {exc!r}")
            return
        session.container_id = None
        elapsed = time.time() - session.started
        if outcome.ok:
            session.set_status(Status.COMPLETE, f"finished in {elapsed:.1f} s")
        else:
            await log.write(f"inferserver: run failed: {outcome.reason}\n".encode())
            session.set_status(Status.FAILED, outcome.reason)
        logger.info("session %s %s: %s", session.id, session.status.value, session.info)

    # -- reading results ------------------------------------------------------------------

    def log_stream(self, session_id: str) -> AsyncIterator[bytes]:
        session = self.get(session_id)
        if session.status is Status.WAITING:
            raise WrongState("session is still waiting for inputs: its run has not been queued")
        return self._reading(session, follow_log(session, lambda: self.position(session)))

    def output_file(self, session_id: str, name: str) -> Path:
        session = self.get(session_id)
        _check_enabled(session, "output", name)
        if session.status is not Status.COMPLETE:
            raise WrongState(f"session is {session.status.value}, not complete")
        session.touch()
        return session.output_path(name)

    async def _reading(self, session: Session, stream: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
        session.readers += 1
        try:
            async for chunk in stream:
                yield chunk
        finally:
            session.readers -= 1
            session.touch()

    # -- clean-up -------------------------------------------------------------------------

    def cleanup(self, now: float | None = None) -> list[str]:
        """Forget idle sessions the settings allow to go; never one a client is still using."""
        now = time.time() if now is None else now
        removable = {Status.WAITING}
        if self.settings.CLEANUP_FINISHED:
            removable |= {Status.COMPLETE, Status.FAILED}
        gone = []
        for session in list(self.sessions.values()):
            idle = now - session.updated
            if session.status in removable and idle >= self.settings.CLEANUP_SECONDS and not session.uploading and not session.readers:
                del self.sessions[session.id]
                if self.settings.CLEANUP_FILES:
                    shutil.rmtree(session.files.root, ignore_errors=True)
                gone.append(session.id)
        if gone:
            logger.info("cleaned up %d sessions", len(gone))
        return gone

    async def cleanup_forever(self) -> None:
        while True:
            await asyncio.sleep(self.settings.CLEANUP_TIMER)
            self.cleanup()

    def prepare_root(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        if not os.access(self.root, os.W_OK):
            raise PermissionError(f"SESSION_PATH {self.root} is not writable")


def _check_enabled(session: Session, kind: str, name: str) -> None:
    """404 for a name the model does not have, 400 for one this session did not enable."""
    declared = session.spec.inputs if kind == "input" else session.spec.outputs
    enabled = session.config.inputs if kind == "input" else session.config.outputs
    if name not in declared:
        raise NotFound(f"model {session.spec.id} has no {kind} {name!r}")
    if not enabled[name]:
        raise WrongState(f"{kind} {name} was not enabled in this session")
