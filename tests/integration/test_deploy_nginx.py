"""The shipped deployment, end to end: Debian's nginx with deploy/nginx/inferserver.conf in front of gunicorn with
deploy/gunicorn.conf.py, and the real ablinfer client talking to it under the /inferserver/ prefix."""

from __future__ import annotations

import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from ..conftest import REPO
from ..files import file_sha256, nifti_gz_like
from .conftest import (
    Server,
    create_and_upload,
    free_port,
    shipped_gunicorn,
    start_server,
    stop_and_check,
    stream_log,
    write_nifti,
)

SITE = REPO / "deploy" / "nginx" / "inferserver.conf"


@dataclass
class Nginx:
    url: str  # the prefixed base URL a client is given
    prefix: Path
    process: subprocess.Popen[bytes]

    def error_log(self) -> str:
        return (self.prefix / "error.log").read_text(errors="replace")

    def access_log(self) -> str:
        return (self.prefix / "access.log").read_text(errors="replace")

    def upstream_bytes(self, request: str) -> list[str]:
        """What the upstream (the app) sent for each logged `request` ("GET /inferserver/..."), as
        "<client status> <bytes to the client> <upstream status> <bytes from the upstream>"."""
        lines = (self.prefix / "upstream.log").read_text(errors="replace").splitlines()
        return [line.split('" ', 1)[1] for line in lines if line.startswith(f'"{request} HTTP/1.1" ')]


def site_for(upstream_port: int, listen_port: int, session_path: Path, also: tuple[int, ...] = ()) -> str:
    """The shipped site with only its upstream (`also`: more servers like it) and listen addresses and
    SESSION_PATH changed."""
    site = SITE.read_text()
    replacements = [
        (
            r"\n( *)server 127\.0\.0\.1:8000([^;]*);",
            "".join(f"\n\\g<1>server 127.0.0.1:{port}\\g<2>;" for port in (upstream_port, *also)),
        ),
        (r"listen 80;", f"listen 127.0.0.1:{listen_port};"),
        (r"listen \[::\]:80;\n", ""),
        (r"X-Accel-Mapping /var/inferserver/=", f"X-Accel-Mapping {session_path}/="),
        (r"alias /var/inferserver/;", f"alias {session_path}/;"),
    ]
    for pattern, new in replacements:
        site, count = re.subn(pattern, new, site)
        assert count == 1, f"{SITE} no longer has exactly one {pattern!r}; update this test with it"
    return site


