"""`inferserver client run | batch` as a user runs it: a subprocess against a real `inferserver serve`, the real
Docker engine and the fixture models; outputs compared byte for byte with what the server holds."""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import nibabel
import numpy as np
import pytest

from inferserver.api.credentials import hash_password, hash_token

from ..conftest import real_volume
from .conftest import (
    SESSION_LABEL,
    Server,
    ServerFactory,
    containers_removed,
    create_and_upload,
    free_port,
    kill_server,
    leftover_containers,
    write_nifti,
)
from .tcpproxy import CuttingProxy, cutting_proxy
from .test_deploy_nginx import start_nginx, stop_nginx

SESSION_ID = re.compile(r"session ([0-9a-f-]{36})")
UUID_NAME = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
CREDENTIAL_ENV = ("INFERSERVER_URL", "INFERSERVER_USER", "INFERSERVER_PASSWORD", "INFERSERVER_TOKEN", "NETRC")


def client_env(home: Path, **extra: str) -> dict[str, str]:
    """The caller's environment without credentials; HOME is a fresh folder, so no real ~/.netrc is read."""
    home.mkdir(parents=True, exist_ok=True)
    env = {k: v for k, v in os.environ.items() if k not in CREDENTIAL_ENV}
    return {**env, "HOME": str(home), "COLUMNS": "200", **extra}


def client_argv(*args: str) -> list[str]:
    return [sys.executable, "-m", "inferserver", "client", *args]


def client(home: Path, *args: str, timeout: float = 300, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        client_argv(*args), capture_output=True, text=True, timeout=timeout, env=client_env(home, **env)
    )


def volume(path: Path, number: int) -> Path:
    """nibabel's real MRI, made distinct: its descrip and one voxel carry `number`."""
    image = nibabel.load(real_volume())
    data = np.asanyarray(image.dataobj).copy()
    data[0, 0, 0] = number
    distinct = nibabel.Nifti1Image(data, image.affine, image.header)
    distinct.header["descrip"] = f"client batch volume {number}".encode()
    nibabel.save(distinct, str(path))
    return path


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def sessions_on(server: Server) -> set[str]:
    return {p.name for p in server.session_path.iterdir() if p.is_dir() and UUID_NAME.match(p.name)}


def server_output(server: Server, session_id: str, name: str) -> bytes:
    with server.client() as http:
        response = http.get(f"/sessions/{session_id}/outputs/{name}")
    assert response.status_code == 200, response.text
    return response.content


def test_run_writes_the_servers_output_and_prints_the_log(make_server: ServerFactory, tmp_path: Path) -> None:
    server = make_server(WORKER_THREADS="1")
    source = volume(tmp_path / "ct.nii.gz", 1)
    out = tmp_path / "out" / "seg.nii.gz"
    with server.client() as http:  # a run ahead in the queue, so the client has a position to print
        ahead = create_and_upload(http, "sleep", source, seconds=3)
    done = client(
        tmp_path / "home", "run", "copy", "-i", f"input_vol={source}", "-o", f"output_vol={out}", "--url", server.url
    )
    assert done.returncode == 0, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    waiting = [n for n, line in enumerate(lines) if line.startswith("Waiting, position in queue is 1")]
    assert waiting and waiting[0] < lines.index("copy: reading /data/input_vol.nii.gz"), lines
    assert server.wait_status(ahead, {"complete"})["status"] == "complete"
    assert f"copy: wrote {source.stat().st_size} bytes" in lines
    session_id = SESSION_ID.search(done.stderr)
    assert session_id, done.stderr
    assert out.read_bytes() == server_output(server, session_id[1], "output_vol") == source.read_bytes()
    assert "upload input_vol" in done.stderr and "download output_vol" in done.stderr and "MiB/s" in done.stderr
    assert sorted(p.name for p in out.parent.iterdir()) == ["seg.nii.gz"]  # no partial file left


