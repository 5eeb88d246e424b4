"""Resumable uploads (tus 1.0.0) against a real `inferserver serve`: tuspy, hand-written requests where a test must
see or break one, a kill -9 mid-upload, the janitor, and the one input path a finished upload shares with PUT."""

from __future__ import annotations

import base64
import gzip
import hashlib
import random
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import nibabel as nib
import numpy as np
import pytest
from tusclient import client as tus_client

from inferserver.api.credentials import hash_token

from ..files import file_sha256, nifti_gz_like
from .conftest import Server, ServerFactory, create_and_upload, fill, serve_command, write_nifti
from .rawhttp import read_response
from .tus import OFFSET_TYPE, TUS, create, created, metadata, new_session, offset, patch, patch_file, start_patch

MiB = 1 << 20


def tuspy(server_url: str, source: Path, session_id: str, chunk_size: int, url: str | None = None) -> str:
    """Upload `source` with tuspy (checksums on); its upload URL."""
    uploader = tus_client.TusClient(f"{server_url}/uploads").uploader(
        str(source),
        chunk_size=chunk_size,
        metadata={"session_id": session_id, "input": "input_vol", "filename": source.name},
        upload_checksum=True,
        url=url,
    )
    uploader.upload()
    assert uploader.url is not None
    return uploader.url


def wait_offset(url: str, expected: int, timeout: float = 20) -> int:
    """HEAD until the offset is `expected` (a broken PATCH is recorded once the server notices the break)."""
    deadline = time.monotonic() + timeout
    while (now := offset(url)) != expected and time.monotonic() < deadline:
        time.sleep(0.1)
    return now


def landed(server: Server, session_id: str) -> Path:
    return server.session_path / session_id / "inputs" / "input_vol.nii.gz"


def test_options_names_version_extensions_limit_and_checksums(module_server: Server) -> None:
    answer = httpx.options(f"{module_server.url}/uploads")
    assert answer.status_code == 204
    assert answer.headers["tus-resumable"] == "1.0.0"
    assert answer.headers["tus-version"] == "1.0.0"
    assert answer.headers["tus-extension"] == "creation,termination,checksum,expiration"
    assert answer.headers["tus-max-size"] == str(16 << 30)
    assert answer.headers["tus-checksum-algorithm"] == "sha1,sha256"


def test_tuspy_uploads_an_input_and_the_session_runs_on_it(module_server: Server, tmp_path: Path) -> None:
    source = tmp_path / "ct.nii.gz"
    nifti_gz_like(source, 5)
    session_id = new_session(module_server.url)
    tuspy(module_server.url, source, session_id, chunk_size=MiB)
    assert module_server.wait_status(session_id, {"complete", "failed"})["status"] == "complete"
    output = httpx.get(f"{module_server.url}/sessions/{session_id}/outputs/output_vol", timeout=60)
    assert output.content == source.read_bytes()


def test_the_completing_patch_answers_the_sha256_and_lands_the_input(module_server: Server, tmp_path: Path) -> None:
    source = tmp_path / "ct.nii.gz"
    digest = nifti_gz_like(source, 3)
    session_id = new_session(module_server.url)
    url = created(module_server.url, session_id, source.stat().st_size)
    assert url.startswith(f"{module_server.url}/uploads/")
    first = patch(url, 0, source.read_bytes()[: MiB + 5])
    assert first.status_code == 204
    assert first.headers["upload-offset"] == str(MiB + 5)
    assert "inferserver-sha256" not in first.headers
    assert httpx.get(f"{module_server.url}/sessions/{session_id}").json()["data"]["needed"] == ["input_vol"]
    last = patch_file(url, source, MiB + 5, MiB)
    assert last.headers["inferserver-sha256"] == digest
    assert last.headers["upload-offset"] == str(source.stat().st_size)
    assert module_server.wait_status(session_id, {"complete", "failed"})["status"] == "complete"
    assert file_sha256(landed(module_server, session_id)) == digest
    # Finished: HEAD says so, and the partial file is gone.
    assert offset(url) == source.stat().st_size
    assert not any((module_server.session_path / session_id / "uploads").iterdir())


