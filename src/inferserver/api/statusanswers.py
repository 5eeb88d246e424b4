"""`GET /sessions/{sid}` answered from the bytes of its last answer while no session has changed.

Status polls are most of a server's requests (the ablinfer client polls every second per session), and
FastAPI's routing, dependencies and pydantic serialization cost about four times what the poll itself does.
The first answer under a change token (sessions/changes.py) goes through the route as any request; its
status line, headers and body are kept, and later polls of that session get exactly those bytes until any
session changes in any worker process. Only 200 answers are kept: an unknown session, a refusal or an error
always goes through the route. Runs inside AuthMiddleware, so a kept answer is only ever sent to a caller
that was let in, and outside ConcurrencyLimit: a kept answer takes no slot.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..sessions.changes import ChangeCache
from .paths import UUID_FORM

PREFIX = "/sessions/"


@dataclass(frozen=True)
class Answer:
    start: Message  # http.response.start: status and headers
    body: bytes


StatusAnswers = ChangeCache[Answer]


def session_of(scope: Scope) -> str | None:
    """The session id when the request is a plain status poll (`GET /sessions/{uuid}`, canonical form)."""
    if scope["method"] != "GET":
        return None
    path: str = scope["path"]
    root: str = scope.get("root_path", "")
    if root and path.startswith(root):  # Starlette includes root_path in path when one is set
        path = path[len(root) :]
    if not path.startswith(PREFIX):
        return None
    session_id = path[len(PREFIX) :]
    return session_id if UUID_FORM.fullmatch(session_id) else None


@dataclass
class _Reading:
    """A status read in progress through the route: polls of the same session under the same token wait for it."""

    token: bytes
    done: asyncio.Future[Answer | None]  # None: the route did not answer 200; each waiter then asks it itself


class StatusAnswerCache:
    """Sends a kept status answer, or passes the request on and keeps its 200 answer.

    Concurrent misses of one session share the one request that reads: when a session changes, 200 clients
    polling it cost one pass through the route, not 200 (and only that one counts for MAX_CONCURRENT_REQUESTS,
    which runs inside this middleware)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self._reading: dict[str, _Reading] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        answers: StatusAnswers | None = getattr(scope["app"].state, "status_answers", None)
        session_id = session_of(scope) if answers is not None and scope["type"] == "http" else None
        if answers is None or session_id is None:
            await self.app(scope, receive, send)
            return
        kept = answers.peek(session_id)
        token = answers.token()  # before the route reads the state: see ChangeCache.keep
        reading = self._reading.get(session_id)
        if kept is None and reading is not None and reading.token == token:
            kept = await asyncio.shield(reading.done)
        if kept is not None:
            await send(kept.start)
            await send({"type": "http.response.body", "body": kept.body})
            return
        await self._read(scope, receive, send, answers, session_id, token)

    async def _read(
        self, scope: Scope, receive: Receive, send: Send, answers: StatusAnswers, session_id: str, token: bytes
    ) -> None:
        reading = _Reading(token, asyncio.get_running_loop().create_future())
        self._reading[session_id] = reading
        start: Message | None = None
        body: list[bytes] = []
        answer: Answer | None = None

        async def keeping(message: Message) -> None:
            nonlocal start, answer
            if message["type"] == "http.response.start":
                start = message
            elif message["type"] == "http.response.body":
                body.append(message.get("body", b""))
                if not message.get("more_body", False) and start is not None and start["status"] == 200:
                    answer = Answer(start, b"".join(body))
                    answers.keep(session_id, answer, token)
            await send(message)

        try:
            await self.app(scope, receive, keeping)
        finally:
            reading.done.set_result(answer)
            if self._reading.get(session_id) is reading:
                del self._reading[session_id]
