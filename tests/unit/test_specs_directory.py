"""load_model_directory: one bad or duplicate file never takes the other models down."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from inferserver.specs.directory import SpecLoadError, load_model_directory

SPECS_DIR = Path(__file__).parents[1] / "data" / "specs"


def _copy(name: str, dest: Path, as_name: str | None = None) -> Path:
    (src,) = SPECS_DIR.rglob(name)
    target = dest / (as_name or name)
    shutil.copy(src, target)
    return target


def test_good_broken_and_duplicate(tmp_path: Path) -> None:
    assert SPECS_DIR.is_dir(), (
        f"the real-world specs directory {SPECS_DIR} is missing (tests/data/specs in the repository)"
    )
    good = _copy("ABLTempSeg.json", tmp_path)
    _copy("ProstateSegmenter.json", tmp_path)
    dup_a = _copy("CTBoneSegmenter.json", tmp_path, "a_bone.json")
    dup_b = _copy("CTBoneSegmenter.json", tmp_path, "b_bone.json")
    point_vec = _copy("LymphNodeSegmenter.json", tmp_path)
    (tmp_path / "not_json.json").write_text("{ nope")
    (tmp_path / "list.json").write_text("[1, 2]")
    (tmp_path / "ignored.txt").write_text("not a spec")
    (tmp_path / "sub").mkdir()
    shutil.copy(good, tmp_path / "sub" / "nested.json")

    result = load_model_directory(tmp_path)

    assert sorted(result.models) == ["prostate_gland_segmenter", "temporal_bone_segmentation"]
    assert result.models["temporal_bone_segmentation"].path == good
    assert result.models["temporal_bone_segmentation"].spec.version == "1.4"

    reasons = {e.path.name: e.reason for e in result.errors}
    assert set(reasons) == {"a_bone.json", "b_bone.json", "LymphNodeSegmenter.json", "not_json.json", "list.json"}
    assert "not valid JSON" in reasons["not_json.json"]
    assert "JSON object" in reasons["list.json"]
    assert "point_vec" in reasons[point_vec.name]
    for name in ("a_bone.json", "b_bone.json"):
        assert "ct_bone_segmenter" in reasons[name]
        assert str(dup_a) in reasons[name] and str(dup_b) in reasons[name]
    err = next(e for e in result.errors if e.path.name == "list.json")
    assert str(err) == f"{err.path}: {err.reason}"


def test_missing_directory(tmp_path: Path) -> None:
    result = load_model_directory(tmp_path / "absent")
    assert result.models == {}
    assert result.errors == [SpecLoadError(tmp_path / "absent", result.errors[0].reason)]
    assert "does not exist" in result.errors[0].reason


def test_empty_directory(tmp_path: Path) -> None:
    result = load_model_directory(tmp_path)
    assert result.models == {} and result.errors == []


def test_invalid_spec_reason_names_field(tmp_path: Path) -> None:
    (tmp_path / "x.json").write_text(json.dumps({"json_version": "1.3", "id": "x"}))
    (err,) = load_model_directory(tmp_path).errors
    assert "type: missing required field" in err.reason
