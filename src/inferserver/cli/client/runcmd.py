"""`inferserver client run`: one model run on a server, outputs written locally."""

from __future__ import annotations

import sys
from pathlib import Path

from rich.console import Console

from .errors import ClientError, Exit
from .progress import transfer_progress
from .remote import RemoteRun, RunRequest, Server


def pairs(values: list[str], option: str) -> dict[str, str]:
    result: dict[str, str] = {}
    for value in values:
        name, sep, rest = value.partition("=")
        if not sep or not name or not rest:
            raise ClientError(f"{option} {value!r}: expected NAME=VALUE", Exit.USAGE)
        if name in result:
            raise ClientError(f"{option} {name}: given twice", Exit.USAGE)
        result[name] = rest
    return result


def path_pairs(values: list[str], option: str) -> dict[str, Path]:
    return {name: Path(value) for name, value in pairs(values, option).items()}


def print_line(line: str) -> None:
    print(line, flush=True)


def run(server: Server, request: RunRequest) -> int:
    with transfer_progress(Console(stderr=True)) as progress:
        remote = RemoteRun(server, request, progress, print_line)
        try:
            session_id = remote.execute()
        except KeyboardInterrupt:
            remote.cancel()
            raise ClientError("interrupted: the session was cancelled", Exit.FAILED) from None
    written = ", ".join(str(path) for path in request.outputs.values()) or "no outputs asked for"
    print(f"inferserver client: session {session_id} complete: {written}", file=sys.stderr)
    return Exit.OK
