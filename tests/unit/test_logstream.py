"""The log stream a client follows: queue lines, then the log file as it grows, keep-alives, the end."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from inferserver.sessions.logstream import KEEPALIVE, follow_log
from inferserver.sessions.state import QueuePlace, SessionFiles, Signal, Status


@dataclass
class Session:
    """What follow_log reads of a session: its log file, its status, and this process's wake-up signal."""

    files: SessionFiles
    status: Status
    changed: Signal = field(default_factory=Signal)
    touched: int = 0

    def set_status(self, status: Status, info: str = "") -> None:
        """What the dispatcher does: record the status, then wake the readers."""
        self.status = status
        self.changed.notify()


def make_session(tmp_path: Path, status: Status = Status.READY) -> Session:
    files = SessionFiles(tmp_path / "s")
    files.create()
    return Session(files=files, status=status)


def append(session: Session, data: bytes) -> None:
    """What the product's SessionLog.write does: append, then wake the readers."""
    with open(session.files.log, "ab") as log:
        log.write(data)
    session.changed.notify()


class Reader:
    """Follows the log in the background and records each chunk with the time it arrived."""

    def __init__(self, session: Session, position=lambda: None, **kwargs) -> None:
        self.chunks: list[tuple[float, bytes]] = []
        self.t0 = time.monotonic()

        async def status() -> Status:
            return session.status

        async def where() -> QueuePlace | None:
            place = position()
            return QueuePlace(place) if isinstance(place, int) else place

        async def touch() -> None:
            session.touched += 1

        stream = follow_log(session.files.log, status, where, session.changed, touch, **kwargs)
        self.task = asyncio.create_task(self._read(stream))

    async def _read(self, stream) -> None:
        async for chunk in stream:
            assert isinstance(chunk, bytes)
            self.chunks.append((time.monotonic() - self.t0, chunk))

    @property
    def data(self) -> bytes:
        return b"".join(c for _, c in self.chunks)

    def without_keepalives(self) -> bytes:
        return b"".join(c for _, c in self.chunks if c != KEEPALIVE)

    @property
    def done(self) -> bool:
        return self.task.done()

    async def wait_for(self, predicate, timeout: float = 3.0) -> None:  # noqa: ASYNC109  # fails the test on expiry
        async with asyncio.timeout(timeout):
            while not predicate():
                if self.task.done():
                    self.task.result()  # re-raise a crash of the stream
                    if not predicate():
                        raise AssertionError(f"the stream ended early; it sent {self.data!r}")
                await asyncio.sleep(0.005)

    async def finish(self, timeout: float = 3.0) -> bytes:  # noqa: ASYNC109  # fails the test on expiry
        async with asyncio.timeout(timeout):
            await self.task
        return self.data

    def cancel(self) -> None:
        self.task.cancel()


@pytest.fixture
def readers():
    made: list[Reader] = []
    yield made
    for r in made:
        r.cancel()


async def test_queue_lines_come_about_once_a_second_with_the_current_position(tmp_path: Path, readers) -> None:
    session = make_session(tmp_path, Status.READY)
    where = {"pos": 3}
    r = Reader(session, lambda: where["pos"])
    readers.append(r)
    await r.wait_for(lambda: len(r.chunks) == 1)
    assert r.chunks[0][1] == b"Waiting, position in queue is 3\n"
    assert r.chunks[0][0] < 0.3  # the first line goes out at once
    where["pos"] = 1
    await r.wait_for(lambda: len(r.chunks) == 2)
    assert r.chunks[1][1] == b"Waiting, position in queue is 1\n"
    gap = r.chunks[1][0] - r.chunks[0][0]
    assert 0.8 <= gap <= 1.5, gap
    assert not r.done


async def test_queue_lines_keep_their_pace_when_the_queue_moves(tmp_path: Path, readers) -> None:
    """Scheduler moves notify the session; that must not turn into a burst of lines."""
    session = make_session(tmp_path, Status.READY)
    r = Reader(session, lambda: 2)
    readers.append(r)
    await r.wait_for(lambda: len(r.chunks) == 1)
    for _ in range(20):
        session.changed.notify()
        await asyncio.sleep(0.02)
    assert len(r.chunks) == 1  # 0.4 s later, still just the first line


