"""Password and API token hashes, and the files that hold them (AUTH_USERS_FILE, AUTH_TOKENS_FILE).

Passwords: `scrypt$n$r$p$salt$hash` (salt and hash in unpadded base64), or
`pbkdf2_sha256$iterations$salt$hash` for hosts whose OpenSSL lacks scrypt; both stdlib hashlib.
Tokens are long random strings, so one sha256 is enough: the file holds the hex digest only.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import re
import secrets
from dataclasses import dataclass
from pathlib import Path

SCRYPT_N, SCRYPT_R, SCRYPT_P = 1 << 14, 8, 1  # ≈ 16 MiB and tens of ms per check
SALT_BYTES = 16
HEX64 = re.compile(r"[0-9a-f]{64}")


class CredentialsError(Exception):
    """A credentials file cannot be used; the message names the file and line, never a secret."""


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.b64decode(text + "=" * (-len(text) % 4), validate=True)


def hash_password(password: str, *, salt: bytes | None = None) -> str:
    salt = secrets.token_bytes(SALT_BYTES) if salt is None else salt
    digest = hashlib.scrypt(password.encode(), salt=salt, n=SCRYPT_N, r=SCRYPT_R, p=SCRYPT_P, maxmem=64 << 20)
    return f"scrypt${SCRYPT_N}${SCRYPT_R}${SCRYPT_P}${_b64(salt)}${_b64(digest)}"


FORMATS = "scrypt$n$r$p$salt$hash or pbkdf2_sha256$iterations$salt$hash"


@dataclass(frozen=True)
class PasswordHash:
    kind: str
    params: tuple[int, ...]
    salt: bytes
    digest: bytes

    @classmethod
    def parse(cls, encoded: str) -> PasswordHash:
        """ValueError naming the problem (never the hash) for anything but the two known formats."""
        kind, *fields = encoded.split("$")
        arity = {"scrypt": 3, "pbkdf2_sha256": 1}.get(kind)
        if arity is None or len(fields) != arity + 2:
            raise ValueError(f"not a password hash of a known format (expected {FORMATS})")
        try:
            params = tuple(int(f) for f in fields[:arity])
            salt, digest = _unb64(fields[-2]), _unb64(fields[-1])
        except ValueError:
            raise ValueError(f"malformed {kind} hash") from None
        if kind == "scrypt" and (params[0] < 2 or params[0] & (params[0] - 1) or min(params[1:]) < 1):
            raise ValueError("scrypt needs n a power of two above 1, and r, p positive")
        if min(params) < 1 or not digest:
            raise ValueError(f"malformed {kind} hash")
        return cls(kind, params, salt, digest)

    def matches(self, password: str) -> bool:
        if self.kind == "scrypt":
            n, r, p = self.params
            derived = hashlib.scrypt(
                password.encode(), salt=self.salt, n=n, r=r, p=p, dklen=len(self.digest), maxmem=256 << 20
            )
        else:
            derived = hashlib.pbkdf2_hmac(
                "sha256", password.encode(), self.salt, self.params[0], dklen=len(self.digest)
            )
        return hmac.compare_digest(derived, self.digest)


def verify_password(encoded: str, password: str) -> bool:
    return PasswordHash.parse(encoded).matches(password)


# Checked in place of a missing user's hash, so an unknown name costs the same work as a known one.
_DECOY = PasswordHash.parse(hash_password(secrets.token_urlsafe(16)))


def new_token() -> str:
    return secrets.token_urlsafe(32)


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


OPERATOR_FLAG = "operator"  # `user:hash:operator` in AUTH_USERS_FILE: the operator view, cancelling others' runs


@dataclass(frozen=True)
class Users:
    hashes: dict[str, PasswordHash]
    operators: frozenset[str] = frozenset()

    def is_operator(self, user: str) -> bool:
        return user in self.operators

    def verify(self, user: str, password: str) -> bool:
        """Same work whether or not the user exists; never says which part was wrong."""
        stored = self.hashes.get(user)
        ok = (stored or _DECOY).matches(password)
        return ok and stored is not None


@dataclass(frozen=True)
class Tokens:
    hashes: tuple[str, ...]

    def verify(self, token: str) -> bool:
        presented = hash_token(token)
        found = False
        for stored in self.hashes:  # every line, always: the time does not tell which one matched
            found |= hmac.compare_digest(presented, stored)
        return found


def _lines(path: Path) -> list[tuple[int, str]]:
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise CredentialsError(
            f"{path}: cannot read: {exc.__class__.__name__}: {getattr(exc, 'strerror', None) or exc}"
        ) from exc
    out = []
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if line:
            out.append((number, line))
    return out


def load_users(path: Path) -> Users:
    """`user:hash` or `user:hash:operator` lines; blank lines and `#` comments are skipped.

    Neither hash format contains a colon, so a third field cannot be confused with part of the hash."""
    hashes: dict[str, PasswordHash] = {}
    operators: set[str] = set()
    for number, line in _lines(path):
        user, sep, rest = line.partition(":")
        if not sep or not user:
            raise CredentialsError(f"{path} line {number}: expected user:hash (see `inferserver hash-password`)")
        if user in hashes:
            raise CredentialsError(f"{path} line {number}: user {user!r} appears twice")
        encoded, flagged, flag = rest.partition(":")
        if flagged and flag.strip() != OPERATOR_FLAG:
            raise CredentialsError(
                f"{path} line {number} (user {user!r}): the field after the hash may only be {OPERATOR_FLAG!r}"
            )
        try:
            hashes[user] = PasswordHash.parse(encoded)
        except ValueError as exc:
            raise CredentialsError(f"{path} line {number} (user {user!r}): {exc}") from None
        if flagged:
            operators.add(user)
    return Users(hashes, frozenset(operators))


def load_tokens(path: Path) -> Tokens:
    """One sha256 hex digest per line, with an optional `# comment`."""
    hashes = []
    for number, line in _lines(path):
        digest = line.lower()
        if not HEX64.fullmatch(digest):
            raise CredentialsError(
                f"{path} line {number}: expected the 64 hex digits of a token's sha256 (see `inferserver hash-token`)"
            )
        hashes.append(digest)
    return Tokens(tuple(hashes))


def file_stamp(path: Path) -> tuple[int, int, int] | None:
    """What changes when the file is edited or replaced; None when it cannot be read."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_ino, st.st_size, st.st_mtime_ns)
