"""Status polls answered from the bytes of the route's last 200 answer while the change token stays the same."""

from __future__ import annotations

import asyncio
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from starlette.types import Receive, Scope, Send

from inferserver.api.statusanswers import StatusAnswerCache, StatusAnswers, session_of
from inferserver.sessions.changes import ChangeToken

from .asgi import ask

SID = "0b4c5f3e-2a8d-4c1b-9d8e-5f6a7b8c9d0e"


class Route:
    """Stands for the FastAPI app behind the middleware: counts calls, answers `status` with a numbered body."""

    def __init__(self, status: int = 200) -> None:
        self.calls = 0
        self.status = status
        self.gate = asyncio.Event()
        self.gate.set()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        self.calls += 1
        await self.gate.wait()
        body = b'{"data": {"status": "waiting", "n": %d}}' % self.calls
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
        await send({"type": "http.response.start", "status": self.status, "headers": headers})
        await send({"type": "http.response.body", "body": body})


def scope_for(answers: StatusAnswers | None, path: str, method: str = "GET", root: str = "") -> dict[str, Any]:
    app = SimpleNamespace(state=SimpleNamespace(status_answers=answers))
    return {"type": "http", "method": method, "path": root + path, "root_path": root, "app": app, "headers": []}


async def test_polls_get_the_routes_bytes_until_a_session_changes(tmp_path: Path) -> None:
    token = ChangeToken(tmp_path / ".changes")
    answers = StatusAnswers(token)
    route = Route()
    middleware = StatusAnswerCache(route)
    first = await ask(middleware, scope_for(answers, f"/sessions/{SID}"))
    again = [await ask(middleware, scope_for(answers, f"/sessions/{SID}")) for _ in range(3)]
    assert route.calls == 1
    assert all(a == first for a in again)
    assert first[1]["body"] == b'{"data": {"status": "waiting", "n": 1}}'
    token.replace()
    changed = await ask(middleware, scope_for(answers, f"/sessions/{SID}"))
    assert route.calls == 2
    assert changed[1]["body"] == b'{"data": {"status": "waiting", "n": 2}}'


async def test_only_200_answers_are_kept(tmp_path: Path) -> None:
    answers = StatusAnswers(ChangeToken(tmp_path / ".changes"))
    route = Route(status=404)
    middleware = StatusAnswerCache(route)
    for _ in range(3):
        sent = await ask(middleware, scope_for(answers, f"/sessions/{SID}"))
        assert sent[0]["status"] == 404
    assert route.calls == 3


async def test_other_requests_always_reach_the_route(tmp_path: Path) -> None:
    answers = StatusAnswers(ChangeToken(tmp_path / ".changes"))
    route = Route()
    middleware = StatusAnswerCache(route)
    others = [
        scope_for(answers, f"/sessions/{SID}", method="DELETE"),
        scope_for(answers, f"/sessions/{SID}/logs"),
        scope_for(answers, f"/sessions/{SID.upper()}"),  # the route lower-cases it; not worth a second key
        scope_for(answers, "/sessions/not-a-uuid"),
        scope_for(answers, "/models"),
        scope_for(None, f"/sessions/{SID}"),  # before the lifespan has set up the cache
    ]
    for scope in others * 2:
        await ask(middleware, scope)
    assert route.calls == len(others) * 2


def test_a_status_poll_is_recognized_under_a_root_path() -> None:
    assert session_of(scope_for(None, f"/sessions/{SID}", root="/inferserver")) == SID
    assert session_of(scope_for(None, f"/sessions/{SID}/", root="/inferserver")) is None
    assert session_of(scope_for(None, f"/sessions/{SID}", method="HEAD")) is None


async def test_concurrent_polls_of_a_session_share_one_pass_through_the_route(tmp_path: Path) -> None:
    answers = StatusAnswers(ChangeToken(tmp_path / ".changes"))
    route = Route()
    route.gate.clear()  # the first poll's read is in progress while the others arrive
    middleware = StatusAnswerCache(route)
    polls = [asyncio.create_task(ask(middleware, scope_for(answers, f"/sessions/{SID}"))) for _ in range(50)]
    await asyncio.sleep(0.01)
    route.gate.set()
    sent = await asyncio.gather(*polls)
    assert route.calls == 1
    assert {m[1]["body"] for m in sent} == {b'{"data": {"status": "waiting", "n": 1}}'}


async def test_when_the_shared_read_is_no_200_every_poll_asks_the_route(tmp_path: Path) -> None:
    answers = StatusAnswers(ChangeToken(tmp_path / ".changes"))
    route = Route(status=503)
    route.gate.clear()
    middleware = StatusAnswerCache(route)
    polls = [asyncio.create_task(ask(middleware, scope_for(answers, f"/sessions/{SID}"))) for _ in range(3)]
    await asyncio.sleep(0.01)
    route.gate.set()
    sent = await asyncio.gather(*polls)
    assert [m[0]["status"] for m in sent] == [503] * 3
    assert route.calls == 3


async def test_a_poll_after_a_change_does_not_wait_for_a_read_begun_before_it(tmp_path: Path) -> None:
    token = ChangeToken(tmp_path / ".changes")
    answers = StatusAnswers(token)
    route = Route()
    route.gate.clear()
    middleware = StatusAnswerCache(route)
    early = asyncio.create_task(ask(middleware, scope_for(answers, f"/sessions/{SID}")))
    await asyncio.sleep(0.01)
    token.replace()  # a change committed while the first read is in progress
    late = asyncio.create_task(ask(middleware, scope_for(answers, f"/sessions/{SID}")))
    await asyncio.sleep(0.01)
    route.gate.set()
    await asyncio.gather(early, late)
    assert route.calls == 2  # the late poll read the state itself, after the change
