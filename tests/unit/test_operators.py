"""Operators in the users file (`user:hash:operator`), the `hash-password --operator` line that makes one, and the
identity access control hands to the routes."""

from __future__ import annotations

import base64
import io
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from inferserver.api.auth import AccessControl
from inferserver.api.credentials import CredentialsError, hash_password, hash_token, load_users
from inferserver.api.identity import Identity
from inferserver.api.ratelimit import FailureLimiter
from inferserver.cli import main


def test_a_third_field_marks_an_operator_and_old_files_keep_working(tmp_path: Path) -> None:
    path = tmp_path / "users"
    path.write_text(f"olga:{hash_password('o')}:operator  # runs the server\nnina:{hash_password('n')}\n")
    users = load_users(path)
    assert users.verify("olga", "o") and users.verify("nina", "n")
    assert users.is_operator("olga") and not users.is_operator("nina") and not users.is_operator("nobody")
    path.write_text(f"alice:{hash_password('a')}\n")  # a file from before operators existed
    old = load_users(path)
    assert old.verify("alice", "a") and not old.is_operator("alice")


def test_another_third_field_is_refused_naming_file_line_and_user(tmp_path: Path) -> None:
    path = tmp_path / "users"
    path.write_text(f"olga:{hash_password('o')}:admin\n")
    with pytest.raises(CredentialsError) as caught:
        load_users(path)
    assert str(caught.value) == f"{path} line 1 (user 'olga'): the field after the hash may only be 'operator'"


def test_hash_password_operator_prints_a_line_the_users_file_reads(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr("sys.stdin", io.StringIO("secret\n"))
    assert main(["hash-password", "--operator", "olga"]) == 0
    line = capsys.readouterr().out
    assert line.startswith("olga:scrypt$") and line.endswith(":operator\n")
    (tmp_path / "users").write_text(line)
    users = load_users(tmp_path / "users")
    assert users.verify("olga", "secret") and users.is_operator("olga")


async def test_access_control_says_who_was_let_in_and_whether_they_are_an_operator(tmp_path: Path) -> None:
    users, tokens = tmp_path / "users", tmp_path / "tokens"
    users.write_text(f"olga:{hash_password('o')}:operator\nnina:{hash_password('n')}\n")
    tokens.write_text(f"{hash_token('tok')}\n")
    access = AccessControl(users, tokens, FailureLimiter(10, 60))
    hasher = ThreadPoolExecutor(1)
    try:
        for _ in range(2):  # hashed the first time, remembered the second: the same identity both times
            olga = await access.check(basic("olga", "o"), "10.0.0.1", hasher)
            assert olga.allowed and olga.identity == Identity("olga", operator=True)
        nina = await access.check(basic("nina", "n"), "10.0.0.1", hasher)
        assert nina.identity == Identity("nina", operator=False)
        token = await access.check("Bearer tok", "10.0.0.1", hasher)
        assert token.identity == Identity(f"token {hash_token('tok')[:12]}", operator=False)
        refused = await access.check(basic("olga", "wrong"), "10.0.0.1", hasher)
        assert not refused.allowed and not refused.identity.operator
    finally:
        hasher.shutdown()


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()
