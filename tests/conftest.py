"""Shared test helpers: where the repo's fixtures live."""

from __future__ import annotations

from pathlib import Path

import nibabel
import nrrd
import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
TEST_MODELS = REPO / "tests" / "models"
SHARED_SPECS = REPO / "tests" / "data" / "specs"  # real-world specs copied in: tests/data/specs/README.md


@pytest.fixture(scope="session")
def shared_specs() -> Path:
    if not SHARED_SPECS.is_dir():
        pytest.fail(f"the real-world specs are missing: expected {SHARED_SPECS} (tests/data/specs in the repository)")
    return SHARED_SPECS


def real_volume() -> Path:
    """A real MRI volume nobody here made: nibabel's own test data (anatomical.nii, 33x41x25 int16, 2 mm, LAS).

    It is a T1-weighted MRI, not CT: tests that run the CT bone model on it pick thresholds in its intensity units.
    """
    path = Path(nibabel.__file__).parent / "tests" / "data" / "anatomical.nii"
    if not path.is_file():
        pytest.fail(f"nibabel's test volume is missing: expected {path} (pip install nibabel, part of the test extra)")
    return path


def lps_to_ras_affine(header: dict) -> np.ndarray:
    """The RAS affine (nibabel's convention) of a NRRD header in left-posterior-superior space."""
    assert header["space"] == "left-posterior-superior", header["space"]
    affine = np.eye(4)
    affine[:3, :3] = np.asarray(header["space directions"], dtype=float).T
    affine[:3, 3] = header["space origin"]
    return np.diag([-1.0, -1.0, 1.0, 1.0]) @ affine


def write_real_nrrd(path: Path, encoding: str = "gzip") -> Path:
    """The real volume written as NRRD by pynrrd (independent of SimpleITK), with its geometry in LPS."""
    image = nibabel.load(real_volume())
    lps = np.diag([-1.0, -1.0, 1.0, 1.0]) @ image.affine
    header = {
        "space": "left-posterior-superior",
        "space directions": lps[:3, :3].T,
        "space origin": lps[:3, 3],
        "encoding": encoding,
        "kinds": ["domain"] * 3,
    }
    nrrd.write(str(path), np.asanyarray(image.dataobj), header)
    return path
