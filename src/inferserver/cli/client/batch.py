"""`inferserver client batch`: one model over every volume of a folder, N sessions at a time; outputs in
OUTPUT_DIR/<volume stem>/<output name><extension>; volumes whose outputs all exist are skipped, so an
interrupted batch continues where it stopped; summary.csv and summary.json in OUTPUT_DIR."""

from __future__ import annotations

import csv
import json
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import httpx
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from .connection import unreachable
from .errors import ClientError, Exit
from .progress import transfer_progress
from .remote import RemoteRun, RunRequest, Server, session_body

VOLUME_SUFFIXES = (".nii.gz", ".nii", ".nrrd")
SUMMARY_FIELDS = ["volume", "status", "seconds", "session_id", "reason"]


@dataclass(frozen=True)
class Batch:
    model: str
    input_dir: Path
    output_dir: Path
    jobs: int
    input_name: str | None
    params: dict[str, str]
    output_names: list[str]


@dataclass
class Outcome:
    volume: str
    status: str  # complete, failed, skipped
    seconds: float
    session_id: str = ""
    reason: str = ""
    exit: Exit = Exit.OK


def volume_stem(path: Path) -> str | None:
    """The name without its volume suffix, or None when the file is not a volume."""
    lowered = path.name.lower()
    for suffix in VOLUME_SUFFIXES:
        if lowered.endswith(suffix) and len(lowered) > len(suffix):
            return path.name[: -len(suffix)]
    return None


def volumes(directory: Path) -> list[tuple[str, Path]]:
    if not directory.is_dir():
        raise ClientError(f"INPUT_DIR {directory}: not a directory", Exit.USAGE)
    found = [(stem, path) for path in sorted(directory.iterdir()) if path.is_file() and (stem := volume_stem(path))]
    stems = [stem for stem, _ in found]
    twice = sorted({stem for stem in stems if stems.count(stem) > 1})
    if twice:  # a.nii and a.nrrd would write the same output folder
        raise ClientError(f"INPUT_DIR {directory}: two volumes named {twice[0]} (outputs would collide)", Exit.USAGE)
    return found


def _input_name(spec: dict[str, Any], given: str | None) -> str:
    inputs: dict[str, Any] = spec.get("inputs") or {}
    if given is not None:
        if given not in inputs:
            raise ClientError(f"-i {given}: model {spec['id']} has no input of that name", Exit.USAGE)
        return given
    if len(inputs) != 1:
        raise ClientError(
            f"model {spec['id']} has inputs {', '.join(inputs)}: say which the volumes feed with -i", Exit.USAGE
        )
    return next(iter(inputs))


def _output_names(spec: dict[str, Any], given: list[str]) -> list[str]:
    outputs: dict[str, Any] = spec.get("outputs") or {}
    if given:
        return given  # session_body names an unknown one
    return [name for name, io in outputs.items() if io.get("status") in ("required", "suggested")]


def output_file(spec: dict[str, Any], name: str) -> str:
    """`<output name><extension>`, from the server's spec: refused unless it is one plain file name, so a hostile
    server cannot make the batch write outside OUTPUT_DIR/<volume>."""
    file_name = f"{name}{spec['outputs'][name].get('extension', '')}"
    if "/" in file_name or "\\" in file_name or "\0" in file_name or file_name.strip(".") == "":
        raise ClientError(f"output {name!r}: the server's spec makes the file name {file_name!r}, not a plain name")
    return file_name


