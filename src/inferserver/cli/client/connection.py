"""The server connection: base URL, credentials from the environment or netrc, and errors named as the server
words them."""

from __future__ import annotations

import netrc
import os
from collections.abc import Generator, Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlsplit

import httpx

from .errors import ClientError, Exit, TransientError
from .names import DEFAULT_URL, NETRC_ENV, PASSWORD_ENV, TOKEN_ENV, URL_ENV, USER_ENV

# Connecting fails fast; reads wait long (a conversion on upload, a slow disk), but not forever.
TIMEOUT = httpx.Timeout(300.0, connect=10.0)


def base_url(given: str | None) -> str:
    url = (given or os.environ.get(URL_ENV) or DEFAULT_URL).rstrip("/") + "/"
    if urlsplit(url).scheme not in ("http", "https"):
        raise ClientError(f"--url {url}: must start with http:// or https://", Exit.USAGE)
    return url


def _netrc_login(url: str) -> tuple[str, str] | None:
    path = Path(os.environ.get(NETRC_ENV) or Path.home() / ".netrc")
    if not path.is_file():
        return None
    try:
        entry = netrc.netrc(str(path)).authenticators(urlsplit(url).hostname or "")
    except (netrc.NetrcParseError, OSError) as exc:
        raise ClientError(f"netrc file {path}: {exc}", Exit.USAGE) from exc
    if entry is None:
        return None
    login, _, password = entry
    return login, password or ""


def credentials(url: str) -> httpx.Auth | None:
    """A token (INFERSERVER_TOKEN), a user and password (INFERSERVER_USER, INFERSERVER_PASSWORD), or the netrc
    entry for the server's host; never from the command line, where other users would see it in `ps`."""
    token = os.environ.get(TOKEN_ENV)
    if token:
        return BearerAuth(token)
    user = os.environ.get(USER_ENV)
    if user:
        if PASSWORD_ENV not in os.environ:
            raise ClientError(f"{USER_ENV} is set but {PASSWORD_ENV} is not", Exit.USAGE)
        return httpx.BasicAuth(user, os.environ[PASSWORD_ENV])
    login = _netrc_login(url)
    return httpx.BasicAuth(*login) if login else None


class BearerAuth(httpx.Auth):
    def __init__(self, token: str) -> None:
        self.header = f"Bearer {token}"

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        request.headers["Authorization"] = self.header
        yield request


def connect(url: str) -> httpx.Client:
    return httpx.Client(base_url=url, auth=credentials(url), timeout=TIMEOUT, follow_redirects=False)


def reason(response: httpx.Response) -> str:
    """The server's words for a refusal: the envelope's details, else the body's start, else the status."""
    try:
        errors = response.json()["errors"]
        details = [str(error["detail"]) for error in errors]
    except (ValueError, KeyError, TypeError):
        text = response.text.strip()[:300]
        details = [text] if text else []
    return "; ".join(details) or f"HTTP {response.status_code} {response.reason_phrase}"


# A proxy's answers while the server behind it restarts or is overloaded: worth another try, like a dropped
# connection (NGINX answers 502 while the upstream is down).
TRANSIENT = frozenset({502, 503, 504})


def transient(response: httpx.Response) -> bool:
    return response.status_code in TRANSIENT


def transient_error(response: httpx.Response, doing: str) -> TransientError:
    response.read()
    return TransientError(f"{doing}: {response.status_code} {reason(response)}")


def check(response: httpx.Response, doing: str) -> httpx.Response:
    """`response` when it succeeded; else a ClientError naming what was being done and the server's reason."""
    if response.is_success:
        return response
    response.read()  # a streamed answer's body holds the reason
    status = Exit.DENIED if response.status_code in (401, 403) else Exit.FAILED
    raise ClientError(f"{doing}: {response.status_code} {reason(response)}", status)


def unreachable(url: str, exc: httpx.TransportError) -> ClientError:
    return ClientError(f"server {url} unreachable: {exc.__class__.__name__}: {exc}", Exit.UNREACHABLE)


@contextmanager
def reachable(url: str) -> Iterator[None]:
    """Transport failures (refused, reset, DNS, timeouts) become the 'unreachable' exit status."""
    try:
        yield
    except httpx.TransportError as exc:
        raise unreachable(url, exc) from exc
