"""The deployment guide says how access is controlled, and links the README's section on it."""

from __future__ import annotations

import re

from inferserver.config import Settings

from ..conftest import REPO


def test_deploy_guide_describes_access_control_and_links_the_readme() -> None:
    guide = (REPO / "docs" / "deploy.md").read_text()
    readme = (REPO / "README.md").read_text()
    assert "no authentication" not in guide
    assert "[Access control](../README.md#access-control)" in guide and "\n## Access control\n" in readme
    for setting in ("AUTH_USERS_FILE", "AUTH_TOKENS_FILE", "AUTH_MAX_FAILURES", "AUTH_FAILURE_WINDOW"):
        assert setting in guide, setting


def test_every_new_setting_is_in_the_readme_table() -> None:
    table = set(re.findall(r"^\| `([A-Z_]+)` \|", (REPO / "README.md").read_text(), flags=re.MULTILINE))
    for name in ("AUTH_MAX_FAILURES", "AUTH_FAILURE_WINDOW", "MAX_STRING_PARAM_BYTES"):
        assert name in Settings.model_fields and name in table, name
