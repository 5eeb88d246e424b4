"""Resumable uploads (tus) against the plain PUT, on one server, direct and through the shipped NGINX site.

    PYTHONPATH=src python -m bench.tus_upload [--mib 1024] [--chunk-mib 64] [--repeats 3] [--out FILE.json]

Measures, all in one run against one `inferserver serve` (and Debian's nginx with deploy/nginx/inferserver.conf):
- throughput of a `--mib` upload: httpx PUT (Content-Length, streamed from the file) against tus PATCHes of
  `--chunk-mib` chunks on one keep-alive connection (each chunk read, sent, fsynced and acknowledged before the
  next), median of `--repeats`, PUT and tus alternating so both see the same machine load;
- bytes sent again after an interruption at 50%: one connection breaks halfway through the chunk that holds the
  file's middle byte, then the client asks HEAD and resumes; without and with Upload-Checksum (a chunk with a
  checksum cannot be verified in part, so the server drops it whole). A PUT sends the whole file again.

The uploads go to the `record` test model's `volume` input with its optional `mask` enabled and never sent, so no
run starts; CHECK_INPUT_FILETYPES and CONVERT_INPUTS are off so the bytes land as sent. Each upload's session
directory is removed after it is measured.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import shutil
import socket
import statistics
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urljoin, urlsplit

import httpx

from tests.conftest import TEST_MODELS
from tests.files import random_file
from tests.integration.conftest import start_server, stop_server
from tests.integration.test_deploy_nginx import start_nginx, stop_nginx

MiB = 1 << 20
TUS = {"Tus-Resumable": "1.0.0"}
OFFSET_TYPE = "application/offset+octet-stream"
SESSION = {"inputs": {"mask": {"enabled": True}}, "params": {}, "outputs": {}}


def new_session(client: httpx.Client) -> str:
    answer = client.post("models/record", json=SESSION)
    answer.raise_for_status()
    session_id: str = answer.json()["data"]["session_id"]
    return session_id


def file_chunks(source: Path, start: int = 0, size: int = MiB) -> Iterator[bytes]:
    with source.open("rb") as stream:
        stream.seek(start)
        while block := stream.read(size):
            yield block


def put(client: httpx.Client, source: Path) -> tuple[float, str]:
    session_id = new_session(client)
    started = time.perf_counter()
    answer = client.put(
        f"sessions/{session_id}/inputs/volume",
        content=file_chunks(source),
        headers={"Content-Type": "application/octet-stream", "Content-Length": str(source.stat().st_size)},
    )
    answer.raise_for_status()
    return time.perf_counter() - started, session_id


def create(client: httpx.Client, session_id: str, length: int) -> str:
    meta = ",".join(
        f"{k} {base64.b64encode(v.encode()).decode()}" for k, v in (("session_id", session_id), ("input", "volume"))
    )
    answer = client.post("uploads", headers={**TUS, "Upload-Length": str(length), "Upload-Metadata": meta})
    assert answer.status_code == 201, answer.text
    return urljoin(str(client.base_url.join("uploads")), answer.headers["location"])


def patch_rest(
    client: httpx.Client, url: str, source: Path, at: int, chunk: int, checksum: bool = False, stop: int | None = None
) -> int:
    """PATCH `source` from `at` in `chunk`-byte pieces, to its end or up to `stop`; the bytes sent."""
    sent = 0
    for block in file_chunks(source, at, chunk):
        if stop is not None and at >= stop:
            break
        headers = {**TUS, "Content-Type": OFFSET_TYPE, "Upload-Offset": str(at)}
        if checksum:
            headers["Upload-Checksum"] = checksum_header(block)
        answer = client.patch(url, content=block, headers=headers)
        assert answer.status_code == 204, answer.text
        sent += len(block)
        at = int(answer.headers["upload-offset"])
    return sent


def checksum_header(block: bytes) -> str:
    return "sha1 " + base64.b64encode(hashlib.sha1(block).digest()).decode()


def tus(client: httpx.Client, source: Path, chunk: int) -> tuple[float, str]:
    session_id = new_session(client)
    started = time.perf_counter()
    url = create(client, session_id, source.stat().st_size)
    patch_rest(client, url, source, 0, chunk)
    return time.perf_counter() - started, session_id


def head_offset(client: httpx.Client, url: str) -> int:
    return int(client.head(url, headers=TUS).headers["upload-offset"])


def interrupted(client: httpx.Client, source: Path, chunk: int, checksum: bool) -> tuple[dict[str, int], str]:
    """Upload, break the connection 10 MiB into the chunk holding the middle byte, resume; the bytes sent again."""
    size = source.stat().st_size
    session_id = new_session(client)
    url = create(client, session_id, size)
    middle = (size // 2) // chunk * chunk  # the chunk that holds the middle byte starts here
    sent = patch_rest(client, url, source, 0, chunk, checksum, stop=middle)
    broken_at = middle + min(10 * MiB, chunk // 2)
    sent += _broken_patch(url, source, middle, min(chunk, size - middle), broken_at - middle, checksum)
    time.sleep(0.5)  # the server notices the break, fsyncs what came and records it
    resume_from = head_offset(client, url)
    sent += patch_rest(client, url, source, resume_from, chunk, checksum)
    return {"size": size, "broken_at": broken_at, "resumed_from": resume_from, "sent_again": sent - size}, session_id


def _broken_patch(url: str, source: Path, at: int, declared: int, send: int, checksum: bool) -> int:
    with source.open("rb") as stream:
        stream.seek(at)
        block = stream.read(declared)
    parts = urlsplit(url)
    extra = f"Upload-Checksum: {checksum_header(block)}\r\n" if checksum else ""
    head = (
        f"PATCH {parts.path} HTTP/1.1\r\nHost: {parts.netloc}\r\nTus-Resumable: 1.0.0\r\n{extra}"
        f"Content-Type: {OFFSET_TYPE}\r\nUpload-Offset: {at}\r\nContent-Length: {declared}\r\n\r\n"
    )
    with socket.create_connection((parts.hostname, parts.port)) as sock:
        sock.sendall(head.encode() + block[:send])
    return send


def mib_s(size: int, seconds: float) -> float:
    return round(size / MiB / seconds, 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mib", type=int, default=1024)
    parser.add_argument("--chunk-mib", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    chunk = args.chunk_mib * MiB
    with tempfile.TemporaryDirectory(prefix="tus-bench-") as tmp_name:
        tmp = Path(tmp_name)
        source = tmp / "volume.nii"
        random_file(source, args.mib)
        size = source.stat().st_size
        server = start_server(tmp / "server", TEST_MODELS, CHECK_INPUT_FILETYPES="false", CONVERT_INPUTS="false")
        nginx = start_nginx(tmp / "nginx", int(server.url.rsplit(":", 1)[1]), server.session_path)
        results: dict[str, object] = {"mib": args.mib, "chunk_mib": args.chunk_mib, "repeats": args.repeats}
        try:
            for route, base in (("direct", server.url + "/"), ("nginx", nginx.url)):
                with httpx.Client(base_url=base, timeout=600) as client:
                    times: dict[str, list[float]] = {"put": [], "tus": []}
                    for _ in range(args.repeats):
                        for kind, upload in (("put", put), ("tus", lambda c, s: tus(c, s, chunk))):
                            seconds, session_id = upload(client, source)
                            times[kind].append(seconds)
                            shutil.rmtree(server.session_path / session_id)
                    put_s, tus_s = statistics.median(times["put"]), statistics.median(times["tus"])
                    resumes = {}
                    for label, checksum in (("interrupted", False), ("interrupted_with_checksum", True)):
                        resumes[label], session_id = interrupted(client, source, chunk, checksum)
                        shutil.rmtree(server.session_path / session_id)
                    results[route] = {
                        "put_mib_s": mib_s(size, put_s),
                        "tus_mib_s": mib_s(size, tus_s),
                        "tus_vs_put": round(put_s / tus_s, 3),
                        "runs_s": times,
                        **resumes,
                    }
                    print(route, json.dumps(results[route]), flush=True)
        finally:
            stop_nginx(nginx)
            stop_server(server)
    text = json.dumps(results, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