async def test_no_queue_line_while_the_position_is_unknown(tmp_path: Path, readers) -> None:
    session = make_session(tmp_path, Status.READY)
    r = Reader(session, lambda: None, keepalive=0.3)
    readers.append(r)
    await asyncio.sleep(0.4)
    assert r.data == b""
    assert not r.done


async def test_working_sends_the_log_as_it_is_appended(tmp_path: Path, readers) -> None:
    session = make_session(tmp_path, Status.READY)
    r = Reader(session, lambda: 1, keepalive=5)
    readers.append(r)
    await r.wait_for(lambda: len(r.chunks) == 1)
    session.set_status(Status.WORKING, "starting")
    append(session, b"epoch 1\n")
    await r.wait_for(lambda: r.data.endswith(b"epoch 1\n"), timeout=0.5)  # not after the next queue tick
    append(session, b"epoch 2\nepoch 3\n")
    await r.wait_for(lambda: r.data.endswith(b"epoch 3\n"), timeout=0.5)
    assert r.data == b"Waiting, position in queue is 1\nepoch 1\nepoch 2\nepoch 3\n"
    assert not r.done


async def test_the_log_written_before_the_reader_came_is_sent_first(tmp_path: Path, readers) -> None:
    session = make_session(tmp_path, Status.WORKING)
    append(session, b"inferserver: pull: done\nline one\n")
    r = Reader(session, keepalive=5)
    readers.append(r)
    await r.wait_for(lambda: r.data == b"inferserver: pull: done\nline one\n")


async def test_a_partial_line_is_held_until_its_newline(tmp_path: Path, readers) -> None:
    session = make_session(tmp_path, Status.WORKING)
    r = Reader(session, keepalive=5)
    readers.append(r)
    append(session, b"first\nprogress 5")
    await r.wait_for(lambda: r.data == b"first\n")
    await asyncio.sleep(0.2)
    assert r.data == b"first\n"  # "progress 5" has no newline yet
    append(session, b"0%")
    await asyncio.sleep(0.1)
    assert r.data == b"first\n"
    append(session, b" done\nnext")
    await r.wait_for(lambda: r.data == b"first\nprogress 50% done\n")
    assert [c for _, c in r.chunks] == [b"first\n", b"progress 50% done\n"]


async def test_keepalive_after_silence_never_splits_a_held_line(tmp_path: Path, readers) -> None:
    session = make_session(tmp_path, Status.WORKING)
    r = Reader(session, keepalive=0.3)
    readers.append(r)
    append(session, b"half a li")
    await r.wait_for(lambda: KEEPALIVE in [c for _, c in r.chunks], timeout=1.0)
    append(session, b"ne\n")
    await r.wait_for(lambda: r.without_keepalives() == b"half a line\n")
    # Every chunk is whole lines: the keep-alive is a line of its own, never inside the held one.
    for _, chunk in r.chunks:
        assert chunk.endswith(b"\n")


async def test_keepalive_comes_after_the_given_silence_and_repeats(tmp_path: Path, readers) -> None:
    session = make_session(tmp_path, Status.WORKING)
    r = Reader(session, keepalive=0.3)
    readers.append(r)
    await r.wait_for(lambda: len(r.chunks) >= 3, timeout=2.0)
    assert [c for _, c in r.chunks[:3]] == [KEEPALIVE] * 3
    assert KEEPALIVE == b"\0\n"
    first, second, third = (t for t, _ in r.chunks[:3])
    assert 0.25 <= first <= 0.6, first
    assert 0.25 <= second - first <= 0.6
    assert 0.25 <= third - second <= 0.6
    assert not r.done  # silence alone never ends the stream