def test_a_tus_version_the_server_does_not_speak_is_412(module_server: Server) -> None:
    session_id = new_session(module_server.url)
    answer = httpx.post(
        f"{module_server.url}/uploads",
        headers={"Upload-Length": "10", "Upload-Metadata": f"session_id {session_id}"},
    )
    assert answer.status_code == 412
    assert answer.headers["tus-version"] == "1.0.0"
    assert answer.json() == {"errors": [{"detail": "Tus-Resumable must be 1.0.0; this request has none"}]}
    url = created(module_server.url, session_id, 10)
    old = httpx.head(url, headers={"Tus-Resumable": "0.2.2"})
    assert (old.status_code, old.headers["tus-version"], old.content) == (412, "1.0.0", b"")


def test_upload_length_over_max_upload_bytes_is_413(make_server: ServerFactory) -> None:
    server = make_server(MAX_UPLOAD_BYTES="1MiB")
    assert httpx.options(f"{server.url}/uploads").headers["tus-max-size"] == str(MiB)
    answer = create(server.url, new_session(server.url), MiB + 1)
    assert answer.status_code == 413
    assert answer.headers["tus-resumable"] == "1.0.0"
    assert answer.json()["errors"][0]["detail"] == (
        "input input_vol is over the upload limit of 1 MiB (MAX_UPLOAD_BYTES): its Upload-Length is 1048577 bytes"
    )


def test_a_patch_at_the_wrong_offset_is_409(module_server: Server) -> None:
    url = created(module_server.url, new_session(module_server.url), 10_000)
    upload_id = url.rsplit("/", 1)[1]
    assert patch(url, 0, nifti_head(2000)).status_code == 204
    answer = patch(url, 1000, b"x" * 10)
    assert answer.status_code == 409
    assert answer.json()["errors"][0]["detail"] == f"Upload-Offset 1000 does not match upload {upload_id}'s offset 2000"
    assert offset(url) == 2000


@pytest.mark.parametrize("algorithm", ["sha1", "sha256"])
def test_a_checksum_mismatch_is_460_and_the_chunk_is_discarded(module_server: Server, algorithm: str) -> None:
    url = created(module_server.url, new_session(module_server.url), 10_000)
    assert patch(url, 0, nifti_head(2000), checksum=algorithm).status_code == 204
    good = b"y" * 3000
    wrong = hashlib.new(algorithm, b"something else").digest()
    answer = httpx.patch(
        url,
        content=good,
        headers={
            **TUS,
            "Content-Type": OFFSET_TYPE,
            "Upload-Offset": "2000",
            "Upload-Checksum": f"{algorithm} {base64.b64encode(wrong).decode()}",
        },
    )
    assert answer.status_code == 460
    assert answer.json()["errors"][0]["detail"] == (
        f"input input_vol: the chunk at offset 2000 does not match its Upload-Checksum ({algorithm}); it was "
        "discarded, send it again from offset 2000"
    )
    assert offset(url) == 2000
    partial = next((module_server.session_path).glob(f"*/uploads/{url.rsplit('/', 1)[1]}"))
    assert partial.stat().st_size == 2000
    assert patch(url, 2000, good, checksum=algorithm).headers["upload-offset"] == "5000"


def test_an_unknown_checksum_algorithm_is_400(module_server: Server) -> None:
    url = created(module_server.url, new_session(module_server.url), 10)
    answer = httpx.patch(
        url,
        content=b"x",
        headers={**TUS, "Content-Type": OFFSET_TYPE, "Upload-Offset": "0", "Upload-Checksum": "md5 AA=="},
    )
    assert answer.status_code == 400
    assert (
        answer.json()["errors"][0]["detail"] == "Upload-Checksum: algorithm 'md5' is not supported (use sha1, sha256)"
    )


def test_a_terminated_upload_is_404_and_its_bytes_are_gone(module_server: Server) -> None:
    session_id = new_session(module_server.url)
    url = created(module_server.url, session_id, 10_000)
    assert patch(url, 0, nifti_head(4000)).status_code == 204
    partial = module_server.session_path / session_id / "uploads" / url.rsplit("/", 1)[1]
    assert partial.stat().st_size == 4000
    assert httpx.delete(url, headers=TUS).status_code == 204
    assert not partial.exists()
    assert httpx.head(url, headers=TUS).status_code == 404
    answer = patch(url, 4000, b"x")
    assert answer.status_code == 404
    assert "unknown upload" in answer.json()["errors"][0]["detail"]
    # The input is free for another way in.
    assert httpx.get(f"{module_server.url}/sessions/{session_id}").json()["data"]["needed"] == ["input_vol"]


