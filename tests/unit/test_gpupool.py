"""The GPU pool and the start policy: FIFO, small runs not held behind large ones, no starvation."""

from __future__ import annotations

import pytest

from inferserver.scheduling.gpupool import Demand, GpuPool, Start, pick


def demands(*pairs: tuple[str, int]) -> list[Demand]:
    return [Demand(sid, n) for sid, n in pairs]


def test_runs_start_in_queue_order_each_with_its_own_devices() -> None:
    starts = pick(demands(("a", 1), ("b", 1), ("c", 1)), ["0", "1", "2", "3"], slots=8, overtaken={})
    assert starts == [Start("a", ("0",)), Start("b", ("1",)), Start("c", ("2",))]


def test_no_more_runs_than_slots_and_none_that_do_not_fit() -> None:
    assert pick(demands(("a", 1), ("b", 1)), ["0", "1"], slots=1, overtaken={}) == [Start("a", ("0",))]
    assert pick(demands(("a", 2), ("b", 2)), ["0", "1", "2"], slots=8, overtaken={}) == [Start("a", ("0", "1"))]


def test_a_cpu_only_run_and_one_that_fits_pass_a_run_that_does_not_fit() -> None:
    overtaken: dict[str, int] = {}
    starts = pick(demands(("big", 4), ("cpu", 0), ("small", 1)), ["2", "3"], slots=8, overtaken=overtaken)
    assert starts == [Start("cpu", ()), Start("small", ("2",))]
    assert overtaken == {"big": 1}  # only a run taking GPUs counts as overtaking


def test_a_run_overtaken_often_enough_holds_back_later_gpu_runs_but_not_cpu_runs() -> None:
    overtaken = {"big": 4}
    starts = pick(demands(("big", 4), ("small", 1), ("cpu", 0)), ["2", "3"], slots=8, overtaken=overtaken, limit=4)
    assert starts == [Start("cpu", ())]


def test_a_large_run_is_not_starved_by_a_stream_of_small_ones() -> None:
    """Four GPUs, small runs of one GPU arriving all the time: the four-GPU run still gets its turn."""
    pool = GpuPool(["0", "1", "2", "3"])
    overtaken: dict[str, int] = {}
    queue = demands(("big", 4))
    running: list[str] = []
    for step in range(40):
        queue.append(Demand(f"s{step}", 1))
        for start in pick(queue, pool.free(), slots=8, overtaken=overtaken):
            pool.hold(start.session_id, start.devices)
            running.append(start.session_id)
            queue = [d for d in queue if d.session_id != start.session_id]
        if "big" in running:
            assert pool.held_by("big") == ("0", "1", "2", "3")
            return
        pool.release(running.pop(0))  # the oldest run ends
    pytest.fail(f"the four-GPU run never started; overtaken {overtaken}")


def test_the_pool_knows_who_holds_what_and_refuses_a_second_holder() -> None:
    pool = GpuPool(["0", "1", "GPU-aa"])
    pool.hold("s1", ["1"])
    assert pool.free() == ["0", "GPU-aa"]
    assert pool.holders() == {"0": None, "1": "s1", "GPU-aa": None}
    with pytest.raises(ValueError, match="held by session s1"):
        pool.hold("s2", ["1"])
    with pytest.raises(ValueError, match="not in the pool"):
        pool.hold("s2", ["7"])
    assert pool.release("s1") == ("1",)
    assert pool.free() == ["0", "1", "GPU-aa"]
