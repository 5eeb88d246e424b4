"""A bed of private Docker engines serving the Engine API over TLS, for the tests of a pool of GPU hosts.

Each engine is a private dockerd (tests/integration/gpu_engine.py: its own data root, exec root, pid file, a fake
`nvidia-container-runtime-hook`, network and mount namespaces of its own) that also listens with its own
`--tlsverify` on 127.0.0.1:2376 inside its network namespace, with a server certificate from the bed's CA. Two
socat processes carry the bytes to the host's loopback: one in the engine's namespace from a unix socket to that
port, one on the host from 127.0.0.1:PORT to the unix socket. They only copy bytes: the TLS handshake, client
certificate check included, is dockerd's own. The daemon runs with `--live-restore`, so a `kill9()` leaves its
containerd and containers running and a `restart()` finds them again, as on a real GPU host whose dockerd
crashed; socat stays, so the engine's URL never changes.

Each engine's unix socket stays plain, for the bed's own control (`containers()`, loading images); the server
under test is given only `entry()`: the `ENGINES` entry of issue 13 (`name`, `url`, `tls_ca`, `tls_cert`,
`tls_key`, `gpus`).

The bed is session-scoped (`engine_bed`, registered in tests/integration/conftest.py): its engines start once
and the fixture images are saved from the system engine once and loaded into each engine.
"""

from __future__ import annotations

import contextlib
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from .certs import Authority, CertificateError, KeyPair, make_authority
from .conftest import SESSION_LABEL, containers_removed, free_port
from .gpu_engine import (
    Engine,
    EngineError,
    launch_engine,
    load_images,
    mounts_under,
    restart_engine,
    stop_engine,
    wait_until_up,
)
from .ssh_access import SshAccess, start_ssh_access, stop_ssh_access

ENGINE_COUNT = 3
GPUS = ("0", "1")  # what each engine's fake hook stands in for
TLS_PORT = 2376  # dockerd's TLS listener, inside each engine's own network namespace
BED_IMAGES = [
    "inferserver-test/sleep:1",
    "inferserver-test/copy:1",
    "inferserver-test/gpuwork:1",
    "inferserver-test/record:1",
    "inferserver-test/lines:1",
    "inferserver-test/fail:1",
]
FORWARD_SECONDS = 10


