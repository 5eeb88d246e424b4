"""Pydantic models of a json_version 1.3 model spec, validated the way ablinfer's ``normalize_model`` does.

Two rules shape these classes:

* defaults that ablinfer writes into a spec (maintainers, labelmap, min/max, ...) are filled in
  by ``mode="before"`` validators, so they count as *set*; fields ablinfer leaves absent keep a
  ``None`` default that is never set.  ``wire()`` dumps with ``exclude_unset=True`` and so gives
  exactly ablinfer's normalized dict: filled defaults present, absent fields absent (not null).
* extra fields are allowed and kept (ablinfer only warns about them).
"""

from __future__ import annotations

import math
import unicodedata
from typing import Annotated, Any, ClassVar, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from .ceilings import ModelLimits
from .errors import SpecError
from .upgrade import CURRENT_VERSION, upgrade_spec

Status = Literal["required", "suggested", "optional"]
SECTIONS = ("inputs", "outputs", "params")

NAME_MAX = 255  # bytes in one file name (Linux, and the archives that carry files into containers)
INT_MIN, INT_MAX = -2147483648, 2147483647
FLOAT_MIN, FLOAT_MAX = -3.40282e038, 3.40282e038


def _number(v: Any) -> Any:
    # ablinfer's numbers.Number would also take a bool; a bool bound or default is surely a
    # mistake in the spec and would make range checks meaningless, so it is refused here.
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise ValueError(f"must be a number, not {v!r}")
    return v


Number = Annotated[int | float, BeforeValidator(_number)]


def _filled(data: Any, **defaults: Any) -> Any:
    """Copy of ``data`` with each missing key set to its default (a fresh copy of it)."""
    if not isinstance(data, dict):
        return data
    out = dict(data)
    for key, value in defaults.items():
        if key not in out:
            out[key] = value.copy() if isinstance(value, (list, dict)) else value
    return out


class _SpecPart(BaseModel):
    # strict: JSON types must match exactly, as ablinfer's isinstance checks require.
    model_config = ConfigDict(extra="allow", strict=True)


class DockerSpec(_SpecPart):
    image_name: str
    image_tag: str
    data_path: str


class ProcessingStep(_SpecPart):
    """One pre/post-processing operation; the server never runs these, it only serves them."""

    name: str
    description: str
    status: Status
    locked: bool = False
    operation: str
    action: str | None = None
    targets: list[int] | None = None
    params: dict[str, Any]

    @model_validator(mode="before")
    @classmethod
    def _defaults(cls, data: Any) -> Any:
        return _filled(data, locked=False)


class IOSpec(_SpecPart):
    """An input or output file of the model."""

    name: str
    description: str
    status: Status
    flag: str
    extension: str
    type: Literal["volume", "segmentation"]
    labelmap: bool = False
    # Segmentation only.
    master: str | None = None
    colours: dict[str, list[Number]] = Field(default_factory=dict)
    names: dict[str, Any] | None = Field(default_factory=dict)
    # "pre" for inputs, "post" for outputs; filled in by ModelSpec, which knows the section.
    pre: list[ProcessingStep] = Field(default_factory=list)
    post: list[ProcessingStep] = Field(default_factory=list)

    @model_validator(mode="before")
    @classmethod
    def _defaults(cls, data: Any) -> Any:
        data = _filled(data, labelmap=False)
        if isinstance(data, dict) and data.get("type") == "segmentation":
            data = _filled(data, colours={}, names={})
        return data

    @field_validator("extension")
    @classmethod
    def _file_name_part(cls, extension: str) -> str:
        # The extension ends the file's name on disk and in the container (<name><extension>).
        if any(c in "/\\" or unicodedata.category(c) == "Cc" for c in extension):
            raise ValueError(
                f"must not contain '/', '\\', NUL or control characters, not {_short(extension)}: "
                "it becomes part of a file name"
            )
        if len(extension.encode()) > NAME_MAX:
            raise ValueError(f"is {len(extension.encode())} bytes long; a file name part may have at most {NAME_MAX}")
        return extension

    @field_validator("colours")
    @classmethod
    def _rgba(cls, colours: dict[str, list[int | float]]) -> dict[str, list[int | float]]:
        out = {}
        for label, colour in colours.items():
            if len(colour) not in (3, 4):
                raise ValueError(f"colour {label!r} must have 3 or 4 elements, not {len(colour)}")
            if any(c < 0 or c > 1 for c in colour):
                raise ValueError(f"colour {label!r} has a component outside [0, 1]")
            out[label] = [*colour, 1] if len(colour) == 3 else colour  # opaque, as ablinfer does
        return out