def test_an_expired_upload_is_410(make_server: ServerFactory) -> None:
    server = make_server(TUS_EXPIRY="1", CLEANUP_TIMER="-1")  # no janitor: the expired row stays to be asked about
    url = created(server.url, new_session(server.url), 10_000)
    assert httpx.head(url, headers=TUS).status_code == 200
    time.sleep(1.5)
    assert httpx.head(url, headers=TUS).status_code == 410
    answer = patch(url, 0, nifti_head(100))
    assert answer.status_code == 410
    assert answer.json()["errors"][0]["detail"] == (
        f"upload {url.rsplit('/', 1)[1]} expired (TUS_EXPIRY is 1 s): create a new one"
    )


def test_the_janitor_removes_expired_uploads(make_server: ServerFactory) -> None:
    server = make_server(TUS_EXPIRY="2", CLEANUP_TIMER="1")
    session_id = new_session(server.url)
    url = created(server.url, session_id, 10_000)
    assert patch(url, 0, nifti_head(3000)).status_code == 204
    partial = server.session_path / session_id / "uploads" / url.rsplit("/", 1)[1]
    assert partial.exists()
    deadline = time.monotonic() + 20
    while partial.exists() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not partial.exists()
    assert httpx.head(url, headers=TUS).status_code == 404
    assert httpx.get(f"{server.url}/sessions/{session_id}").status_code == 200  # the session itself stays


def test_the_janitor_removes_the_uploads_of_cleaned_up_sessions(make_server: ServerFactory) -> None:
    server = make_server(CLEANUP_TIMER="1", CLEANUP_SECONDS="2")  # CLEANUP_FILES stays false: the directory stays
    session_id = new_session(server.url)
    url = created(server.url, session_id, 10_000)
    assert patch(url, 0, nifti_head(3000)).status_code == 204
    partial = server.session_path / session_id / "uploads" / url.rsplit("/", 1)[1]
    deadline = time.monotonic() + 20
    while partial.exists() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not partial.exists()
    assert httpx.get(f"{server.url}/sessions/{session_id}").status_code == 404
    assert httpx.head(url, headers=TUS).status_code == 404


def test_unfinished_uploads_count_against_the_disk_reserve_507(
    small_disk: Callable[[int], Path], make_server: ServerFactory
) -> None:
    disk = small_disk(100)
    server = make_server(session_path=disk / "sessions", DISK_RESERVE_BYTES="20MiB")
    session_id = new_session(server.url)
    first = created(server.url, session_id, 50 * MiB)
    # 50 MiB announced and unsent + 40 MiB more would leave less than 20 MiB of the ~100 MiB free.
    answer = create(server.url, new_session(server.url), 40 * MiB)
    assert answer.status_code == 507
    assert answer.headers["tus-resumable"] == "1.0.0"
    detail = answer.json()["errors"][0]["detail"]
    assert detail.startswith("not enough disk space for input input_vol (resumable upload): the server keeps 20 MiB")
    assert "(DISK_RESERVE_BYTES)" in detail
    assert httpx.delete(first, headers=TUS).status_code == 204
    assert create(server.url, new_session(server.url), 40 * MiB).status_code == 201
    # A PATCH onto a disk under its reserve is 507 too, as PUT is.
    url = created(server.url, new_session(server.url), 10 * MiB)
    filler = fill(disk, 10 * MiB)
    try:
        refused = patch(url, 0, nifti_head(MiB))
        assert refused.status_code == 507
        assert "DISK_RESERVE_BYTES" in refused.json()["errors"][0]["detail"]
    finally:
        filler.unlink()


def test_a_patch_broken_at_a_random_offset_keeps_what_arrived_and_tuspy_resumes(
    module_server: Server, tmp_path: Path
) -> None:
    source = tmp_path / "ct.nii.gz"
    digest = nifti_gz_like(source, 8)
    data = source.read_bytes()
    session_id = new_session(module_server.url)
    url = created(module_server.url, session_id, len(data))
    cut = random.randrange(2048, len(data) - 1)
    sock = start_patch(url, 0, len(data), data[:cut])
    sock.close()  # the connection breaks: no more bytes, no answer read
    assert wait_offset(url, cut) == cut, f"the server kept {offset(url)} of the {cut} bytes that arrived"
    tuspy(module_server.url, source, session_id, chunk_size=2 * MiB, url=url)
    assert module_server.wait_status(session_id, {"complete", "failed"})["status"] == "complete"
    assert file_sha256(landed(module_server, session_id)) == digest


