"""Choosing the dispatcher with PostgreSQL's advisory lock: what a leader does when its connection is in doubt.

A connection that vanishes without a word, or answers too late, cannot be made on demand by a real PostgreSQL in a
unit test; the two-host integration tests (tests/integration/test_two_hosts.py) do it for real with one."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from inferserver import pgconn
from inferserver.scheduling import leadership
from inferserver.scheduling.leadership import (
    LOCK_KEY,
    FileLeadership,
    PostgresLeadership,
    leadership_for,
)

URL = "postgresql+asyncpg://inferserver:secret@db.example:5433/sessions"


class Connection:
    """What PostgresLeadership uses of an asyncpg connection."""

    def __init__(self, grants: list[bool]) -> None:
        self.grants = grants  # answers to pg_try_advisory_lock, in turn (the last one repeats)
        self.hang = False  # SELECT 1 never answers (a network that drops every packet)
        self.closed = False
        self.on_close: list[Callable[[Any], None]] = []
        self.asked: list[tuple[str, tuple[object, ...]]] = []

    async def fetchval(self, query: str, *args: object) -> object:
        self.asked.append((query, args))
        if "pg_try_advisory_lock" in query:
            return self.grants.pop(0) if len(self.grants) > 1 else self.grants[0]
        if self.hang:
            await asyncio.Future()
        return 1

    def is_closed(self) -> bool:
        return self.closed

    def add_termination_listener(self, listener: Callable[[Any], None]) -> None:
        self.on_close.append(listener)

    def cut(self) -> None:
        """The server ended the session (pg_terminate_backend, a restart): asyncpg tells its listeners."""
        self.closed = True
        for listener in self.on_close:
            listener(self)

    async def close(self) -> None:
        self.closed = True

    def terminate(self) -> None:
        self.closed = True


class Connector:
    def __init__(self, *connections: Connection) -> None:
        self.connections = list(connections)
        self.calls: list[tuple[str, dict[str, Any]]] = []

    async def __call__(self, dsn: str, **kwargs: Any) -> Connection:
        self.calls.append((dsn, kwargs))
        return self.connections.pop(0)


@pytest.fixture(autouse=True)
def fast(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(leadership, "LOCK_RETRY", 0.01)
    monkeypatch.setattr(leadership, "CHECK_SECONDS", 0.02)
    monkeypatch.setattr(leadership, "CHECK_TIMEOUT", 0.05)
    monkeypatch.setattr(pgconn, "CHECK_TIMEOUT", 0.05)


async def test_the_lock_is_asked_for_on_a_dedicated_connection_with_server_side_keepalives() -> None:
    conn = Connection([True])
    connect = Connector(conn)
    lead = PostgresLeadership(URL, connect, grace=0)
    await lead.acquire()
    assert lead.leading and lead.sure()
    dsn, kwargs = connect.calls[0]
    assert dsn == "postgresql://inferserver:secret@db.example:5433/sessions"
    assert kwargs["server_settings"] == {
        "application_name": "inferserver-dispatch-lock",
        "tcp_keepalives_idle": "5",
        "tcp_keepalives_interval": "2",
        "tcp_keepalives_count": "3",
    }
    assert conn.asked[0] == ("SELECT pg_try_advisory_lock($1)", (LOCK_KEY,))
    await lead.release()
    assert conn.closed and not lead.leading  # closing the session is what gives the lock back


async def test_a_standby_asks_again_until_the_lock_is_free() -> None:
    conn = Connection([False, False, False, True])
    lead = PostgresLeadership(URL, Connector(conn), grace=0)
    await asyncio.wait_for(lead.acquire(), 5)
    assert [q for q, _ in conn.asked if "advisory" in q] == ["SELECT pg_try_advisory_lock($1)"] * 4
    await lead.release()


async def test_a_closed_connection_is_a_lost_lead_at_once() -> None:
    conn = Connection([True])
    lead = PostgresLeadership(URL, Connector(conn), grace=0)
    await lead.acquire()
    conn.cut()
    assert await asyncio.wait_for(lead.lost(), 0.01) == "its connection to PostgreSQL was closed"
    assert not lead.leading and not lead.sure()
    await lead.release()


async def test_a_connection_that_stops_answering_is_a_lost_lead_within_its_check() -> None:
    conn = Connection([True])
    lead = PostgresLeadership(URL, Connector(conn), grace=0)
    await lead.acquire()
    conn.hang = True
    assert await asyncio.wait_for(lead.lost(), 1) == "PostgreSQL did not answer a check within 0.05 s"
    assert not lead.sure()
    await lead.release()


async def test_a_leader_woken_after_a_pause_is_not_sure_before_its_check_fails(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    conn = Connection([True])
    lead = PostgresLeadership(URL, Connector(conn), grace=0)
    await lead.acquire()
    assert lead.sure()
    now = leadership.time.monotonic()
    monkeypatch.setattr(leadership.time, "monotonic", lambda: now + 0.1)  # stopped longer than a check may take
    assert lead.leading and not lead.sure()
    await lead.release()


async def test_a_lead_lost_during_the_takeover_grace_is_taken_again_on_a_new_connection() -> None:
    first, second = Connection([True]), Connection([True])
    lead = PostgresLeadership(URL, Connector(first, second), grace=0.05)
    acquiring = asyncio.create_task(lead.acquire())
    await asyncio.sleep(0.01)
    first.cut()
    await asyncio.wait_for(acquiring, 1)
    assert lead.leading and second.asked[0][0] == "SELECT pg_try_advisory_lock($1)"
    await lead.release()


async def test_postgresql_chooses_by_its_lock_and_sqlite_by_the_flock(tmp_path: Path) -> None:
    assert isinstance(leadership_for(URL, tmp_path), PostgresLeadership)
    assert isinstance(leadership_for("postgresql://u@h/db", tmp_path), PostgresLeadership)
    assert isinstance(leadership_for(None, tmp_path), FileLeadership)
    assert isinstance(leadership_for(f"sqlite+aiosqlite:///{tmp_path}/x.db", tmp_path), FileLeadership)


async def test_the_flock_is_one_leader_per_session_directory(tmp_path: Path) -> None:
    one, two = FileLeadership(tmp_path / ".dispatch.lock"), FileLeadership(tmp_path / ".dispatch.lock")
    await one.acquire()
    waiting = asyncio.create_task(two.acquire())
    await asyncio.sleep(0.05)
    assert one.sure() and not waiting.done()
    await one.release()
    await asyncio.wait_for(waiting, 1)
    assert two.leading
    await two.release()


class Lead:
    """A leadership the test takes away."""

    def __init__(self) -> None:
        self.acquired = 0
        self.released = 0
        self._lost: asyncio.Future[str] = asyncio.get_running_loop().create_future()

    async def acquire(self) -> None:
        self.acquired += 1
        self._lost = asyncio.get_running_loop().create_future()

    async def lost(self) -> str:
        return await asyncio.shield(self._lost)

    async def release(self) -> None:
        self.released += 1

    @property
    def leading(self) -> bool:
        return not self._lost.done()

    def sure(self) -> bool:
        return self.leading

    def take_away(self, reason: str) -> None:
        self._lost.set_result(reason)


async def until(condition: Callable[[], bool]) -> None:
    async with asyncio.timeout(5):
        while not condition():  # noqa: ASYNC110  # state of the code under test: it has no event to wait on
            await asyncio.sleep(0.001)


async def test_a_dispatcher_that_loses_its_lead_stops_mid_step_detaches_its_runs_and_waits_again(
    tmp_path: Path, clean_env: None, caplog: pytest.LogCaptureFixture
) -> None:
    from types import SimpleNamespace

    from inferserver.config import load_settings
    from inferserver.runner.execute import DETACH
    from inferserver.scheduling.dispatch import Dispatcher
    from inferserver.scheduling.engines import EnginePool
    from inferserver.sessions.state import Signal, Signals

    settings = load_settings(SESSION_PATH=tmp_path, MODEL_PATH=tmp_path)
    manager = SimpleNamespace(signals=Signals(), dispatch_wakeup=Signal())
    # Only the loop runs: no store; the engines are never asked (their clients are made on first use).
    dispatcher = Dispatcher(settings, None, manager, EnginePool(settings))  # type: ignore[arg-type]
    lead = Lead()
    dispatcher.leadership = lead
    steps: list[str] = []
    hold = asyncio.Event()

    async def recover() -> None:
        steps.append("recover")

    async def step() -> None:
        steps.append("step")
        await hold.wait()  # a step in progress when the lead goes
        steps.append("stepped")

    detached: list[object] = []

    async def run() -> None:
        try:
            await asyncio.Future()
        except asyncio.CancelledError as exc:
            detached.append(exc.args)
            raise

    dispatcher.recover = recover  # type: ignore[method-assign]
    dispatcher.step = step  # type: ignore[method-assign]
    running = asyncio.create_task(dispatcher.run_forever())
    await until(lambda: steps == ["recover", "step"])
    dispatcher.running["s1"] = asyncio.create_task(run())
    await asyncio.sleep(0)
    lead.take_away("its connection to PostgreSQL was closed")
    await until(lambda: lead.acquired == 2)
    assert detached == [(DETACH,)]  # left running for the next leader, not stopped
    assert lead.released == 1
    assert "stepped" not in steps  # the step was cancelled, not finished
    assert "this process stops dispatching: its connection to PostgreSQL was closed" in caplog.text
    await until(lambda: steps.count("recover") == 2)  # leading again starts as after a restart
    running.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await running
    assert lead.released == 2


def bare_dispatcher(tmp_path: Path) -> Any:
    """A Dispatcher whose loop runs with a Lead the test takes away; no store, engines never asked."""
    from types import SimpleNamespace

    from inferserver.config import load_settings
    from inferserver.scheduling.dispatch import Dispatcher
    from inferserver.scheduling.engines import EnginePool
    from inferserver.sessions.state import Signal, Signals

    settings = load_settings(SESSION_PATH=tmp_path, MODEL_PATH=tmp_path)
    manager = SimpleNamespace(signals=Signals(), dispatch_wakeup=Signal())
    dispatcher = Dispatcher(settings, None, manager, EnginePool(settings))  # type: ignore[arg-type]
    dispatcher.leadership = Lead()

    async def recover() -> None:
        pass

    dispatcher.recover = recover  # type: ignore[method-assign]
    return dispatcher


@pytest.fixture
def quick_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    from inferserver.scheduling import dispatch

    monkeypatch.setattr(dispatch, "STEP_PAUSE", 0.01)
    monkeypatch.setattr(dispatch, "STEP_PAUSE_MOST", 0.04)
    monkeypatch.setattr(dispatch, "TICK", 0.01)


async def stop(running: asyncio.Task[None]) -> None:
    running.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await running


async def test_a_step_that_crashes_is_logged_with_its_traceback_and_dispatching_goes_on(
    tmp_path: Path, clean_env: None, quick_retries: None, caplog: pytest.LogCaptureFixture
) -> None:
    dispatcher = bare_dispatcher(tmp_path)
    steps: list[int] = []

    def start_queued() -> None:
        raise KeyError("a session the store no longer has")

    async def step() -> None:
        steps.append(len(steps))
        if len(steps) == 1:
            start_queued()

    dispatcher.step = step
    running = asyncio.create_task(dispatcher.run_forever())
    await until(lambda: len(steps) >= 3)  # the steps after the crash ran
    assert not running.done()
    await stop(running)
    crashes = [r for r in caplog.records if "the dispatcher's step failed" in r.getMessage()]
    assert [r.getMessage() for r in crashes] == [
        "the dispatcher's step failed in start_queued (1 in a row); trying again in 0.01 s"
    ]
    assert crashes[0].levelname == "ERROR" and crashes[0].exc_info is not None  # with its traceback
    assert "KeyError: 'a session the store no longer has'" in caplog.text
    assert dispatcher.leadership.acquired == 1  # the lead was kept all along


async def test_steps_that_keep_crashing_are_retried_with_a_bounded_back_off_until_the_lead_goes(
    tmp_path: Path, clean_env: None, quick_retries: None, caplog: pytest.LogCaptureFixture
) -> None:
    dispatcher = bare_dispatcher(tmp_path)

    async def step() -> None:
        raise RuntimeError("boom")

    dispatcher.step = step
    running = asyncio.create_task(dispatcher.run_forever())
    await until(lambda: caplog.text.count("the dispatcher's step failed") >= 5)
    pauses = [r.getMessage().rsplit(" in ", 1)[1] for r in caplog.records if "step failed" in r.getMessage()]
    assert pauses[:5] == ["0.01 s", "0.02 s", "0.04 s", "0.04 s", "0.04 s"]  # doubled, up to STEP_PAUSE_MOST
    dispatcher.leadership.take_away("its connection to PostgreSQL was closed")
    await until(lambda: dispatcher.leadership.acquired == 2)  # a lost lead still stops it, as before
    assert "this process stops dispatching: its connection to PostgreSQL was closed" in caplog.text
    await stop(running)


async def test_a_recovery_that_crashes_is_logged_and_tried_again_before_any_step(
    tmp_path: Path, clean_env: None, quick_retries: None, caplog: pytest.LogCaptureFixture
) -> None:
    dispatcher = bare_dispatcher(tmp_path)
    done: list[str] = []

    async def recover() -> None:
        done.append("recover")
        if done.count("recover") == 1:
            raise ValueError("bad row")

    async def step() -> None:
        done.append("step")

    dispatcher.recover = recover
    dispatcher.step = step
    running = asyncio.create_task(dispatcher.run_forever())
    await until(lambda: "step" in done)
    await stop(running)
    assert done[:3] == ["recover", "recover", "step"]
    assert "the dispatcher's recovery failed (1 in a row); trying again in 0.01 s" in caplog.text


async def test_the_orphan_sweep_also_runs_every_sweep_every_seconds_without_a_failed_run(
    tmp_path: Path, clean_env: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A container whose removal failed, or that the engine finished making after a sweep, goes at a later sweep."""
    import time
    from types import SimpleNamespace

    from inferserver.scheduling import dispatch

    dispatcher = bare_dispatcher(tmp_path)
    sweeps: list[float] = []
    now = [time.monotonic()]  # the dispatcher's clock only (the event loop keeps the real one)
    monkeypatch.setattr(dispatch, "time", SimpleNamespace(monotonic=lambda: now[0], time=time.time))
    start = now[0]

    async def nothing(*args: object) -> None:
        pass

    async def remove_orphans() -> None:
        sweeps.append(now[0])

    for part in ("refresh_engines", "stop_cancelled", "follow_lost", "start_queued"):
        monkeypatch.setattr(dispatcher, part, nothing)
    dispatcher.remove_orphans = remove_orphans
    dispatcher._next_sweep = now[0] + dispatch.SWEEP_EVERY
    await dispatcher.step()
    assert sweeps == []  # nothing failed, not yet time
    dispatcher.orphans_possible = True  # a run failed: at once
    await dispatcher.step()
    assert sweeps == [start] and not dispatcher.orphans_possible
    now[0] += dispatch.SWEEP_EVERY - 1
    await dispatcher.step()
    assert sweeps == [start]
    now[0] += 1
    await dispatcher.step()
    assert sweeps == [start, start + dispatch.SWEEP_EVERY]  # and again a while later
