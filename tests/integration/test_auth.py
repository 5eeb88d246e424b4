"""Access control on a real server: the ablinfer CLI with -u/-p, Bearer tokens, 401s that name nothing
secret, and credentials files re-read when they change."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import httpx

from inferserver.api.credentials import hash_password, hash_token

from ..conftest import REPO
from .conftest import ServerFactory, write_nifti

CHALLENGE = 'Basic realm="inferserver"'


def refused(response: httpx.Response, detail: str) -> None:
    assert response.status_code == 401, response.text
    assert response.headers["www-authenticate"] == CHALLENGE
    assert response.json() == {"errors": [{"detail": detail}]}


def test_basic_users_and_bearer_tokens(make_server: ServerFactory, tmp_path: Path) -> None:
    users = tmp_path / "users"
    users.write_text(f"# lab members\nalice:{hash_password('correct horse')}\n")
    tokens = tmp_path / "tokens"
    tokens.write_text(f"{hash_token('tok-1')}  # ci robot\n")
    server = make_server(AUTH_USERS_FILE=str(users), AUTH_TOKENS_FILE=str(tokens))

    source = write_nifti(tmp_path / "ct.nii.gz", 2)
    out = tmp_path / "out.nii.gz"
    cli = [
        sys.executable,
        "-m",
        "ablinfer.cli",
        "-s",
        server.url,
        "-u",
        "alice",
        "-p",
        "correct horse",
        "copy",
        "-i",
        str(source),
        "-o",
        str(out),
    ]
    proc = subprocess.run(cli, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert out.read_bytes() == source.read_bytes()

    wrong = subprocess.run([*cli[:6], "-p", "wrong", *cli[8:]], capture_output=True, text=True, timeout=60)
    assert wrong.returncode != 0 and not (tmp_path / "never.nii.gz").exists()

    with server.client() as client:
        refused(client.get("/models"), "authentication required")
        refused(client.get("/openapi.json"), "authentication required")
        refused(client.get("/models", auth=("alice", "wrong")), "invalid credentials")
        refused(client.get("/models", auth=("mallory", "correct horse")), "invalid credentials")
        refused(client.get("/models", headers={"Authorization": "Basic !!notbase64"}), "invalid credentials")
        refused(client.get("/models", headers={"Authorization": "Bearer tok-2"}), "invalid credentials")
        assert client.get("/models", headers={"Authorization": "Bearer tok-1"}).status_code == 200
        created = client.post("/models/copy", json={}, auth=("alice", "correct horse")).json()["data"]["session_id"]
        assert len(created) == 36 and created.count("-") == 4  # still a random UUID

        # Edited files count at once, without a restart: a new user in, the token revoked.
        time.sleep(0.01)
        users.write_text(users.read_text() + f"bob:{hash_password('s3cret')}\n")
        tokens.write_text("# all revoked\n")
        assert client.get("/models", auth=("bob", "s3cret")).status_code == 200
        refused(client.get("/models", headers={"Authorization": "Bearer tok-1"}), "invalid credentials")

        # A broken file refuses everyone rather than serving a stale list, and names no secret.
        users.write_text("alice-without-a-hash\n")
        broken = client.get("/models", auth=("alice", "correct horse"))
        assert broken.status_code == 503 and "misconfigured" in broken.json()["errors"][0]["detail"]
        users.write_text(f"alice:{hash_password('correct horse')}\n")
        assert client.get("/models", auth=("alice", "correct horse")).status_code == 200
    assert "correct horse" not in server.output() and "s3cret" not in server.output()


def test_a_bad_users_file_stops_start_up(tmp_path: Path) -> None:
    users = tmp_path / "users"
    users.write_text("alice:md5$abc\n")
    proc = subprocess.run(
        [sys.executable, "-m", "inferserver", "serve", "--port", "1"],
        capture_output=True,
        text=True,
        timeout=60,
        env={
            "INFERSERVER_AUTH_USERS_FILE": str(users),
            "INFERSERVER_SESSION_PATH": str(tmp_path),
            "PATH": "/usr/bin:/bin",
        },
    )
    assert proc.returncode == 2
    assert f"{users} line 1 (user 'alice'): not a password hash of a known format" in proc.stderr


def test_cli_hash_commands(tmp_path: Path) -> None:
    line = subprocess.run(
        [sys.executable, "-m", "inferserver", "hash-password", "carol"],
        input="pw one\n",
        capture_output=True,
        text=True,
        timeout=60,
    ).stdout.strip()
    user, _, encoded = line.partition(":")
    assert user == "carol" and encoded.startswith("scrypt$16384$8$1$")
    from inferserver.api.credentials import verify_password

    assert verify_password(encoded, "pw one") and not verify_password(encoded, "pw two")
    token, file_line = subprocess.run(
        [sys.executable, "-m", "inferserver", "hash-token", "--comment", "robot"],
        capture_output=True,
        text=True,
        timeout=60,
    ).stdout.splitlines()
    assert file_line == f"{hash_token(token)}  # robot" and len(token) >= 40


def dockerfile_healthcheck(url: str) -> list[str]:
    """The Dockerfile's HEALTHCHECK command (python3 in the image), pointed at `url` instead of the container's port."""
    text = (REPO / "Dockerfile").read_text().replace("\\\n", " ")
    line = next(line for line in text.splitlines() if line.startswith("HEALTHCHECK"))
    argv = json.loads(line.split(" CMD ", 1)[1])
    assert argv[0] == "python3" and "http://127.0.0.1:8000/healthz" in argv[-1], argv
    return [sys.executable, *argv[1:-1], argv[-1].replace("http://127.0.0.1:8000", url)]


def test_the_liveness_probe_needs_no_credential_and_nothing_else_is_open(
    make_server: ServerFactory, tmp_path: Path
) -> None:
    users = tmp_path / "users"
    users.write_text(f"alice:{hash_password('pw')}\n")
    tokens = tmp_path / "tokens"
    tokens.write_text(f"{hash_token('tok-1')}\n")
    server = make_server(AUTH_USERS_FILE=str(users), AUTH_TOKENS_FILE=str(tokens))

    probe = subprocess.run(dockerfile_healthcheck(server.url), capture_output=True, text=True, timeout=30, check=False)
    assert probe.returncode == 0, probe.stderr
    with server.client() as client:
        healthz = client.get("/healthz")
        assert healthz.status_code == 200 and healthz.json() == {"data": {"status": "ok"}}
        for path in ("/readyz", "/metrics", "/docs", "/openapi.json", "/gpus", "/", "/healthz/"):
            refused(client.get(path), "authentication required")
        refused(client.post("/healthz"), "authentication required")
        schema = client.get("/openapi.json", headers={"Authorization": "Bearer tok-1"}).json()
        assert "security" not in schema["paths"]["/healthz"]["get"]
        assert "401" not in schema["paths"]["/healthz"]["get"]["responses"]
        assert "401" in schema["paths"]["/readyz"]["get"]["responses"]


def test_a_malformed_users_file_refuses_bearer_tokens_too(make_server: ServerFactory, tmp_path: Path) -> None:
    users = tmp_path / "users"
    users.write_text(f"alice:{hash_password('pw')}\n")
    tokens = tmp_path / "tokens"
    tokens.write_text(f"{hash_token('tok-1')}\n")
    server = make_server(AUTH_USERS_FILE=str(users), AUTH_TOKENS_FILE=str(tokens))
    bearer = {"Authorization": "Bearer tok-1"}
    with server.client() as client:
        assert client.get("/models", headers=bearer).status_code == 200
        users.write_text("alice-without-a-hash\n")
        for answer in (
            client.get("/models", headers=bearer),
            client.get("/models", auth=("alice", "pw")),
            client.get("/models"),
        ):
            assert answer.status_code == 503
            assert answer.json() == {
                "errors": [{"detail": "access control is misconfigured on the server; see its log"}]
            }
        tokens.write_text("not-a-digest\n")
        users.write_text(f"alice:{hash_password('pw')}\n")  # the users file is fixed, the tokens file is broken
        assert client.get("/models", auth=("alice", "pw")).status_code == 503
        tokens.write_text(f"{hash_token('tok-1')}\n")
        assert client.get("/models", headers=bearer).status_code == 200
    assert f"{users} line 1: expected user:hash" in server.output()
    assert f"{tokens} line 1: expected the 64 hex digits" in server.output()
