"""The limits one run of a model gets: the spec's `inferserver` section, within the server's ceilings.

The settings are both the ceilings and the defaults. The same function checks every spec when the model
directory is loaded (a spec asking above a ceiling is not served) and fills each run's job, so a run
never meets a limit the loader did not accept.
"""

from __future__ import annotations

from collections.abc import Callable

from ..config import Settings
from ..runner.jobs import RunLimits
from ..sizes import human_size
from ..specs.errors import SpecError
from ..specs.model import ModelSpec


def limits_for(settings: Settings, spec: ModelSpec) -> RunLimits:
    """RunLimits for `spec`; SpecError naming each field that asks above the server's ceiling."""
    own = spec.inferserver
    problems: list[str] = []

    def pick(
        field: str,
        asked: int | float | None,
        ceiling: int | float,
        setting: str,
        show: Callable[[float], str] = "{:g}".format,
    ) -> int | float:
        if asked is None:
            return ceiling
        if ceiling and asked > ceiling:  # a ceiling of 0 (CONTAINER_CPUS) means none
            problems.append(
                f"inferserver/{field}: {show(asked)} is above the server's limit of {show(ceiling)} ({setting})"
            )
        return asked

    def size(n: float) -> str:
        return human_size(int(n))

    limits = RunLimits(
        memory=int(
            pick("memory", own.memory_bytes if own else None, settings.CONTAINER_MEMORY, "CONTAINER_MEMORY", size)
        ),
        cpus=float(pick("cpus", own.cpus if own else None, settings.CONTAINER_CPUS, "CONTAINER_CPUS")),
        pids=int(pick("pids", own.pids if own else None, settings.CONTAINER_PIDS, "CONTAINER_PIDS")),
        shm_size=int(pick("shm_size", own.shm_bytes if own else None, settings.CONTAINER_SHM, "CONTAINER_SHM", size)),
        timeout=int(
            pick("timeout", own.timeout if own else None, settings.RUN_TIMEOUT, "RUN_TIMEOUT", lambda s: f"{s} s")
        ),
        log_bytes=settings.LOG_MAX_BYTES,
        output_bytes=settings.MAX_OUTPUT_BYTES,
        disk_reserve=settings.DISK_RESERVE_BYTES,
    )
    if problems:
        raise SpecError("; ".join(problems))
    return limits