def start_nginx(prefix: Path, upstream_port: int, session_path: Path, also: tuple[int, ...] = ()) -> Nginx:
    binary = shutil.which("nginx") or "/usr/sbin/nginx"
    if not Path(binary).exists():
        pytest.fail("nginx is not installed: scripts/setup.sh installs Debian's nginx")
    prefix.mkdir(parents=True, exist_ok=True)
    port = free_port()
    (prefix / "inferserver.conf").write_text(site_for(upstream_port, port, session_path, also))
    # A private nginx: its own pid, logs and temp directories, in the foreground, the site file included as is.
    (prefix / "nginx.conf").write_text(f"""
daemon off;
user root;  # the workers must reach the temp prefix (pytest's tmp dirs are 0700); a warning when not root
worker_processes 1;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log info;
events {{ worker_connections 256; }}
http {{
    access_log {prefix}/access.log;
    # Whether a download came from the app or from NGINX: bytes to the client against bytes from the upstream.
    log_format upstream '"$request" $status $body_bytes_sent $upstream_status $upstream_response_length';
    access_log {prefix}/upstream.log upstream;
    client_body_temp_path {prefix}/client_body;
    proxy_temp_path {prefix}/proxy;
    fastcgi_temp_path {prefix}/fastcgi;
    uwsgi_temp_path {prefix}/uwsgi;
    scgi_temp_path {prefix}/scgi;
    include {prefix}/inferserver.conf;
}}
""")
    checked = subprocess.run(
        [binary, "-t", "-p", str(prefix), "-c", str(prefix / "nginx.conf"), "-e", str(prefix / "error.log")],
        capture_output=True,
        text=True,
    )
    assert checked.returncode == 0, f"nginx refuses the shipped site:\n{checked.stderr}"
    process = subprocess.Popen(
        [binary, "-p", str(prefix), "-c", str(prefix / "nginx.conf"), "-e", str(prefix / "error.log")],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    nginx = Nginx(f"http://127.0.0.1:{port}/inferserver/", prefix, process)
    deadline = time.monotonic() + 10
    while True:
        if process.poll() is not None:
            raise AssertionError(f"nginx exited with {process.returncode}:\n{nginx.error_log()}")
        try:
            httpx.get(nginx.url, timeout=1)
            return nginx
        except httpx.TransportError:
            if time.monotonic() > deadline:
                process.kill()
                raise AssertionError(f"nginx did not answer within 10 s:\n{nginx.error_log()}") from None
            time.sleep(0.1)


def stop_nginx(nginx: Nginx) -> None:
    nginx.process.send_signal(signal.SIGQUIT)  # graceful: finish open requests
    try:
        nginx.process.wait(10)
    except subprocess.TimeoutExpired:
        nginx.process.kill()
        nginx.process.wait()


def gunicorn_behind_nginx(tmp: Path) -> Iterator[tuple[Server, Nginx]]:
    """The shipped gunicorn config behind the shipped site, as a module fixture's body; both stopped after."""
    server = start_server(tmp / "server", command=shipped_gunicorn)
    try:
        nginx = start_nginx(tmp / "nginx", int(server.url.rsplit(":", 1)[1]), server.session_path)
    except BaseException:
        stop_and_check([server])
        raise
    yield server, nginx
    stop_nginx(nginx)
    stop_and_check([server])


@pytest.fixture(scope="module")
def deployed(tmp_path_factory: pytest.TempPathFactory, fixture_images: None) -> Iterator[tuple[Server, Nginx]]:
    yield from gunicorn_behind_nginx(tmp_path_factory.mktemp("deploy", numbered=True))


def test_root_answers_under_the_prefix(deployed: tuple[Server, Nginx]) -> None:
    _, nginx = deployed
    answer = httpx.get(nginx.url)
    assert answer.status_code == 200
    assert answer.json()["data"]["server"] == "inferserver"
    redirect = httpx.get(nginx.url.rstrip("/"))
    assert redirect.status_code == 301
    assert redirect.headers["location"].endswith("/inferserver/")


def test_ablinfer_cli_through_nginx_copies_500_mib_byte_for_byte(
    deployed: tuple[Server, Nginx], tmp_path: Path
) -> None:
    _, nginx = deployed
    source, result = tmp_path / "ct.nii.gz", tmp_path / "out.nii.gz"
    digest = nifti_gz_like(source, 500)
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "ablinfer.cli", "-s", nginx.url, "copy", "-i", str(source), "-o", str(result)],
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert proc.returncode == 0, proc.stdout + proc.stderr + nginx.error_log()
        size = source.stat().st_size
        assert result.stat().st_size == size
        assert file_sha256(result) == digest
    finally:
        source.unlink(missing_ok=True)
        result.unlink(missing_ok=True)
    # It went through nginx under the prefix, and nginx streamed the body instead of spooling it to disk.
    assert re.search(r'"PUT /inferserver/sessions/[^/ ]+/inputs/input_vol HTTP/1\.1" 200 ', nginx.access_log())
    download = re.search(
        r'"(GET /inferserver/sessions/[^/ ]+/outputs/output_vol) HTTP/1\.1" 200 5\d{8} ', nginx.access_log()
    )
    assert download, nginx.access_log()
    assert "buffered to a temporary file" not in nginx.error_log()
    # The 500 MiB came from NGINX reading the file; the app answered with an empty body.
    assert nginx.upstream_bytes(download.group(1)) == [f"200 {size} 200 0"]


def finished_copy(server: Server, nginx: Nginx, source: Path) -> tuple[str, str, Path]:
    """A copy session run through nginx on `source`: its id, its output's URL path, and the output file."""
    with httpx.Client(base_url=nginx.url, timeout=60) as client:
        session_id = create_and_upload(client, "copy", source)
    assert server.wait_status(session_id, {"complete", "failed"})["status"] == "complete"
    return (
        session_id,
        f"sessions/{session_id}/outputs/output_vol",
        server.session_path / session_id / "outputs" / "output_vol.nii.gz",
    )


def nginx_etag(path: Path) -> str:
    """The ETag NGINX's static module gives a file (hex mtime, hex size); the app's is an MD5 of other things."""
    stat = path.stat()
    return f'"{int(stat.st_mtime):x}-{stat.st_size:x}"'


