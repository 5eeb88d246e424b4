"""Downloads sent by NGINX itself: the X-Accel-Mapping request header and the X-Accel-Redirect answer.

Rack::Sendfile's scheme. A proxy that can serve SESSION_PATH's files says so in each request with
`X-Accel-Mapping: <directory>=<internal URI prefix>`; for a file under that directory the app answers with
an empty body and `X-Accel-Redirect: <URI>`, and NGINX sends the file (sendfile, ranges) instead of copying
what Python read. Without the header, or with one that does not fit, the app streams the file as before.

A client that talks to NGINX cannot set the header (`proxy_set_header` replaces it). One that talks to the
app directly, or through a proxy that does not set it, chooses only the URI prefix: the mapping must name
SESSION_PATH itself, so the rest of the URI is always `<session id>/outputs/<file>` (Rack::Sendfile let any
prefix of the path through, which let a client name any internal URI: CVE-2025-61780).
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from urllib.parse import quote

from starlette.responses import Response

logger = logging.getLogger(__name__)

HEADER = "x-accel-mapping"
# An NGINX URI prefix: an absolute path of plain URI characters. No `?` (NGINX would cut arguments off it),
# no `%` (it is decoded once, and the part we append is encoded by us), no `@` first (a named location).
_URI_PREFIX = re.compile(r"/[A-Za-z0-9._~!$&'()*+,;=:@/-]*")
# One warning per kind and process: a forging client must not be able to fill the log.
_warned: set[str] = set()


class MalformedMapping(ValueError):
    """The X-Accel-Mapping header is not `<absolute directory>=<URI path>`."""


@dataclass(frozen=True)
class Mapping:
    """Files under `directory` are served by the proxy at `uri_prefix` + their path below `directory`."""

    directory: PurePosixPath
    uri_prefix: str  # starts with "/"; a "/" is put between it and the rest whether or not it ends in one

    def uri_of(self, path: PurePosixPath) -> str | None:
        """The URI of `path` (absolute, already resolved), or None when it is not below `directory`."""
        try:
            rest = path.relative_to(self.directory)
        except ValueError:  # relative_to compares whole components: /var/x2 is not below /var/x
            return None
        if not rest.parts:
            return None
        return f"{self.uri_prefix.rstrip('/')}/{quote(rest.as_posix(), safe='/')}"


def parse_mapping(value: str) -> Mapping:
    """`<directory>=<URI prefix>` as NGINX sends it; the directory may end in "/" or not."""
    directory, sep, prefix = value.strip().partition("=")
    directory, prefix = directory.strip(), prefix.strip()
    if not sep or not directory.startswith("/") or "\x00" in directory:
        raise MalformedMapping(
            f"{value!r}: the left side must be an absolute directory, as in /var/inferserver/=/files/"
        )
    if not _URI_PREFIX.fullmatch(prefix) or "/../" in f"{prefix}/":
        raise MalformedMapping(f"{value!r}: the right side must be a URI path such as /_inferserver_files/")
    return Mapping(PurePosixPath(os.path.normpath(directory)), prefix)


def redirect_uri(header: str | None, path: Path, session_path: Path) -> str | None:
    """The X-Accel-Redirect URI for the file `path`, or None to stream it ourselves.

    None without a header, with a malformed one or one that names another directory than `session_path`
    (each warned about once), and for a file that resolves to outside it (a symbolic link, say).
    """
    if header is None:
        return None
    try:
        mapping = parse_mapping(header)
    except MalformedMapping as exc:
        _warn_once("malformed", "ignoring X-Accel-Mapping %s; downloads are streamed by the app", exc)
        return None
    root = session_path.resolve()
    if Path(mapping.directory).resolve() != root:
        _warn_once(
            "elsewhere",
            "ignoring X-Accel-Mapping %r: it must name SESSION_PATH %s; downloads are streamed by the app",
            header,
            root,
        )
        return None
    # Resolved on both sides: a symlinked SESSION_PATH still matches, a file linked out of it does not.
    return Mapping(PurePosixPath(root), mapping.uri_prefix).uri_of(PurePosixPath(path.resolve()))


def redirected(response: Response, uri: str) -> Response:
    """An empty answer telling NGINX to send `uri`, with `response`'s Content-Type and Content-Disposition,
    which NGINX keeps from the upstream on an X-Accel-Redirect."""
    headers = {"x-accel-redirect": uri}
    if "content-disposition" in response.headers:
        headers["content-disposition"] = response.headers["content-disposition"]
    return Response(status_code=200, headers=headers, media_type=response.media_type)


def _warn_once(kind: str, message: str, *args: object) -> None:
    if kind not in _warned:
        _warned.add(kind)
        logger.warning(message, *args)
