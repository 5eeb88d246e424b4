"""Driving one ASGI middleware directly in unit tests: an empty request body in, the messages it sends out."""

from __future__ import annotations

from typing import Any

from starlette.types import ASGIApp, Message


async def ask(middleware: ASGIApp, scope: dict[str, Any]) -> list[Message]:
    sent: list[Message] = []

    async def receive() -> Message:
        return {"type": "http.request", "body": b""}

    async def send(message: Message) -> None:
        sent.append(message)

    await middleware(scope, receive, send)
    return sent
