"""Which queued runs start now, and on which engine: plain data, no store, no Docker.

The queue is FIFO across the whole pool, with gpupool's rule against starvation: a run that fits nowhere
now does not hold back later runs that fit, but each later run that takes GPUs past it counts as an
overtake; once it has been overtaken `limit` times, later runs that need GPUs wait behind it (CPU-only runs
still go) until the GPUs it needs drain free on some engine. A run goes to an engine that is up, has a run
slot, the free GPUs it needs and every label it requires; of those, the least loaded (fewest runs going,
then most GPUs free, then the order of ENGINES), so that runs spread over the pool.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace

OVERTAKE_LIMIT = 4


@dataclass(frozen=True)
class Need:
    """A queued run: how many GPUs it needs (0: CPU-only) and the engine labels its model requires."""

    session_id: str
    gpus: int
    labels: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Room:
    """What one engine that answers can take now."""

    engine: str
    free: tuple[str, ...]  # its free devices, in its pool's order
    slots: int  # runs it may still start (its max_runs less the runs going on it)
    going: int = 0  # runs going on it now
    labels: Mapping[str, str] = field(default_factory=dict)

    def suits(self, need: Need) -> bool:
        return all(self.labels.get(k) == v for k, v in need.labels.items())

    def fits(self, need: Need) -> bool:
        return self.slots > 0 and need.gpus <= len(self.free) and self.suits(need)


@dataclass(frozen=True)
class Placement:
    session_id: str
    engine: str
    devices: tuple[str, ...]


def place(
    queue: Sequence[Need],
    rooms: Sequence[Room],
    overtaken: dict[str, int],
    limit: int = OVERTAKE_LIMIT,
) -> list[Placement]:
    """The runs to start now, in queue order, each with its engine and devices; counts overtakes into `overtaken`."""
    order = {room.engine: i for i, room in enumerate(rooms)}
    room_of = {room.engine: room for room in rooms}
    placements: list[Placement] = []
    passed: list[str] = []  # GPU runs that fit nowhere, ahead of the one being looked at
    held_back = False  # a run overtaken `limit` times: no later run takes GPUs before it
    for need in queue:
        if not any(r.slots > 0 for r in room_of.values()):
            break
        fitting = [r for r in room_of.values() if r.fits(need)]
        if fitting and (need.gpus == 0 or not held_back):
            room = min(fitting, key=lambda r: (r.going, -len(r.free), order[r.engine]))
            devices = room.free[: need.gpus]
            room_of[room.engine] = replace(
                room, free=room.free[need.gpus :], slots=room.slots - 1, going=room.going + 1
            )
            placements.append(Placement(need.session_id, room.engine, devices))
            if need.gpus:
                for session_id in passed:
                    overtaken[session_id] = overtaken.get(session_id, 0) + 1
            continue
        if need.gpus == 0:
            continue  # no slot on an engine it suits: it takes nothing a GPU run waits for
        passed.append(need.session_id)
        if overtaken.get(need.session_id, 0) >= limit:
            held_back = True
    return placements
