"""ModelSpec.wire() must equal what ablinfer's load_model makes of the same spec."""

from __future__ import annotations

import copy
import io
import json
from pathlib import Path
from typing import Any

import pytest
from ablinfer.model import load_model

from inferserver.specs.errors import SpecError
from inferserver.specs.model import ModelSpec
from inferserver.specs.upgrade import upgrade_spec

SPECS_DIR = Path(__file__).parents[1] / "data" / "specs"
POINT_VEC = {"LymphNodeSegmenter.json", "LymphNodeSegmenter.gpu.json", "ProstateNeedleFinder.json"}


def shared_specs() -> list[Path]:
    # Failing (not skipping) when the specs are missing: a silent skip would hide the main check.
    assert SPECS_DIR.is_dir(), (
        f"the real-world specs directory {SPECS_DIR} is missing (tests/data/specs in the repository); "
        "the wire-compatibility tests need it"
    )
    files = sorted(SPECS_DIR.rglob("*.json"))
    assert files, f"no *.json specs under {SPECS_DIR}"
    return files


def ablinfer_wire(raw: dict[str, Any]) -> Any:
    return json.loads(json.dumps(load_model(io.StringIO(json.dumps(raw)))[0]))


def our_wire(raw: dict[str, Any]) -> Any:
    return json.loads(json.dumps(ModelSpec.from_raw(raw).wire()))


def test_shared_specs_present() -> None:
    names = {p.name for p in shared_specs()}
    assert names >= POINT_VEC


@pytest.mark.parametrize(
    "name",
    [
        "ABLTempSeg.json",
        "CTBoneSegmenter.json",
        "NeedleFinder-cpu.json",
        "NeedleFinder-gpu.json",
        "ProstateSegmenter.json",
        "ProstateSegmenterLegacy.json",
        "WMHSegmenterK2MICCAI2017.json",
    ],
)
def test_loadable_shared_spec_matches_ablinfer(name: str) -> None:
    (path,) = [p for p in shared_specs() if p.name == name]
    with path.open() as f:
        expected = json.loads(json.dumps(load_model(f)[0]))
    raw = json.loads(path.read_text())
    assert json.loads(json.dumps(ModelSpec.from_raw(raw).wire())) == expected


def test_every_shared_spec_is_either_equal_or_point_vec() -> None:
    # Catches specs added later to the shared directory.
    for path in shared_specs():
        raw = json.loads(path.read_text())
        if path.name in POINT_VEC:
            with pytest.raises(SpecError, match="point_vec"):
                ModelSpec.from_raw(raw)
            with pytest.raises(ValueError), path.open() as f:
                load_model(f)
        else:
            with path.open() as f:
                expected = json.loads(json.dumps(load_model(f)[0]))
            assert our_wire(raw) == expected, path


def test_from_raw_leaves_input_untouched() -> None:
    (path,) = [p for p in shared_specs() if p.name == "CTBoneSegmenter.json"]
    raw = json.loads(path.read_text())
    before = copy.deepcopy(raw)
    ModelSpec.from_raw(raw)
    assert raw == before


def base_1_3() -> dict[str, Any]:
    return {
        "json_version": "1.3",
        "id": "toy",
        "type": "docker",
        "name": "Toy",
        "organ": "Brain",
        "task": "Seg",
        "status": "test",
        "modality": "MR",
        "version": "1.0",
        "docker": {"image_name": "toy", "image_tag": "1", "data_path": "/data/"},
        "inputs": {
            "vol": {
                "name": "Vol",
                "description": "d",
                "status": "required",
                "flag": "-i",
                "extension": ".nii.gz",
                "type": "volume",
            },
        },
        "outputs": {
            "seg": {
                "name": "Seg",
                "description": "d",
                "status": "required",
                "flag": "-o",
                "extension": ".nii.gz",
                "type": "segmentation",
            },
        },
    }


