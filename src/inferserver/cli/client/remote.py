"""One run on the server, as ablinfer's client does it: the model's spec, a session, the inputs, the log as it
comes, the outcome, the outputs."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from rich.progress import Progress

from . import tus
from .connection import check, reason, transient, transient_error
from .download import download_output
from .errors import ClientError, Exit
from .retry import Retries
from .upload import upload_input

FINAL = ("complete", "failed")
POLL_SECONDS = 0.5
KEEPALIVE = "\0"  # the log stream's keep-alive line
# The server sends a keep-alive line after 5 s of silence: a minute without one is a dead connection (then the
# status poll takes over), not a quiet model.
LOG_TIMEOUT = httpx.Timeout(60.0, connect=10.0)


@dataclass(frozen=True)
class RunRequest:
    model: str
    inputs: dict[str, Path]
    params: dict[str, str]
    outputs: dict[str, Path]


@dataclass
class Server:
    """A connection and what the client learned about the server once (its tus support)."""

    client: httpx.Client
    retries: Callable[[], Retries] = Retries
    chunk: int = tus.CHUNK  # bytes per tus PATCH
    checksum: bool = False  # Upload-Checksum on each PATCH
    _tus: tus.TusServer | None = field(default=None, init=False)
    _tus_known: bool = field(default=False, init=False)

    def tus(self) -> tus.TusServer | None:
        if not self._tus_known:
            self._tus, self._tus_known = tus.offered(self.client, self.chunk, self.checksum), True
        return self._tus

    def spec(self, model: str) -> dict[str, Any]:
        response = self.client.get(f"models/{model}")
        if response.status_code == 404:
            raise ClientError(f"the server has no model {model!r}", Exit.USAGE)
        spec: dict[str, Any] = check(response, f"model {model}").json()["data"]
        return spec


def typed(spec: dict[str, Any], name: str, text: str) -> Any:
    """A `-p NAME=VALUE` string as the type the model's parameter wants; the server checks ranges and choices."""
    kind = spec["params"][name].get("type")
    try:
        if kind == "int":
            return int(text)
        if kind == "float":
            return float(text)
    except ValueError:
        raise ClientError(f"-p {name}={text}: must be of type {kind}", Exit.USAGE) from None
    if kind == "bool":
        lowered = text.lower()
        if lowered not in ("true", "false", "1", "0", "yes", "no"):
            raise ClientError(f"-p {name}={text}: must be true or false", Exit.USAGE)
        return lowered in ("true", "1", "yes")
    return text


def _choices(spec: dict[str, Any], section: str, given: dict[str, Path], option: str) -> dict[str, dict[str, bool]]:
    """Enabled exactly for the given inputs/outputs; a required one not given is a usage error."""
    declared: dict[str, dict[str, Any]] = spec.get(section) or {}
    unknown = sorted(set(given) - set(declared))
    if unknown:
        raise ClientError(
            f"{option} {unknown[0]}: model {spec['id']} has no {section[:-1]} of that name "
            f"(it has: {', '.join(declared) or 'none'})",
            Exit.USAGE,
        )
    missing = [n for n, io in declared.items() if io.get("status") == "required" and n not in given]
    if missing:
        raise ClientError(f"{option} {missing[0]}=FILE is needed: it is a required {section[:-1]}", Exit.USAGE)
    return {name: {"enabled": name in given} for name in declared}


def session_body(spec: dict[str, Any], request: RunRequest) -> dict[str, Any]:
    for name, path in request.inputs.items():
        if not path.is_file():
            raise ClientError(f"-i {name}={path}: no such file", Exit.USAGE)
    unknown = sorted(set(request.params) - set(spec.get("params") or {}))
    if unknown:
        raise ClientError(f"-p {unknown[0]}: model {spec['id']} has no parameter of that name", Exit.USAGE)
    return {
        "inputs": _choices(spec, "inputs", request.inputs, "-i"),
        "params": {name: {"value": typed(spec, name, text)} for name, text in request.params.items()},
        "outputs": _choices(spec, "outputs", request.outputs, "-o"),
    }


@dataclass(eq=False)  # compared by identity: the batch keeps the runs under way in a set
class RemoteRun:
    server: Server
    request: RunRequest
    progress: Progress
    on_line: Callable[[str], None]
    tag: str = ""  # leads each progress bar's name (batch: the volume)
    session_id: str | None = None

    def execute(self) -> str:
        """Run to the end and write the outputs; the session id. Raises ClientError with the server's reason."""
        spec = self.server.spec(self.request.model)
        self._create(session_body(spec, self.request))
        assert self.session_id is not None
        offer = self.server.tus()
        for name, path in self.request.inputs.items():
            upload_input(
                self.server.client, self.session_id, name, path, self.progress, offer, self.server.retries(), self.tag
            )
        self._follow_log()
        status, info = self._wait_final()
        if status == "failed":
            raise ClientError(f"run failed (session {self.session_id}): {info}", Exit.FAILED)
        for name, target in self.request.outputs.items():
            download_output(
                self.server.client, self.session_id, name, target, self.progress, self.server.retries(), self.tag
            )
        return self.session_id

    def cancel(self) -> None:
        """Best effort, on an interrupt: the server stops the run rather than keep a GPU for nobody."""
        if self.session_id is not None:
            with contextlib.suppress(httpx.HTTPError):
                self.server.client.delete(f"sessions/{self.session_id}", timeout=5)

    def _create(self, body: dict[str, Any]) -> None:
        response = self.server.client.post(f"models/{self.request.model}", json=body)
        if response.status_code == 400:  # a parameter value the model refuses: the command line was wrong
            raise ClientError(f"creating a session: {reason(response)}", Exit.USAGE)
        self.session_id = check(response, "creating a session").json()["data"]["session_id"]

    def _follow_log(self) -> None:
        """Print the queue position and the model's output as they come; a dropped stream is not an error (the
        status poll then says how the run ended)."""
        try:
            url = f"sessions/{self.session_id}/logs"
            with self.server.client.stream("GET", url, timeout=LOG_TIMEOUT) as response:
                if transient(response):
                    return  # a proxy whose server restarts: the status poll waits for it
                check(response, "log stream")
                for line in response.iter_lines():
                    if line.strip(KEEPALIVE):
                        self.on_line(line)
        except httpx.TransportError:
            pass

    def _wait_final(self) -> tuple[str, str]:
        retries = self.server.retries()
        while True:
            try:
                response = self.server.client.get(f"sessions/{self.session_id}")
            except httpx.TransportError as exc:
                retries.failed(f"status of session {self.session_id}", exc)
                continue
            if transient(response):
                retries.failed(f"status of session {self.session_id}", transient_error(response, "GET"))
                continue
            data = check(response, f"status of session {self.session_id}").json()["data"]
            if data["status"] in FINAL:
                return str(data["status"]), str(data.get("info", ""))
            time.sleep(POLL_SECONDS)
