"""The client command's parts that need no server: argument parsing, credentials, volume names, the summary,
and the tus loop's answers to a checksum mismatch and a broken connection (on a fake transport)."""

from __future__ import annotations

import base64
import hashlib
import json
from pathlib import Path

import httpx
import pytest
from rich.progress import Progress

from inferserver.cli.client import batch, connection, remote, runcmd, tus
from inferserver.cli.client.download import download_output
from inferserver.cli.client.errors import ClientError, Exit
from inferserver.cli.client.retry import Retries
from inferserver.cli.client.upload import upload_input

SPEC = {
    "id": "m",
    "inputs": {"ct": {"status": "required"}, "mask": {"status": "optional"}},
    "params": {"n": {"type": "int"}, "x": {"type": "float"}, "on": {"type": "bool"}, "s": {"type": "string"}},
    "outputs": {"seg": {"status": "required", "extension": ".nii.gz"}, "extra": {"status": "suggested"}},
}


def usage(call: object, *args: object) -> str:
    with pytest.raises(ClientError) as caught:
        call(*args)  # type: ignore[operator]
    assert caught.value.status == Exit.USAGE
    return str(caught.value)


def test_pairs_and_typed_values() -> None:
    assert runcmd.pairs(["a=1", "b=x=y"], "-p") == {"a": "1", "b": "x=y"}
    assert usage(runcmd.pairs, ["a"], "-p") == "-p 'a': expected NAME=VALUE"
    assert usage(runcmd.pairs, ["=1"], "-p") == "-p '=1': expected NAME=VALUE"
    assert usage(runcmd.pairs, ["a=1", "a=2"], "-p") == "-p a: given twice"
    assert remote.typed(SPEC, "n", "3") == 3
    assert remote.typed(SPEC, "x", "2.5") == 2.5
    assert remote.typed(SPEC, "on", "Yes") is True and remote.typed(SPEC, "on", "0") is False
    assert remote.typed(SPEC, "s", "0") == "0"
    assert usage(remote.typed, SPEC, "x", "big") == "-p x=big: must be of type float"
    assert usage(remote.typed, SPEC, "on", "maybe") == "-p on=maybe: must be true or false"


def test_session_body(tmp_path: Path) -> None:
    ct = tmp_path / "ct.nii.gz"
    ct.write_bytes(b"x")
    request = remote.RunRequest("m", {"ct": ct}, {"n": "2"}, {"seg": tmp_path / "seg.nii.gz"})
    assert remote.session_body(SPEC, request) == {
        "inputs": {"ct": {"enabled": True}, "mask": {"enabled": False}},
        "params": {"n": {"value": 2}},
        "outputs": {"seg": {"enabled": True}, "extra": {"enabled": False}},
    }
    no_output = remote.RunRequest("m", {"ct": ct}, {}, {})
    assert usage(remote.session_body, SPEC, no_output) == "-o seg=FILE is needed: it is a required output"
    bad_param = remote.RunRequest("m", {"ct": ct}, {"k": "1"}, {"seg": ct})
    assert usage(remote.session_body, SPEC, bad_param) == "-p k: model m has no parameter of that name"


def test_volume_names(tmp_path: Path) -> None:
    assert batch.volume_stem(Path("a.b.NII.GZ")) == "a.b"
    assert batch.volume_stem(Path("scan.nrrd")) == "scan"
    assert batch.volume_stem(Path("scan.nii")) == "scan"
    assert batch.volume_stem(Path(".nii.gz")) is None
    assert batch.volume_stem(Path("notes.txt")) is None
    for name in ("b.nii", "a.nrrd", "readme.md"):
        (tmp_path / name).write_bytes(b"")
    assert [stem for stem, _ in batch.volumes(tmp_path)] == ["a", "b"]
    (tmp_path / "a.nii.gz").write_bytes(b"")
    assert usage(batch.volumes, tmp_path) == f"INPUT_DIR {tmp_path}: two volumes named a (outputs would collide)"


def test_summary_and_exit_status(tmp_path: Path) -> None:
    outcomes = [
        batch.Outcome("a", "skipped", 0.0, reason="outputs already exist"),
        batch.Outcome("b", "failed", 1.23456, "sid", 'run failed: x, "quoted"', Exit.FAILED),
    ]
    batch.write_summary(tmp_path, outcomes)
    assert json.loads((tmp_path / "summary.json").read_text())[1] == {
        "volume": "b",
        "status": "failed",
        "seconds": 1.235,
        "session_id": "sid",
        "reason": 'run failed: x, "quoted"',
    }
    assert (tmp_path / "summary.csv").read_text().splitlines() == [
        "volume,status,seconds,session_id,reason",
        "a,skipped,0.0,,outputs already exist",
        'b,failed,1.235,sid,"run failed: x, ""quoted"""',
    ]
    assert batch.exit_status(outcomes) == Exit.FAILED
    assert batch.exit_status(outcomes[:1]) == Exit.OK
    unreachable = batch.Outcome("c", "failed", 0, exit=Exit.UNREACHABLE)
    assert batch.exit_status([unreachable]) == Exit.UNREACHABLE
    assert batch.exit_status([unreachable, outcomes[1]]) == Exit.FAILED


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def authorization(auth: httpx.Auth | None) -> str | None:
    if auth is None:
        return None
    request = next(auth.sync_auth_flow(httpx.Request("GET", "http://127.0.0.1:8000/")))
    return request.headers.get("Authorization")