def test_minimal_spec_defaults_and_absent_fields() -> None:
    raw = base_1_3()
    wire = our_wire(raw)
    assert wire == ablinfer_wire(raw)
    assert wire["maintainers"] == [] and wire["params"] == {}
    assert wire["inputs"]["vol"]["labelmap"] is False and wire["inputs"]["vol"]["pre"] == []
    assert wire["outputs"]["seg"]["colours"] == {} and wire["outputs"]["seg"]["names"] == {}
    assert wire["outputs"]["seg"]["post"] == []
    for absent in ("description", "website", "citation", "order"):
        assert absent not in wire
    assert "master" not in wire["outputs"]["seg"]
    assert "colours" not in wire["inputs"]["vol"] and "post" not in wire["inputs"]["vol"]


def test_full_featured_spec_matches_ablinfer() -> None:
    raw = base_1_3()
    raw["extra_top"] = {"kept": True}
    raw["description"] = "A toy"
    raw["inputs"]["vol"]["pre"] = [
        {"name": "N", "description": "d", "status": "optional", "operation": "noop", "params": {"a": 1}},
    ]
    raw["inputs"]["vol"]["custom"] = 5
    raw["outputs"]["seg"].update(
        {
            "master": "vol",
            "colours": {"1": [0.1, 0.2, 0.3], "2": [0, 1, 0, 0.5]},
            "names": {"1": "One"},
            "post": [
                {
                    "name": "P",
                    "description": "d",
                    "status": "suggested",
                    "locked": True,
                    "operation": "seged",
                    "action": "Islands",
                    "targets": [1],
                    "params": {},
                }
            ],
        }
    )
    raw["params"] = {
        "count": {"name": "C", "description": "d", "flag": "--n", "type": "int", "default": 3},
        "rate": {"name": "R", "description": "d", "flag": "--r=", "type": "float", "default": 1, "min": 0},
        "on": {"name": "O", "description": "d", "flag": "--on", "type": "bool", "default": True},
        "label": {"name": "L", "description": "d", "flag": "--l", "type": "string", "default": ""},
        "mode": {"name": "M", "description": "d", "flag": "--m", "type": "enum", "enum": ["a", "b"], "default": "a"},
        "mapped": {
            "name": "M",
            "description": "d",
            "flag": "--mm",
            "type": "enum",
            "enum": {"Fast": "f", "Slow": "s"},
            "default": "f",
        },
    }
    wire = our_wire(raw)
    assert wire == ablinfer_wire(raw)
    assert wire["outputs"]["seg"]["colours"]["1"] == [0.1, 0.2, 0.3, 1]
    assert wire["params"]["mode"]["enum"] == {"a": "a", "b": "b"}
    assert wire["params"]["count"]["min"] == -2147483648 and wire["params"]["count"]["max"] == 2147483647
    assert wire["params"]["rate"]["max"] == 3.40282e38
    assert wire["inputs"]["vol"]["pre"][0]["locked"] is False
    assert wire["inputs"]["vol"]["custom"] == 5 and wire["extra_top"] == {"kept": True}


def old_spec(version: str) -> dict[str, Any]:
    raw = base_1_3()
    raw["json_version"] = version
    del raw["id"]
    raw["name"] = "My Toy-Model"
    for io_ in (*raw["inputs"].values(), *raw["outputs"].values()):
        del io_["status"]
    if version == "1.0":
        raw["brief_description"] = "short"
    return raw


@pytest.mark.parametrize("version", ["1.0", "1.1", "1.2"])
def test_old_versions_upgrade_like_ablinfer(version: str) -> None:
    raw = old_spec(version)
    if version == "1.2":
        raw["id"] = "given_id"
    wire = our_wire(raw)
    assert wire == ablinfer_wire(raw)
    assert wire["json_version"] == "1.3"
    assert wire["inputs"]["vol"]["status"] == "required"
    assert wire["id"] == ("given_id" if version == "1.2" else "my_toy_model")
    if version == "1.0":
        assert wire["website"] == "" and "brief_description" not in wire


def test_id_falls_back_to_md5_of_name() -> None:
    raw = old_spec("1.1")
    raw["name"] = "3D Toy (v2)"
    wire = our_wire(raw)
    assert wire == ablinfer_wire(raw)
    assert wire["id"].startswith("model_") and len(wire["id"]) == 6 + 32