async def test_output_postpones_the_keepalive(tmp_path: Path, readers) -> None:
    session = make_session(tmp_path, Status.WORKING)
    r = Reader(session, keepalive=0.3)
    readers.append(r)
    for i in range(6):  # a line every 0.1 s for 0.6 s: never 0.3 s of silence
        append(session, f"line {i}\n".encode())
        await asyncio.sleep(0.1)
    assert KEEPALIVE not in [c for _, c in r.chunks]
    assert r.data == b"".join(f"line {i}\n".encode() for i in range(6))


async def test_default_keepalive_is_five_seconds(tmp_path: Path, readers) -> None:
    session = make_session(tmp_path, Status.WORKING)
    r = Reader(session)
    readers.append(r)
    await asyncio.sleep(0.6)
    assert r.data == b""


async def test_stream_ends_after_final_status_with_everything_sent(tmp_path: Path) -> None:
    session = make_session(tmp_path, Status.WORKING)
    r = Reader(session, keepalive=5)
    append(session, b"one\n")
    await r.wait_for(lambda: r.data == b"one\n")
    assert not r.done
    # Written and made final in the same breath, as the manager does on failure.
    append(session, b"two\ninferserver: run failed: model exited with status 3\n")
    session.set_status(Status.FAILED, "model exited with status 3")
    data = await r.finish()
    assert data == b"one\ntwo\ninferserver: run failed: model exited with status 3\n"


async def test_a_big_log_written_just_before_the_end_is_sent_whole(tmp_path: Path) -> None:
    session = make_session(tmp_path, Status.WORKING)
    body = b"".join(f"{i:06d} {'x' * 100}\n".encode() for i in range(5000))  # ~535 kB: many read blocks
    r = Reader(session, keepalive=5)
    append(session, body)
    session.set_status(Status.COMPLETE, "finished")
    assert await r.finish() == body


async def test_a_trailing_partial_line_is_sent_with_a_newline_at_the_end(tmp_path: Path) -> None:
    session = make_session(tmp_path, Status.WORKING)
    r = Reader(session, keepalive=5)
    append(session, b"done\nno newline at the end")
    await r.wait_for(lambda: r.data == b"done\n")
    session.set_status(Status.COMPLETE, "finished")
    assert await r.finish() == b"done\nno newline at the end\n"


async def test_a_finished_session_sends_its_whole_log_and_ends(tmp_path: Path) -> None:
    session = make_session(tmp_path, Status.COMPLETE)
    append(session, b"a\nb\nc")
    r = Reader(session, lambda: 1, keepalive=0.3)
    assert await r.finish(timeout=1.0) == b"a\nb\nc\n"  # no queue line, no keep-alive


async def test_an_empty_log_of_a_finished_session_ends_at_once(tmp_path: Path) -> None:
    session = make_session(tmp_path, Status.FAILED)
    r = Reader(session, keepalive=0.3)
    assert await r.finish(timeout=0.5) == b""


async def test_from_the_queue_straight_to_failed_ends_the_stream(tmp_path: Path) -> None:
    """A pull failure or shutdown may end a queued session without it ever working."""
    session = make_session(tmp_path, Status.READY)
    r = Reader(session, lambda: 1, keepalive=5)
    await r.wait_for(lambda: len(r.chunks) == 1)
    append(session, b"inferserver: could not pull image\n")
    session.set_status(Status.FAILED, "could not pull image")
    data = await r.finish(timeout=1.0)
    assert data == b"Waiting, position in queue is 1\ninferserver: could not pull image\n"


async def test_two_readers_see_the_same_lines(tmp_path: Path) -> None:
    session = make_session(tmp_path, Status.WORKING)
    r1 = Reader(session, keepalive=5)
    r2 = Reader(session, keepalive=5)
    for i in range(3):
        append(session, f"line {i}\n".encode())
        await asyncio.sleep(0.01)
    session.set_status(Status.COMPLETE)
    expected = b"line 0\nline 1\nline 2\n"
    assert await r1.finish() == expected
    assert await r2.finish() == expected