def test_credentials_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("INFERSERVER_TOKEN", "INFERSERVER_USER", "INFERSERVER_PASSWORD"):
        monkeypatch.delenv(name, raising=False)
    netrc = tmp_path / "netrc"
    netrc.write_text("machine 127.0.0.1 login carol password from-netrc\n")
    netrc.chmod(0o600)
    monkeypatch.setenv("NETRC", str(netrc))
    url = "http://127.0.0.1:8000/"
    assert authorization(connection.credentials(url)) == basic("carol", "from-netrc")
    assert connection.credentials("http://other.host/") is None
    monkeypatch.setenv("INFERSERVER_USER", "bob")
    assert "INFERSERVER_PASSWORD is not" in usage(connection.credentials, url)
    monkeypatch.setenv("INFERSERVER_PASSWORD", "pw")
    assert authorization(connection.credentials(url)) == basic("bob", "pw")
    monkeypatch.setenv("INFERSERVER_TOKEN", "tok")
    assert authorization(connection.credentials(url)) == "Bearer tok"
    netrc.write_text("bogus 127.0.0.1\n")
    monkeypatch.delenv("INFERSERVER_TOKEN")
    monkeypatch.delenv("INFERSERVER_USER")
    assert usage(connection.credentials, url) == f"netrc file {netrc}: bad toplevel token 'bogus' ({netrc}, line 1)"


