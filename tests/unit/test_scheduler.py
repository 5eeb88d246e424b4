"""The run queue: FIFO start order, at most `slots` at once, 1-based positions, failures and stop."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from inferserver.runner.scheduler import Scheduler


class Jobs:
    """Work whose start and end the test controls: each job runs until its gate opens."""

    def __init__(self) -> None:
        self.started: list[str] = []
        self.finished: list[str] = []
        self.cancelled: list[str] = []
        self.gates: dict[str, asyncio.Event] = {}
        self.running = 0
        self.most_at_once = 0

    def work(self, job_id: str, fail: bool = False):
        self.gates[job_id] = asyncio.Event()

        async def run() -> None:
            self.started.append(job_id)
            self.running += 1
            self.most_at_once = max(self.most_at_once, self.running)
            try:
                await self.gates[job_id].wait()
                if fail:
                    raise RuntimeError(f"{job_id} broke")
                self.finished.append(job_id)
            except asyncio.CancelledError:
                self.cancelled.append(job_id)
                raise
            finally:
                self.running -= 1

        return run

    def release(self, job_id: str) -> None:
        self.gates[job_id].set()


async def settle(rounds: int = 20) -> None:
    """Let the scheduler's tasks run until nothing more happens without the test's help."""
    for _ in range(rounds):
        await asyncio.sleep(0)


async def until(predicate, timeout: float = 2.0) -> None:
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.001)


@pytest.fixture
async def scheduler_factory() -> AsyncIterator:
    made: list[Scheduler] = []

    def make(slots: int) -> Scheduler:
        s = Scheduler(slots)
        made.append(s)
        return s

    yield make
    for s in made:
        await s.stop()


def test_slots_must_be_at_least_one() -> None:
    with pytest.raises(ValueError, match="slots"):
        Scheduler(0)


async def test_one_slot_starts_runs_in_submission_order(scheduler_factory) -> None:
    jobs = Jobs()
    s = scheduler_factory(1)
    names = ["c", "a", "e", "b", "d"]  # not alphabetical: the order is the submission order
    for name in names:
        s.submit(name, jobs.work(name))
    s.start()
    for index, name in enumerate(names):
        await until(lambda: len(jobs.started) == index + 1)
        await settle()
        assert jobs.started == names[: index + 1]  # the next one has not started yet
        assert jobs.running == 1
        jobs.release(name)
    await until(lambda: jobs.finished == names)
    assert s.queued == 0


async def test_work_does_not_start_before_its_slot_is_free(scheduler_factory) -> None:
    jobs = Jobs()
    s = scheduler_factory(1)
    s.start()
    s.submit("first", jobs.work("first"))
    s.submit("second", jobs.work("second"))
    await until(lambda: jobs.started == ["first"])
    await settle()
    assert jobs.started == ["first"]
    assert s.is_running("first") and not s.is_running("second")
    jobs.release("first")
    await until(lambda: jobs.started == ["first", "second"])
    assert not s.is_running("first") and s.is_running("second")


async def test_never_more_than_slots_at_once(scheduler_factory) -> None:
    jobs = Jobs()
    s = scheduler_factory(2)
    names = [f"j{i}" for i in range(6)]
    for name in names:
        s.submit(name, jobs.work(name))
    s.start()
    await until(lambda: len(jobs.started) == 2)
    await settle()
    assert jobs.started == ["j0", "j1"]
    assert s.queued == 4
    # Finish them out of order; each end lets exactly one more start, still in submission order.
    for done, expect_started in [("j1", 3), ("j0", 4), ("j3", 5), ("j2", 6), ("j4", 6), ("j5", 6)]:
        jobs.release(done)
        await until(lambda: done in jobs.finished)
        await settle()
        assert len(jobs.started) == expect_started
        assert jobs.running <= 2
    await until(lambda: len(jobs.finished) == 6)
    assert jobs.started == names
    assert jobs.most_at_once == 2


async def test_positions_count_from_one_and_move_as_runs_start(scheduler_factory) -> None:
    jobs = Jobs()
    s = scheduler_factory(1)
    for name in ["a", "b", "c"]:
        s.submit(name, jobs.work(name))
    # Queued but not started: the first to start is position 1.
    assert [s.position(n) for n in ["a", "b", "c"]] == [1, 2, 3]
    s.start()
    await until(lambda: jobs.started == ["a"])
    assert s.position("a") is None  # running, not waiting
    assert [s.position("b"), s.position("c")] == [1, 2]
    jobs.release("a")
    await until(lambda: jobs.started == ["a", "b"])
    assert s.position("b") is None
    assert s.position("c") == 1
    jobs.release("b")
    jobs.release("c")
    await until(lambda: len(jobs.finished) == 3)
    assert s.position("c") is None
    assert s.position("never-submitted") is None


async def test_a_late_submission_goes_to_the_back(scheduler_factory) -> None:
    jobs = Jobs()
    s = scheduler_factory(1)
    s.start()
    s.submit("a", jobs.work("a"))
    s.submit("b", jobs.work("b"))
    await until(lambda: jobs.started == ["a"])
    s.submit("late", jobs.work("late"))
    assert s.position("b") == 1
    assert s.position("late") == 2


async def test_a_job_id_cannot_be_queued_twice(scheduler_factory) -> None:
    jobs = Jobs()
    s = scheduler_factory(1)
    s.submit("a", jobs.work("a"))
    with pytest.raises(ValueError, match="a"):
        s.submit("a", jobs.work("a"))
    s.start()
    await until(lambda: s.is_running("a"))
    with pytest.raises(ValueError):
        s.submit("a", jobs.work("a"))


async def test_a_failing_job_frees_its_slot(scheduler_factory, caplog: pytest.LogCaptureFixture) -> None:
    jobs = Jobs()
    s = scheduler_factory(1)
    s.submit("bad", jobs.work("bad", fail=True))
    s.submit("good", jobs.work("good"))
    s.start()
    await until(lambda: jobs.started == ["bad"])
    jobs.release("bad")
    await until(lambda: jobs.started == ["bad", "good"])
    assert not s.is_running("bad")
    assert "bad" in caplog.text  # the bug guard logs which run raised
    jobs.release("good")
    await until(lambda: jobs.finished == ["good"])


async def test_the_scheduler_keeps_working_after_many_failures(scheduler_factory) -> None:
    jobs = Jobs()
    s = scheduler_factory(2)
    for i in range(4):
        s.submit(f"bad{i}", jobs.work(f"bad{i}", fail=True))
        jobs.release(f"bad{i}")
    s.submit("good", jobs.work("good"))
    jobs.release("good")
    s.start()
    await until(lambda: jobs.finished == ["good"])
    assert s.queued == 0
    assert not any(s.is_running(n) for n in ["bad0", "bad1", "bad2", "bad3", "good"])


async def test_stop_cancels_running_work_and_starts_nothing_more() -> None:
    jobs = Jobs()
    s = Scheduler(2)
    for name in ["a", "b", "c"]:
        s.submit(name, jobs.work(name))
    s.start()
    await until(lambda: len(jobs.started) == 2)
    await s.stop()
    assert sorted(jobs.cancelled) == ["a", "b"]
    assert jobs.finished == []
    assert not s.is_running("a") and not s.is_running("b")
    await settle()
    assert jobs.started == ["a", "b"]  # "c" was never started
    assert jobs.running == 0


async def test_stop_is_safe_twice_and_before_start() -> None:
    s = Scheduler(1)
    await s.stop()
    s.start()
    await s.stop()
    await s.stop()


async def test_on_change_is_called_when_positions_move(scheduler_factory) -> None:
    jobs = Jobs()
    s = scheduler_factory(1)
    seen: list[tuple[int | None, int | None]] = []
    s.on_change = lambda: seen.append((s.position("b"), s.position("c")))
    for name in ["a", "b", "c"]:
        s.submit(name, jobs.work(name))
    s.start()
    await until(lambda: (1, 2) in seen)  # "a" started: b is next, c after it
    jobs.release("a")
    await until(lambda: (None, 1) in seen)  # "b" started: c moved up
    jobs.release("b")
    await until(lambda: (None, None) in seen)  # "c" started: nobody waits
    jobs.release("c")
    await until(lambda: len(jobs.finished) == 3)
    # Every call saw a consistent queue, and positions only ever moved forward.
    assert seen.index((1, 2)) < seen.index((None, 1)) < seen.index((None, None))


async def test_on_change_is_called_when_a_failing_run_frees_the_slot(scheduler_factory) -> None:
    jobs = Jobs()
    s = scheduler_factory(1)
    s.submit("bad", jobs.work("bad", fail=True))
    s.submit("next", jobs.work("next"))
    positions: list[int | None] = []
    s.on_change = lambda: positions.append(s.position("next"))
    s.start()
    await until(lambda: 1 in positions)
    jobs.release("bad")
    await until(lambda: None in positions)
    assert jobs.started == ["bad", "next"]
