"""Unit-test fixtures."""

from __future__ import annotations

import os

import pytest


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """No INFERSERVER_* variable of the machine running the tests may leak into settings."""
    for name in list(os.environ):
        if name.startswith("INFERSERVER_"):
            monkeypatch.delenv(name)