def test_base_url(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("INFERSERVER_URL", raising=False)
    assert connection.base_url(None) == "http://localhost:8000/"
    monkeypatch.setenv("INFERSERVER_URL", "https://gpu-box.lab/inferserver")
    assert connection.base_url(None) == "https://gpu-box.lab/inferserver/"
    assert connection.base_url("http://h:1/") == "http://h:1/"
    assert usage(connection.base_url, "gpu-box:8000") == "--url gpu-box:8000/: must start with http:// or https://"


def test_reason_reads_the_envelope() -> None:
    envelope = httpx.Response(413, json={"errors": [{"detail": "input ct: over MAX_UPLOAD_BYTES"}]})
    assert connection.reason(envelope) == "input ct: over MAX_UPLOAD_BYTES"
    assert connection.reason(httpx.Response(502, text="<html>bad gateway</html>")) == "<html>bad gateway</html>"
    assert connection.reason(httpx.Response(502)) == "HTTP 502 Bad Gateway"
    with pytest.raises(ClientError) as caught:
        connection.check(httpx.Response(401, json={"errors": [{"detail": "invalid credentials"}]}), "model m")
    assert (str(caught.value), caught.value.status) == ("model m: 401 invalid credentials", Exit.DENIED)


class FakeTus:
    """A tus server in memory: a 460 for the first checksummed chunk, and a connection that breaks once after
    `break_after` bytes of one PATCH (the bytes before the break are kept, as the server does without a checksum)."""

    def __init__(self, size: int, break_after: int | None = None, mismatch_once: bool = False) -> None:
        self.data = bytearray()
        self.size = size
        self.break_after = break_after
        self.mismatch_once = mismatch_once
        self.patches: list[tuple[int, int, int]] = []  # (offset, length, status)

    def __call__(self, request: httpx.Request) -> httpx.Response:
        headers = {"Tus-Resumable": "1.0.0"}
        if request.method == "POST":
            return httpx.Response(201, headers={**headers, "Location": "uploads/abc"})
        if request.method == "HEAD":
            return httpx.Response(200, headers={**headers, "Upload-Offset": str(len(self.data))})
        offset = int(request.headers["Upload-Offset"])
        body = request.read()
        if offset != len(self.data):
            self.patches.append((offset, len(body), 409))
            return httpx.Response(409, json={"errors": [{"detail": "offset"}]})
        checksum = request.headers.get("Upload-Checksum")
        if checksum and self.mismatch_once:
            self.mismatch_once = False
            self.patches.append((offset, len(body), 460))
            return httpx.Response(460, json={"errors": [{"detail": "checksum"}]})
        if checksum:
            assert checksum == "sha256 " + base64.b64encode(hashlib.sha256(body).digest()).decode()
        if self.break_after is not None:
            kept, self.break_after = body[: self.break_after], None
            self.data += kept
            self.patches.append((offset, len(kept), 0))
            raise httpx.WriteError("connection reset")
        self.data += body
        self.patches.append((offset, len(body), 204))
        answer = {**headers, "Upload-Offset": str(len(self.data))}
        if len(self.data) == self.size:
            answer["Inferserver-Sha256"] = hashlib.sha256(self.data).hexdigest()
        return httpx.Response(204, headers=answer)


def send(tmp_path: Path, fake: FakeTus, checksum: bool, chunk: int) -> tuple[bytes, list[int]]:
    source = tmp_path / "in.bin"
    payload = bytes(range(256)) * 40  # 10240 bytes
    source.write_bytes(payload)
    fake.size = len(payload)
    restarts: list[int] = []
    client = httpx.Client(base_url="http://tus.test/", transport=httpx.MockTransport(fake))
    upload = tus.TusUpload(
        client,
        tus.TusServer(None, checksum, chunk),
        source,
        "input ct",
        lambda n: None,
        restarts.append,
        Retries(attempts=3, pause=0.0),
    )
    answered = upload.send("sid", "ct")
    assert answered == hashlib.sha256(payload).hexdigest()
    return payload, restarts


def test_tus_resumes_from_the_offset_head_answers(tmp_path: Path) -> None:
    fake = FakeTus(0, break_after=3000)
    payload, restarts = send(tmp_path, fake, checksum=False, chunk=4096)
    assert bytes(fake.data) == payload
    assert restarts == [3000]
    assert fake.patches == [(0, 3000, 0), (3000, 4096, 204), (7096, 3144, 204)]


def test_tus_sends_a_chunk_again_after_a_checksum_mismatch(tmp_path: Path) -> None:
    fake = FakeTus(0, mismatch_once=True)
    payload, restarts = send(tmp_path, fake, checksum=True, chunk=4096)
    assert bytes(fake.data) == payload
    assert restarts == [0]
    assert fake.patches == [(0, 4096, 460), (0, 4096, 204), (4096, 4096, 204), (8192, 2048, 204)]


def test_retries_give_up_with_the_right_status() -> None:
    retries = Retries(attempts=1, pause=0.0)
    retries.failed("upload of input ct", httpx.ConnectError("refused"))
    with pytest.raises(ClientError) as caught:
        retries.failed("upload of input ct", httpx.ConnectError("refused"))
    assert caught.value.status == Exit.UNREACHABLE
    assert str(caught.value) == "upload of input ct: gave up after 1 retries: refused"


def options_answer(status: int, **headers: str) -> httpx.Client:
    def answer(request: httpx.Request) -> httpx.Response:
        assert (request.method, request.url.path) == ("OPTIONS", "/prefix/uploads")
        return httpx.Response(status, headers=headers)

    return httpx.Client(base_url="http://s.test/prefix/", transport=httpx.MockTransport(answer))


def test_tus_offer() -> None:
    """A server without tus (404, 405, no 1.0.0, no creation) gets PUT; --checksum needs the server's sha256."""
    full = {"Tus-Version": "1.0.0", "Tus-Extension": "creation,checksum", "Tus-Checksum-Algorithm": "sha1,sha256"}
    assert tus.offered(options_answer(404)) is None
    assert tus.offered(options_answer(405)) is None
    assert tus.offered(options_answer(204, **{**full, "Tus-Version": "0.2.2"})) is None
    assert tus.offered(options_answer(204, **{**full, "Tus-Extension": "checksum"})) is None
    assert tus.offered(options_answer(204, **full, **{"Tus-Max-Size": "1024"}), 4096, True) == tus.TusServer(
        1024, True, 4096
    )
    no_sha256 = {**full, "Tus-Checksum-Algorithm": "sha1"}
    assert tus.offered(options_answer(204, **no_sha256)) == tus.TusServer(None, False, tus.CHUNK)
    message = usage(tus.offered, options_answer(204, **no_sha256), tus.CHUNK, True)
    assert message == "--checksum: the server's tus does not check sha256 checksums"


def test_batch_input_and_outputs() -> None:
    assert batch._input_name(SPEC, "mask") == "mask"
    assert usage(batch._input_name, SPEC, None) == "model m has inputs ct, mask: say which the volumes feed with -i"
    assert usage(batch._input_name, SPEC, "t1") == "-i t1: model m has no input of that name"
    assert batch._input_name({**SPEC, "inputs": {"ct": {}}}, None) == "ct"
    assert batch._output_names(SPEC, []) == ["seg", "extra"]
    assert batch._output_names(SPEC, ["seg"]) == ["seg"]


def test_output_file_names_from_the_server_stay_in_their_folder() -> None:
    assert batch.output_file(SPEC, "seg") == "seg.nii.gz"
    for name, extension in (("seg", "/../../../etc/x"), ("..", ""), ("a\\b", ".nii"), ("seg", "\0.nii")):
        spec = {"outputs": {name: {"extension": extension}}}
        with pytest.raises(ClientError) as caught:
            batch.output_file(spec, name)
        assert caught.value.status == Exit.FAILED
        assert "not a plain name" in str(caught.value)


class ProxyDuringRestart(FakeTus):
    """The PATCH breaks off, then the proxy answers 502 twice (its server is restarting) before HEAD works."""

    def __init__(self) -> None:
        super().__init__(0, break_after=5000)
        self.bad_gateways = 2

    def __call__(self, request: httpx.Request) -> httpx.Response:
        if request.method == "HEAD" and self.bad_gateways:
            self.bad_gateways -= 1
            return httpx.Response(502, text="<html>502 Bad Gateway</html>")
        return super().__call__(request)


def test_tus_waits_through_a_proxys_502(tmp_path: Path) -> None:
    fake = ProxyDuringRestart()
    payload, restarts = send(tmp_path, fake, checksum=False, chunk=1 << 20)
    assert bytes(fake.data) == payload and fake.bad_gateways == 0
    assert restarts == [5000]


def test_download_resumes_with_range_after_a_break_and_a_502(tmp_path: Path) -> None:
    content = bytes(range(256)) * 100
    calls: list[str | None] = []

    def server(request: httpx.Request) -> httpx.Response:
        calls.append(request.headers.get("Range"))
        if len(calls) == 1:  # the connection breaks after 1000 bytes
            return httpx.Response(200, headers={"Content-Length": str(len(content))}, content=content[:1000])
        if len(calls) == 2:
            return httpx.Response(502, text="bad gateway")
        start = int(request.headers["Range"].removeprefix("bytes=").rstrip("-"))
        headers = {"Content-Range": f"bytes {start}-{len(content) - 1}/{len(content)}"}
        return httpx.Response(206, headers=headers, content=content[start:])

    client = httpx.Client(base_url="http://s.test/", transport=httpx.MockTransport(server))
    target = tmp_path / "out" / "seg.nii.gz"
    with Progress(disable=True) as progress:
        download_output(client, "sid", "seg", target, progress, Retries(attempts=3, pause=0.0))
    assert target.read_bytes() == content
    assert calls == [None, "bytes=1000-", "bytes=1000-"]
    assert sorted(p.name for p in target.parent.iterdir()) == ["seg.nii.gz"]


def test_a_failed_download_leaves_no_partial_file(tmp_path: Path) -> None:
    def server(request: httpx.Request) -> httpx.Response:
        return httpx.Response(404, json={"errors": [{"detail": "output seg is not there"}]})

    client = httpx.Client(base_url="http://s.test/", transport=httpx.MockTransport(server))
    with Progress(disable=True) as progress, pytest.raises(ClientError) as caught:
        download_output(client, "sid", "seg", tmp_path / "seg.nii.gz", progress, Retries(attempts=3, pause=0.0))
    assert str(caught.value) == "download of output seg: 404 output seg is not there"
    assert list(tmp_path.iterdir()) == []


def test_put_when_the_server_has_no_tus_retried_whole_and_its_sha256_checked(tmp_path: Path) -> None:
    source = tmp_path / "ct.nii.gz"
    source.write_bytes(b"volume bytes" * 1000)
    bodies: list[int] = []

    def server(request: httpx.Request) -> httpx.Response:
        assert (request.method, request.url.path) == ("PUT", "/sessions/sid/inputs/ct")
        body = request.read()
        bodies.append(len(body))
        if len(bodies) == 1:
            raise httpx.ReadError("connection reset by peer")
        return httpx.Response(200, json={"data": {"sha256": hashlib.sha256(body).hexdigest()}})

    client = httpx.Client(base_url="http://s.test/", transport=httpx.MockTransport(server))
    with Progress(disable=True) as progress:
        upload_input(client, "sid", "ct", source, progress, None, Retries(attempts=2, pause=0.0))
    assert bodies == [12000, 12000]  # a PUT cannot resume: the whole file again

    def liar(request: httpx.Request) -> httpx.Response:
        request.read()
        return httpx.Response(200, json={"data": {"sha256": "0" * 64}})

    client = httpx.Client(base_url="http://s.test/", transport=httpx.MockTransport(liar))
    with Progress(disable=True) as progress, pytest.raises(ClientError) as caught:
        upload_input(client, "sid", "ct", source, progress, None, Retries(attempts=2, pause=0.0))
    assert str(caught.value) == f"upload of input ct: the server stored sha256 {'0' * 64}, the file {source} differs"
