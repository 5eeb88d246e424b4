"""Resumable uploads through the shipped NGINX site (deploy/nginx/inferserver.conf) under its /inferserver/ prefix,
in front of gunicorn with the shipped config: PATCH passes, bodies stream, tus headers pass both ways, and the
README's recommended 64 MiB chunks fit the site's limits."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urljoin

import httpx
import pytest

from ..files import file_sha256, nifti_gz_like
from .conftest import Server
from .test_deploy_nginx import Nginx, gunicorn_behind_nginx
from .test_tus import landed, nifti_head, ran_to_completion, tuspy, wait_offset
from .tus import TUS, create, new_session, patch, start_patch

MiB = 1 << 20
CHUNK = 64 * MiB  # the chunk size the README recommends


@pytest.fixture(scope="module")
def proxied(tmp_path_factory: pytest.TempPathFactory, fixture_images: None) -> Iterator[tuple[Server, Nginx]]:
    yield from gunicorn_behind_nginx(tmp_path_factory.mktemp("tus-nginx", numbered=True))


def test_tuspy_through_nginx_with_64_mib_chunks(proxied: tuple[Server, Nginx], tmp_path: Path) -> None:
    server, nginx = proxied
    base = nginx.url.rstrip("/")
    source = tmp_path / "ct.nii.gz"
    digest = nifti_gz_like(source, 150)  # three PATCHes: 64 + 64 + 22 MiB
    session_id = new_session(base)
    url = tuspy(base, source, session_id, chunk_size=CHUNK)
    # The relative Location resolved under the prefix, as any client resolves it.
    assert url.startswith(f"{base}/uploads/")
    ran_to_completion(server, session_id, timeout=180)
    assert file_sha256(landed(server, session_id)) == digest
    patches = re.findall(r'"PATCH /inferserver/uploads/[0-9a-f]{32} HTTP/1\.1" (\d+) ', nginx.access_log())
    assert patches == ["204", "204", "204"], nginx.access_log()
    assert "buffered to a temporary file" not in nginx.error_log()  # streamed to the server, not spooled
    source.unlink()


def test_tus_headers_pass_both_ways_through_nginx(proxied: tuple[Server, Nginx]) -> None:
    _, nginx = proxied
    base = nginx.url.rstrip("/")
    options = httpx.options(f"{base}/uploads")
    assert (options.status_code, options.headers["tus-version"], options.headers["tus-extension"]) == (
        204,
        "1.0.0",
        "creation,termination,checksum,expiration",
    )
    answer = create(base, new_session(base), 5000)
    assert answer.status_code == 201
    assert answer.headers["location"].startswith("uploads/")
    assert answer.headers["upload-expires"].endswith(" GMT")
    url = urljoin(f"{base}/uploads", answer.headers["location"])
    refused = httpx.head(url)  # no Tus-Resumable: the request header reached the server, or this would be 200
    assert (refused.status_code, refused.headers["tus-version"]) == (412, "1.0.0")
    head = httpx.head(url, headers=TUS)
    assert (head.headers["upload-offset"], head.headers["upload-length"], head.headers["cache-control"]) == (
        "0",
        "5000",
        "no-store",
    )
    assert patch(url, 0, nifti_head(3000), checksum="sha256").headers["upload-offset"] == "3000"


def test_a_patch_broken_behind_nginx_keeps_what_reached_the_server(proxied: tuple[Server, Nginx]) -> None:
    server, nginx = proxied
    base = nginx.url.rstrip("/")
    body = nifti_head(4 * MiB)
    session_id = new_session(base)
    answer = create(base, session_id, len(body))
    url = urljoin(f"{base}/uploads", answer.headers["location"])
    sock = start_patch(url, 0, len(body), body[: 3 * MiB])
    sock.close()
    # NGINX streams without buffering: what it passed on before the break is kept and acknowledged.
    kept = wait_offset(url, 3 * MiB, timeout=5)
    assert 0 < kept <= 3 * MiB
    assert patch(url, kept, body[kept:]).status_code == 204
    ran_to_completion(server, session_id)