class _ParamBase(_SpecPart):
    name: str
    description: str
    flag: str


class _RangedParam(_ParamBase):
    """A number with ablinfer's default range for its type (filled in, so it shows in the wire form)."""

    bounds: ClassVar[tuple[float, float]]
    min: Number
    max: Number
    default: Number

    @model_validator(mode="before")
    @classmethod
    def _defaults(cls, data: Any) -> Any:
        low, high = cls.bounds
        return _filled(data, min=low, max=high)


class IntParam(_RangedParam):
    type: Literal["int"]
    bounds = (INT_MIN, INT_MAX)


class FloatParam(_RangedParam):
    type: Literal["float"]
    bounds = (FLOAT_MIN, FLOAT_MAX)


class BoolParam(_ParamBase):
    type: Literal["bool"]
    default: bool


class StringParam(_ParamBase):
    type: Literal["string"]
    default: str


class EnumParam(_ParamBase):
    """``enum`` maps display labels to the values the model receives; a list means label == value."""

    type: Literal["enum"]
    enum: dict[str, Any]
    default: str

    @field_validator("enum", mode="before")
    @classmethod
    def _list_to_mapping(cls, v: Any) -> Any:
        if isinstance(v, list):
            if not all(isinstance(i, str) for i in v):
                raise ValueError("an enum list must hold only strings")
            return {i: i for i in v}
        return v


ParamSpec = Annotated[IntParam | FloatParam | BoolParam | StringParam | EnumParam, Field(discriminator="type")]