def test_deepinfer_params_are_dropped_like_ablinfer() -> None:
    raw = {
        "name": "ToyInfer",
        "docker": {"dockerhub_repository": "deepinfer/toy", "digest": "sha256:abc"},
        "members": [
            {"name": "InputVolume", "iotype": "input", "type": "volume", "voltype": "ScalarVolume"},
            {"name": "OutputLabel", "iotype": "output", "type": "volume", "voltype": "LabelMap"},
            {"name": "Threshold", "iotype": "parameter", "type": "float", "default": "0.5"},
            {"name": "Flip", "iotype": "input", "type": "bool"},
            {"name": "Mode", "iotype": "parameter", "type": "enum", "enum": ["x", "y"]},
        ],
    }
    wire = our_wire(raw)
    assert wire == ablinfer_wire(raw)
    assert wire["params"] == {} and wire["id"] == "toyinfer"
    assert wire["inputs"]["InputVolume"]["name"] == "Input Volume"
    assert wire["outputs"]["OutputLabel"]["labelmap"] is True
    assert wire["docker"]["data_path"] == "/home/deepinfer/data"


@pytest.mark.parametrize(
    "version, reason",
    [
        ("1.4", "too new"),
        ("2.0", "too new"),
        ("x.y", "invalid"),
        ("1.3.0", "invalid"),
        ("0.9", "0.9"),
    ],
)
def test_bad_json_version(version: str, reason: str) -> None:
    raw = base_1_3()
    raw["json_version"] = version
    with pytest.raises(SpecError, match=reason):
        upgrade_spec(raw)


def test_non_string_json_version() -> None:
    raw = base_1_3()
    raw["json_version"] = 1.3
    with pytest.raises(SpecError, match="json_version"):
        ModelSpec.from_raw(raw)


def test_deepinfer_unknown_member_type() -> None:
    raw = {
        "name": "X",
        "docker": {"dockerhub_repository": "a", "digest": "b"},
        "members": [{"name": "Pts", "iotype": "input", "type": "mesh"}],
    }
    with pytest.raises(SpecError, match="mesh"):
        upgrade_spec(raw)


def test_deepinfer_missing_docker_field() -> None:
    with pytest.raises(SpecError, match="docker/digest"):
        upgrade_spec({"name": "X", "docker": {"dockerhub_repository": "a"}, "members": []})


def mutate(change) -> dict[str, Any]:
    raw = base_1_3()
    change(raw)
    return raw


def _set_param(raw: dict[str, Any], **param: Any) -> None:
    raw["params"] = {"p": {"name": "P", "description": "d", "flag": "--p", **param}}


@pytest.mark.parametrize(
    "change, fragment",
    [
        (lambda r: r.pop("organ"), "organ: missing required field"),
        (lambda r: r["docker"].pop("data_path"), "docker/data_path: missing required field"),
        (lambda r: r.update(name=5), "name:"),
        (lambda r: r.update(id="not-an-id"), "Python identifier"),
        (lambda r: r["inputs"]["vol"].pop("status"), "inputs/vol/status: missing"),
        (lambda r: r["inputs"]["vol"].update(status="maybe"), "inputs/vol/status"),
        (lambda r: r["inputs"]["vol"].update(type="point_vec"), "point_vec"),
        (lambda r: r["outputs"].update(vol=r["outputs"].pop("seg")), "unique"),
        (lambda r: r["inputs"].update({"2x": r["inputs"].pop("vol")}), "identifier"),
        (lambda r: _set_param(r, type="complex", default=1), "params/p"),
        (lambda r: _set_param(r, type="int"), "params/p/default: missing"),
        (lambda r: _set_param(r, type="int", default="3"), "params/p/default"),
        (lambda r: _set_param(r, type="bool", default=1), "params/p/default"),
        (lambda r: _set_param(r, type="enum", enum=["a"], default=1), "params/p/default"),
        (lambda r: _set_param(r, type="enum", enum=5, default="a"), "params/p/enum:"),
        (lambda r: r["outputs"]["seg"].update(colours={"1": [1, 1]}), "3 or 4"),
        (lambda r: r["outputs"]["seg"].update(colours={"1": [2, 0, 0]}), "outside [0, 1]"),
        (lambda r: r["outputs"]["seg"].update(post=[{"name": "x"}]), "outputs/seg/post/0/description: missing"),
        (lambda r: r.update(order=["vol"]), "order"),
        (lambda r: r.update(order=["vol", "other"]), "order"),
        (lambda r: r["inputs"]["vol"].update(flag=""), "order: required"),
    ],
)
def test_invalid_specs_rejected_like_ablinfer(change, fragment: str) -> None:
    raw = mutate(change)
    with pytest.raises(SpecError) as err:
        ModelSpec.from_raw(raw)
    assert fragment in str(err.value)
    # ablinfer rejects these too (with ValueError or a bare KeyError).
    with pytest.raises((ValueError, KeyError)):
        load_model(io.StringIO(json.dumps(raw)))