@dataclass
class BedEngine:
    name: str
    engine: Engine
    port: int
    ca: Path
    client: KeyPair
    gpus: tuple[str, ...] = GPUS
    forwarders: list[subprocess.Popen[bytes]] = field(default_factory=list)
    # The bed's first engine is also reachable over SSH (tests/integration/ssh_access.py).
    ssh: SshAccess | None = None

    @property
    def url(self) -> str:
        return f"tcp://127.0.0.1:{self.port}"

    @property
    def tls_ca(self) -> str:
        return str(self.ca)

    @property
    def tls_cert(self) -> str:
        return str(self.client.cert)

    @property
    def tls_key(self) -> str:
        return str(self.client.key)

    def entry(self, **overrides: Any) -> dict[str, Any]:
        """This engine as an `ENGINES` entry (issue 13); `overrides` replace or add fields."""
        entry: dict[str, Any] = {
            "name": self.name,
            "url": self.url,
            "tls_ca": self.tls_ca,
            "tls_cert": self.tls_cert,
            "tls_key": self.tls_key,
            "gpus": list(self.gpus),
        }
        return {**entry, **overrides}

    def ssh_entry(self, **overrides: Any) -> dict[str, Any]:
        """This engine as an `ENGINES` entry reached over SSH: the server needs HOME=`self.ssh.home` (its key
        and known_hosts)."""
        if self.ssh is None:
            raise EngineError(f"engine {self.name} has no SSH access; the bed's first engine has")
        return {"name": self.name, "url": self.ssh.url, "gpus": list(self.gpus), **overrides}

    def ssl_context(self, client: KeyPair | None = None, *, with_client: bool = True) -> ssl.SSLContext:
        """What a client of this engine uses: the bed's CA, and `client` (default: the right one) as its
        certificate unless `with_client` is false."""
        context = ssl.create_default_context(cafile=self.tls_ca)
        if with_client:
            pair = client or self.client
            context.load_cert_chain(pair.cert, pair.key)
        return context

    def is_up(self) -> bool:
        return self.engine.process.poll() is None

    def kill9(self) -> None:
        """`kill -9` the daemon alone: its containerd and containers keep running (a crashed dockerd)."""
        with contextlib.suppress(ProcessLookupError):
            self.engine.process.send_signal(signal.SIGKILL)
        self.engine.process.wait()

    def restart(self) -> None:
        """Start the daemon again on the same data root; it takes back the containers still running."""
        if self.is_up():
            raise EngineError(f"engine {self.name} is still running; kill9() it first")
        restart_engine(self.engine)

    def containers(self, *, running_only: bool = False) -> list[str]:
        """Ids of the containers on this engine (running and exited unless `running_only`), over its control
        socket."""
        args = ["ps", "-q", "--no-trunc"] if running_only else ["ps", "-aq", "--no-trunc"]
        result = self.engine.docker(*args)
        if result.returncode != 0:
            raise EngineError(f"docker ps on engine {self.name} failed: {result.stderr.decode(errors='replace')}")
        return result.stdout.decode().split()

    def session_containers(self) -> dict[str, str]:
        """{container id: its org.inferserver.session label} for the containers the server made here."""
        result = self.engine.docker(
            "ps", "-a", "--no-trunc", "--filter", f"label={SESSION_LABEL}",
            "--format", f'{{{{.ID}}}} {{{{.Label "{SESSION_LABEL}"}}}}',
        )  # fmt: skip
        pairs = (line.split(" ", 1) for line in result.stdout.decode().splitlines() if line)
        return {pair[0]: pair[1] if len(pair) > 1 else "" for pair in pairs}

    def log_tail(self, lines: int = 40) -> str:
        return self.engine.log_tail(lines)


@dataclass
class EngineBed:
    root: Path
    authority: Authority
    engines: list[BedEngine]
    # A client certificate from another CA: no engine accepts it.
    wrong_client: KeyPair

    def entries(self, **overrides: Any) -> list[dict[str, Any]]:
        return [engine.entry(**overrides) for engine in self.engines]

    def engine(self, name: str) -> BedEngine:
        for engine in self.engines:
            if engine.name == name:
                return engine
        raise KeyError(name)

    def revive(self) -> None:
        """Restart any engine a test left killed, so the next test finds the whole bed up."""
        for engine in self.engines:
            if not engine.is_up():
                engine.restart()

    def leftovers(self) -> dict[str, list[str]]:
        """{engine name: container ids} for every engine that holds any container."""
        return {engine.name: ids for engine in self.engines if (ids := engine.containers())}


def start_bed(images: list[str], count: int = ENGINE_COUNT) -> EngineBed:
    root = Path(tempfile.mkdtemp(prefix="enginebed-", dir="/tmp"))
    root.chmod(0o700)
    authority = make_authority(root / "ca", "inferserver test bed CA")
    client = authority.issue_client(root / "client", "inferserver")
    stranger = make_authority(root / "stranger-ca", "a CA no engine trusts")
    bed = EngineBed(root, authority, [], stranger.issue_client(root / "stranger", "intruder"))
    try:
        for index in range(1, count + 1):
            name = f"gpu{index}"
            server = authority.issue_server(root / name, name)
            daemon_args = (
                "-H", f"tcp://127.0.0.1:{TLS_PORT}", "--tlsverify", "--tlscacert", str(authority.cert),
                "--tlscert", str(server.cert), "--tlskey", str(server.key), "--live-restore",
            )  # fmt: skip
            # Launched one after the other, waited for together: the daemons start side by side.
            bed.engines.append(BedEngine(name, launch_engine(daemon_args), 0, authority.cert, client))
        for engine in bed.engines:
            wait_until_up(engine.engine)
            load_images(engine.engine, images)
            _forward(engine)
        first = bed.engines[0]
        first.ssh = start_ssh_access(root / "ssh", first.engine.socket)
    except BaseException:
        stop_bed(bed)
        raise
    return bed


