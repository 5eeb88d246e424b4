"""The client command's exit statuses and the one exception that carries a status and its reason."""

from __future__ import annotations

from enum import IntEnum


class Exit(IntEnum):
    """Exit statuses of `inferserver client` (README "Client command"): scripts tell the cases apart."""

    OK = 0
    FAILED = 1  # the run failed, or the server refused a request: the server's reason is printed
    USAGE = 2  # a bad argument, a missing file, an unknown model or parameter
    UNREACHABLE = 3  # no answer from the server (connection refused, DNS, timeouts), after retries
    DENIED = 4  # the server wants other credentials (401/403)


class ClientError(Exception):
    """Ends the command with `status`; the message says why (the server's own words when it gave any)."""

    def __init__(self, message: str, status: Exit = Exit.FAILED) -> None:
        super().__init__(message)
        self.status = status


class TransientError(ClientError):
    """A proxy's 502-504 while its server restarts: retried like a dropped connection."""
