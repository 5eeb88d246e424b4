"""Queue places and start estimates: the start policy played forward over recent run times."""

from __future__ import annotations

from inferserver.scheduling.forecast import Going, Queued, RunTimes, forecast
from inferserver.scheduling.gpupool import Demand
from inferserver.sessions.state import QueuePlace

NOW = 1000.0


def queued(sid: str, gpus: int, takes: float | None) -> Queued:
    return Queued(Demand(sid, gpus), takes)


def test_fifo_with_one_slot_adds_up_the_run_times_ahead() -> None:
    places = forecast([Going((), 120)], [queued("a", 0, 60), queued("b", 0, 60)], (), 1, {}, NOW)
    assert places == {"a": QueuePlace(1, NOW + 120), "b": QueuePlace(2, NOW + 180)}


def test_the_position_is_the_order_runs_will_start_in_not_the_order_they_came() -> None:
    # Two GPUs, one held for 10 min: the two-GPU run waits, the CPU-only run behind it starts first.
    places = forecast([Going(("0",), 600)], [queued("big", 2, 60), queued("cpu", 0, 60)], ("0", "1"), 4, {}, NOW)
    assert places["cpu"] == QueuePlace(1, NOW)
    assert places["big"] == QueuePlace(2, NOW + 600)


def test_no_estimate_behind_a_model_never_timed() -> None:
    places = forecast([Going((), None)], [queued("a", 0, 60), queued("b", 0, None)], (), 1, {}, NOW)
    assert places["a"].position == 1 and places["a"].starts_at is None
    assert places["b"].position == 2 and places["b"].starts_at is None


def test_the_waiting_line_keeps_the_clients_prefix_and_adds_the_estimate() -> None:
    assert QueuePlace(3).line(NOW) == "Waiting, position in queue is 3"
    assert QueuePlace(3, NOW + 230).line(NOW) == "Waiting, position in queue is 3 (about 4 min)"
    assert QueuePlace(1, NOW).line(NOW) == "Waiting, position in queue is 1 (about 1 min)"
    assert QueuePlace(2, NOW + 5 * 3600).line(NOW) == "Waiting, position in queue is 2 (about 5 h)"


def test_run_times_average_the_recent_runs_of_each_model() -> None:
    times = RunTimes()
    assert times.estimate("seg") is None
    for seconds in (10, 20, 30, 40, 50, 60):
        times.add("seg", seconds)
    assert times.estimate("seg") == 40  # the last five
    assert times.estimate("other") is None