def test_download_through_nginx_is_sent_by_nginx_from_the_session_directory(
    deployed: tuple[Server, Nginx], tmp_path: Path
) -> None:
    server, nginx = deployed
    source = write_nifti(tmp_path / "in.nii.gz", 4)
    session_id, path, output = finished_copy(server, nginx, source)
    with httpx.Client(base_url=nginx.url, timeout=60) as client:
        whole = client.get(path)
        assert whole.status_code == 200
        assert whole.content == source.read_bytes()
        assert whole.headers["content-type"] == "application/octet-stream"
        assert whole.headers["content-disposition"] == 'attachment; filename="output_vol.nii.gz"'
        assert "content-encoding" not in whole.headers and "x-accel-redirect" not in whole.headers
        assert whole.headers["etag"] == nginx_etag(output)
        # NGINX's own range support, on the file it read.
        part = client.get(path, headers={"Range": "bytes=100-199"})
        assert part.status_code == 206 and part.content == source.read_bytes()[100:200]

        # A converted copy (a dot file beside the output) goes the same way, with its own name.
        direct = httpx.get(f"{server.url}/{path}", params={"format": ".nrrd"}, timeout=60)
        assert direct.status_code == 200 and "x-accel-redirect" not in direct.headers  # no mapping: streamed
        converted = client.get(path, params={"format": ".nrrd"})
        assert converted.status_code == 200
        assert converted.content == direct.content
        assert converted.headers["content-disposition"] == 'attachment; filename="output_vol.nrrd"'
        assert converted.headers["etag"] == nginx_etag(output.with_name(".output_vol.nii.gz.as.nrrd"))

        # The internal location is not reachable from outside (NGINX's own 404, nothing asked of the app).
        internal = f"/_inferserver_files/{session_id}/outputs/output_vol.nii.gz"
        outside = client.get(nginx.url.removesuffix("inferserver/") + internal.lstrip("/"))
        assert outside.status_code == 404 and b"nginx" in outside.content
        # Errors still come from the app, in its envelope.
        missing = client.get(f"sessions/{session_id}/outputs/absent")
        assert missing.status_code == 404 and missing.json()["errors"]
    size = len(whole.content)
    request = f"GET /inferserver/{path}"
    assert nginx.upstream_bytes(request) == [f"200 {size} 200 0", "206 100 200 0"]
    assert nginx.upstream_bytes(f"{request}?format=.nrrd") == [f"200 {len(direct.content)} 200 0"]
    assert [line.split()[2:] for line in nginx.upstream_bytes(f"GET {internal}")] == [["-", "-"]]


def test_a_forged_mapping_sent_to_the_app_names_only_its_own_output(
    deployed: tuple[Server, Nginx], tmp_path: Path
) -> None:
    """A client talking to the app directly chooses at most the URI prefix; the rest is the output's own path."""
    server, nginx = deployed
    source = write_nifti(tmp_path / "in.nii.gz", 0.1)
    session_id, path, output = finished_copy(server, nginx, source)
    with server.client() as client:

        def download(mapping: str) -> httpx.Response:
            return client.get(path, headers={"X-Accel-Mapping": mapping})

        redirected = download(f"{server.session_path}/=/elsewhere/")
        assert redirected.status_code == 200 and redirected.content == b""
        assert redirected.headers["x-accel-redirect"] == f"/elsewhere/{session_id}/outputs/output_vol.nii.gz"
        for forged in (
            f"{output}=/internal/secret",
            f"{output.parent}/=/internal/",
            "/=/internal/",
            f"{server.session_path}2/=/internal/",
            "/tmp/=/internal/",
            "not a mapping",
            f"{server.session_path}/=/internal/?x=",
            f"{server.session_path}/=@named",
        ):
            answer = download(forged)
            assert answer.status_code == 200, forged
            assert "x-accel-redirect" not in answer.headers, forged
            assert answer.content == source.read_bytes(), forged
    assert "ignoring X-Accel-Mapping" in server.output()


def test_log_stream_through_nginx_arrives_line_by_line(deployed: tuple[Server, Nginx], tmp_path: Path) -> None:
    _, nginx = deployed
    source = write_nifti(tmp_path / "in.nii.gz", 0.1)
    with httpx.Client(base_url=nginx.url, timeout=60) as client:
        session_id = create_and_upload(client, "lines", source, count=8, delay=0.5)
    headers, lines = stream_log(nginx.url, session_id)
    assert headers["content-type"].startswith("text/plain")
    timed = [(t, line) for t, line in lines if line.startswith(b"line ")]
    assert [line for _, line in timed] == [f"line {i}".encode() for i in range(1, 9)]
    spread = timed[-1][0] - timed[0][0]
    assert spread > 2.5, (
        f"the lines arrived together through nginx ({spread:.2f} s apart), not as the model printed them"
    )


def test_gunicorn_stops_gracefully_while_a_log_stream_is_open(make_server, tmp_path: Path) -> None:
    """SIGTERM (systemctl stop) with a client reading a log: the stream is cut after graceful_timeout - 10 s and the
    worker shuts down cleanly instead of waiting for the run and being killed; the next start follows the run."""
    server = make_server(command=shipped_gunicorn, GRACEFUL_TIMEOUT="12")
    source = write_nifti(tmp_path / "in.nii.gz", 0.1)
    with server.client() as client:
        session_id = create_and_upload(client, "sleep", source, seconds=10)
    assert server.wait_status(session_id, {"working"})["status"] == "working"
    ended: list[str] = []

    def read() -> None:
        try:
            stream_log(server.url, session_id)
            ended.append("closed")
        except httpx.HTTPError as exc:  # a stream cut mid-chunk
            ended.append(type(exc).__name__)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    time.sleep(0.5)
    stopped = time.monotonic()
    server.process.send_signal(signal.SIGTERM)
    server.process.wait(30)
    took = time.monotonic() - stopped
    assert took < 6, f"gunicorn took {took:.1f} s to stop (the stream held it up):\n{server.output()}"
    assert "Application shutdown complete" in server.output()
    reader.join(5)
    assert ended, "the log stream was not ended by the stop"
    restarted = make_server.restart(server)
    assert restarted.wait_status(session_id, {"complete", "failed"})["status"] == "complete"