def test_run_url_from_the_environment_and_a_failed_run(make_server: ServerFactory, tmp_path: Path) -> None:
    server = make_server()
    source = volume(tmp_path / "ct.nii.gz", 2)
    out = tmp_path / "out.nii.gz"
    failed = client(
        tmp_path / "home",
        "run",
        "fail",
        "-i",
        f"input_vol={source}",
        "-o",
        f"output_vol={out}",
        INFERSERVER_URL=server.url,
    )
    assert failed.returncode == 1, failed.stdout + failed.stderr
    assert "fail: something went wrong" in failed.stdout.splitlines()
    assert "inferserver client: run failed (session " in failed.stderr
    assert failed.stderr.rstrip().endswith("model exited with status 3"), failed.stderr
    assert not out.exists()


def test_unreachable_server_and_usage_errors(make_server: ServerFactory, tmp_path: Path) -> None:
    home = tmp_path / "home"
    source = volume(tmp_path / "ct.nii.gz", 3)
    run = ["run", "copy", "-i", f"input_vol={source}", "-o", f"output_vol={tmp_path / 'out.nii.gz'}"]
    nobody = f"http://127.0.0.1:{free_port()}"
    unreachable = client(home, *run, "--url", nobody, "--retries", "1")
    assert unreachable.returncode == 3, unreachable.stderr
    assert f"inferserver client: server {nobody}/ unreachable: ConnectError" in unreachable.stderr

    server = make_server()
    cases = {
        ("run", "copy", "-i", f"input_vol={tmp_path / 'none.nii.gz'}", "-o", "output_vol=o.nii.gz"): (
            f"-i input_vol={tmp_path / 'none.nii.gz'}: no such file"
        ),
        ("run", "nosuchmodel", "-i", f"input_vol={source}"): "the server has no model 'nosuchmodel'",
        ("run", "sleep", "-i", f"input_vol={source}", "-o", "output_vol=o.nii.gz", "-p", "seconds=soon"): (
            "-p seconds=soon: must be of type int"
        ),
        ("run", "sleep", "-i", f"input_vol={source}", "-o", "output_vol=o.nii.gz", "-p", "seconds=9999"): (
            "creating a session: params/seconds: 9999 is outside the allowed range [0, 600]"
        ),
        ("run", "copy", "-i", f"input_vol={source}"): "-o output_vol=FILE is needed: it is a required output",
        ("run", "copy", "-i", f"scan={source}", "-o", "output_vol=o.nii.gz"): (
            "-i scan: model copy has no input of that name (it has: input_vol)"
        ),
        ("run", "copy", "-i", "input_vol"): "-i 'input_vol': expected NAME=VALUE",
        (
            "batch",
            "copy",
            str(tmp_path / "nodir"),
            str(tmp_path / "outdir"),
        ): f"INPUT_DIR {tmp_path / 'nodir'}: not a directory",
    }
    for argv, message in cases.items():
        done = client(home, *argv, "--url", server.url)
        assert done.returncode == 2, (argv, done.stderr)
        assert f"inferserver client: {message}\n" in done.stderr, done.stderr
    assert sessions_on(server) == set()  # none of them started a session


