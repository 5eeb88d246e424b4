"""Access control's own work: password checks on their executor, failures limited per address, broken files."""

from __future__ import annotations

import asyncio
import base64
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from inferserver.api.auth import AccessControl
from inferserver.api.credentials import CredentialsError, Users, hash_password, hash_token
from inferserver.api.ratelimit import FailureLimiter


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def test_limiter_counts_failures_per_address_within_the_window() -> None:
    clock = Clock()
    limiter = FailureLimiter(3, 60, clock)
    reached = []
    for _ in range(3):
        assert limiter.retry_after("10.0.0.1") is None
        reached.append(limiter.fail("10.0.0.1"))
    assert reached == [False, False, True]  # the moment to say so in the log, once
    assert limiter.fail("10.0.0.1") is False
    clock.now += 20.5
    assert limiter.retry_after("10.0.0.1") == 40  # rounded up: never "0", never early
    assert limiter.retry_after("10.0.0.2") is None  # another address is not affected
    clock.now += 39.5
    assert limiter.retry_after("10.0.0.1") is None  # the window has ended: a fresh start


def test_limiter_takes_back_a_check_that_succeeded() -> None:
    limiter = FailureLimiter(2, 60, Clock())
    limiter.fail("a")
    limiter.fail("a")
    assert limiter.retry_after("a") == 60
    limiter.succeeded("a")
    assert limiter.retry_after("a") is None


@pytest.fixture
def hasher() -> ThreadPoolExecutor:
    executor = ThreadPoolExecutor(1, thread_name_prefix="test-hasher")
    yield executor
    executor.shutdown()


def access_for(tmp_path: Path, limit: int = 3, tokens: bool = False) -> AccessControl:
    users = tmp_path / "users"
    users.write_text(f"alice:{hash_password('right')}\n")
    tokens_file = tmp_path / "tokens"
    tokens_file.write_text(f"{hash_token('tok')}\n")
    return AccessControl(users, tokens_file if tokens else None, FailureLimiter(limit, 60, Clock()))


def test_passwords_are_hashed_on_the_given_executor_not_the_default_one(
    tmp_path: Path, hasher: ThreadPoolExecutor, monkeypatch: pytest.MonkeyPatch
) -> None:
    threads: list[str] = []
    real = Users.verify

    def recording(self: Users, user: str, password: str) -> bool:
        threads.append(threading.current_thread().name)
        return real(self, user, password)

    monkeypatch.setattr(Users, "verify", recording)
    access = access_for(tmp_path)

    async def run() -> list[bool]:
        return [(await access.check(basic("alice", p), "a", hasher)).allowed for p in ("wrong", "right")]

    assert asyncio.run(run()) == [False, True]
    assert len(threads) == 2 and all(name.startswith("test-hasher") for name in threads)


def test_after_the_limit_no_password_is_hashed_but_a_known_good_one_still_passes(
    tmp_path: Path, hasher: ThreadPoolExecutor, monkeypatch: pytest.MonkeyPatch
) -> None:
    access = access_for(tmp_path, limit=3, tokens=True)
    calls: list[str] = []
    real = Users.verify
    monkeypatch.setattr(Users, "verify", lambda self, u, p: calls.append(p) or real(self, u, p))

    async def run() -> list[tuple[bool, int | None]]:
        assert (await access.check(basic("alice", "right"), "a", hasher)).allowed  # remembered from now on
        # 20 guesses at once: only 3 are hashed (a check in progress counts), the rest are refused at once.
        verdicts = await asyncio.gather(*(access.check(basic("alice", f"guess{i}"), "a", hasher) for i in range(20)))
        after = [
            await access.check(h, "a", hasher)
            for h in (basic("alice", "right"), "Bearer tok", basic("alice", "right-but-new"), "Bearer nope")
        ]
        return [(v.allowed, v.retry_after) for v in (*verdicts, *after)]

    results = asyncio.run(run())
    guesses, after = results[:20], results[20:]
    assert guesses.count((False, None)) == 3 and guesses.count((False, 60)) == 17
    assert after == [(True, None), (True, None), (False, 60), (False, 60)]
    assert calls == ["right", *(f"guess{i}" for i in range(3))]
    assert (asyncio.run(access.check(basic("alice", "x"), "other", hasher))).retry_after is None


def test_no_credential_costs_nothing_and_counts_for_nothing(tmp_path: Path, hasher: ThreadPoolExecutor) -> None:
    access = access_for(tmp_path, limit=1)
    for _ in range(5):
        assert asyncio.run(access.check(None, "a", hasher)) == asyncio.run(access.check("", "a", hasher))
    assert access.limiter.retry_after("a") is None


@pytest.mark.parametrize("broken", ["users", "tokens"])
def test_a_broken_file_refuses_every_credential_of_either_scheme(
    tmp_path: Path, hasher: ThreadPoolExecutor, broken: str
) -> None:
    access = access_for(tmp_path, tokens=True)
    assert asyncio.run(access.check("Bearer tok", "a", hasher)).allowed
    (tmp_path / broken).write_text("this line is no credential\n")
    for credential in ("Bearer tok", basic("alice", "right")):
        with pytest.raises(CredentialsError, match=str(tmp_path / broken)):
            asyncio.run(access.check(credential, "a", hasher))