class ModelSpec(_SpecPart):
    """A model spec at json_version 1.3, normalized; build it with :meth:`from_raw`."""

    json_version: Literal["1.3"]
    id: str
    type: str
    name: str
    organ: str
    task: str
    status: str
    modality: str
    version: str
    description: str | None = None
    website: str | None = None
    maintainers: list[str] | None = Field(default_factory=list)
    citation: str | None = None
    docker: DockerSpec
    inputs: dict[str, IOSpec]
    outputs: dict[str, IOSpec]
    params: dict[str, ParamSpec] = Field(default_factory=dict)
    order: list[str] | None = None
    # inferserver's own, optional: run limits within the server's ceilings. Not ablinfer's, which keeps it as is.
    inferserver: ModelLimits | None = None

    @model_validator(mode="before")
    @classmethod
    def _defaults(cls, data: Any) -> Any:
        data = _filled(data, maintainers=[], params={})
        if not isinstance(data, dict):
            return data
        for section, steps in (("inputs", "pre"), ("outputs", "post")):
            if isinstance(data.get(section), dict):
                data[section] = {k: _filled(v, **{steps: []}) for k, v in data[section].items()}
        return data

    @model_validator(mode="after")
    def _cross_checks(self) -> ModelSpec:
        if not self.id.isidentifier():
            raise ValueError(f"model id {self.id!r} must be a valid Python identifier")
        seen: set[str] = set()
        for section in SECTIONS:
            for name in getattr(self, section):
                if name in seen:
                    raise ValueError(f"{section}/{name}: names must be unique across inputs, outputs and params")
                if not name.isidentifier():
                    raise ValueError(f"{section}/{name}: name must be a valid Python identifier")
                seen.add(name)
                if section != "params" and len(f"{name}{getattr(self, section)[name].extension}".encode()) > NAME_MAX:
                    raise ValueError(f"{section}/{name}: name and extension make a file name over {NAME_MAX} bytes")
        if self.order:
            if len(self.order) != len(seen):
                raise ValueError("order: must list every input, output and param exactly once")
            if set(self.order) != seen:
                raise ValueError(f"order: elements must match the field names {sorted(seen)}")
        elif any(entry.flag == "" for section in SECTIONS for entry in getattr(self, section).values()):
            raise ValueError("order: required when a flag is empty (positional arguments)")
        return self

    @classmethod
    def from_raw(cls, raw: dict[str, Any]) -> ModelSpec:
        """Upgrade ``raw`` to json_version 1.3 and validate it; SpecError says what is wrong."""
        upgraded = upgrade_spec(raw)
        try:
            return cls.model_validate(upgraded)
        except ValidationError as e:
            raise SpecError(_describe(e, upgraded)) from None

    def wire(self) -> dict[str, Any]:
        """The normalized spec as JSON data: what ablinfer's ``load_model`` makes of the file."""
        return self.model_dump(mode="json", exclude_unset=True)

    @property
    def image(self) -> str:
        # DeepInfer specs carry a digest where a tag would be: `name@sha256:...` is how Docker names that.
        tag = self.docker.image_tag
        separator = "@" if tag.startswith("sha256:") else ":"
        return f"{self.docker.image_name}{separator}{tag}"

    def field_names(self) -> list[str]:
        """Every input, output and param name."""
        return [*self.inputs, *self.outputs, *self.params]

    @property
    def gpus(self) -> int | None:
        """GPUs one run asks for (None: the server's GPUS_PER_RUN)."""
        return self.inferserver.gpus if self.inferserver else None

    @property
    def engine_labels(self) -> dict[str, str]:
        """Labels an engine must carry to run this model (empty: any engine)."""
        return dict(self.inferserver.engine_labels or {}) if self.inferserver else {}

    def argument_order(self) -> list[str]:
        """The order arguments are passed in: the spec's ``order``, else the names sorted."""
        return list(self.order) if self.order else sorted(self.field_names())


def _describe(error: ValidationError, data: Any) -> str:
    """A readable one-line-per-problem message, each naming the field path in the spec."""
    lines = []
    for err in error.errors(include_url=False):
        path = _data_path(err["loc"], data)
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] not in ("missing", "value_error", "union_tag_invalid") and "input" in err:
            msg += f" (got {_short(err['input'])})"
        if err["type"] == "missing":
            msg = "missing required field"
        line = f"{path}: {msg}" if path else msg
        if line not in lines:
            lines.append(line)
    return "; ".join(lines)


def _data_path(loc: tuple[Any, ...], data: Any) -> str:
    # pydantic puts the discriminator tag of a param (e.g. "int") into ``loc``; walking the
    # data drops it, so the path reads like the spec file: params/count/default.
    parts: list[str] = []
    tag_skipped = False
    for key in loc:
        if (
            not tag_skipped
            and len(parts) == 2
            and parts[0] == "params"
            and isinstance(data, dict)
            and key == data.get("type")
        ):
            tag_skipped = True  # the tag, even when it is also a key ("enum")
            continue
        if (isinstance(data, dict) and key in data) or (
            isinstance(data, list) and isinstance(key, int) and 0 <= key < len(data)
        ):
            data = data[key]
        else:
            data = None  # a missing field: part of the path, nothing below it
        parts.append(str(key))
    return "/".join(parts)


def _short(value: Any) -> str:
    text = repr(value)
    if isinstance(value, float) and math.isnan(value):
        text = "NaN"
    return text if len(text) <= 60 else text[:57] + "..."


__all__ = [
    "CURRENT_VERSION",
    "BoolParam",
    "DockerSpec",
    "EnumParam",
    "FloatParam",
    "IOSpec",
    "IntParam",
    "ModelLimits",
    "ModelSpec",
    "ParamSpec",
    "ProcessingStep",
    "SpecError",
    "StringParam",
]