def test_credentials_from_the_environment_and_netrc(make_server: ServerFactory, tmp_path: Path) -> None:
    users = tmp_path / "users"
    users.write_text(f"alice:{hash_password('correct horse')}\n")
    tokens = tmp_path / "tokens"
    tokens.write_text(f"{hash_token('tok-1')}\n")
    server = make_server(AUTH_USERS_FILE=str(users), AUTH_TOKENS_FILE=str(tokens))
    source = volume(tmp_path / "ct.nii.gz", 4)

    def run(home: Path, tag: str, **env: str) -> tuple[subprocess.CompletedProcess[str], Path]:
        out = tmp_path / f"out-{tag}.nii.gz"
        argv = ("run", "copy", "-i", f"input_vol={source}", "-o", f"output_vol={out}", "--url", server.url)
        return client(home, *argv, **env), out

    nobody, _ = run(tmp_path / "nobody", "none")
    assert nobody.returncode == 4, nobody.stderr
    assert "inferserver client: model copy: 401 authentication required" in nobody.stderr
    wrong, _ = run(tmp_path / "wrong", "wrong", INFERSERVER_USER="alice", INFERSERVER_PASSWORD="wrong")
    assert wrong.returncode == 4 and "401 invalid credentials" in wrong.stderr, wrong.stderr

    by_env, out = run(tmp_path / "env", "env", INFERSERVER_USER="alice", INFERSERVER_PASSWORD="correct horse")
    assert by_env.returncode == 0, by_env.stderr
    assert out.read_bytes() == source.read_bytes()

    by_token, out = run(tmp_path / "token", "token", INFERSERVER_TOKEN="tok-1")
    assert by_token.returncode == 0, by_token.stderr
    assert out.read_bytes() == source.read_bytes()

    home = tmp_path / "netrc-home"
    home.mkdir()
    netrc = home / ".netrc"
    netrc.write_text('machine 127.0.0.1\n  login alice\n  password "correct horse"\n')
    netrc.chmod(0o600)
    by_netrc, out = run(home, "netrc")
    assert by_netrc.returncode == 0, by_netrc.stderr
    assert out.read_bytes() == source.read_bytes()

    elsewhere = tmp_path / "elsewhere.netrc"
    elsewhere.write_text('machine 127.0.0.1 login alice password "correct horse"\n')
    elsewhere.chmod(0o600)
    by_netrc_env, out = run(tmp_path / "empty-home", "netrc-env", NETRC=str(elsewhere))
    assert by_netrc_env.returncode == 0, by_netrc_env.stderr
    assert out.read_bytes() == source.read_bytes()


def test_the_password_is_not_in_the_clients_argv(make_server: ServerFactory, tmp_path: Path) -> None:
    """While a run is under way, /proc/PID/cmdline (what `ps` shows other users) holds no secret."""
    users = tmp_path / "users"
    users.write_text(f"alice:{hash_password('hunter2-secret')}\n")
    server = make_server(AUTH_USERS_FILE=str(users))
    source = volume(tmp_path / "ct.nii.gz", 5)
    argv = client_argv(
        "run",
        "sleep",
        "-p",
        "seconds=3",
        "-i",
        f"input_vol={source}",
        "-o",
        f"output_vol={tmp_path / 'o.nii.gz'}",
        "--url",
        server.url,
    )
    env = client_env(tmp_path / "home", INFERSERVER_USER="alice", INFERSERVER_PASSWORD="hunter2-secret")
    process = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        time.sleep(1.5)
        cmdline = Path(f"/proc/{process.pid}/cmdline").read_bytes()
        assert b"inferserver" in cmdline and b"hunter2" not in cmdline
        _, stderr = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 0, stderr


def running_containers(server: Server) -> list[str]:
    """Ids of this server's model containers that are running now."""
    ours = sessions_on(server)
    label = f'{{{{.ID}}}} {{{{.Label "{SESSION_LABEL}"}}}}'
    argv = ["docker", "ps", "--filter", f"label={SESSION_LABEL}", "--format", label]
    listing = subprocess.run(argv, capture_output=True, text=True, timeout=60).stdout
    return [cid for cid, session in (line.split() for line in listing.splitlines()) if session in ours]


