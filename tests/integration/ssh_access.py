"""SSH access to one engine of the test bed, as `ssh://user@host` in an `ENGINES` entry reaches a GPU host.

aiodocker's ssh:// transport logs in with a key and runs `docker system dial-stdio` on the host, then speaks the
Engine API over that channel. Here a private `sshd` (Debian's openssh-server) listens on the host's loopback with
its own host key, config and authorized_keys in the bed's directory; the one key it accepts is restricted to a
forced command that dials this engine's own socket, whatever command the client asks for.

`home` is a home directory laid out as a server's user's would be (`.ssh/id_ed25519`, `.ssh/known_hosts`), so a
server started with HOME pointing there reaches the engine from its plain `ssh://` URL.
"""

from __future__ import annotations

import contextlib
import getpass
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from .conftest import free_port
from .gpu_engine import EngineError

SSHD = Path("/usr/sbin/sshd")  # sshd re-executes itself, so it must be started by its absolute path
PRIVSEP_DIR = Path("/run/sshd")  # sshd refuses to start without it; Debian's unit makes it at boot
START_SECONDS = 10


@dataclass
class SshAccess:
    directory: Path
    port: int
    process: subprocess.Popen[bytes]
    user: str

    @property
    def url(self) -> str:
        return f"ssh://{self.user}@127.0.0.1:{self.port}"

    @property
    def client_key(self) -> Path:
        return self.home / ".ssh" / "id_ed25519"

    @property
    def known_hosts(self) -> Path:
        return self.home / ".ssh" / "known_hosts"

    @property
    def home(self) -> Path:
        return self.directory / "home"

    def log_tail(self, lines: int = 20) -> str:
        text = (self.directory / "sshd.log").read_text(errors="replace")
        return "\n".join(text.splitlines()[-lines:])


def start_ssh_access(directory: Path, engine_socket: Path) -> SshAccess:
    """An sshd on 127.0.0.1 whose one accepted key runs `docker system dial-stdio` on `engine_socket`."""
    if not SSHD.exists():
        raise EngineError(f"{SSHD} is missing: run scripts/setup.sh test (Debian's openssh-server)")
    docker = shutil.which("docker")
    if docker is None:
        raise EngineError("the docker CLI is missing: run scripts/setup.sh test (Debian's docker.io)")
    ssh_dir = directory / "home" / ".ssh"
    ssh_dir.mkdir(parents=True)
    ssh_dir.chmod(0o700)
    PRIVSEP_DIR.mkdir(mode=0o755, exist_ok=True)
    host_key = directory / "host_ed25519"
    _keygen(host_key, "the bed's sshd")
    client_key = ssh_dir / "id_ed25519"
    _keygen(client_key, "inferserver")
    dial = f"{docker} --host unix://{engine_socket} system dial-stdio"
    public = client_key.with_suffix(".pub").read_text().strip()
    (directory / "authorized_keys").write_text(f'restrict,command="{dial}" {public}\n')
    for _ in range(5):  # a port picked free may be taken before sshd binds it
        port = free_port()
        process = _sshd(directory, port, host_key)
        if _listening(port, process):
            access = SshAccess(directory, port, process, getpass.getuser())
            host_public = host_key.with_suffix(".pub").read_text().split()
            access.known_hosts.write_text(f"[127.0.0.1]:{port} {host_public[0]} {host_public[1]}\n")
            return access
        _stop_sshd(process)
    raise EngineError(f"sshd did not listen on 127.0.0.1: {(directory / 'sshd.log').read_text(errors='replace')}")


def _keygen(path: Path, comment: str) -> None:
    result = subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(path)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    if result.returncode != 0:
        raise EngineError(f"ssh-keygen for {path} failed: {result.stderr}")


def _sshd(directory: Path, port: int, host_key: Path) -> subprocess.Popen[bytes]:
    config = directory / "sshd_config"
    config.write_text(
        "\n".join(
            [
                f"Port {port}",
                "ListenAddress 127.0.0.1",
                f"HostKey {host_key}",
                f"PidFile {directory / 'sshd.pid'}",
                f"AuthorizedKeysFile {directory / 'authorized_keys'}",
                "PermitRootLogin prohibit-password",
                "PasswordAuthentication no",
                "KbdInteractiveAuthentication no",
                "UsePAM no",
                "StrictModes no",  # the bed lives under /tmp, which is world-writable
                "AllowTcpForwarding no",
                "X11Forwarding no",
                "PrintMotd no",
                "",
            ]
        )
    )
    with open(directory / "sshd.log", "ab") as log:
        return subprocess.Popen(
            [str(SSHD), "-D", "-e", "-f", str(config)],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            start_new_session=True,
        )


def _listening(port: int, process: subprocess.Popen[bytes]) -> bool:
    deadline = time.monotonic() + START_SECONDS
    while time.monotonic() < deadline and process.poll() is None:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
        time.sleep(0.05)
    return False


def stop_ssh_access(access: SshAccess) -> None:
    _stop_sshd(access.process)


def _stop_sshd(process: subprocess.Popen[bytes]) -> None:
    # The listener only: sessions it forked end when their connections close.
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
