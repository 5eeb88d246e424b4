"""`POST /models/{id}/inputs/{name}/check` sniffs the first bytes of the raw body, so it takes a raw body only:
a multipart form would be sniffed as its own framing, so it is refused with 415 (uploads do take multipart)."""

from __future__ import annotations

from pathlib import Path

from .conftest import Server, write_nifti

CHECK = "/models/copy/inputs/input_vol/check"


def test_check_refuses_multipart_with_415_naming_the_type(module_server: Server, tmp_path: Path) -> None:
    head = write_nifti(tmp_path / "v.nii.gz", 0.1).read_bytes()[:4096]
    with module_server.client() as client:
        answer = client.post(CHECK, files={"file": ("v.nii.gz", head)})
    assert answer.status_code == 415, answer.text
    assert answer.json() == {
        "errors": [{"detail": "Content-Type must be application/octet-stream, not multipart/form-data"}]
    }


def test_check_takes_a_raw_body_with_or_without_its_type(module_server: Server, tmp_path: Path) -> None:
    head = write_nifti(tmp_path / "v.nii.gz", 0.1).read_bytes()[:4096]
    with module_server.client() as client:
        typed = client.post(CHECK, content=head, headers={"Content-Type": "application/octet-stream"})
        untyped = client.post(CHECK, content=head)
    for answer in (typed, untyped):
        assert answer.status_code == 200, answer.text
        assert answer.json()["data"]["filetype"] == ".nii.gz" and answer.json()["data"]["acceptable"] is True
