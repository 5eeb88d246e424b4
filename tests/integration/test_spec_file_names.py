"""Spec extensions become file names: one that cannot be part of a file name is refused by `models check` and by
the server's loader (naming the file and the field), rather than served and failing every upload with a 500."""

from __future__ import annotations

import json
from pathlib import Path

from ..conftest import TEST_MODELS
from .conftest import start_server, stop_and_check
from .test_cli import inferserver

BAD_EXTENSIONS = {
    "slash": "/../x.nii",
    "backslash": "\\x.nii",
    "nul": ".nii\u0000",
    "newline": ".nii\n",
    "long": "." + "x" * 255,
}


def write_bad_specs(directory: Path) -> dict[str, Path]:
    """The copy model, once per bad input extension (as its own id), next to a good copy of it."""
    spec = json.loads((TEST_MODELS / "copy.json").read_text())
    (directory / "copy.json").write_text(json.dumps(spec))
    files = {}
    for kind, extension in BAD_EXTENSIONS.items():
        bad = json.loads(json.dumps(spec))
        bad["id"] = f"copy_{kind}"
        bad["inputs"]["input_vol"]["extension"] = extension
        files[kind] = directory / f"{kind}.json"
        files[kind].write_text(json.dumps(bad))
    return files


def expected_reason(kind: str) -> str:
    if kind == "long":
        return "inputs/input_vol/extension: is 256 bytes long; a file name part may have at most 255"
    return (
        f"inputs/input_vol/extension: must not contain '/', '\\', NUL or control characters, "
        f"not {BAD_EXTENSIONS[kind]!r}: it becomes part of a file name"
    )


def test_models_check_refuses_extensions_that_are_no_file_name_part(tmp_path: Path) -> None:
    files = write_bad_specs(tmp_path)
    result = inferserver("models", "check", str(tmp_path))
    assert result.returncode == 1
    for kind, path in files.items():
        assert f"{path}: {expected_reason(kind)}" in result.stderr.splitlines()
    assert f"ok {tmp_path / 'copy.json'}: copy 1.0" in result.stdout


def test_the_server_does_not_serve_them_and_names_file_and_field(tmp_path: Path, fixture_images: None) -> None:
    models = tmp_path / "models"
    models.mkdir()
    files = write_bad_specs(models)
    server = start_server(tmp_path / "server", models)
    try:
        with server.client() as client:
            assert client.get("/models").json() == {"data": ["copy"]}
            for kind in files:
                assert client.post(f"/models/copy_{kind}", json={}).status_code == 404
        lines = server.output().splitlines()
        for kind, path in files.items():
            assert any(line.endswith(f"model spec not served: {path}: {expected_reason(kind)}") for line in lines), kind
    finally:
        stop_and_check([server])
