"""Optional access control: HTTP Basic against AUTH_USERS_FILE and/or Bearer tokens against AUTH_TOKENS_FILE.

Off unless one of the two settings names a file; then every request needs one valid credential.
A pure ASGI middleware, so it also guards streamed bodies and responses, the docs and the schema.
The files are re-read when they change (checked by a stat per request), so adding or revoking a user
or token needs no restart; a file that becomes unreadable or malformed refuses everyone (503) until
it is fixed, rather than serving the old list. A 401 never says whether the user, the password or
the token was wrong.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import json
import logging
from collections import OrderedDict
from pathlib import Path

from starlette.types import ASGIApp, Receive, Scope, Send

from ..config import Settings
from ..credentials import CredentialsError, Tokens, Users, file_stamp, load_tokens, load_users

logger = logging.getLogger(__name__)

REALM = 'Basic realm="inferserver"'
VERIFIED_CACHE = 256  # recent good Basic credentials: the ablinfer client polls every second


class _Watched:
    """A credentials file, re-read when its inode, size or mtime change."""

    def __init__(self, path: Path, load) -> None:  # noqa: ANN001 - load_users or load_tokens
        self.path, self.load = path, load
        self.stamp = file_stamp(path)
        self.value = load(path)  # at start-up a bad file stops the server

    def current(self):  # noqa: ANN201 - Users or Tokens
        stamp = file_stamp(self.path)
        if stamp != self.stamp:
            self.value = None  # fail closed until a good version is read
            self.value = self.load(self.path)
            self.stamp = stamp
            logger.info("access control: re-read %s", self.path)
        if self.value is None:
            raise CredentialsError(f"{self.path}: not usable")
        return self.value


class AccessControl:
    def __init__(self, users_file: Path | None, tokens_file: Path | None) -> None:
        self.users = _Watched(users_file, load_users) if users_file else None
        self.tokens = _Watched(tokens_file, load_tokens) if tokens_file else None
        self._verified: OrderedDict[bytes, None] = OrderedDict()

    @classmethod
    def from_settings(cls, settings: Settings) -> AccessControl | None:
        if settings.AUTH_USERS_FILE is None and settings.AUTH_TOKENS_FILE is None:
            return None
        return cls(settings.AUTH_USERS_FILE, settings.AUTH_TOKENS_FILE)

    async def allows(self, authorization: str | None) -> bool:
        """Whether the Authorization header carries a valid credential. CredentialsError: a file is broken."""
        scheme, _, value = (authorization or "").strip().partition(" ")
        scheme, value = scheme.lower(), value.strip()
        if scheme == "bearer" and self.tokens is not None:
            tokens: Tokens = self.tokens.current()
            return tokens.verify(value)
        if scheme == "basic" and self.users is not None:
            try:
                user, sep, password = base64.b64decode(value, validate=True).decode().partition(":")
            except (binascii.Error, UnicodeDecodeError):
                return False
            users: Users = self.users.current()
            return bool(sep) and await self._verify_user(users, user, password)
        return False

    async def _verify_user(self, users: Users, user: str, password: str) -> bool:
        # Only successes are remembered, keyed by a digest of the file's version and the credential:
        # a changed file or password starts over, and a wrong guess always pays the full scrypt.
        key = hashlib.sha256(repr((self.users.stamp if self.users else None, user, password)).encode()).digest()
        if key in self._verified:
            self._verified.move_to_end(key)
            return True
        if not await asyncio.to_thread(users.verify, user, password):  # scrypt: off the event loop
            return False
        self._verified[key] = None
        if len(self._verified) > VERIFIED_CACHE:
            self._verified.popitem(last=False)
        return True


class AuthMiddleware:
    """Refuses every HTTP request without a valid credential when app.state.access is set."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        access: AccessControl | None = getattr(scope["app"].state, "access", None) if scope["type"] == "http" else None
        if access is None:
            await self.app(scope, receive, send)
            return
        authorization = next((v.decode("latin-1") for k, v in scope["headers"] if k == b"authorization"), None)
        try:
            allowed = await access.allows(authorization)
        except CredentialsError as exc:
            logger.error("access control refuses every request: %s", exc)
            await _answer(send, 503, "access control is misconfigured on the server; see its log")
            return
        if allowed:
            await self.app(scope, receive, send)
        else:
            await _answer(send, 401, "invalid credentials" if authorization else "authentication required")


async def _answer(send: Send, status: int, detail: str) -> None:
    body = json.dumps({"errors": [{"detail": detail}]}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    if status == 401:
        headers.append((b"www-authenticate", REALM.encode()))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