def test_a_broken_patch_with_a_checksum_keeps_nothing(module_server: Server) -> None:
    url = created(module_server.url, new_session(module_server.url), 100_000)
    body = nifti_head(50_000)
    sock = start_patch(url, 0, len(body), body[:30_000], checksum=hashlib.sha1(body).digest())
    sock.close()
    time.sleep(1)
    assert offset(url) == 0
    assert patch(url, 0, body, checksum="sha1").headers["upload-offset"] == "50000"


def test_a_second_concurrent_patch_gets_409(
    make_server: ServerFactory, database: dict[str, str], tmp_path: Path
) -> None:
    """On both databases, with two worker processes: the claim is a conditional UPDATE, not a lock in memory."""
    module_server = make_server(serve_command(workers=2), **database)
    source = tmp_path / "ct.nii.gz"
    digest = nifti_gz_like(source, 2)
    data = source.read_bytes()
    session_id = new_session(module_server.url)
    url = created(module_server.url, session_id, len(data))
    first = start_patch(url, 0, len(data), data[: 64 << 10])
    time.sleep(1)  # the first PATCH has claimed the upload and is waiting for the rest of its body
    second = patch(url, 0, data[:1000])
    assert second.status_code == 409
    upload_id = url.rsplit("/", 1)[1]
    assert second.json()["errors"][0]["detail"] == (
        f"upload {upload_id} is being written by another PATCH; ask HEAD for its offset and retry"
    )
    first.sendall(data[64 << 10 :])
    answer = read_response(first)
    first.close()
    assert (answer.status, answer.headers["upload-offset"]) == (204, str(len(data)))
    assert answer.headers["inferserver-sha256"] == digest
    assert module_server.wait_status(session_id, {"complete", "failed"})["status"] == "complete"
    assert file_sha256(landed(module_server, session_id)) == digest


def test_kill_9_mid_upload_then_resume_after_restart(make_server: ServerFactory, tmp_path: Path) -> None:
    """200 MiB on disk (2 GiB takes minutes on this shared machine; the code path is the same)."""
    server = make_server()
    source = tmp_path / "ct.nii.gz"
    digest = nifti_gz_like(source, 200)
    size = source.stat().st_size
    session_id = new_session(server.url)
    url = created(server.url, session_id, size)
    chunk = 32 * MiB
    with source.open("rb") as stream:
        for at in range(0, 3 * chunk, chunk):
            assert patch(url, at, stream.read(chunk)).status_code == 204
        in_flight = start_patch(url, 3 * chunk, chunk, stream.read(8 * MiB))
    time.sleep(1)
    server.process.kill()  # SIGKILL: mid-body, nothing of this PATCH acknowledged
    server.process.wait()
    in_flight.close()
    server = make_server.restart(server)
    url = f"{server.url}/uploads/{url.rsplit('/', 1)[1]}"  # the restarted server listens on another port
    assert offset(url) == 3 * chunk  # exactly what was acknowledged
    last = patch_file(url, source, 3 * chunk, chunk)
    # Rehashed from disk after the restart: the answer is the sha256 of the whole file as the client has it.
    assert last.headers["inferserver-sha256"] == digest
    assert file_sha256(landed(server, session_id)) == digest
    assert server.wait_status(session_id, {"complete", "failed"}, timeout=180)["status"] == "complete"
    source.unlink()


def test_chunks_spread_over_worker_processes_still_answer_the_whole_files_sha256(
    make_server: ServerFactory, tmp_path: Path
) -> None:
    """Each worker keeps the running hash of the chunks it took; a completion without the whole one rehashes."""
    server = make_server(serve_command(workers=3))
    source = tmp_path / "ct.nii.gz"
    digest = nifti_gz_like(source, 12)
    session_id = new_session(server.url)
    url = created(server.url, session_id, source.stat().st_size)
    last = patch_file(url, source, 0, MiB)  # a new connection per chunk: the kernel spreads them over the workers
    assert last.headers["inferserver-sha256"] == digest
    assert server.wait_status(session_id, {"complete", "failed"})["status"] == "complete"
    assert file_sha256(landed(server, session_id)) == digest


def test_a_filename_that_is_not_a_plain_name_is_400(module_server: Server) -> None:
    session_id = new_session(module_server.url)
    answer = httpx.post(
        f"{module_server.url}/uploads",
        headers={
            **TUS,
            "Upload-Length": "10",
            "Upload-Metadata": metadata(session_id=session_id, input="input_vol", filename="a\0b/../c"),
        },
    )
    assert answer.status_code == 400
    assert answer.json()["errors"][0]["detail"] == (
        "Upload-Metadata: filename must be a plain file name of at most 255 printable characters"
    )


