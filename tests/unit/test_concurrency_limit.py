"""MAX_CONCURRENT_REQUESTS: short requests beyond the limit get 503 at once; long transfers never count."""

from __future__ import annotations

import asyncio
import json
import time
from types import SimpleNamespace
from typing import Any

import pytest
from starlette.types import Receive, Scope, Send

from inferserver.api.concurrency import ConcurrencyLimit, counted

from .asgi import ask

SID = "0b4c5f3e-2a8d-4c1b-9d8e-5f6a7b8c9d0e"


class Held:
    """An app whose requests stay in flight until `release` is set."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.entered = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        self.entered += 1
        await self.release.wait()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})


def scope_for(path: str, method: str = "GET", limit: int = 2) -> dict[str, Any]:
    app = SimpleNamespace(state=SimpleNamespace(settings=SimpleNamespace(MAX_CONCURRENT_REQUESTS=limit)))
    return {"type": "http", "method": method, "path": path, "root_path": "", "app": app, "headers": []}


async def test_beyond_the_limit_a_request_is_refused_at_once_and_says_why() -> None:
    held = Held()
    limit = ConcurrencyLimit(held)
    waiting = [asyncio.create_task(ask(limit, scope_for(f"/sessions/{SID}"))) for _ in range(2)]
    await asyncio.sleep(0.01)
    began = time.monotonic()
    refused = await ask(limit, scope_for("/models"))
    assert time.monotonic() - began < 0.1
    assert refused[0]["status"] == 503
    headers = dict(refused[0]["headers"])
    assert headers[b"retry-after"] == b"1"
    assert headers[b"content-type"] == b"application/json"
    assert json.loads(refused[1]["body"]) == {
        "errors": [
            {
                "detail": "the server is busy: 2 requests are in flight in this worker, the limit "
                "(MAX_CONCURRENT_REQUESTS); retry after 1 s"
            }
        ]
    }
    assert held.entered == 2
    held.release.set()
    assert [(await w)[0]["status"] for w in waiting] == [200, 200]
    # The slots are free again.
    assert (await ask(limit, scope_for("/models")))[0]["status"] == 200


async def test_uploads_log_streams_and_downloads_do_not_take_slots() -> None:
    held = Held()
    limit = ConcurrencyLimit(held)
    long = [
        scope_for(f"/sessions/{SID}/inputs/ct", method="PUT"),
        scope_for(f"/sessions/{SID}/inputs/ct", method="POST"),
        scope_for(f"/sessions/{SID}/logs"),
        scope_for(f"/sessions/{SID}/outputs/seg"),
    ]
    transfers = [asyncio.create_task(ask(limit, scope)) for scope in long * 2]
    polls = [asyncio.create_task(ask(limit, scope_for(f"/sessions/{SID}"))) for _ in range(2)]
    await asyncio.sleep(0.01)
    assert held.entered == len(transfers) + len(polls)  # eight transfers and two polls under a limit of 2
    held.release.set()
    assert [answer[0]["status"] for answer in await asyncio.gather(*transfers, *polls)] == [200] * 10


@pytest.mark.parametrize(
    ("path", "is_counted"),
    [
        (f"/sessions/{SID}", True),
        ("/models/copy", True),
        ("/sessions", True),
        (f"/sessions/{SID}/inputs/ct", False),
        (f"/sessions/{SID}/outputs/seg", False),
        (f"/sessions/{SID}/logs", False),
        (f"/sessions/{SID}/logs/more", True),
    ],
)
def test_which_requests_count(path: str, is_counted: bool) -> None:
    assert counted(scope_for(path)) is is_counted


async def test_a_failing_request_frees_its_slot() -> None:
    async def broken(scope: Scope, receive: Receive, send: Send) -> None:
        raise RuntimeError("boom")

    limit = ConcurrencyLimit(broken)
    for _ in range(3):
        with pytest.raises(RuntimeError):
            await ask(limit, scope_for("/models", limit=1))
    assert limit.in_flight == 0


async def test_an_app_not_started_has_no_limit_yet() -> None:
    held = Held()
    held.release.set()
    limit = ConcurrencyLimit(held)
    scope = scope_for("/models")
    scope["app"].state.settings = None  # create_app() without its lifespan (settings are read at start-up)
    assert (await ask(limit, scope))[0]["status"] == 200
