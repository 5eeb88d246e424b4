"""The FastAPI application: routers, error envelope, and the lifespan that owns the server's state.

`create_app()` is the factory; `app` is the module-level instance for `uvicorn inferserver.app:app`
and gunicorn. Settings are read when the application starts, so importing this module never fails.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from . import __version__
from .api import models, root, sessions
from .api.envelope import install_error_handlers
from .config import Settings, load_settings
from .runner.docker import DockerBackend
from .runner.execute import Runner
from .runner.scheduler import Scheduler
from .sessions.manager import SessionManager
from .specs.directory import load_model_directory

logger = logging.getLogger("inferserver")


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings: Settings = app.state.settings or load_settings()
    app.state.settings = settings

    directory = load_model_directory(settings.MODEL_PATH)
    for error in directory.errors:
        logger.error("model spec not served: %s", error)
    logger.info("serving %d models from %s: %s", len(directory.models), settings.MODEL_PATH, ", ".join(sorted(directory.models)))

    backend = DockerBackend()
    scheduler = Scheduler(settings.WORKER_THREADS)
    manager = SessionManager(settings, directory, Runner(backend, settings.GPUS, settings.CONTAINER_NETWORK), scheduler)
    manager.prepare_root()
    app.state.models = directory
    app.state.sessions = manager

    scheduler.start()
    cleanup = asyncio.create_task(manager.cleanup_forever()) if settings.CLEANUP_TIMER != -1 else None
    try:
        yield
    finally:
        if cleanup is not None:
            cleanup.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await cleanup
        await scheduler.stop()
        await backend.close()


def create_app(settings: Settings | None = None) -> FastAPI:
    app = FastAPI(
        title="inferserver",
        version=__version__,
        summary="Runs Docker-packaged medical-imaging models for 3D Slicer and the ablinfer client.",
        lifespan=lifespan,
    )
    app.state.settings = settings
    install_error_handlers(app)
    for router in (root.router, models.router, sessions.router):
        app.include_router(router)
    return app


app = create_app()