class BatchRun:
    def __init__(self, server: Server, batch: Batch, console: Console) -> None:
        self.server = server
        self.batch = batch
        self.console = console
        self.running: set[RemoteRun] = set()
        self.lock = threading.Lock()

    def requests(self) -> list[tuple[str, RunRequest]]:
        spec = self.server.spec(self.batch.model)
        name = _input_name(spec, self.batch.input_name)
        outputs = _output_names(spec, self.batch.output_names)
        found = volumes(self.batch.input_dir)
        if not found:
            raise ClientError(f"INPUT_DIR {self.batch.input_dir}: no .nii, .nii.gz or .nrrd files", Exit.USAGE)
        requests = []
        for stem, path in found:
            targets = {o: self.batch.output_dir / stem / output_file(spec, o) for o in outputs if o in spec["outputs"]}
            requests.append((stem, RunRequest(self.batch.model, {name: path}, self.batch.params, targets)))
        for _, request in requests[:1]:  # a bad -p or -o stops the batch before any session starts
            session_body(spec, RunRequest(request.model, request.inputs, request.params, {o: Path(o) for o in outputs}))
        return requests

    def execute(self) -> list[Outcome]:
        requests = self.requests()
        outcomes: dict[str, Outcome] = {}
        with transfer_progress(self.console) as progress, ThreadPoolExecutor(self.batch.jobs) as pool:
            futures: dict[Future[Outcome], str] = {}
            for stem, request in requests:
                if request.outputs and all(path.is_file() for path in request.outputs.values()):
                    outcomes[stem] = Outcome(stem, "skipped", 0.0, reason="outputs already exist")
                    progress.console.print(f"{stem}: skipped (outputs already exist)")
                else:
                    futures[pool.submit(self._one, stem, request, progress)] = stem
            try:
                for future in futures:
                    outcome = future.result()
                    outcomes[outcome.volume] = outcome
            except KeyboardInterrupt:
                pool.shutdown(wait=False, cancel_futures=True)
                with self.lock:
                    for remote in self.running:
                        remote.cancel()
                raise
        return [outcomes[stem] for stem, _ in requests]

    def _one(self, stem: str, request: RunRequest, progress: Progress) -> Outcome:
        remote = RemoteRun(self.server, request, progress, lambda line: None, tag=f"{stem}: ")
        with self.lock:
            self.running.add(remote)
        started = time.monotonic()
        try:
            try:
                remote.execute()
            except httpx.TransportError as exc:  # one volume's failure, not the batch's
                raise unreachable(str(self.server.client.base_url), exc) from exc
            outcome = Outcome(stem, "complete", time.monotonic() - started, remote.session_id or "")
        except ClientError as exc:
            outcome = Outcome(stem, "failed", time.monotonic() - started, remote.session_id or "", str(exc), exc.status)
        finally:
            with self.lock:
                self.running.discard(remote)
        progress.console.print(
            f"{stem}: {outcome.status} in {outcome.seconds:.1f} s" + (f": {outcome.reason}" if outcome.reason else "")
        )
        return outcome


def write_summary(directory: Path, outcomes: list[Outcome]) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    rows = [{k: v for k, v in asdict(o).items() if k in SUMMARY_FIELDS} for o in outcomes]
    for row in rows:
        row["seconds"] = round(row["seconds"], 3)
    (directory / "summary.json").write_text(json.dumps(rows, indent=2) + "\n")
    with (directory / "summary.csv").open("w", newline="") as out:
        writer = csv.DictWriter(out, SUMMARY_FIELDS)
        writer.writeheader()
        writer.writerows(rows)


def print_summary(console: Console, outcomes: list[Outcome]) -> None:
    table = Table(*SUMMARY_FIELDS[:3], "reason")
    for outcome in outcomes:
        table.add_row(outcome.volume, outcome.status, f"{outcome.seconds:.1f}", outcome.reason)
    console.print(table)


def exit_status(outcomes: list[Outcome]) -> Exit:
    failures = {o.exit for o in outcomes if o.status == "failed"}
    if not failures:
        return Exit.OK
    return failures.pop() if len(failures) == 1 else Exit.FAILED


def run_batch(server: Server, batch: Batch) -> int:
    if batch.jobs < 1:
        raise ClientError(f"-j {batch.jobs}: must be at least 1", Exit.USAGE)
    outcomes = BatchRun(server, batch, Console(stderr=True)).execute()
    write_summary(batch.output_dir, outcomes)
    print_summary(Console(), outcomes)
    return exit_status(outcomes)
