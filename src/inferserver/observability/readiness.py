"""Readiness: what must hold for the server to be useful, each failure as a reason an operator can act on."""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ..scheduling.engines import EnginePool
from ..sessions.quotas import free_bytes
from ..sizes import human_size, rough_size
from ..specs.directory import ModelDirectory


@dataclass(frozen=True)
class Report:
    problems: list[str]  # empty: ready
    engines_down: list[str]  # engines that do not answer while others do (ready, with fewer engines)


@dataclass
class Readiness:
    engines: EnginePool
    models: ModelDirectory
    model_path: Path
    session_path: Path
    disk_reserve: int = 0  # DISK_RESERVE_BYTES
    leading: Callable[[], bool] = lambda: True  # does this process dispatch runs?

    def role(self) -> str:
        """ "dispatcher", or "standby": it serves every request, another process (perhaps host) starts the runs."""
        return "dispatcher" if self.leading() else "standby"

    async def report(self) -> Report:
        """Ready while at least one engine answers; the ones that do not are named either way."""
        found: list[str] = []
        down = await self.engines.problems()
        if len(down) == len(self.engines.engines):
            found.extend(down.values())
        if not self.model_path.is_dir():
            found.append(f"model directory {self.model_path} does not exist")
        elif not self.models.models:
            found.append(f"no model is served from {self.model_path}")
        if not _writable(self.session_path):
            found.append(f"SESSION_PATH {self.session_path} is not writable")
        elif (free := free_bytes(self.session_path)) < self.disk_reserve:
            found.append(
                f"disk space: SESSION_PATH {self.session_path} has {rough_size(free)} free, less than "
                f"DISK_RESERVE_BYTES ({human_size(self.disk_reserve)}); new sessions and uploads are refused with 507"
            )
        return Report(found, [] if found else list(down.values()))


def _writable(path: Path) -> bool:
    # os.access lies for root and on read-only mounts; creating a file is the real test.
    try:
        with tempfile.NamedTemporaryFile(dir=path, prefix=".readyz-"):
            return True
    except OSError:
        return False
