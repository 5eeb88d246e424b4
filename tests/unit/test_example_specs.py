"""The example specs (examples/models, what `make serve` serves) load in the ablinfer client without a warning.

ablinfer logs "Missing optional field ..." through the root logger for every optional field a spec leaves out;
a newcomer's first run should not print any of them.
"""

from __future__ import annotations

import io
import json
import logging
import warnings
from pathlib import Path

import pytest
from ablinfer.model import load_model

from ..conftest import REPO

EXAMPLE_SPECS = sorted((REPO / "examples" / "models").glob("*.json"))


def client_messages(text: str, caplog: pytest.LogCaptureFixture) -> list[str]:
    """Every message at INFO or above that ablinfer's load_model logs or warns while loading ``text``."""
    caplog.clear()
    with caplog.at_level(logging.INFO), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        load_model(io.StringIO(text))
    return [record.getMessage() for record in caplog.records] + [str(w.message) for w in caught]


def test_the_examples_are_the_two_make_serve_serves() -> None:
    assert [path.name for path in EXAMPLE_SPECS] == ["bone_threshold.json", "copy.json"]


@pytest.mark.parametrize("path", EXAMPLE_SPECS, ids=lambda path: path.stem)
def test_example_spec_loads_in_the_client_without_a_message(path: Path, caplog: pytest.LogCaptureFixture) -> None:
    assert client_messages(path.read_text(), caplog) == []


def test_a_missing_optional_field_is_caught(caplog: pytest.LogCaptureFixture) -> None:
    """The check above sees ablinfer's warnings: the copy example without its order warns about it."""
    spec = json.loads((REPO / "examples" / "models" / "copy.json").read_text())
    del spec["order"]
    assert client_messages(json.dumps(spec), caplog) == ["Missing optional field order"]
