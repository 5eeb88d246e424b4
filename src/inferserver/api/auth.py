"""Optional access control: HTTP Basic against AUTH_USERS_FILE and/or Bearer tokens against AUTH_TOKENS_FILE.

Off unless one of the two settings names a file; then every request needs one valid credential, except
`GET /healthz` (a liveness probe that answers only "ok", so a health check needs no secret).
A pure ASGI middleware, so it also guards streamed bodies and responses, the docs and the schema.
The files are re-read when they change (checked by a stat per request), so adding or revoking a user
or token needs no restart; a file that becomes unreadable or malformed refuses everyone (503), whatever
credential they bring, until it is fixed, rather than serving the old list. A 401 never says whether the
user, the password or the token was wrong.

Password hashing (scrypt, tens of ms of CPU) runs on an executor of its own (app.state.hasher), never on
the default one that writes uploads; and an address with too many failures gets 429 without any hashing
(ratelimit.py).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import json
import logging
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass
from pathlib import Path
from typing import Generic, TypeVar

from starlette.types import ASGIApp, Receive, Scope, Send

from ..config import Settings
from ..observability.logs import printable
from .credentials import CredentialsError, Tokens, Users, file_stamp, hash_token, load_tokens, load_users
from .identity import NOBODY, SCOPE_KEY, Identity, token_identity
from .ratelimit import FailureLimiter

logger = logging.getLogger(__name__)

REALM = 'Basic realm="inferserver"'
VERIFIED_CACHE = 256  # recent good Basic credentials: the ablinfer client polls every second
HASH_THREADS = 1  # one core at most for password checks, whatever the number of guessers
# A limited address waits this long for its 429: a guesser that ignores Retry-After gets one answer a second per
# connection instead of thousands, which would otherwise take the event loop's time from real transfers.
LIMITED_DELAY = 1.0
OPEN_PATHS = frozenset({"/healthz"})  # answers only "ok": a liveness probe (Docker HEALTHCHECK) needs no secret
# The web page's own files (HTML, CSS, JavaScript, vendored libraries) hold no data: the page must load to ask for
# credentials itself, then sends them with every API call.
OPEN_PREFIX = "/ui/"

C = TypeVar("C", Users, Tokens)


class _Watched(Generic[C]):
    """A credentials file, re-read when its inode, size or mtime change."""

    def __init__(self, path: Path, load: Callable[[Path], C]) -> None:
        self.path = path
        self.load: Callable[[Path], C] = load
        self.stamp = file_stamp(path)
        self.value: C | None = load(path)  # at start-up a bad file stops the server

    def current(self) -> C:
        stamp = file_stamp(self.path)
        if stamp != self.stamp:
            self.value = None  # fail closed until a good version is read
            self.value = self.load(self.path)
            self.stamp = stamp
            logger.info("access control: re-read %s", self.path)
        if self.value is None:
            raise CredentialsError(f"{self.path}: not usable")
        return self.value


@dataclass(frozen=True)
class Verdict:
    allowed: bool
    retry_after: int | None = None  # set when the address is refused for too many failures (429)
    identity: Identity = NOBODY  # who was let in


REFUSED = Verdict(False)


def _user(users: Users, user: str) -> Verdict:
    return Verdict(True, identity=Identity(user, operator=users.is_operator(user)))


class AccessControl:
    def __init__(self, users_file: Path | None, tokens_file: Path | None, limiter: FailureLimiter) -> None:
        self.users = _Watched(users_file, load_users) if users_file else None
        self.tokens = _Watched(tokens_file, load_tokens) if tokens_file else None
        self.limiter = limiter
        self._verified: OrderedDict[bytes, None] = OrderedDict()

    @classmethod
    def from_settings(cls, settings: Settings) -> AccessControl | None:
        if settings.AUTH_USERS_FILE is None and settings.AUTH_TOKENS_FILE is None:
            return None
        limiter = FailureLimiter(settings.AUTH_MAX_FAILURES, settings.AUTH_FAILURE_WINDOW)
        return cls(settings.AUTH_USERS_FILE, settings.AUTH_TOKENS_FILE, limiter)

    async def check(self, authorization: str | None, address: str, hasher: Executor) -> Verdict:
        """Whether the Authorization header carries a valid credential. CredentialsError: a file is broken.

        Cheap checks (a token's sha256, a remembered password) run first and are never limited; a password
        is hashed on `hasher`, and only while `address` is under its failure limit."""
        # Both files first: a broken one refuses everyone, not only the users of its own scheme.
        users = self.users.current() if self.users else None
        tokens = self.tokens.current() if self.tokens else None
        scheme, _, value = (authorization or "").strip().partition(" ")
        if not scheme:
            return REFUSED  # no credential at all (a browser's first try): costs nothing, counts for nothing
        scheme, value = scheme.lower(), value.strip()
        if scheme == "bearer" and tokens is not None and tokens.verify(value):
            return Verdict(True, identity=token_identity(hash_token(value)))
        credential = _basic(value) if scheme == "basic" and users is not None else None
        if credential is not None and users is not None and self._remembered(credential):
            return _user(users, credential[0])
        if (retry_after := self.limiter.retry_after(address)) is not None:
            return Verdict(False, retry_after)
        if self.limiter.fail(address):  # counts until proven good: concurrent guesses cannot pass the limit
            # Once per window, not per refusal: a guesser must not flood the log either.
            logger.warning(
                "access control: %s sent %d failed credentials; it gets 429 for up to %d s (AUTH_MAX_FAILURES)",
                printable(address),
                self.limiter.limit,
                self.limiter.window,
            )
        if credential is None or users is None:
            return REFUSED
        if not await asyncio.get_running_loop().run_in_executor(hasher, users.verify, *credential):
            return REFUSED
        self.limiter.succeeded(address)
        self._remember(credential)
        return _user(users, credential[0])

    def _key(self, credential: tuple[str, str]) -> bytes:
        # Only successes are remembered, keyed by a digest of the file's version and the credential:
        # a changed file or password starts over, and a wrong guess always pays the full scrypt.
        return hashlib.sha256(repr((self.users.stamp if self.users else None, *credential)).encode()).digest()

    def _remembered(self, credential: tuple[str, str]) -> bool:
        key = self._key(credential)
        if key not in self._verified:
            return False
        self._verified.move_to_end(key)
        return True

    def _remember(self, credential: tuple[str, str]) -> None:
        self._verified[self._key(credential)] = None
        if len(self._verified) > VERIFIED_CACHE:
            self._verified.popitem(last=False)


def _basic(value: str) -> tuple[str, str] | None:
    """(user, password) of a Basic credential; None when it is not one."""
    try:
        user, sep, password = base64.b64decode(value, validate=True).decode().partition(":")
    except (binascii.Error, UnicodeDecodeError):
        return None
    return (user, password) if sep else None


def _open(scope: Scope) -> bool:
    path: str = scope["path"]
    root: str = scope.get("root_path", "")
    if root and path.startswith(root):  # Starlette includes root_path in path when one is set
        path = path[len(root) :]
    return scope["method"] == "GET" and (path in OPEN_PATHS or path == OPEN_PREFIX[:-1] or path.startswith(OPEN_PREFIX))


class AuthMiddleware:
    """Refuses every HTTP request without a valid credential when app.state.access is set."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        state = scope["app"].state
        access: AccessControl | None = getattr(state, "access", None) if scope["type"] == "http" else None
        if access is None or _open(scope):
            await self.app(scope, receive, send)
            return
        authorization = next((v.decode("latin-1") for k, v in scope["headers"] if k == b"authorization"), None)
        # The address uvicorn reports: the peer, or a trusted proxy's X-Forwarded-For (FORWARDED_ALLOW_IPS).
        address = scope["client"][0] if scope.get("client") else "unknown"
        try:
            verdict = await access.check(authorization, address, state.hasher)
        except CredentialsError as exc:
            logger.error("access control refuses every request: %s", exc)
            await _answer(send, 503, "access control is misconfigured on the server; see its log")
            return
        if verdict.allowed:
            scope[SCOPE_KEY] = verdict.identity
            await self.app(scope, receive, send)
        elif verdict.retry_after is not None:
            await asyncio.sleep(LIMITED_DELAY)
            await _answer(
                send,
                429,
                f"too many failed credentials from this address; retry after "
                f"{verdict.retry_after} s (AUTH_MAX_FAILURES)",
                retry_after=verdict.retry_after,
            )
        else:
            # The web page asks for credentials itself: a challenge would make the browser pop up its own dialog.
            challenge = (b"x-requested-with", b"XMLHttpRequest") not in scope["headers"]
            detail = "invalid credentials" if authorization else "authentication required"
            await _answer(send, 401, detail, challenge=challenge)


async def _answer(
    send: Send, status: int, detail: str, retry_after: int | None = None, *, challenge: bool = True
) -> None:
    body = json.dumps({"errors": [{"detail": detail}]}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    if status == 401 and challenge:
        headers.append((b"www-authenticate", REALM.encode()))
    if retry_after is not None:
        headers.append((b"retry-after", str(retry_after).encode()))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