def test_a_nii_upload_is_converted_for_a_nii_gz_input(module_server: Server, tmp_path: Path) -> None:
    source = write_nifti(tmp_path / "ct.nii", 1)
    session_id = new_session(module_server.url)
    url = created(module_server.url, session_id, source.stat().st_size)
    last = patch_file(url, source, 0, 256 << 10)
    assert last.headers["inferserver-sha256"] == file_sha256(source)  # of the bytes received, as for PUT
    stored = landed(module_server, session_id)
    assert gzip.decompress(stored.read_bytes())[:4] == source.read_bytes()[:4]
    assert np.array_equal(np.asarray(nib.load(stored).dataobj), np.asarray(nib.load(source).dataobj))


def test_a_file_of_the_wrong_type_is_refused_at_its_first_chunk(module_server: Server) -> None:
    session_id = new_session(module_server.url)
    url = created(module_server.url, session_id, 100_000)
    answer = patch(url, 0, b"just some text\n" * 200)
    assert answer.status_code == 400
    assert answer.json()["errors"][0]["detail"] == (
        "input input_vol must be a .nii.gz file, but the upload is an unknown type; the upload was terminated"
    )
    assert httpx.head(url, headers=TUS).status_code == 404
    assert not any((module_server.session_path / session_id / "uploads").iterdir())


def test_creation_is_refused_for_an_unknown_session_or_input_or_one_that_no_longer_waits(
    module_server: Server, tmp_path: Path
) -> None:
    unknown = create(module_server.url, "00000000-0000-4000-8000-000000000000", 10)
    assert unknown.status_code == 404
    assert unknown.json()["errors"][0]["detail"] == "unknown session '00000000-0000-4000-8000-000000000000'"
    session_id = new_session(module_server.url)
    wrong = create(module_server.url, session_id, 10, name="nope")
    assert wrong.status_code == 404
    assert wrong.json()["errors"][0]["detail"] == "model copy has no input 'nope'"
    with module_server.client() as client:
        done = create_and_upload(client, "copy", write_nifti(tmp_path / "in.nii.gz", 0.1))
    late = create(module_server.url, done, 10)
    assert late.status_code == 400
    assert "it takes no more inputs" in late.json()["errors"][0]["detail"]
    assert module_server.wait_status(done, {"complete", "failed"})["status"] == "complete"


def nifti_head(size: int) -> bytes:
    """`size` bytes that sniff as .nii.gz (a gzip member with a NIfTI-1 header, then filler)."""
    header = bytearray(352)
    header[0:4] = (348).to_bytes(4, "little")
    header[344:348] = b"n+1\0"
    head = gzip.compress(bytes(header))
    return (head + b"\0" * size)[:size]


def test_every_tus_call_needs_a_credential_when_access_control_is_on(
    make_server: ServerFactory, tmp_path: Path
) -> None:
    tokens = tmp_path / "tokens"
    tokens.write_text(f"{hash_token('tok-1')}\n")
    server = make_server(AUTH_TOKENS_FILE=str(tokens))
    bearer = {"Authorization": "Bearer tok-1"}
    with httpx.Client(base_url=server.url, headers=bearer) as client:
        session_id = client.post("/models/copy", json={"inputs": {}, "params": {}, "outputs": {}}).json()["data"]
    meta = {
        "Upload-Length": "5000",
        "Upload-Metadata": metadata(session_id=session_id["session_id"], input="input_vol"),
    }
    assert httpx.options(f"{server.url}/uploads").status_code == 401
    anonymous = httpx.post(f"{server.url}/uploads", headers={**TUS, **meta})
    assert anonymous.status_code == 401
    assert anonymous.json() == {"errors": [{"detail": "authentication required"}]}
    made = httpx.post(f"{server.url}/uploads", headers={**TUS, **meta, **bearer})
    assert made.status_code == 201
    url = f"{server.url}/uploads/{made.headers['location'].rsplit('/', 1)[1]}"
    chunk = {**TUS, "Content-Type": OFFSET_TYPE, "Upload-Offset": "0"}
    assert httpx.patch(url, content=nifti_head(5000), headers=chunk).status_code == 401
    assert httpx.head(url, headers=TUS).status_code == 401
    assert httpx.delete(url, headers=TUS).status_code == 401
    assert httpx.patch(url, content=nifti_head(5000), headers={**chunk, **bearer}).status_code == 204
