"""The run configuration: the body of ``POST /models/{id}`` and its validation against a spec.

Validation is stricter than ablinfer's ``normalize_model_config``, which coerces with
``int()``/``bool()``/``str()`` (so ``"abc"`` becomes a true bool and ``null`` the string "None"):
the real client already sends correctly typed values, so anything else is a caller's mistake
worth a 400 that names the field.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, cast

from pydantic import BaseModel, ConfigDict, Field

from .errors import ConfigError
from .model import BoolParam, EnumParam, FloatParam, IntParam, IOSpec, ModelSpec, ParamSpec, StringParam

ParamValue = int | float | bool | str


class IOChoice(BaseModel):
    """Whether one input or output takes part in the run; other keys are ignored."""

    model_config = ConfigDict(extra="ignore")

    # Typed Any so that a non-bool reaches validate_run_config, which answers with the field.
    enabled: Any = Field(
        default=None,
        description="true to use this input/output. Omitted: on for required and suggested, off for optional.",
        json_schema_extra={"type": "boolean"},
    )


class ParamChoice(BaseModel):
    """The value of one parameter; other keys are ignored."""

    model_config = ConfigDict(extra="ignore")

    value: Any = Field(
        default=None,
        description=(
            "The parameter's value (int, float, bool, string, or one of an enum's values). Omitted: the spec default."
        ),
    )


class SessionRequest(BaseModel):
    """Body of ``POST /models/{model_id}``: which inputs/outputs to use and the parameter values."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "inputs": {"input_vol": {"enabled": True}},
                    "params": {"gpus": {"value": 1}, "cuda": {"value": ""}},
                    "outputs": {"output_seg": {"enabled": True}, "input_vol_resampled": {"enabled": False}},
                }
            ]
        },
    )

    inputs: dict[str, IOChoice] = Field(default_factory=dict, description='Per input name: {"enabled": bool}.')
    params: dict[str, ParamChoice] = Field(default_factory=dict, description='Per parameter name: {"value": v}.')
    outputs: dict[str, IOChoice] = Field(default_factory=dict, description='Per output name: {"enabled": bool}.')


@dataclass(frozen=True)
class RunConfig:
    """A validated configuration: every input, output and param of the spec is present."""

    inputs: dict[str, bool] = field(default_factory=dict)
    outputs: dict[str, bool] = field(default_factory=dict)
    params: dict[str, ParamValue] = field(default_factory=dict)

    def enabled_inputs(self) -> list[str]:
        return [name for name, on in self.inputs.items() if on]

    def enabled_outputs(self) -> list[str]:
        return [name for name, on in self.outputs.items() if on]

    def to_json(self) -> dict[str, Any]:
        return {"inputs": dict(self.inputs), "outputs": dict(self.outputs), "params": dict(self.params)}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> RunConfig:
        return cls(
            inputs={str(k): bool(v) for k, v in data.get("inputs", {}).items()},
            outputs={str(k): bool(v) for k, v in data.get("outputs", {}).items()},
            params=dict(data.get("params", {})),
        )


# Each string value becomes one argument of the model's command: Linux refuses to exec one over 128 KiB,
# and each session keeps its configuration on disk (MAX_STRING_PARAM_BYTES; this is its default).
MAX_STRING_BYTES = 64 << 10


def validate_run_config(
    spec: ModelSpec, request: SessionRequest, *, max_string_bytes: int = MAX_STRING_BYTES
) -> RunConfig:
    """Check ``request`` against ``spec`` and fill in defaults; ConfigError names the bad field."""
    for section in ("inputs", "params", "outputs"):
        known = getattr(spec, section)
        for name in getattr(request, section):
            if name not in known:
                allowed = ", ".join(known) or "none"
                raise ConfigError(f"{section}/{name}", f"unknown {section[:-1]} (this model has: {allowed})")

    return RunConfig(
        inputs=_enabled(spec.inputs, request.inputs, "inputs"),
        outputs=_enabled(spec.outputs, request.outputs, "outputs"),
        params={
            name: _param_value(name, p, request.params.get(name), max_string_bytes) for name, p in spec.params.items()
        },
    )


