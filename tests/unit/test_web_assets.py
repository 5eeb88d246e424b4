"""The web page's files ship in the wheel (so in the Docker image, which installs the package) with the vendored
libraries' licences, and the vendored files are the ones the lockfile pins."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

from ..conftest import REPO

STATIC = REPO / "src" / "inferserver" / "web" / "static"


def test_every_file_of_the_page_is_in_the_wheel(tmp_path: Path) -> None:
    # Built from a copy: pip builds in the source tree, and the checkout must not get a build/ from a test.
    source = tmp_path / "source"
    shutil.copytree(REPO / "src", source / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, source)
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", str(source), "--no-deps", "-q", "-w", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert built.returncode == 0, built.stdout + built.stderr
    (wheel,) = tmp_path.glob("inferserver-*.whl")
    listed = set(zipfile.ZipFile(wheel).namelist())
    expected = {f"inferserver/web/static/{p.relative_to(STATIC)}" for p in STATIC.rglob("*") if p.is_file()}
    assert expected - listed == set()
    for library in ("niivue", "swagger-ui", "redoc"):
        assert f"inferserver/web/static/vendor/{library}/LICENSE" in listed, library


def test_the_vendored_versions_are_the_locked_ones() -> None:
    lock = json.loads((REPO / "web" / "package-lock.json").read_text())["packages"]
    versions = (STATIC / "vendor" / "VERSIONS").read_text().splitlines()
    for line in versions:
        name, version, _licence, integrity = line.split(" ")
        assert lock[f"node_modules/{name}"]["version"] == version
        assert lock[f"node_modules/{name}"]["integrity"] == integrity
    assert len(versions) == 3


def test_nothing_the_browser_loads_points_outside_the_server() -> None:
    # Our own files: only relative URLs (they must work under a proxy prefix) and no CDN.
    for path in [*STATIC.glob("*.html"), *STATIC.glob("js/*.js"), STATIC / "style.css"]:
        text = path.read_text()
        assert "http://" not in text and "https://" not in text and 'src="/' not in text and 'href="/' not in text, path
    assert "cdn.redoc.ly" not in (STATIC / "vendor" / "redoc" / "redoc.standalone.js").read_text()
