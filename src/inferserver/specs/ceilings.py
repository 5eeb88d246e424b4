"""A spec's optional `inferserver` section: the limits one model's runs get, within the server's ceilings.

ablinfer keeps unknown top-level fields as they are, so the section is stored as written (a size stays
"16MiB") and `GET /models/{id}` still equals ablinfer's `load_model`; the values are only checked here,
and read in bytes through the properties.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import AfterValidator, ConfigDict, Field

from ..sizes import DOCKER_MIN_MEMORY, parse_size, parse_size_at_least
from .gpus import GpuDemand


def _size_at_least(minimum: int) -> AfterValidator:
    """Checks the size but keeps it as written, so the section goes back out unchanged."""

    def check(value: int | str) -> int | str:
        parse_size_at_least(value, minimum)
        return value

    return AfterValidator(check)


SizeValue = Annotated[int | str, _size_at_least(1)]


class ModelLimits(GpuDemand):
    """Each field is optional; an absent one takes the server's setting. The GPU count comes from GpuDemand."""

    # forbid: a misspelt limit ("memroy") must not silently leave the model unlimited by it.
    model_config = ConfigDict(extra="forbid", strict=True)

    memory: Annotated[int | str, _size_at_least(DOCKER_MIN_MEMORY)] | None = Field(
        None, description='Memory limit, e.g. "16GiB"; at most CONTAINER_MEMORY.'
    )
    cpus: Annotated[int | float, Field(gt=0)] | None = Field(None, description="CPUs; at most CONTAINER_CPUS.")
    pids: Annotated[int, Field(gt=0)] | None = Field(None, description="Processes and threads; at most CONTAINER_PIDS.")
    shm_size: SizeValue | None = Field(None, description='Size of /dev/shm, e.g. "1g"; at most CONTAINER_SHM.')
    timeout: Annotated[int, Field(gt=0)] | None = Field(None, description="Seconds of run time; at most RUN_TIMEOUT.")

    @property
    def memory_bytes(self) -> int | None:
        return None if self.memory is None else parse_size(self.memory)

    @property
    def shm_bytes(self) -> int | None:
        return None if self.shm_size is None else parse_size(self.shm_size)
