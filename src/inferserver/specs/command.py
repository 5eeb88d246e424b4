"""The container command line, built exactly as ablinfer's ``DispatchBase._make_flags`` builds it."""

from __future__ import annotations

from .model import BoolParam, ModelSpec
from .runconfig import RunConfig


def container_path(spec: ModelSpec, name: str) -> str:
    """Where input/output ``name`` lives inside the container: ``<data_path>/<name><extension>``."""
    io = spec.inputs.get(name) or spec.outputs.get(name)
    if io is None:
        raise KeyError(f"{name!r} is not an input or output of model {spec.id!r}")
    data_path = spec.docker.data_path
    # One trailing separator is dropped, as in ablinfer's _make_fmap_helper ("/" itself is kept).
    if len(data_path) > 1 and data_path[-1] in ("/", "\\"):
        data_path = data_path[:-1]
    return f"{data_path}/{name}{io.extension}"


def _format_flag(flag: str, value: str) -> list[str]:
    if not flag:
        return [value]  # positional
    if flag.endswith("="):
        return [flag + value]  # --gpus=2
    return [flag, value]


def build_argv(spec: ModelSpec, config: RunConfig) -> list[str]:
    """The arguments passed to the image's ENTRYPOINT for this configuration."""
    parts: dict[str, list[str]] = {}
    for section, enabled in (("inputs", config.inputs), ("outputs", config.outputs)):
        ios = getattr(spec, section)
        for name, on in enabled.items():
            if on:
                parts[name] = _format_flag(ios[name].flag, container_path(spec, name))
    for name, value in config.params.items():
        param = spec.params[name]
        if isinstance(param, BoolParam):
            if value:  # a switch: present when true, absent when false
                parts[name] = [param.flag]
        else:
            parts[name] = _format_flag(param.flag, str(value))

    # ablinfer uses "order" whenever the key exists; an empty order would then give no
    # arguments at all, so an empty one falls back to sorted names instead.
    order = spec.order if spec.order else sorted(parts)
    return [arg for name in order for arg in parts.get(name, ())]
