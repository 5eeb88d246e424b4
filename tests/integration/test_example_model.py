"""The example model examples/bone_threshold run by the real ablinfer client on a real volume, and conversion.

The volume is nibabel's own test data (anatomical.nii), a T1-weighted MRI: not CT, so the thresholds below are in
its intensity units (about 1200-30000; the brightest tissue, white matter and fat, lies above 11000) instead of
Hounsfield units. What is tested is the pipeline on a real volume: labels, geometry and every parameter.
"""

from __future__ import annotations

import gzip
import hashlib
from collections.abc import Iterator
from pathlib import Path

import httpx
import nibabel
import nrrd
import numpy as np
import pytest

from ..conftest import REPO, lps_to_ras_affine, real_volume, write_real_nrrd
from .conftest import Server, run_remote, start_server, stop_and_check

EXAMPLE_MODELS = REPO / "examples" / "models"
OCTET = {"Content-Type": "application/octet-stream"}
BASE = {"threshold": 11000.0, "components": 1, "labels": "binary", "fill_holes": False}


@pytest.fixture(scope="module")
def example_server(tmp_path_factory: pytest.TempPathFactory, example_images: None) -> Iterator[Server]:
    """`inferserver serve` on examples/models, what `make serve` serves."""
    server = start_server(tmp_path_factory.mktemp("example"), EXAMPLE_MODELS)
    yield server
    stop_and_check([server])


