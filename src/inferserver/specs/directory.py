"""Loading the model directory: one JSON spec per model, a bad file never stops the others."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from .errors import SpecError
from .model import ModelSpec


@dataclass(frozen=True)
class LoadedModel:
    spec: ModelSpec
    path: Path


@dataclass(frozen=True)
class SpecLoadError:
    path: Path
    reason: str

    def __str__(self) -> str:
        return f"{self.path}: {self.reason}"


@dataclass
class ModelDirectory:
    models: dict[str, LoadedModel] = field(default_factory=dict)
    errors: list[SpecLoadError] = field(default_factory=list)


SpecCheck = Callable[[ModelSpec], object]


def load_spec_file(path: Path, check: SpecCheck | None = None) -> ModelSpec:
    """Read and validate one spec file; SpecError says why it cannot be served.

    ``check`` is the server's own test of a valid spec (its limits against the server's ceilings); the
    SpecError it raises makes the file one that is reported and not served.
    """
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise SpecError(f"cannot read the file: {e}") from None
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as e:
        raise SpecError(f"not valid JSON: {e}") from None
    if not isinstance(raw, dict):
        raise SpecError(f"the spec must be a JSON object, not {type(raw).__name__}")
    spec = ModelSpec.from_raw(raw)
    if check is not None:
        check(spec)
    return spec


def load_model_directory(path: Path, check: SpecCheck | None = None) -> ModelDirectory:
    """Load every ``*.json`` in ``path`` (sorted, not recursive)."""
    if not path.is_dir():
        return ModelDirectory(errors=[SpecLoadError(path, "model directory does not exist or is not a directory")])
    loaded: list[LoadedModel] = []
    errors: list[SpecLoadError] = []
    for file in spec_files(path):
        try:
            loaded.append(LoadedModel(load_spec_file(file, check), file))
        except SpecError as e:
            errors.append(SpecLoadError(file, str(e)))
    return assemble(loaded, errors)


def spec_files(path: Path) -> list[Path]:
    return [file for file in sorted(path.glob("*.json")) if file.is_file()]


def assemble(loaded: list[LoadedModel], errors: list[SpecLoadError]) -> ModelDirectory:
    """The directory these specs make: a model id used by several files is served by none of them."""
    result = ModelDirectory(errors=list(errors))
    by_id: dict[str, list[LoadedModel]] = {}
    for model in loaded:
        by_id.setdefault(model.spec.id, []).append(model)
    for model_id, same in by_id.items():
        if len(same) == 1:
            result.models[model_id] = same[0]
            continue
        # No silent winner: the operator must decide which file is meant.
        files = ", ".join(str(m.path) for m in same)
        for m in same:
            result.errors.append(
                SpecLoadError(
                    m.path, f"model id {model_id!r} is used by several files ({files}); none of them is served"
                )
            )
    return result
