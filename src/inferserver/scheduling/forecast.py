"""Where each queued run stands and when it should start: the scheduling policy played forward in time.

The runs now going end after the recent run time of their model; at each end the same `pick` the dispatcher
uses starts what it would start. The order runs start in is the queue position a client sees, and the time
is its estimate. A start that waits on a run of a model with no recent run time has no estimate (its place
is still given, with a guessed run time).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from ..sessions.state import QueuePlace
from .gpupool import Demand
from .placement import OVERTAKE_LIMIT, Room, place

HISTORY = 5  # recent runs of a model that make its estimate
GUESS_SECONDS = 60.0  # only to order starts behind a model never seen yet; never shown


class RunTimes:
    """Recent run times per model (complete runs only: a failure says little about the next run)."""

    def __init__(self) -> None:
        self._seconds: dict[str, deque[float]] = {}

    def add(self, model_id: str, seconds: float) -> None:
        self._seconds.setdefault(model_id, deque(maxlen=HISTORY)).append(max(seconds, 0.0))

    def estimate(self, model_id: str) -> float | None:
        recent = self._seconds.get(model_id)
        return sum(recent) / len(recent) if recent else None


@dataclass(frozen=True)
class Going:
    """A run in progress: its devices and how long it should still take (None: unknown), and its engine."""

    devices: tuple[str, ...]
    left: float | None
    engine: str = ""


@dataclass(frozen=True)
class Queued:
    demand: Demand
    takes: float | None  # expected run time; None: unknown


@dataclass(frozen=True)
class Shape:
    """An engine that answers, as the forecast sees it: its GPU pool, its runs at once and its labels."""

    engine: str
    devices: tuple[str, ...]
    slots: int
    labels: Mapping[str, str] = field(default_factory=dict)


def forecast(
    going: Sequence[Going],
    queue: Sequence[Queued],
    devices: Sequence[str],
    slots: int,
    overtaken: dict[str, int],
    now: float,
    limit: int = OVERTAKE_LIMIT,
) -> dict[str, QueuePlace]:
    """`forecast_pool` for one engine (`slots`: runs at once)."""
    return forecast_pool(going, queue, [Shape("", tuple(devices), slots)], overtaken, now, limit)


def forecast_pool(
    going: Sequence[Going],
    queue: Sequence[Queued],
    engines: Sequence[Shape],
    overtaken: dict[str, int],
    now: float,
    limit: int = OVERTAKE_LIMIT,
) -> dict[str, QueuePlace]:
    """Each queued session's place, by playing `place` forward from `now` over every engine."""
    known = [g.left for g in going if g.left is not None] + [q.takes for q in queue if q.takes is not None]
    guess = sum(known) / len(known) if known else GUESS_SECONDS
    shapes = {e.engine: e for e in engines}
    # (end time, engine, devices, whether the end time is known); runs of an engine not shown here are left out
    active = [
        (now + (g.left if g.left is not None else guess), g.engine, g.devices, g.left is not None)
        for g in going
        if g.engine in shapes
    ]
    held = {(a[1], d) for a in active for d in a[2]}
    free = {e.engine: [d for d in e.devices if (e.engine, d) not in held] for e in engines}
    pending = list(queue)
    counts = dict(overtaken)
    t, certain = now, True
    places: dict[str, QueuePlace] = {}
    while pending:
        going_on = {name: sum(a[1] == name for a in active) for name in shapes}
        rooms = [
            Room(e.engine, tuple(free[e.engine]), e.slots - going_on[e.engine], going_on[e.engine], e.labels)
            for e in engines
        ]
        starts = place([q.demand for q in pending], rooms, counts, limit)
        started = {s.session_id for s in starts}
        for start in starts:
            item = next(q for q in pending if q.demand.session_id == start.session_id)
            places[start.session_id] = QueuePlace(len(places) + 1, t if certain else None)
            free[start.engine] = [d for d in free[start.engine] if d not in start.devices]
            takes = item.takes if item.takes is not None else guess
            active.append((t + takes, start.engine, start.devices, item.takes is not None))
        pending = [q for q in pending if q.demand.session_id not in started]
        if not pending or not active:
            break
        active.sort(key=lambda a: a[0])
        end, engine, freed, end_known = active.pop(0)
        t, certain = max(t, end), certain and end_known
        back = set(free[engine]) | set(freed)
        free[engine] = [d for d in shapes[engine].devices if d in back]
    for item in pending:  # cannot start at all (nothing running frees enough): last, no estimate
        places[item.demand.session_id] = QueuePlace(len(places) + 1)
    return places