def wait_for_outputs(outputs: list[Path], count: int, process: subprocess.Popen[str], timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while sum(path.is_file() for path in outputs) < count:
        assert process.poll() is None, f"the batch ended early: {process.communicate()}"
        assert time.monotonic() < deadline, "the batch wrote too few outputs in time"
        time.sleep(0.02)


def test_batch_interrupted_then_continued(make_server: ServerFactory, tmp_path: Path) -> None:
    """Six real volumes, -j 3, killed once two outputs exist; the second run does the other four only."""
    server = make_server(WORKER_THREADS="1")  # one run at a time: the kill lands while the third runs
    volumes_dir = tmp_path / "volumes"
    volumes_dir.mkdir()
    sources = {f"case{n}": volume(volumes_dir / f"case{n}.nii.gz", 100 + n) for n in range(1, 7)}
    (volumes_dir / "notes.txt").write_text("not a volume: ignored\n")
    assert len({sha256(p) for p in sources.values()}) == 6
    results = tmp_path / "results"
    outputs = {stem: results / stem / "output_vol.nii.gz" for stem in sources}
    argv = client_argv(
        "batch", "sleep", str(volumes_dir), str(results), "-j", "3", "-p", "seconds=2", "--url", server.url
    )
    env = client_env(tmp_path / "home")

    first = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for_outputs(list(outputs.values()), 2, first)
        first.send_signal(signal.SIGKILL)
    finally:
        if first.poll() is None:
            first.kill()
        first.communicate(timeout=30)
    finished = {stem for stem, path in outputs.items() if path.is_file()}
    assert len(finished) == 2, finished
    before = sessions_on(server)
    assert len(before) >= 3  # -j 3: more than the two finished had been started

    second = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=300)
    assert second.returncode == 0, second.stdout + second.stderr

    for stem, source in sources.items():
        assert outputs[stem].read_bytes() == source.read_bytes(), stem
    assert sorted(p.name for p in results.iterdir()) == [*sorted(sources), "summary.csv", "summary.json"]
    for stem in sources:
        assert [p.name for p in (results / stem).iterdir()] == ["output_vol.nii.gz"]  # no partial file left

    # The second run started exactly one session per unfinished volume, fed with that volume.
    new = sessions_on(server) - before
    fed = sorted(sha256(server.session_path / sid / "inputs" / "input_vol.nii.gz") for sid in new)
    assert fed == sorted(sha256(sources[stem]) for stem in sources if stem not in finished)
    for sid in new:
        assert server.wait_status(sid, {"complete"})["status"] == "complete"

    summary = json.loads((results / "summary.json").read_text())
    assert [row["volume"] for row in summary] == sorted(sources)
    for row in summary:
        if row["volume"] in finished:
            assert row == {
                "volume": row["volume"],
                "status": "skipped",
                "seconds": 0.0,
                "session_id": "",
                "reason": "outputs already exist",
            }
        else:
            assert row["status"] == "complete" and row["session_id"] in new and row["seconds"] >= 2, row
    csv_lines = (results / "summary.csv").read_text().splitlines()
    assert csv_lines[0] == "volume,status,seconds,session_id,reason"
    assert len(csv_lines) == 7
    for stem in sources:
        status = "skipped" if stem in finished else "complete"
        assert re.search(rf"^│? ?{stem} +│ {status} ", second.stdout, re.MULTILINE), second.stdout


def test_batch_reports_failures_per_volume(make_server: ServerFactory, tmp_path: Path) -> None:
    server = make_server()
    volumes_dir = tmp_path / "volumes"
    volumes_dir.mkdir()
    for n in (1, 2):
        volume(volumes_dir / f"v{n}.nii.gz", n)
    results = tmp_path / "results"
    done = client(tmp_path / "home", "batch", "fail", str(volumes_dir), str(results), "-j", "2", "--url", server.url)
    assert done.returncode == 1, done.stdout + done.stderr
    summary = json.loads((results / "summary.json").read_text())
    assert [(row["volume"], row["status"]) for row in summary] == [("v1", "failed"), ("v2", "failed")]
    for row in summary:
        assert row["reason"] == f"run failed (session {row['session_id']}): model exited with status 3"
    assert not any((results / stem / "output_vol.nii.gz").exists() for stem in ("v1", "v2"))


@pytest.mark.parametrize("jobs", ["0", "x"])
def test_batch_jobs_must_be_a_positive_number(make_server: ServerFactory, tmp_path: Path, jobs: str) -> None:
    server = make_server()
    done = client(
        tmp_path / "home", "batch", "copy", str(tmp_path), str(tmp_path / "o"), "-j", jobs, "--url", server.url
    )
    assert done.returncode == 2, done.stderr


def run_through(proxy: CuttingProxy, home: Path, source: Path, out: Path, *extra: str) -> list[str]:
    return client_argv(
        "run", "copy", "-i", f"input_vol={source}", "-o", f"output_vol={out}", "--url", proxy.url, *extra
    )


