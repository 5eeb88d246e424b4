"""Shared test helpers: where the repo's fixtures live."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
TEST_MODELS = REPO / "tests" / "models"
SHARED_SPECS = REPO.parent / "shared" / "specs"


@pytest.fixture(scope="session")
def shared_specs() -> Path:
    if not SHARED_SPECS.is_dir():
        pytest.fail(f"the real-world specs are missing: expected {SHARED_SPECS} (../shared/specs beside the repo)")
    return SHARED_SPECS
