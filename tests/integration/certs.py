"""Short-lived TLS certificates for the engine test bed, made with the `openssl` CLI by the same commands
docs/scale-out.md gives an operator: a CA, a server certificate per engine, a client certificate for the server.

Keys are EC P-256 (quick to make) and valid for one day; key files are mode 0600, as the docs ask.
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path

DAYS = "1"
KEY_OPTIONS = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-noenc"]


class CertificateError(Exception):
    """openssl failed; the message carries its command and output."""


@dataclass(frozen=True)
class KeyPair:
    cert: Path
    key: Path


@dataclass(frozen=True)
class Authority:
    """A CA: `cert` is what a peer trusts (`--tlscacert`, an engine's `tls_ca`)."""

    cert: Path
    key: Path

    def issue_server(self, directory: Path, name: str, addresses: tuple[str, ...] = ("127.0.0.1",)) -> KeyPair:
        """A server certificate for a dockerd reached at `addresses` (IPs) and `name` (a DNS name)."""
        names = ",".join([f"DNS:{name}", "DNS:localhost", *(f"IP:{address}" for address in addresses)])
        return self._issue(directory, name, f"subjectAltName={names}\nextendedKeyUsage=serverAuth\n")

    def issue_client(self, directory: Path, name: str) -> KeyPair:
        """A client certificate (what the server presents to an engine)."""
        return self._issue(directory, name, "extendedKeyUsage=clientAuth\n")

    def _issue(self, directory: Path, name: str, extensions: str) -> KeyPair:
        directory.mkdir(parents=True, exist_ok=True)
        pair = KeyPair(directory / f"{name}-cert.pem", directory / f"{name}-key.pem")
        request = directory / f"{name}.csr"
        extfile = directory / f"{name}.ext"
        extfile.write_text(extensions)
        _openssl("req", "-new", *KEY_OPTIONS, "-keyout", str(pair.key), "-out", str(request), "-subj", f"/CN={name}")
        _openssl(
            "x509", "-req", "-in", str(request), "-CA", str(self.cert), "-CAkey", str(self.key),
            "-days", DAYS, "-out", str(pair.cert), "-extfile", str(extfile),
        )  # fmt: skip
        pair.key.chmod(0o600)
        request.unlink()
        extfile.unlink()
        return pair


def make_authority(directory: Path, name: str) -> Authority:
    directory.mkdir(parents=True, exist_ok=True)
    authority = Authority(directory / "ca.pem", directory / "ca-key.pem")
    _openssl(
        "req", "-x509", *KEY_OPTIONS, "-keyout", str(authority.key), "-out", str(authority.cert), "-days", DAYS,
        "-subj", f"/CN={name}", "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign",
    )  # fmt: skip
    authority.key.chmod(0o600)
    return authority


def _openssl(*args: str) -> None:
    try:
        result = subprocess.run(["openssl", *args], capture_output=True, text=True, timeout=60)
    except FileNotFoundError:
        raise CertificateError(
            "the openssl CLI is not installed: run scripts/setup.sh test (Debian's openssl)"
        ) from None
    if result.returncode != 0:
        raise CertificateError(f"openssl {' '.join(args)} failed:\n{result.stderr}")