@pytest.mark.parametrize(
    ("options", "most_resent"),
    [
        ((), 2 << 20),  # the server keeps what arrived: only bytes in flight go again
        (("--checksum", "--chunk-mib", "4"), 5 << 20),  # a broken chunk with a checksum is discarded: one chunk again
    ],
)
def test_upload_resumes_from_the_servers_offset_after_a_dropped_connection(
    make_server: ServerFactory, tmp_path: Path, options: tuple[str, ...], most_resent: int
) -> None:
    """tus through a proxy that cuts every connection once 14 of 24 MiB have passed: the client asks HEAD for the
    offset and sends the rest, not the whole file again (a PUT would send all 24 MiB again)."""
    server = make_server()
    source = write_nifti(tmp_path / "ct.nii.gz", 24)
    size = source.stat().st_size
    out = tmp_path / "out.nii.gz"
    with cutting_proxy(int(server.url.rsplit(":", 1)[1]), cut_after=14 << 20) as proxy:
        proxy.release.set()  # cut at once
        done = subprocess.run(
            run_through(proxy, tmp_path, source, out, *options),
            capture_output=True,
            text=True,
            timeout=300,
            env=client_env(tmp_path / "home"),
        )
        assert done.returncode == 0, done.stdout + done.stderr
        assert proxy.cuts == 1
        resent = proxy.sent - size
    assert out.read_bytes() == source.read_bytes()
    assert 0 < resent < most_resent, f"{resent} bytes more than the file went to the server"
    log = server.output()
    assert "POST /uploads" in log and "HEAD /uploads/" in log and "PUT /sessions" not in log


