"""Operators in the users file (`user:hash:operator`), and the `hash-password --operator` line that makes one."""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from inferserver.api.credentials import CredentialsError, hash_password, load_users
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
