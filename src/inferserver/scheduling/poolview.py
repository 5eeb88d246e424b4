"""What the pool looks like now, for `GET /gpus` and `/metrics` in any worker process: each engine asked at once,
its GPU holds and runs read from the store (the dispatcher may be another process)."""

from __future__ import annotations

from dataclasses import dataclass

from ..sessions.store import Store
from .engines import EnginePool, split_hold


@dataclass(frozen=True)
class EngineView:
    name: str
    url: str
    up: bool
    problem: str | None
    devices: list[tuple[str, str | None]]  # each device of its pool with the session holding it
    runs: int  # runs placed on it now (going, starting, or waiting for it to come back)
    max_runs: int
    labels: dict[str, str]


def hold_place(engines: EnginePool, key: str) -> tuple[str, str]:
    """(engine, device) of a GPU hold's key in the store. A hold written before engines were named is a bare device
    id of the one engine."""
    if ":" in key:
        return split_hold(key)
    only = engines.only()
    return (only.name if only else "", key)


def hold_holders(engines: EnginePool, holds: dict[str, list[str]]) -> dict[tuple[str, str], str]:
    """(engine, device) -> the session holding it, from the store's holds (session -> keys)."""
    return {hold_place(engines, key): session_id for session_id, keys in holds.items() for key in keys}


async def engine_views(engines: EnginePool, store: Store) -> list[EngineView]:
    down = await engines.problems()
    holders = hold_holders(engines, await store.gpu_holds())
    runs: dict[str, int] = {}
    for placed in (await store.placed_runs()).values():
        runs[placed.engine] = runs.get(placed.engine, 0) + 1
    return [
        EngineView(
            name=e.name,
            url=e.entry.url,
            up=e.name not in down,
            problem=down.get(e.name),
            devices=[(d, holders.get((e.name, d))) for d in e.gpus.devices],
            runs=runs.get(e.name, 0),
            max_runs=e.entry.runs_at_once,
            labels=dict(e.entry.labels),
        )
        for e in engines
    ]