def test_upload_resumes_after_the_server_is_killed_and_restarted(make_server: ServerFactory, tmp_path: Path) -> None:
    """`kill -9` of the server mid-upload (4 MiB chunks, 14 of 24 MiB sent), a restart on the same session
    directory: the client retries until the server is back and resumes from the last acknowledged chunk."""
    server = make_server()
    source = write_nifti(tmp_path / "ct.nii.gz", 24)
    size = source.stat().st_size
    out = tmp_path / "out.nii.gz"
    with cutting_proxy(int(server.url.rsplit(":", 1)[1]), cut_after=14 << 20) as proxy:
        process = subprocess.Popen(
            run_through(proxy, tmp_path, source, out, "--chunk-mib", "4"),
            env=client_env(tmp_path / "home"),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            assert proxy.reached.wait(120), "the upload never reached 14 MiB"
            kill_server(server)
            restarted = make_server.restart(server)
            proxy.target_port = int(restarted.url.rsplit(":", 1)[1])
            proxy.release.set()  # the connections to the dead server drop now
            stdout, stderr = process.communicate(timeout=300)
        finally:
            if process.poll() is None:
                process.kill()
        assert process.returncode == 0, stdout + stderr
        resent = proxy.sent - size
    assert out.read_bytes() == source.read_bytes()
    # Acknowledged: 12 MiB (three chunks); the fourth was lost with the server: at most one chunk again.
    assert resent < (4 << 20) + (1 << 20), f"{resent} bytes more than the file went to the server"
    assert "HEAD /uploads/" in restarted.output()


def test_run_through_the_shipped_nginx_under_its_prefix(make_server: ServerFactory, tmp_path: Path) -> None:
    """Behind deploy/nginx/inferserver.conf at /inferserver/: tus PATCHes pass, the Location resolves under the
    prefix, and the output NGINX sends from disk is the file."""
    server = make_server()
    nginx = start_nginx(tmp_path / "nginx", int(server.url.rsplit(":", 1)[1]), server.session_path)
    try:
        source = write_nifti(tmp_path / "ct.nii.gz", 12)
        out = tmp_path / "out.nii.gz"
        argv = ("run", "copy", "-i", f"input_vol={source}", "-o", f"output_vol={out}", "--chunk-mib", "4")
        done = client(tmp_path / "home", *argv, INFERSERVER_URL=nginx.url)
        assert done.returncode == 0, done.stdout + done.stderr + nginx.error_log()
        access = nginx.access_log()
    finally:
        stop_nginx(nginx)
    assert out.read_bytes() == source.read_bytes()
    assert re.search(r'"POST /inferserver/uploads HTTP/1\.1" 201 ', access), access
    assert len(re.findall(r'"PATCH /inferserver/uploads/[0-9a-f]+ HTTP/1\.1" 204 ', access)) == 3  # 12 MB in 4 MiB
    assert re.search(r'"GET /inferserver/sessions/[^/ ]+/outputs/output_vol HTTP/1\.1" 200 ', access), access


def interrupt_when_running(
    argv: list[str], env: dict[str, str], server: Server, containers: int
) -> tuple[subprocess.Popen[str], str]:
    """Start the client, press Ctrl-C once `containers` of its model containers run; the ended process, its stderr.

    Running containers, not just `working`: what a Ctrl-C during a start does is test_cancel_cleanup's subject."""
    process = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while len(running_containers(server)) < containers:
            assert time.monotonic() < deadline and process.poll() is None, f"{containers} runs never started"
            time.sleep(0.1)
        process.send_signal(signal.SIGINT)
        _, stderr = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
    return process, stderr


def test_ctrl_c_cancels_the_session(make_server: ServerFactory, tmp_path: Path) -> None:
    server = make_server()
    source = volume(tmp_path / "ct.nii.gz", 7)
    out = tmp_path / "out.nii.gz"
    argv = client_argv("run", "sleep", "-p", "seconds=60", "-i", f"input_vol={source}", "-o", f"output_vol={out}")
    env = client_env(tmp_path / "home", INFERSERVER_URL=server.url)
    process, stderr = interrupt_when_running(argv, env, server, 1)
    assert process.returncode == 1, stderr
    assert "inferserver client: interrupted: the session was cancelled" in stderr
    (session_id,) = sessions_on(server)
    status = server.wait_status(session_id, {"failed"}, timeout=30)
    assert (status["status"], status["info"]) == ("failed", "cancelled")
    assert not out.exists()
    # The cancel stops and removes the model's container (docker stop may take its grace period).
    assert containers_removed(lambda: leftover_containers(server), timeout=60) == []


def test_help_of_the_client_commands(tmp_path: Path) -> None:
    top = client(tmp_path, "--help")
    assert top.returncode == 0 and "run" in top.stdout and "batch" in top.stdout
    for action, words in (("run", ("NAME=FILE", "--retries", "--chunk-mib")), ("batch", ("INPUT_DIR", "-j JOBS"))):
        helped = client(tmp_path, action, "--help")
        assert helped.returncode == 0
        text = " ".join(helped.stdout.split())
        for word in (*words, "INFERSERVER_TOKEN", "~/.netrc", "3 server unreachable"):
            assert word in text, (action, word, text)


def test_ctrl_c_stops_a_batch_and_cancels_its_sessions(make_server: ServerFactory, tmp_path: Path) -> None:
    server = make_server(WORKER_THREADS="2")
    volumes_dir = tmp_path / "volumes"
    volumes_dir.mkdir()
    for n in (1, 2, 3):
        volume(volumes_dir / f"v{n}.nii.gz", 300 + n)
    argv = client_argv("batch", "sleep", str(volumes_dir), str(tmp_path / "out"), "-j", "2", "-p", "seconds=60")
    env = client_env(tmp_path / "home", INFERSERVER_URL=server.url)
    process, stderr = interrupt_when_running(argv, env, server, 2)
    assert process.returncode == 1, stderr
    assert "inferserver client: interrupted" in stderr
    started = sessions_on(server)
    assert len(started) == 2  # the third volume was never started
    for sid in started:
        status = server.wait_status(sid, {"failed"}, timeout=30)
        assert (status["status"], status["info"]) == ("failed", "cancelled")
    assert containers_removed(lambda: leftover_containers(server), timeout=60) == []
