"""`inferserver run`: one model on the local Docker engine, no server, through the same runner."""

from __future__ import annotations

import shutil
import sys
import tempfile
import uuid
from pathlib import Path
from typing import Any, TextIO

from ..config import Settings
from ..runner.docker import DockerBackend
from ..runner.execute import Runner
from ..scheduling.dispatch import job_for
from ..sessions.state import SessionFiles, SessionPlan
from ..specs.directory import load_model_directory, load_spec_file
from ..specs.errors import ConfigError, SpecError
from ..specs.model import BoolParam, FloatParam, IntParam, ModelSpec
from ..specs.runconfig import IOChoice, ParamChoice, SessionRequest, validate_run_config

LOCAL_INSTANCE = "inferserver-run"  # the instance label: no server takes these containers for its own orphans


class UsageError(Exception):
    """A bad argument; the message names it."""


class PrintingLog:
    """The LogSink of a local run: the model's output goes straight to the terminal."""

    def __init__(self, out: TextIO) -> None:
        self.out = out

    async def write(self, data: bytes) -> None:
        self.out.write(data.decode("utf-8", errors="replace"))
        self.out.flush()


def find_spec(spec_or_id: str, model_path: Path) -> ModelSpec:
    path = Path(spec_or_id)
    if path.suffix == ".json" or path.is_file():
        try:
            return load_spec_file(path)
        except SpecError as exc:
            raise UsageError(f"{path}: {exc}") from exc
    loaded = load_model_directory(model_path).models.get(spec_or_id)
    if loaded is None:
        raise UsageError(f"no model {spec_or_id!r} in MODEL_PATH {model_path} (give a spec file's path instead)")
    return loaded.spec


def pairs(values: list[str], option: str) -> dict[str, str]:
    result: dict[str, str] = {}
    for value in values:
        name, sep, rest = value.partition("=")
        if not sep or not name:
            raise UsageError(f"{option} {value!r}: expected NAME=VALUE")
        result[name] = rest
    return result


def typed_value(spec: ModelSpec, name: str, text: str) -> Any:
    """A command-line string as the type the spec's param wants (validation then checks the value)."""
    param = spec.params.get(name)
    if isinstance(param, IntParam | FloatParam):
        try:
            return int(text) if isinstance(param, IntParam) else float(text)
        except ValueError as exc:
            raise UsageError(f"--param {name}={text}: must be a {param.type}") from exc
    if isinstance(param, BoolParam):
        lowered = text.lower()
        if lowered not in ("true", "false", "1", "0", "yes", "no"):
            raise UsageError(f"--param {name}={text}: must be true or false")
        return lowered in ("true", "1", "yes")
    return text


async def run(
    spec: ModelSpec,
    settings: Settings,
    inputs: dict[str, str],
    params: dict[str, str],
    outputs: dict[str, str],
    out: TextIO = sys.stdout,
    err: TextIO = sys.stderr,
) -> int:
    for name, path in inputs.items():
        if not Path(path).is_file():  # noqa: ASYNC240 - the command's own loop, nothing else runs on it yet
            raise UsageError(f"--input {name}={path}: no such file")
    request = SessionRequest(
        inputs={name: IOChoice(enabled=True) for name in inputs},
        params={name: ParamChoice(value=typed_value(spec, name, text)) for name, text in params.items()},
        outputs={name: IOChoice(enabled=True) for name in outputs},
    )
    try:
        config = validate_run_config(spec, request, max_string_bytes=settings.MAX_STRING_PARAM_BYTES)
    except ConfigError as exc:
        raise UsageError(str(exc)) from exc
    missing = [n for n in config.enabled_inputs() if n not in inputs]
    missing += [n for n in config.enabled_outputs() if n not in outputs]
    if missing:
        raise UsageError(f"give a path for every enabled input and output: missing {', '.join(missing)}")

    with tempfile.TemporaryDirectory(prefix="inferserver-run-") as tmp:
        # A session's layout in a temporary directory; inputs are linked in, not copied (volumes are big).
        plan = SessionPlan(id=str(uuid.uuid4()), spec=spec, config=config, files=SessionFiles(Path(tmp) / "run"))
        plan.files.create()
        for name in config.enabled_inputs():
            plan.input_path(name).symlink_to(Path(inputs[name]).resolve())  # noqa: ASYNC240 - as above
        # Alone, with no server's pool to share: the first devices of GPUS when it lists them.
        need = settings.gpus_per_run if spec.gpus is None else spec.gpus
        gpu_ids = list(settings.gpu_pool[:need]) if settings.gpu_pool else ([] if spec.gpus == 0 else None)
        try:
            job = job_for(plan, LOCAL_INSTANCE, settings, gpu_ids)
        except SpecError as exc:  # the spec asks above this machine's limits
            raise UsageError(f"{spec.id}: {exc}") from exc
        backend = DockerBackend()
        runner = Runner(backend, settings.runner_gpu_mode, settings.CONTAINER_NETWORK)
        print(f"inferserver: running {spec.id} {spec.version} ({job.image}): {' '.join(job.argv)}", file=err)

        async def started(container_id: str) -> None:
            print(f"inferserver: container {container_id[:12]} started", file=err)

        try:
            outcome = await runner.run(job, PrintingLog(out), started)
        finally:
            await backend.close()
        if not outcome.ok:
            print(f"inferserver: run failed: {outcome.reason}", file=err)
            return 1
        for transfer in job.outputs:
            shutil.move(transfer.host, outputs[transfer.name])
            print(f"inferserver: wrote {transfer.name} to {outputs[transfer.name]}", file=err)
    print("inferserver: complete", file=err)
    return 0
