"""The FastAPI application: routers, error envelope, and the lifespan that owns the server's state.

`create_app()` is the factory; `app` is the module-level instance for `uvicorn inferserver.app:app`
and gunicorn. Settings are read when the application starts, so importing this module never fails.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import gc
import logging
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path

from fastapi import FastAPI

from . import __version__
from .api import gpus, health, models, operator, root, sessions, tus, ui
from .api.auth import HASH_THREADS, AccessControl, AuthMiddleware
from .api.concurrency import ConcurrencyLimit
from .api.envelope import install_error_handlers, install_openapi
from .api.requestlog import RequestLog
from .api.statusanswers import StatusAnswerCache, StatusAnswers
from .config import Settings, load_settings
from .observability.logs import configure_logging
from .observability.metrics import Metrics
from .observability.readiness import Readiness
from .pgconn import is_postgres
from .scheduling.dispatch import Dispatcher
from .scheduling.engines import EnginePool
from .scheduling.runlimits import limits_for
from .serving.fdlimit import raise_open_file_limit
from .sessions.changefeed import ChangeFeed, process_name
from .sessions.changes import ChangeToken
from .sessions.manager import SessionManager
from .sessions.state import Signals
from .sessions.store import Store, TusStore, default_url
from .sessions.tusuploads import TusUploads
from .specs.registry import ModelRegistry
from .volumes import convert

logger = logging.getLogger("inferserver")


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    settings: Settings = app.state.settings or load_settings()
    app.state.settings = settings
    if not logging.getLogger().handlers:  # `inferserver serve` configures logging itself; other hosts may not
        configure_logging(settings.LOG_FORMAT)
    raise_open_file_limit()  # each worker process: it is the one that holds the connections
    app.state.access = AccessControl.from_settings(settings)  # a bad credentials file stops start-up
    # Password checks get threads of their own: guessers must not queue ahead of upload writes, which use
    # the default executor (filewriter.py).
    app.state.hasher = ThreadPoolExecutor(HASH_THREADS, thread_name_prefix="inferserver-auth")
    if app.state.access is not None:
        logger.info("access control on: users %s, tokens %s", settings.AUTH_USERS_FILE, settings.AUTH_TOKENS_FILE)

    registry = ModelRegistry(settings.MODEL_PATH, check=partial(limits_for, settings))
    directory = registry.directory
    logger.info(
        "serving %d models from %s: %s", len(directory.models), settings.MODEL_PATH, ", ".join(sorted(directory.models))
    )

    # Asked once, off the loop, before any request needs the answer (a child imports SimpleITK: about 0.15 s).
    await asyncio.to_thread(convert.available)
    settings.SESSION_PATH.mkdir(parents=True, exist_ok=True)
    # Every worker process maps the same change token: status answers are cached under it (sessions/changes.py).
    # With PostgreSQL the hosts share SESSION_PATH, where an mmap is not coherent: each process keeps its own
    # token and learns of changes made elsewhere from PostgreSQL's notifications (sessions/changefeed.py).
    shared_database = is_postgres(settings.DATABASE_URL)
    changes = ChangeToken(None if shared_database else settings.SESSION_PATH / ".changes")
    me = process_name()
    store = Store(
        settings.DATABASE_URL or default_url(str(settings.SESSION_PATH)), changes, me if shared_database else None
    )
    await create_schema(store, settings.SESSION_PATH)
    engines = EnginePool(settings)  # a wrong TLS file stops start-up here, naming the engine
    manager = SessionManager(settings, directory, store, Signals())
    app.state.status_answers = StatusAnswers(store.changes)  # api/statusanswers.py
    manager.prepare_root()
    if settings.gpu_pool and settings.WORKER_THREADS * settings.gpus_per_run < len(settings.gpu_pool):
        logger.warning(
            "WORKER_THREADS=%d runs at once with %d GPUs each leaves GPUs of GPUS=%s idle",
            settings.WORKER_THREADS,
            settings.gpus_per_run,
            ",".join(settings.gpu_pool),
        )
    dispatcher = Dispatcher(settings, store, manager, engines)
    metrics = Metrics()
    dispatcher.run_ended = metrics.run_finished
    app.state.models = directory
    app.state.sessions = manager
    app.state.tus = TusUploads(settings, manager, TusStore(store))
    app.state.dispatcher = dispatcher
    app.state.metrics = metrics
    app.state.engines = engines
    app.state.gpu_requests_on = lambda: any(e.gpus.size or e.runner.gpu_requests_on for e in engines)
    app.state.readiness = Readiness(
        engines,
        directory,
        settings.MODEL_PATH,
        settings.SESSION_PATH,
        settings.DISK_RESERVE_BYTES,
        leading=lambda: dispatcher.leadership.leading,
    )

    # Every worker process runs a dispatcher; the dispatch lock lets exactly one of them start runs.
    tasks = [
        asyncio.create_task(dispatcher.run_forever(), name="inferserver-dispatcher"),
        asyncio.create_task(registry.watch(), name="inferserver-models"),
    ]
    if shared_database:
        assert settings.DATABASE_URL is not None  # is_postgres said so; for the type checker
        feed = ChangeFeed(settings.DATABASE_URL, changes, manager.dispatch_wakeup, me)
        tasks.append(asyncio.create_task(feed.run_forever(), name="inferserver-changes"))
    # Start-up leaves ~110,000 objects (FastAPI, pydantic, SQLAlchemy, the specs) that live as long as the process:
    # frozen, the collector stops walking them, and a full collection under load costs 2-5 ms instead of 60-70 ms
    # of CPU, every request waiting (200 status clients). What becomes garbage of them later is not collected.
    gc.collect()
    gc.freeze()
    try:
        yield
    finally:
        for task in tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await manager.close()
        await engines.close()
        await store.close()
        app.state.hasher.shutdown(wait=False, cancel_futures=True)


async def create_schema(store: Store, session_path: Path) -> None:
    """Create the tables once, even when several workers start together."""
    with open(session_path / ".schema.lock", "ab") as lock:  # noqa: ASYNC230  # empty lock file: O(1) local syscall
        await asyncio.to_thread(fcntl.flock, lock, fcntl.LOCK_EX)
        try:
            await store.create_schema()
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def create_app(settings: Settings | None = None) -> FastAPI:
    app = FastAPI(
        title="inferserver",
        version=__version__,
        summary="Runs Docker-packaged medical-imaging models for 3D Slicer and the ablinfer client.",
        lifespan=lifespan,
        # Operation ids are the handlers' names, so generated clients get `put_input`, not `put_input_sessions_...`.
        generate_unique_id_function=lambda route: route.name,
        # A trailing slash is a 404 in the envelope, not a 307 whose Location is built from the client's Host.
        redirect_slashes=False,
        # /docs and /redoc are served from vendored files by api/ui.py: FastAPI's own would load them from a CDN.
        docs_url=None,
        redoc_url=None,
    )
    app.state.settings = settings
    # Added innermost first: RequestLog, then AuthMiddleware, then the status answers, then ConcurrencyLimit (kept
    # answers, and polls waiting for a read in progress, cost nothing and take no slot).
    app.add_middleware(ConcurrencyLimit)
    app.add_middleware(StatusAnswerCache)
    app.add_middleware(AuthMiddleware)
    install_error_handlers(app)
    install_openapi(app)
    app.add_middleware(RequestLog)
    for router in (
        root.router,
        models.router,
        sessions.router,
        tus.router,
        health.router,
        gpus.router,
        operator.router,
    ):
        app.include_router(router)
    ui.install(app)
    return app


app = create_app()
