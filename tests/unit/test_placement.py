"""Placement over several engines: where each queued run goes, fairness across the pool, the forecast over it."""

from __future__ import annotations

from inferserver.scheduling.forecast import Going, Queued, Shape, forecast_pool
from inferserver.scheduling.placement import OVERTAKE_LIMIT, Need, Placement, Room, place


def rooms(*specs: tuple[str, int, int]) -> list[Room]:
    """(engine, free GPUs, slots) each; devices are 0..n-1 on every engine, as on real hosts."""
    return [Room(name, tuple(str(i) for i in range(free)), slots) for name, free, slots in specs]


def test_runs_spread_over_engines_least_loaded_first() -> None:
    queue = [Need(f"s{i}", 1) for i in range(6)]
    placed = place(queue, rooms(("a", 2, 2), ("b", 2, 2), ("c", 2, 2)), {})
    assert [(p.engine, p.devices) for p in placed] == [
        ("a", ("0",)),
        ("b", ("0",)),
        ("c", ("0",)),
        ("a", ("1",)),
        ("b", ("1",)),
        ("c", ("1",)),
    ]


def test_a_busy_engine_gets_the_next_run_only_after_the_idle_ones() -> None:
    pool = [Room("a", ("1",), 1, going=1), Room("b", ("0", "1"), 2, going=0)]
    assert place([Need("s", 1)], pool, {}) == [Placement("s", "b", ("0",))]


def test_a_run_never_gets_gpus_of_two_engines() -> None:
    assert place([Need("big", 2)], rooms(("a", 1, 1), ("b", 1, 1)), {}) == []


def test_engine_labels_are_required() -> None:
    pool = [Room("plain", ("0",), 1), Room("fast", ("0",), 1, labels={"gpu": "a100", "zone": "x"})]
    assert place([Need("s", 1, {"gpu": "a100"})], pool, {}) == [Placement("s", "fast", ("0",))]
    assert place([Need("s", 1, {"gpu": "h100"})], pool, {}) == []


def test_a_cpu_run_passes_a_waiting_gpu_run_and_no_overtake_is_counted() -> None:
    overtaken: dict[str, int] = {}
    placed = place([Need("big", 2), Need("cpu", 0)], rooms(("a", 1, 2)), overtaken)
    assert placed == [Placement("cpu", "a", ())] and overtaken == {}


def test_overtakes_count_across_the_pool_and_stop_at_the_limit() -> None:
    overtaken: dict[str, int] = {}
    placed = place([Need("big", 2), Need("s1", 1), Need("s2", 1)], rooms(("a", 1, 2), ("b", 1, 2)), overtaken)
    assert {p.session_id for p in placed} == {"s1", "s2"} and overtaken == {"big": 2}
    overtaken = {"big": OVERTAKE_LIMIT}
    placed = place([Need("big", 2), Need("s1", 1), Need("cpu", 0)], rooms(("a", 1, 2), ("b", 1, 2)), overtaken)
    assert placed == [Placement("cpu", "a", ())]  # GPU runs wait behind it; CPU-only ones still go


def test_no_slot_on_any_engine_starts_nothing() -> None:
    assert place([Need("cpu", 0), Need("g", 1)], rooms(("a", 2, 0), ("b", 2, 0)), {}) == []


def test_an_engine_that_is_down_has_no_room_and_gets_nothing() -> None:
    # The dispatcher builds rooms only for engines that answer: what is left is placed on the others.
    placed = place([Need(f"s{i}", 1) for i in range(3)], rooms(("a", 1, 1), ("c", 1, 1)), {})
    assert [p.engine for p in placed] == ["a", "c"]


def test_the_forecast_counts_every_engine() -> None:
    shapes = [Shape("a", ("0",), 1), Shape("b", ("0",), 1)]
    going = [Going(("0",), 10, "a"), Going(("0",), 20, "b")]
    queue = [Queued(Need(f"q{i}", 1), 30) for i in range(3)]
    places = forecast_pool(going, queue, shapes, {}, 0.0)
    assert [(places[f"q{i}"].position, places[f"q{i}"].starts_at) for i in range(3)] == [(1, 10), (2, 20), (3, 40)]
    one_engine = forecast_pool([going[0]], queue, shapes[:1], {}, 0.0)
    assert [one_engine[f"q{i}"].starts_at for i in range(3)] == [10, 40, 70]
