"""X-Accel-Mapping → X-Accel-Redirect: which downloads NGINX may send, and under which URI."""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from urllib.parse import unquote

import pytest
from fastapi.responses import FileResponse

from inferserver.api import accel
from inferserver.api.accel import MalformedMapping, Mapping, parse_mapping, redirect_uri, redirected

SHIPPED = "/var/inferserver/=/_inferserver_files/"


@pytest.fixture(autouse=True)
def fresh_warnings() -> Iterator[None]:
    accel._warned.clear()
    yield
    accel._warned.clear()


@pytest.fixture
def session_path(tmp_path: Path) -> Path:
    root = tmp_path / "sessions"
    (root / "sid" / "outputs").mkdir(parents=True)
    return root


def output(root: Path, name: str) -> Path:
    path = root / "sid" / "outputs" / name
    path.write_bytes(b"volume")
    return path


@pytest.mark.parametrize(
    "value", [SHIPPED, "/var/inferserver=/_inferserver_files", "  /var/inferserver/ = /_inferserver_files/ "]
)
def test_parse_mapping_takes_the_directory_with_or_without_slashes(value: str) -> None:
    assert parse_mapping(value).directory == PurePosixPath("/var/inferserver")
    assert parse_mapping(value).uri_prefix.rstrip("/") == "/_inferserver_files"


@pytest.mark.parametrize(
    "value",
    [
        "",
        "/var/inferserver/",
        "/var/inferserver/ /_inferserver_files/",
        "var/inferserver/=/files/",
        "=/files/",
        "/var/inferserver/=",
        "/var/inferserver/=files/",
        "/var/inferserver/=@named",
        "/var/inferserver/=/files/?x=1",
        "/var/inferserver/=/files/#x",
        "/var/inferserver/=/files/%2e%2e/",
        "/var/inferserver/=/a/../b/",
        "/var/inferserver/=/files /",
        "/var/inferserver/=http://elsewhere/",
    ],
)
def test_parse_mapping_refuses_what_is_not_directory_equals_uri_path(value: str) -> None:
    with pytest.raises(MalformedMapping, match="side must be"):
        parse_mapping(value)


def test_a_sibling_directory_with_the_same_prefix_is_not_under_the_mapping() -> None:
    mapping = parse_mapping(SHIPPED)
    assert mapping.uri_of(PurePosixPath("/var/inferserver2/sid/outputs/seg.nii.gz")) is None
    assert mapping.uri_of(PurePosixPath("/var/inferserver")) is None  # the directory itself is no file
    assert (
        mapping.uri_of(PurePosixPath("/var/inferserver/sid/outputs/seg.nii.gz"))
        == "/_inferserver_files/sid/outputs/seg.nii.gz"
    )


def test_prefix_and_rest_are_joined_by_exactly_one_slash() -> None:
    path = PurePosixPath("/s/a/b")
    assert Mapping(PurePosixPath("/s"), "/x").uri_of(path) == "/x/a/b"
    assert Mapping(PurePosixPath("/s"), "/x/").uri_of(path) == "/x/a/b"
    assert Mapping(PurePosixPath("/"), "/x/").uri_of(path) == "/x/s/a/b"


@pytest.mark.parametrize(
    "name",
    [
        "seg map.nii.gz",
        "100%.nii.gz",
        "what?.nii.gz",
        "no#1.nii.gz",
        "Lunge_rechts_ü_日本.nrrd",
        ".seg.nii.gz.as.nrrd",
        "a+b;c=d&e'f\".nii",
        "..hidden.nii.gz",
        "%2e%2e.nii",
    ],
)
def test_odd_file_names_are_percent_encoded_so_nginx_decodes_them_back(session_path: Path, name: str) -> None:
    uri = redirect_uri(f"{session_path}/=/_inferserver_files/", output(session_path, name), session_path)
    assert uri is not None
    prefix = "/_inferserver_files/sid/outputs/"
    assert uri.startswith(prefix)
    encoded = uri.removeprefix(prefix)
    # Nothing NGINX treats specially is left bare: arguments, fragments, escapes, spaces, non-ASCII.
    assert re.fullmatch(r"(?:[A-Za-z0-9._~-]|%[0-9A-F]{2})+", encoded), encoded
    assert unquote(encoded) == name


def test_a_file_under_session_path_gets_its_uri(session_path: Path) -> None:
    path = output(session_path, "seg.nii.gz")
    assert (
        redirect_uri(f"{session_path}/=/_inferserver_files/", path, session_path)
        == "/_inferserver_files/sid/outputs/seg.nii.gz"
    )
    assert redirect_uri(f"{session_path}=/files", path, session_path) == "/files/sid/outputs/seg.nii.gz"


def test_without_the_header_the_app_streams(session_path: Path) -> None:
    assert redirect_uri(None, output(session_path, "seg.nii.gz"), session_path) is None


def test_a_malformed_mapping_streams_and_is_warned_about_once(
    session_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = output(session_path, "seg.nii.gz")
    with caplog.at_level(logging.WARNING, logger="inferserver.api.accel"):
        assert redirect_uri("nonsense", path, session_path) is None
        assert redirect_uri("also=nonsense", path, session_path) is None
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1, warnings
    assert "ignoring X-Accel-Mapping 'nonsense': the left side must be an absolute directory" in warnings[0]


def test_a_mapping_of_another_directory_streams_so_a_client_cannot_choose_the_uri(
    session_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The file's own path as the left side would hand the whole URI to whoever sends the header."""
    path = output(session_path, "seg.nii.gz")
    with caplog.at_level(logging.WARNING, logger="inferserver.api.accel"):
        for forged in (
            f"{path}=/internal/secret",
            f"{path.parent}/=/internal/",
            "/=/internal/",
            f"{session_path}2/=/internal/",
            f"{session_path}/sid/=/internal/",
        ):
            assert redirect_uri(forged, path, session_path) is None, forged
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and f"it must name SESSION_PATH {session_path}" in warnings[0], warnings


def test_a_symlinked_session_path_still_matches_but_a_file_linked_out_of_it_does_not(
    tmp_path: Path, session_path: Path
) -> None:
    linked = tmp_path / "linked"
    linked.symlink_to(session_path)
    path = output(session_path, "seg.nii.gz")
    assert (
        redirect_uri(f"{linked}/=/f/", linked / "sid" / "outputs" / "seg.nii.gz", linked) == "/f/sid/outputs/seg.nii.gz"
    )
    outside = tmp_path / "elsewhere.nii.gz"
    outside.write_bytes(b"not a session file")
    escape = path.with_name("escape.nii.gz")
    escape.symlink_to(outside)
    assert redirect_uri(f"{session_path}/=/f/", escape, session_path) is None


@pytest.mark.parametrize(
    ("filename", "disposition"),
    [
        ("seg.nii.gz", 'attachment; filename="seg.nii.gz"'),
        ("Lunge ü.nrrd", "attachment; filename*=utf-8''Lunge%20%C3%BC.nrrd"),
    ],
)
def test_the_redirect_answer_is_empty_with_the_file_answers_type_and_name(
    tmp_path: Path, filename: str, disposition: str
) -> None:
    path = tmp_path / filename
    path.write_bytes(b"volume")
    answer = redirected(FileResponse(path, media_type="application/octet-stream", filename=filename), "/f/x")
    assert answer.status_code == 200
    assert answer.body == b""
    assert answer.headers["x-accel-redirect"] == "/f/x"
    assert answer.headers["content-type"] == "application/octet-stream"
    assert answer.headers["content-disposition"] == disposition
    assert "content-encoding" not in answer.headers
