"""The GPU part of a spec's optional `inferserver` section: how many GPUs one run of the model needs.

ablinfer keeps unknown top-level fields as they are, so the section goes back out as written and
`GET /models/{id}` still equals ablinfer's `load_model`. Kept as its own small model so the section's other
parts (run limits) can sit beside it.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field


class GpuDemand(BaseModel):
    # forbid: a misspelt key ("gpu") must not silently give the model the server's default.
    model_config = ConfigDict(extra="forbid", strict=True)

    gpus: Annotated[int, Field(ge=0)] | None = Field(
        None,
        description="GPUs one run needs from the server's pool (GPUS lists ids); 0: CPU-only, it never waits "
        "for a GPU and gets no device request. Absent: GPUS_PER_RUN.",
    )
    engine_labels: dict[str, str] | None = Field(
        None,
        description='Labels an engine of ENGINES must carry to run the model, e.g. {"gpu": "a100"}; absent: any.',
    )
