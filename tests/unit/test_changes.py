"""The change token shared by worker processes, and the status answers cached under it."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from inferserver.sessions.changefeed import CHANNEL, ChangeFeed
from inferserver.sessions.changes import ChangeCache, ChangeToken
from inferserver.sessions.state import Signal


def test_a_token_replaced_in_another_process_is_seen_through_the_mapping(tmp_path: Path) -> None:
    path = tmp_path / ".changes"
    token = ChangeToken(path)
    before = token.current()
    code = (
        "import sys; from inferserver.sessions.changes import ChangeToken; "
        "ChangeToken(__import__('pathlib').Path(sys.argv[1])).replace()"
    )
    subprocess.run([sys.executable, "-c", code, str(path)], check=True)
    assert token.current() != before
    assert len(token.current()) == 16  # the shared 8 bytes, then the count of changes announced elsewhere


def test_every_replace_gives_a_new_token(tmp_path: Path) -> None:
    token = ChangeToken(tmp_path / ".changes")
    seen = {token.current()}
    for _ in range(100):
        token.replace()
        seen.add(token.current())
    assert len(seen) == 101


class Reads:
    def __init__(self) -> None:
        self.count = 0
        self.gate = asyncio.Event()
        self.gate.set()

    async def __call__(self) -> str:
        self.count += 1
        await self.gate.wait()
        return f"answer {self.count}"


async def test_answers_come_from_memory_until_the_token_changes(tmp_path: Path) -> None:
    token = ChangeToken(tmp_path / ".changes")
    cache: ChangeCache[str] = ChangeCache(token)
    read = Reads()
    assert [await cache.get("s1", read) for _ in range(5)] == ["answer 1"] * 5
    token.replace()
    assert await cache.get("s1", read) == "answer 2"
    assert await cache.get("s2", read) == "answer 3"
    assert read.count == 3


async def test_concurrent_misses_share_one_read(tmp_path: Path) -> None:
    cache: ChangeCache[str] = ChangeCache(ChangeToken(tmp_path / ".changes"))
    read = Reads()
    read.gate.clear()
    waiting = [asyncio.create_task(cache.get("s1", read)) for _ in range(50)]
    await asyncio.sleep(0.01)
    read.gate.set()
    assert await asyncio.gather(*waiting) == ["answer 1"] * 50
    assert read.count == 1


async def test_a_change_during_a_read_is_not_hidden_by_its_answer(tmp_path: Path) -> None:
    token = ChangeToken(tmp_path / ".changes")
    cache: ChangeCache[str] = ChangeCache(token)
    read = Reads()
    read.gate.clear()
    first = asyncio.create_task(cache.get("s1", read))
    await asyncio.sleep(0.01)
    token.replace()  # committed while the read was under way: its answer may predate the change
    read.gate.set()
    assert await first == "answer 1"
    assert await cache.get("s1", read) == "answer 2"


async def test_a_failed_read_is_not_kept(tmp_path: Path) -> None:
    cache: ChangeCache[str] = ChangeCache(ChangeToken(tmp_path / ".changes"))
    calls = 0

    async def failing() -> str:
        nonlocal calls
        calls += 1
        raise LookupError("unknown session")

    for _ in range(3):
        with pytest.raises(LookupError, match="unknown session"):
            await cache.get("nope", failing)
    assert calls == 3


async def test_the_cache_holds_at_most_its_size(tmp_path: Path) -> None:
    cache: ChangeCache[str] = ChangeCache(ChangeToken(tmp_path / ".changes"), size=3)
    read = Reads()
    for key in ("a", "b", "c", "d"):
        await cache.get(key, read)
    assert await cache.get("d", read) == "answer 4"
    assert await cache.get("a", read) == "answer 5"  # the oldest was dropped and is read again


async def test_while_announcements_are_cut_nothing_cached_is_used() -> None:
    token = ChangeToken(None)
    reads = 0

    async def read() -> int:
        nonlocal reads
        reads += 1
        return reads

    cache: ChangeCache[int] = ChangeCache(token)
    assert [await cache.get("s", read) for _ in range(3)] == [1, 1, 1]
    token.distrust()
    assert [await cache.get("s", read) for _ in range(3)] == [2, 3, 4]
    token.trust()  # what happened while nothing was heard counts as a change
    assert [await cache.get("s", read) for _ in range(3)] == [5, 5, 5]


async def test_a_change_announced_by_another_process_drops_the_cached_answers() -> None:
    token = ChangeToken(None)
    cache: ChangeCache[str] = ChangeCache(token)
    assert await cache.get("s", _answer("before")) == "before"
    token.elsewhere()
    assert await cache.get("s", _answer("after")) == "after"


def _answer(value: str) -> Callable[[], Awaitable[str]]:
    async def read() -> str:
        return value

    return read


def test_the_feed_ignores_its_own_announcements_and_wakes_the_dispatcher_for_others() -> None:
    token, wakeup = ChangeToken(None), Signal()
    feed = ChangeFeed("postgresql+asyncpg://u@h/db", token, wakeup, "host1:10:ab")
    token.trust()  # as once its LISTEN is in place
    before, woken = token.current(), wakeup.token()
    feed._heard(None, 1, CHANNEL, "host1:10:ab")
    assert token.current() == before and not woken.is_set() and feed.received == 0
    feed._heard(None, 1, CHANNEL, "host2:11:cd")
    assert token.current() != before and woken.is_set() and feed.received == 1


def test_a_feed_not_yet_listening_is_not_trusted() -> None:
    token = ChangeToken(None)
    ChangeFeed("postgresql+asyncpg://u@h/db", token, Signal(), "me")
    assert token.current() != token.current()


async def test_a_kept_answer_is_peeked_until_the_token_changes(tmp_path: Path) -> None:
    token = ChangeToken(tmp_path / ".changes")
    cache: ChangeCache[str] = ChangeCache(token)
    assert cache.peek("s1") is None
    cache.keep("s1", "waiting", cache.token())
    assert [cache.peek("s1") for _ in range(3)] == ["waiting"] * 3
    assert cache.peek("s2") is None
    token.replace()
    assert cache.peek("s1") is None


async def test_an_answer_read_under_an_older_token_is_not_kept(tmp_path: Path) -> None:
    token = ChangeToken(tmp_path / ".changes")
    cache: ChangeCache[str] = ChangeCache(token)
    before = cache.token()
    token.replace()  # a change committed while the answer was being read: it may be stale
    cache.keep("s1", "waiting", before)
    assert cache.peek("s1") is None


async def test_peek_sees_a_finished_read_but_never_a_pending_or_failed_one(tmp_path: Path) -> None:
    cache: ChangeCache[str] = ChangeCache(ChangeToken(tmp_path / ".changes"))
    read = Reads()
    read.gate.clear()
    pending = asyncio.create_task(cache.get("s1", read))
    await asyncio.sleep(0)
    assert cache.peek("s1") is None
    read.gate.set()
    assert await pending == "answer 1"
    assert cache.peek("s1") == "answer 1"

    async def failing() -> str:
        raise LookupError("unknown session")

    with pytest.raises(LookupError):
        await cache.get("s2", failing)
    assert cache.peek("s2") is None


async def test_kept_answers_are_bounded(tmp_path: Path) -> None:
    cache: ChangeCache[str] = ChangeCache(ChangeToken(tmp_path / ".changes"), size=2)
    for key in ("a", "b", "c"):
        cache.keep(key, key.upper(), cache.token())
    assert [cache.peek(k) for k in ("a", "b", "c")] == [None, "B", "C"]
