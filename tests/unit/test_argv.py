"""build_argv must give exactly what ablinfer's DispatchBase._make_flags gives."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from ablinfer.base import DispatchBase

from inferserver.specs.command import build_argv, container_path
from inferserver.specs.model import ModelSpec
from inferserver.specs.runconfig import RunConfig, SessionRequest, validate_run_config

SPECS_DIR = Path(__file__).parents[1] / "data" / "specs"


def _io(status: str, flag: str, ext: str = ".nii.gz") -> dict[str, Any]:
    return {"name": "N", "description": "d", "status": status, "flag": flag, "extension": ext, "type": "volume"}


def _p(flag: str, typ: str, default: Any, **kw: Any) -> dict[str, Any]:
    return {"name": "P", "description": "d", "flag": flag, "type": typ, "default": default, **kw}


RAW: dict[str, Any] = {
    "json_version": "1.3",
    "id": "toy",
    "type": "docker",
    "name": "Toy",
    "organ": "",
    "task": "",
    "status": "",
    "modality": "",
    "version": "1",
    "docker": {"image_name": "toy", "image_tag": "1", "data_path": "/data/"},
    "inputs": {
        "image": _io("required", ""),
        "mask": _io("optional", "--mask"),
        "prior": _io("suggested", "-p", ".nrrd"),
    },
    "outputs": {"seg": _io("required", "-o"), "probs": _io("optional", "--probs="), "skip": _io("optional", "-s")},
    "params": {
        "gpus": _p("--gpus=", "int", 1, min=0, max=8),
        "rate": _p("--rate", "float", 0.5),
        "on": _p("--on", "bool", False),
        "off": _p("--off", "bool", True),
        "label": _p("", "string", "hello world"),
        "mode": _p("--mode", "enum", "f", enum={"Fast": "f", "Slow": "s"}),
    },
    "order": ["image", "gpus", "label", "seg", "mask", "prior", "probs", "skip", "rate", "on", "off", "mode"],
}

BODY = {
    "inputs": {"mask": {"enabled": False}},
    "outputs": {"probs": {"enabled": True}},
    "params": {
        "gpus": {"value": 2},
        "rate": {"value": 1},
        "on": {"value": True},
        "off": {"value": False},
        "mode": {"value": "s"},
    },
}


def ablinfer_argv(spec: ModelSpec, config: RunConfig) -> list[str]:
    wire = copy.deepcopy(spec.wire())
    holder = SimpleNamespace(
        model=wire,
        model_config={
            "inputs": {n: {"enabled": on} for n, on in config.inputs.items()},
            "outputs": {n: {"enabled": on} for n, on in config.outputs.items()},
            "params": {n: {"value": v} for n, v in config.params.items()},
        },
    )
    data_path = wire["docker"]["data_path"]
    # The same file map ablinfer's docker dispatcher builds (DispatchBase._make_fmap_helper).
    fmap = DispatchBase._make_fmap_helper(holder, data_path)
    return DispatchBase._make_flags(holder, fmap)


def configure(raw: dict[str, Any], body: dict[str, Any]) -> tuple[ModelSpec, RunConfig]:
    spec = ModelSpec.from_raw(raw)
    return spec, validate_run_config(spec, SessionRequest.model_validate(body))


def test_every_flag_kind_with_order() -> None:
    spec, cfg = configure(RAW, BODY)
    argv = build_argv(spec, cfg)
    assert argv == ablinfer_argv(spec, cfg)
    assert argv == [
        "/data/image.nii.gz",
        "--gpus=2",
        "hello world",
        "-o",
        "/data/seg.nii.gz",
        "-p",
        "/data/prior.nrrd",
        "--probs=/data/probs.nii.gz",
        "--rate",
        "1.0",
        "--on",
        "--mode",
        "s",
    ]


def test_sorted_without_order() -> None:
    raw = copy.deepcopy(RAW)
    del raw["order"]
    raw["inputs"]["image"]["flag"] = "-i"
    raw["params"]["label"]["flag"] = "--label"
    spec, cfg = configure(raw, BODY)
    argv = build_argv(spec, cfg)
    assert argv == ablinfer_argv(spec, cfg)
    assert argv[:4] == ["--gpus=2", "-i", "/data/image.nii.gz", "--label"]


def test_defaults_only() -> None:
    spec, cfg = configure(RAW, {})
    assert build_argv(spec, cfg) == ablinfer_argv(spec, cfg)
    assert "--off" in build_argv(spec, cfg) and "--on" not in build_argv(spec, cfg)


@pytest.mark.parametrize(
    "data_path, expected",
    [
        ("/data/", "/data/seg.nii.gz"),
        ("/data", "/data/seg.nii.gz"),
        ("/", "//seg.nii.gz"),
        ("/data//", "/data//seg.nii.gz"),
    ],
)
def test_container_path_strips_one_slash(data_path: str, expected: str) -> None:
    raw = copy.deepcopy(RAW)
    raw["docker"]["data_path"] = data_path
    spec = ModelSpec.from_raw(raw)
    assert container_path(spec, "seg") == expected
    holder = SimpleNamespace(model=spec.wire())
    assert DispatchBase._make_fmap_helper(holder, data_path)["seg"] == expected


def test_container_path_unknown_name() -> None:
    with pytest.raises(KeyError):
        container_path(ModelSpec.from_raw(RAW), "gpus")


def test_real_temporal_bone_spec() -> None:
    path = SPECS_DIR / "ablinfer" / "ABLTempSeg.json"
    assert path.is_file(), f"real-world spec {path} is missing (tests/data/specs)"
    spec, cfg = configure(
        json.loads(path.read_text()),
        {
            "params": {"gpus": {"value": 2}, "cpu_resampling": {"value": True}, "cuda": {"value": "0,1"}},
            "outputs": {"input_vol_resampled": {"enabled": True}},
        },
    )
    argv = build_argv(spec, cfg)
    assert argv == ablinfer_argv(spec, cfg)
    assert argv == [
        "--cpu-resampling",
        "--cuda=0,1",
        "--gpus=2",
        "-i",
        "/tmp/input_vol.nii.gz",
        "-r",
        "/tmp/input_vol_resampled.nii.gz",
        "-o",
        "/tmp/output_seg.nii.gz",
        "--threads=4",
    ]