@pytest.mark.parametrize(
    "param, fragment",
    [
        ({"type": "float", "default": 1.0, "min": None}, "params/p/min"),
        ({"type": "int", "default": True}, "params/p/default: must be a number"),
    ],
)
def test_stricter_than_ablinfer(param: dict[str, Any], fragment: str) -> None:
    # ablinfer accepts these and then fails (or misbehaves) when a run is configured.
    raw = mutate(lambda r: _set_param(r, **param))
    with pytest.raises(SpecError, match=fragment):
        ModelSpec.from_raw(raw)


def test_positional_flag_with_order_is_accepted() -> None:
    raw = base_1_3()
    raw["inputs"]["vol"]["flag"] = ""
    raw["order"] = ["seg", "vol"]
    assert our_wire(raw) == ablinfer_wire(raw)


def test_convenience() -> None:
    spec = ModelSpec.from_raw(base_1_3())
    assert spec.image == "toy:1"
    assert spec.field_names() == ["vol", "seg"]
    assert spec.argument_order() == ["seg", "vol"]


@pytest.mark.parametrize("gpus", [0, 2])
def test_the_inferserver_section_asks_for_gpus_and_goes_out_as_written(gpus: int) -> None:
    raw = {**base_1_3(), "inferserver": {"gpus": gpus}}
    spec = ModelSpec.from_raw(raw)
    assert spec.gpus == gpus
    assert spec.wire()["inferserver"] == {"gpus": gpus}
    assert ModelSpec.from_raw(base_1_3()).gpus is None


@pytest.mark.parametrize(
    ("section", "says"),
    [({"gpus": -1}, "inferserver/gpus"), ({"gpus": "2"}, "inferserver/gpus"), ({"gpu": 1}, "inferserver/gpu")],
)
def test_a_wrong_gpu_count_names_the_field(section: dict[str, Any], says: str) -> None:
    with pytest.raises(SpecError, match=says):
        ModelSpec.from_raw({**base_1_3(), "inferserver": section})


@pytest.mark.parametrize("section, name", [("inputs", "vol"), ("outputs", "seg")])
@pytest.mark.parametrize(
    "extension, says",
    [
        (
            "/../../x",
            "must not contain '/', '\\', NUL or control characters, not '/../../x': it becomes part of a file name",
        ),
        ("..\\x.nii", "must not contain '/'"),
        (".nii\0", "must not contain '/'"),
        (".nii\n", "must not contain '/'"),
        (".nii\x1b", "must not contain '/'"),
        ("." + "x" * 255, "is 256 bytes long; a file name part may have at most 255"),
    ],
)
def test_an_extension_that_is_no_file_name_part_is_refused(section: str, name: str, extension: str, says: str) -> None:
    raw = base_1_3()
    raw[section][name]["extension"] = extension
    with pytest.raises(SpecError) as caught:
        ModelSpec.from_raw(raw)
    assert str(caught.value).startswith(f"{section}/{name}/extension: {says}")


def test_name_and_extension_together_must_fit_a_file_name() -> None:
    raw = base_1_3()
    raw["inputs"]["vol"]["extension"] = "." + "x" * 252  # 253 bytes: a part alone may be that long; vol + it: 256
    with pytest.raises(SpecError, match="inputs/vol: name and extension make a file name over 255 bytes"):
        ModelSpec.from_raw(raw)
    raw["inputs"]["v"] = raw["inputs"].pop("vol")  # 254 bytes
    assert ModelSpec.from_raw(raw).inputs["v"].extension == "." + "x" * 252
