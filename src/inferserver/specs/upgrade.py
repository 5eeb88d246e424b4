"""Upgrade old model spec formats (json_version 1.0-1.2 and DeepInfer's) to json_version 1.3.

Each step mirrors one of ``ablinfer.model.update``'s functions, quirks included, because the
client compares what we serve with what its own ``load_model`` makes of the same file.
"""

from __future__ import annotations

import copy
import hashlib
import re
from collections.abc import Callable
from typing import Any

from .errors import SpecError

CURRENT_VERSION = "1.3"
_CURRENT = (1, 3)

# DeepInfer's own CamelCase -> "Camel Case" rule, used for display names.
_CAMEL = re.compile(r"((?<=[a-z0-9])[A-Z]|(?!^)[A-Z](?=[a-z]))")

# DeepInfer's C++ integer types collapse to "int" with these ranges (ablinfer's table,
# including its -32678 typo for int16_t, which only affects parameters it then drops anyway).
_INT_RANGES: dict[str, tuple[int, int]] = {
    "uint8_t": (0, 255),
    "int8_t": (-128, 127),
    "uint16_t": (0, 65535),
    "int16_t": (-32678, 32767),
    "uint32_t": (0, 2147483647),
    "uint64_t": (0, 2147483647),
    "unsigned int": (0, 2147483647),
    "int32_t": (-2147483648, 2147483647),
    "int64_t": (-2147483648, 2147483647),
    "int": (-2147483648, 2147483647),
}


def _beautify(name: str) -> str:
    return _CAMEL.sub(r" \1", name)


def _req(d: Any, key: str, where: str) -> Any:
    """``d[key]`` or a SpecError naming the missing field (ablinfer raises a bare KeyError)."""
    if not isinstance(d, dict):
        raise SpecError(f"{where}: must be an object")
    if key not in d:
        raise SpecError(f"{where}/{key}: missing required field" if where else f"{key}: missing required field")
    return d[key]


def _from_deepinfer(model: dict[str, Any]) -> dict[str, Any]:
    """DeepInfer registry format -> json_version 1.0."""
    docker = _req(model, "docker", "")
    nm: dict[str, Any] = {
        "json_version": "1.0",
        "type": "docker",
        "name": _req(model, "name", ""),
        "organ": model.get("organ", ""),
        "task": model.get("task", ""),
        "status": model.get("status", ""),
        "modality": model.get("modality", ""),
        "version": model.get("version", ""),
        "description": model.get("detaileddescription", model.get("briefdescription", "")),
        "brief_description": model.get("briefdescription", ""),
        "maintainers": model.get("maintainers", []),
        "citation": model.get("citation", ""),
        "docker": {
            "image_name": _req(docker, "dockerhub_repository", "docker"),
            # ablinfer uses the digest as the tag; kept so our spec equals the client's.
            "image_tag": _req(docker, "digest", "docker"),
            "data_path": model.get("data_path", "/home/deepinfer/data"),
        },
        "inputs": {},
        "params": {},
        "outputs": {},
    }

    members = _req(model, "members", "")
    if not isinstance(members, list):
        raise SpecError("members: must be a list")
    for i, member in enumerate(members):
        where = f"members/{i}"
        name = _req(member, "name", where)
        iotype = _req(member, "iotype", where)
        typ = _req(member, "type", where)
        if not isinstance(name, str):
            raise SpecError(f"{where}/name: must be a string")
        if typ in ("bool", "int") and iotype != "parameter":
            iotype = "parameter"

        if iotype in ("input", "output"):
            entry: dict[str, Any] = {
                "name": _beautify(name),
                "description": member.get("detaileddescriptionSet", ""),
                "flag": "--" + name,
            }
            if typ == "volume":
                entry["extension"] = ".nrrd"
                entry["type"] = "volume"
                entry["labelmap"] = _req(member, "voltype", where) == "LabelMap"
            elif typ == "point_vec":
                # Kept as-is: validation then rejects it with a message naming point_vec.
                entry["extension"] = ".fcvs"
                entry["type"] = "point_vec"
            else:
                raise SpecError(f"{where}: unknown {iotype} type {typ!r}")
            nm[iotype + "s"][name] = entry
        elif iotype == "parameter":
            # ablinfer builds the parameter but never stores it in "params", so DeepInfer
            # parameters are invisible to the client; we only keep the checks that make
            # ablinfer fail on a malformed member.
            if typ in ("float", "double"):
                try:
                    float(member.get("default", 0))
                except (TypeError, ValueError) as e:
                    raise SpecError(f"{where}/default: not a number ({e})") from None
            elif typ == "enum":
                # ablinfer evaluates enum[0] even when a default is given.
                values = _req(member, "enum", where)
                if not isinstance(values, list) or not values:
                    raise SpecError(f"{where}/enum: must be a non-empty list")
        # Any other iotype is silently ignored, as ablinfer does.
    return nm


def _from_1_0(model: dict[str, Any]) -> dict[str, Any]:
    model["json_version"] = "1.1"
    model.setdefault("website", "")
    model.pop("brief_description", None)
    return model


def _from_1_1(model: dict[str, Any]) -> dict[str, Any]:
    model["json_version"] = "1.2"
    if "id" not in model:
        name = _req(model, "name", "")
        if not isinstance(name, str):
            raise SpecError("name: must be a string (the model id is derived from it)")
        tid = name.lower().replace(" ", "_").replace("-", "_")
        if not tid.isidentifier():
            tid = "model_" + hashlib.md5(name.encode("utf-8")).hexdigest()
        model["id"] = tid
    return model


def _from_1_2(model: dict[str, Any]) -> dict[str, Any]:
    model["json_version"] = "1.3"
    for section in ("inputs", "outputs"):
        entries = _req(model, section, "")
        if not isinstance(entries, dict):
            raise SpecError(f"{section}: must be an object")
        for entry in entries.values():
            if isinstance(entry, dict):
                entry.setdefault("status", "required")
    return model


_STEPS: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {
    "deepinfer": _from_deepinfer,
    "1.0": _from_1_0,
    "1.1": _from_1_1,
    "1.2": _from_1_2,
}


def _parse_version(value: Any) -> str:
    """Normalize "major.minor" like ablinfer does; SpecError when malformed or too new."""
    try:
        major, minor = (int(part) for part in value.split("."))
    except (AttributeError, TypeError, ValueError):
        raise SpecError(f"json_version: {value!r} is invalid (should be major.minor)") from None
    if (major, minor) > _CURRENT:
        raise SpecError(f"json_version: {major}.{minor} is too new (this server reads up to {CURRENT_VERSION})")
    return f"{major}.{minor}"


def upgrade_spec(raw: dict[str, Any]) -> dict[str, Any]:
    """Return a copy of ``raw`` upgraded to json_version 1.3 (``raw`` is left untouched)."""
    if not isinstance(raw, dict):
        raise SpecError("spec must be a JSON object")
    model = copy.deepcopy(raw)
    while True:
        version = _parse_version(model["json_version"]) if "json_version" in model else "deepinfer"
        if version == CURRENT_VERSION:
            model["json_version"] = CURRENT_VERSION
            return model
        step = _STEPS.get(version)
        if step is None:
            raise SpecError(f"json_version: don't know how to upgrade from {version}")
        model = step(model)