def _enabled(specs: dict[str, IOSpec], given: dict[str, IOChoice], section: str) -> dict[str, bool]:
    out: dict[str, bool] = {}
    kind = section[:-1]
    for name, io in specs.items():
        choice = given.get(name)
        if choice is None or "enabled" not in choice.model_fields_set:
            # Default: required and suggested on, optional off (the old server had it reversed).
            out[name] = io.status in ("required", "suggested")
            continue
        enabled = choice.enabled
        if not isinstance(enabled, bool):
            raise ConfigError(f"{section}/{name}", f"enabled must be true or false, not {enabled!r}")
        if not enabled and io.status == "required":
            raise ConfigError(f"{section}/{name}", f"{kind} {name} is required and cannot be disabled")
        out[name] = enabled
    return out


def _param_value(name: str, spec: ParamSpec, choice: ParamChoice | None, max_string_bytes: int) -> ParamValue:
    field_name = f"params/{name}"
    if choice is None or "value" not in choice.model_fields_set:
        # The spec default as written, like ablinfer (a float param's default 1 stays 1).
        return spec.default
    v = choice.value

    if isinstance(spec, IntParam):
        if isinstance(v, bool) or not isinstance(v, int):
            raise ConfigError(field_name, f"must be an integer, not {_shown(v)}")
        return _in_range(field_name, v, spec)
    if isinstance(spec, FloatParam):
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise ConfigError(field_name, f"must be a number, not {_shown(v)}")
        if isinstance(v, float) and not math.isfinite(v):
            raise ConfigError(field_name, f"must be a finite number, not {v!r}")
        # Range first: Python compares a huge int with a float exactly, while float() of it overflows.
        in_range = _in_range(field_name, v, spec)
        try:
            return float(in_range)
        except OverflowError:  # only under a spec whose bound is Infinity
            raise ConfigError(field_name, f"{_shown(v)} is too large for a float") from None
    if isinstance(spec, BoolParam):
        if not isinstance(v, bool):
            raise ConfigError(field_name, f"must be true or false, not {_shown(v)}")
        return v
    if isinstance(spec, StringParam):
        if not isinstance(v, str):
            raise ConfigError(field_name, f"must be a string, not {_shown(v)}")
        return _command_string(field_name, v, max_string_bytes)
    if isinstance(spec, EnumParam):
        values = list(spec.enum.values())
        # Compare types too: True == 1 in Python, but not in the enum.
        if any(type(v) is type(x) and v == x for x in values):
            # A spec's enum values are JSON as written (model.EnumParam); in practice scalars, and build_argv
            # renders any value with str(), so one that is not a ParamValue still runs as before.
            return cast(ParamValue, v)
        allowed = ", ".join(repr(x) for x in values)
        hint = f" ({v!r} is a label; send its value {spec.enum[v]!r})" if isinstance(v, str) and v in spec.enum else ""
        raise ConfigError(field_name, f"must be one of the values {allowed}, not {_shown(v)}{hint}")
    raise ConfigError(field_name, f"unsupported parameter type {getattr(spec, 'type', '?')!r}")


def _command_string(field_name: str, v: str, max_bytes: int) -> str:
    """A string that can be one argument of the model's command: no NUL, at most `max_bytes` in UTF-8."""
    if "\0" in v:
        raise ConfigError(field_name, "must not contain a NUL character (it cannot be passed to the model's command)")
    size = len(v.encode("utf-8", "surrogatepass"))
    if size > max_bytes:
        raise ConfigError(field_name, f"is {size} bytes long; the limit is {max_bytes} bytes (MAX_STRING_PARAM_BYTES)")
    return v


def _in_range(field_name: str, v: int | float, spec: IntParam | FloatParam) -> int | float:
    if v < spec.min or v > spec.max:
        raise ConfigError(field_name, f"{_shown(v)} is outside the allowed range [{spec.min}, {spec.max}]")
    return v


def _shown(value: Any) -> str:
    """A value as the caller sent it, cut short: a 401-digit number or a 1 MiB string is not echoed whole."""
    if isinstance(value, int) and abs(value) >= 10**60:  # str() of a huge int is slow, or refused past 4300 digits
        return f"an integer of about {int(value.bit_length() * math.log10(2)) + 1} digits"
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."