def _forward(engine: BedEngine) -> None:
    """Carry 127.0.0.1:PORT on the host to dockerd's TLS port in the engine's network namespace."""
    inside = engine.engine.root / "tls.sock"
    holder = engine.engine.holder.pid
    inner = ["nsenter", f"--target={holder}", "--net", "--", "socat"]
    inner += [f"UNIX-LISTEN:{inside},fork,unlink-early,mode=600", f"TCP:127.0.0.1:{TLS_PORT}"]
    engine.forwarders.append(_socat(engine, "inner", *inner))
    for _ in range(5):  # a port picked free may be taken before socat binds it
        engine.port = free_port()
        outer = _socat(
            engine, "outer", "socat", f"TCP-LISTEN:{engine.port},bind=127.0.0.1,reuseaddr,fork",
            f"UNIX-CONNECT:{inside}",
        )  # fmt: skip
        if _listening(engine.port, outer, inside):
            engine.forwarders.append(outer)
            return
        _stop(outer)
    raise EngineError(f"socat could not listen on 127.0.0.1 for engine {engine.name}: {_socat_log(engine)}")


def _socat(engine: BedEngine, which: str, *command: str) -> subprocess.Popen[bytes]:
    with open(engine.engine.root / f"socat-{which}.log", "ab") as log:
        try:
            return subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True)
        except FileNotFoundError:
            raise EngineError("socat is not installed: run scripts/setup.sh test (Debian's socat)") from None


def _listening(port: int, process: subprocess.Popen[bytes], inside: Path) -> bool:
    deadline = time.monotonic() + FORWARD_SECONDS
    while time.monotonic() < deadline and process.poll() is None:
        if inside.exists():
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
                return True
        time.sleep(0.05)
    return False


def _socat_log(engine: BedEngine) -> str:
    return " / ".join(
        path.read_text(errors="replace").strip() for path in sorted(engine.engine.root.glob("socat-*.log"))
    )


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def stop_bed(bed: EngineBed) -> None:
    """Stop every forwarder and engine (removing their containers) and remove the bed's directory."""
    try:
        for engine in bed.engines:
            if engine.ssh is not None:
                stop_ssh_access(engine.ssh)
            for forwarder in engine.forwarders:
                _stop(forwarder)
            if not engine.is_up():
                # Started again so that it removes what it still holds (live-restore kept its containers).
                with contextlib.suppress(EngineError):
                    engine.restart()
            stop_engine(engine.engine)
    finally:
        shutil.rmtree(bed.root, ignore_errors=True)


def whole_bed() -> Iterator[EngineBed]:
    """The `engine_bed` fixture's body: start the bed, and after the session prove nothing was left behind."""
    try:
        bed = start_bed(BED_IMAGES)
    except (EngineError, CertificateError) as exc:
        pytest.fail(f"the engine test bed did not start: {exc}")
    try:
        yield bed
    finally:
        bed.revive()
        left = bed.leftovers()
        roots = [engine.engine.root for engine in bed.engines]
        stop_bed(bed)
        assert not left, f"containers left behind on the engine bed: {left}"
        for root in [*roots, bed.root]:
            assert not mounts_under(root), f"mounts left under {root}: {mounts_under(root)}"
            assert not root.exists(), f"{root} was not removed"


def bed_for_a_test(bed: EngineBed) -> Iterator[EngineBed]:
    """The `bed` fixture's body: every engine up before and after; no container left on any engine."""
    bed.revive()
    yield bed
    bed.revive()
    for engine in bed.engines:
        left = containers_removed(engine.containers)
        assert not left, f"containers left behind on engine {engine.name}: {left}"
