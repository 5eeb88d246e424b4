"""Who holds which GPU, and which queued runs start next: plain data, no store, no Docker.

The policy (`pick`): the queue is FIFO, but a run that needs no GPU, or fits the GPUs free now, is not held
behind one that does not fit. So that a large run is not starved by a stream of small ones, each time a later
run takes GPUs past it counts as an overtake; once a run has been overtaken OVERTAKE_LIMIT times, later runs
that need GPUs wait behind it (CPU-only runs still go: they take nothing it waits for), the GPUs it needs
drain free as running runs end, and it starts.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from .placement import OVERTAKE_LIMIT, Need, Room, place

# A queued run as one engine's pool sees it: GPUs needed (0: CPU-only), engine labels required.
Demand = Need


@dataclass(frozen=True)
class Start:
    session_id: str
    devices: tuple[str, ...]


class GpuPool:
    """The devices of GPUS=<ids> and the session holding each one."""

    def __init__(self, devices: Sequence[str]) -> None:
        self.devices = tuple(devices)
        self._holder: dict[str, str] = {}

    @property
    def size(self) -> int:
        return len(self.devices)

    def free(self) -> list[str]:
        """Free devices in the order GPUS lists them."""
        return [d for d in self.devices if d not in self._holder]

    def hold(self, session_id: str, devices: Iterable[str]) -> None:
        devices = tuple(devices)
        for device in devices:
            if device not in self.devices:
                raise ValueError(f"GPU {device!r} is not in the pool {','.join(self.devices)}")
            holder = self._holder.get(device)
            if holder is not None and holder != session_id:
                raise ValueError(f"GPU {device} is held by session {holder}")
        for device in devices:
            self._holder[device] = session_id

    def release(self, session_id: str) -> tuple[str, ...]:
        freed = tuple(d for d, holder in self._holder.items() if holder == session_id)
        for device in freed:
            del self._holder[device]
        return freed

    def held_by(self, session_id: str) -> tuple[str, ...]:
        return tuple(d for d in self.devices if self._holder.get(d) == session_id)

    def holders(self) -> dict[str, str | None]:
        """Every device, in pool order, with the session holding it or None."""
        return {d: self._holder.get(d) for d in self.devices}


def pick(
    queue: Sequence[Demand],
    free: Sequence[str],
    slots: int,
    overtaken: dict[str, int],
    limit: int = OVERTAKE_LIMIT,
) -> list[Start]:
    """The runs to start now, in queue order, with their devices; counts overtakes into `overtaken`.

    One engine's case of `placement.place`: a single engine is a pool of one, with the same policy."""
    placements = place(queue, [Room("", tuple(free), slots)], overtaken, limit)
    return [Start(p.session_id, p.devices) for p in placements]