@pytest.fixture(scope="module")
def ct_gz(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("data") / "anatomical.nii.gz"
    path.write_bytes(gzip.compress(real_volume().read_bytes()))
    return path


def segment(server: Server, source: Path, out: Path, **params: object) -> nibabel.Nifti1Image:
    """Run bone_threshold through ablinfer's DispatchRemote; the labelmap it saved."""
    values = {**BASE, **params}
    config = {
        "inputs": {"ct": {"enabled": True, "value": str(source)}},
        "params": {name: {"value": value} for name, value in values.items()},
        "outputs": {"bone": {"enabled": True, "value": str(out)}},
    }
    lines = run_remote(server, "bone_threshold", config)
    assert any("bone_threshold: threshold" in line for line in lines), lines  # the model's own log came back
    return nibabel.load(out)


def labels_of(image: nibabel.Nifti1Image) -> np.ndarray:
    return np.asanyarray(image.dataobj)


def test_labelmap_of_a_real_volume_keeps_shape_and_geometry(
    example_server: Server, ct_gz: Path, tmp_path: Path
) -> None:
    source = nibabel.load(real_volume())
    result = segment(
        example_server, ct_gz, tmp_path / "bone.nii.gz", components=3, labels="components", fill_holes=True
    )
    labels = labels_of(result)
    assert result.get_data_dtype() == np.uint8 and labels.dtype == np.uint8
    assert labels.shape == source.shape == (33, 41, 25)
    np.testing.assert_array_equal(result.affine, source.affine)  # spacing and orientation
    assert nibabel.aff2axcodes(result.affine) == ("L", "A", "S") and result.header.get_zooms() == (2.0, 2.0, 2.0)
    assert set(np.unique(labels)) == {0, 1, 2, 3}
    sizes = [int((labels == k).sum()) for k in (1, 2, 3)]
    assert sizes == sorted(sizes, reverse=True) and sizes[-1] > 0  # label 1 is the largest component
    bright = source.get_fdata() >= 11000
    assert (labels > 0)[bright].mean() > 0.5  # most bright voxels are kept (the small pieces are dropped)


def test_each_parameter_changes_the_labelmap(example_server: Server, ct_gz: Path, tmp_path: Path) -> None:
    def run(name: str, **params: object) -> np.ndarray:
        return labels_of(segment(example_server, ct_gz, tmp_path / f"{name}.nii.gz", **params))

    base = run("base")
    assert set(np.unique(base)) == {0, 1}
    higher = run("threshold", threshold=12000.0)  # float
    assert 0 < (higher > 0).sum() < (base > 0).sum()
    three = run("components", components=3)  # int
    assert set(np.unique(three)) == {0, 1} and (three > 0).sum() > (base > 0).sum()
    per_component = run("labels", components=3, labels="components")  # enum, by value
    assert set(np.unique(per_component)) == {0, 1, 2, 3}
    np.testing.assert_array_equal(per_component > 0, three > 0)
    filled = run("fill", fill_holes=True)  # bool
    assert (filled > 0).sum() > (base > 0).sum() and not ((base > 0) & (filled == 0)).any()


def test_nrrd_upload_is_converted_for_the_model(example_server: Server, ct_gz: Path, tmp_path: Path) -> None:
    nrrd_in = write_real_nrrd(tmp_path / "anatomical.nrrd")
    with example_server.client() as client:
        check = client.post("/models/bone_threshold/inputs/ct/check", content=nrrd_in.read_bytes()[:1024]).json()[
            "data"
        ]
    assert check == {"filetype": ".nrrd", "acceptable": True, "can_convert": True}
    from_nrrd = segment(example_server, nrrd_in, tmp_path / "from_nrrd.nii.gz", components=3, labels="components")
    from_nii = segment(example_server, ct_gz, tmp_path / "from_nii.nii.gz", components=3, labels="components")
    np.testing.assert_array_equal(labels_of(from_nrrd), labels_of(from_nii))
    np.testing.assert_allclose(from_nrrd.affine, from_nii.affine, atol=1e-4)


def run_raw(client: httpx.Client, server: Server, body: bytes) -> str:
    """A complete bone_threshold session through raw HTTP; its id."""
    session_id = client.post(
        "/models/bone_threshold", json={"inputs": {}, "params": {"threshold": {"value": 11000.0}}, "outputs": {}}
    ).json()["data"]["session_id"]
    put = client.put(f"/sessions/{session_id}/inputs/ct", content=body, headers=OCTET)
    assert put.status_code == 200, put.text
    assert put.json()["data"]["sha256"] == hashlib.sha256(body).hexdigest()
    status = server.wait_status(session_id, {"complete", "failed"})
    assert status["status"] == "complete", status
    return session_id


def test_output_in_another_format(example_server: Server, ct_gz: Path, tmp_path: Path) -> None:
    with example_server.client() as client:
        session_id = run_raw(client, example_server, ct_gz.read_bytes())
        url = f"/sessions/{session_id}/outputs/bone"
        original = client.get(url)
        as_nrrd = client.get(url, params={"format": ".nrrd"})
        again = client.get(url, params={"format": ".nrrd"})
        as_nii = client.get(url, params={"format": ".nii"})
        same = client.get(url, params={"format": ".nii.gz"})
        wrong = client.get(url, params={"format": ".mha"})
    (tmp_path / "bone.nii.gz").write_bytes(original.content)
    reference = nibabel.load(tmp_path / "bone.nii.gz")
    for response in (as_nrrd, as_nii):
        assert response.status_code == 200 and response.headers["content-type"] == "application/octet-stream"
        assert "content-encoding" not in response.headers
    assert 'filename="bone.nrrd"' in as_nrrd.headers["content-disposition"]
    assert again.content == as_nrrd.content  # served from the cache
    (tmp_path / "bone.nrrd").write_bytes(as_nrrd.content)
    data, header = nrrd.read(str(tmp_path / "bone.nrrd"))
    assert data.dtype == np.uint8
    np.testing.assert_array_equal(data, labels_of(reference))
    np.testing.assert_allclose(lps_to_ras_affine(header), reference.affine, atol=1e-4)
    (tmp_path / "bone.nii").write_bytes(as_nii.content)
    assert not as_nii.content.startswith(b"\x1f\x8b")
    np.testing.assert_array_equal(labels_of(nibabel.load(tmp_path / "bone.nii")), labels_of(reference))
    assert same.content == original.content
    assert wrong.status_code == 400
    detail = wrong.json()["errors"][0]["detail"]
    assert ".mha" in detail and all(fmt in detail for fmt in (".nii.gz", ".nii", ".nrrd"))


def test_a_file_that_is_not_what_it_claims_is_refused_and_the_session_waits(example_server: Server) -> None:
    whole = real_volume().read_bytes()
    with example_server.client() as client:
        session_id = client.post("/models/bone_threshold", json={"inputs": {}, "params": {}, "outputs": {}}).json()[
            "data"
        ]["session_id"]
        put = client.put(f"/sessions/{session_id}/inputs/ct", content=whole[:352] + b"garbage" * 100, headers=OCTET)
        status = client.get(f"/sessions/{session_id}").json()["data"]
        assert put.status_code == 400, put.text
        detail = put.json()["errors"][0]["detail"]
        assert "input ct" in detail and "claims to be .nii" in detail and "cannot be converted to .nii.gz" in detail
        assert "header describes" in detail
        assert status == {"status": "waiting", "needed": ["ct"], "info": ""}
        assert list((example_server.session_path / session_id / "inputs").iterdir()) == []  # no partial file
        # The session still takes a good upload.
        good = client.put(f"/sessions/{session_id}/inputs/ct", content=whole, headers=OCTET)
        assert good.status_code == 200, good.text


def test_truncated_gzip_for_a_nii_input_is_refused(module_server: Server) -> None:
    gz = gzip.compress(real_volume().read_bytes())
    with module_server.client() as client:
        session_id = client.post("/models/record", json={"inputs": {}, "params": {}, "outputs": {}}).json()["data"][
            "session_id"
        ]
        put = client.put(f"/sessions/{session_id}/inputs/volume", content=gz[: len(gz) // 2], headers=OCTET)
        assert put.status_code == 400, put.text
        detail = put.json()["errors"][0]["detail"]
        assert "claims to be .nii.gz" in detail and "gzip stream is broken" in detail
        assert client.get(f"/sessions/{session_id}").json()["data"]["status"] == "waiting"
    assert list((module_server.session_path / session_id / "inputs").iterdir()) == []


def test_without_simpleitk_nothing_converts(tmp_path: Path, example_images: None, ct_gz: Path) -> None:
    """A server whose Python cannot import SimpleITK: check says so, and converted outputs are a clear 400."""
    blocker = tmp_path / "block"
    blocker.mkdir()
    (blocker / "SimpleITK.py").write_text('raise ImportError("SimpleITK blocked by the test")\n')
    server = start_server(tmp_path / "server", EXAMPLE_MODELS, extra_env={"PYTHONPATH": str(blocker)})
    try:
        with server.client() as client:
            head = write_real_nrrd(tmp_path / "x.nrrd").read_bytes()[:1024]
            check = client.post("/models/bone_threshold/inputs/ct/check", content=head).json()["data"]
            assert check == {"filetype": ".nrrd", "acceptable": False, "can_convert": False}
            session_id = run_raw(client, server, ct_gz.read_bytes())
            answer = client.get(f"/sessions/{session_id}/outputs/bone", params={"format": ".nrrd"})
            assert answer.status_code == 400 and "conversion is not installed" in answer.json()["errors"][0]["detail"]
            assert client.get(f"/sessions/{session_id}/outputs/bone").status_code == 200
    finally:
        stop_and_check([server])
