"""Password and token hashes, and the files that hold them."""

from __future__ import annotations

import base64
import hashlib
from pathlib import Path

import pytest

from inferserver.api.credentials import (
    CredentialsError,
    hash_password,
    hash_token,
    load_tokens,
    load_users,
    verify_password,
)


def test_scrypt_and_pbkdf2_hashes_verify() -> None:
    encoded = hash_password("pw")
    assert verify_password(encoded, "pw") and not verify_password(encoded, "pW")
    assert hash_password("pw") != encoded  # a new salt each time
    salt = b"0123456789abcdef"
    digest = hashlib.pbkdf2_hmac("sha256", b"pw", salt, 1000)
    pbkdf2 = f"pbkdf2_sha256$1000${base64.b64encode(salt).decode()}${base64.b64encode(digest).decode()}"
    assert verify_password(pbkdf2, "pw") and not verify_password(pbkdf2, "other")


def test_users_file(tmp_path: Path) -> None:
    path = tmp_path / "users"
    path.write_text(f"# comment\n\nalice:{hash_password('a')}  # the admin\nbob:{hash_password('b')}\n")
    users = load_users(path)
    assert users.verify("alice", "a") and users.verify("bob", "b")
    assert not users.verify("alice", "b") and not users.verify("nobody", "a")


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("alice\n", "line 1: expected user:hash"),
        ("alice:md5$x\n", "line 1 (user 'alice'): not a password hash"),
        ("alice:scrypt$3$8$1$AA$AA\n", "power of two"),
        ("alice:scrypt$16384$8$1$!!$AA\n", "malformed scrypt hash"),
        (f"a:{hash_password('x')}\na:{hash_password('y')}\n", "line 2: user 'a' appears twice"),
    ],
)
def test_users_file_errors_name_file_and_line_not_the_hash(tmp_path: Path, text: str, problem: str) -> None:
    path = tmp_path / "users"
    path.write_text(text)
    with pytest.raises(CredentialsError) as caught:
        load_users(path)
    assert str(path) in str(caught.value) and problem in str(caught.value)
    assert "scrypt$16384" not in str(caught.value)


def test_tokens_file(tmp_path: Path) -> None:
    path = tmp_path / "tokens"
    path.write_text(f"{hash_token('t1')}  # robot\n{hash_token('t2').upper()}\n")
    tokens = load_tokens(path)
    assert tokens.verify("t1") and tokens.verify("t2") and not tokens.verify("t3")
    path.write_text("not-a-hash\n")
    with pytest.raises(CredentialsError, match="line 1: expected the 64 hex digits"):
        load_tokens(path)
