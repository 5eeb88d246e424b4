"""A bed of private Docker engines serving the Engine API over TLS, for the tests of a pool of GPU hosts.

Each engine is a private dockerd (tests/integration/gpu_engine.py: its own data root, exec root, pid file, a fake
`nvidia-container-runtime-hook`, network and mount namespaces of its own) that also listens with its own
`--tlsverify` on 127.0.0.1:2376 inside its network namespace, with a server certificate from the bed's CA. Two
socat processes carry the bytes to the host's loopback: one in the engine's namespace from a unix socket to that
port, one on the host from 127.0.0.1:PORT to the unix socket. They only copy bytes: the TLS handshake, client
certificate check included, is dockerd's own. The daemon's TLS settings and `live-restore` are in its own
daemon.json, as docs/scale-out.md sets up a GPU host.

Faults: `kill9()` kills the daemon alone (its containers keep running in their shims) and closes its port;
`restart()` starts it again on the same data root and port and it takes its running containers back, as a GPU
host's dockerd that crashed and came back. `disconnect()` / `reconnect()` cut the port off and restore it while
the daemon runs on, as a host that drops off the network for a while.

Each engine's unix socket stays plain, for the bed's own control (`containers()`, loading images); the server
under test is given only `entry()`: the `ENGINES` entry of issue 13 (`name`, `url`, `tls_ca`, `tls_cert`,
`tls_key`, `gpus`).

The bed is session-scoped (`engine_bed`, registered in tests/integration/conftest.py): its engines start once
and the fixture images are saved from the system engine once and loaded into each engine.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
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

# How aiodocker reports an engine refusing the client certificate. Under TLS 1.3 the server checks it after the
# client has finished its handshake and sent its request: the engine's alert may arrive, or the connection may be
# reset first (a reset drops the unread alert), as it would be across a network. Under TLS 1.2 (`tls12`) the
# check is part of the handshake and the alert always arrives.
TLS13_REFUSAL = re.compile(r"SSLV3_ALERT_BAD_CERTIFICATE|Server disconnected|Connection reset by peer")


def tls12(context: ssl.SSLContext) -> ssl.SSLContext:
    """`context` limited to TLS 1.2, where a refused client certificate is always a handshake error."""
    context.maximum_version = ssl.TLSVersion.TLSv1_2
    return context


@dataclass
class BedEngine:
    name: str
    engine: Engine
    port: int
    ca: Path
    client: KeyPair
    gpus: tuple[str, ...] = GPUS
    # socat in the engine's network namespace, from a unix socket to dockerd's TLS port: `inner`; socat on the
    # host's loopback port to that unix socket: `outer`, None while the engine is cut off from the network.
    inner: subprocess.Popen[bytes] | None = None
    outer: subprocess.Popen[bytes] | None = None
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
        """`kill -9` the daemon alone: its containers keep running in their shims (a crashed dockerd). Its port
        refuses connections until `restart()`, as a host whose dockerd is gone does."""
        with contextlib.suppress(ProcessLookupError):
            self.engine.process.send_signal(signal.SIGKILL)
        self.engine.process.wait()
        self.disconnect()

    def restart(self) -> None:
        """Start the daemon again on the same data root and URL; it takes back the containers still running."""
        if self.is_up():
            raise EngineError(f"engine {self.name} is still running; kill9() it first")
        restart_engine(self.engine)
        self.reconnect()

    def disconnect(self) -> None:
        """Cut the engine off: its port refuses new connections and the open ones are closed, while the daemon
        and its containers go on (a host that dropped off the network)."""
        if self.outer is not None:
            _stop(self.outer)
            self.outer = None

    def reconnect(self) -> None:
        """Make the engine reachable again on the same URL after `disconnect()`."""
        if self.outer is None:
            self.outer = _listen(self, self.port)
            if self.outer is None:
                raise EngineError(f"socat could not listen on {self.url} again for engine {self.name}")

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
        """Restart any engine a test left killed and reconnect any it left cut off: the next test finds the whole
        bed up."""
        for engine in self.engines:
            if not engine.is_up():
                engine.restart()
            engine.reconnect()

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
            # Launched one after the other, waited for together: the daemons start side by side.
            bed.engines.append(launch_tls_engine(name, daemon_json(authority.cert, server), client))
        for engine in bed.engines:
            ready_tls_engine(engine, images)
        first = bed.engines[0]
        first.ssh = start_ssh_access(root / "ssh", first.engine.socket)
    except BaseException:
        stop_bed(bed)
        raise
    return bed


def launch_tls_engine(name: str, config: dict[str, Any], client: KeyPair) -> BedEngine:
    """Launch a private engine whose daemon.json is `config` (TLS settings, see `daemon_json`) with its TLS
    listener on the command line: what docs/scale-out.md has an operator do (Debian's unit already gives dockerd
    -H, which a "hosts" in daemon.json would clash with). `client` is what its users present."""
    launched = launch_engine(("-H", f"tcp://127.0.0.1:{TLS_PORT}"), config)
    return BedEngine(name, launched, 0, Path(config["tlscacert"]), client)


def ready_tls_engine(engine: BedEngine, images: list[str]) -> None:
    """Wait for a launched engine, load `images` into it and carry its TLS port to the host's loopback."""
    wait_until_up(engine.engine)
    load_images(engine.engine, images)
    _forward(engine)


def daemon_json(ca: Path, server: KeyPair) -> dict[str, object]:
    """A TLS engine's daemon.json, as docs/scale-out.md gives it."""
    return {
        "tlsverify": True,
        "tlscacert": str(ca),
        "tlscert": str(server.cert),
        "tlskey": str(server.key),
        "live-restore": True,
    }


def _forward(engine: BedEngine) -> None:
    """Carry 127.0.0.1:PORT on the host to dockerd's TLS port in the engine's network namespace."""
    inside = engine.engine.root / "tls.sock"
    holder = engine.engine.holder.pid
    inner = ["nsenter", f"--target={holder}", "--net", "--", "socat"]
    inner += [f"UNIX-LISTEN:{inside},fork,unlink-early,mode=600", f"TCP:127.0.0.1:{TLS_PORT}"]
    engine.inner = _socat(engine, "inner", *inner)
    for _ in range(5):  # a port picked free may be taken before socat binds it
        engine.port = free_port()
        engine.outer = _listen(engine, engine.port)
        if engine.outer is not None:
            return
    raise EngineError(f"socat could not listen on 127.0.0.1 for engine {engine.name}: {_socat_log(engine)}")


def _listen(engine: BedEngine, port: int) -> subprocess.Popen[bytes] | None:
    """socat from 127.0.0.1:`port` to the engine's inner unix socket, once it accepts; None if it cannot."""
    inside = engine.engine.root / "tls.sock"
    listen = f"TCP-LISTEN:{port},bind=127.0.0.1,reuseaddr,fork"
    outer = _socat(engine, "outer", "socat", listen, f"UNIX-CONNECT:{inside}")
    if _listening(port, outer, inside):
        return outer
    _stop(outer)
    return None


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
    """Stop a socat and the children it forked for open connections (its own process group)."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(5)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def stop_tls_engine(engine: BedEngine) -> None:
    """Stop its SSH access, forwarders and daemon (removing its containers and directory)."""
    if engine.ssh is not None:
        stop_ssh_access(engine.ssh)
    for forwarder in (engine.inner, engine.outer):
        if forwarder is not None:
            _stop(forwarder)
    engine.inner = engine.outer = None
    if not engine.is_up():
        # Started again so that it removes what it still holds (live-restore kept its containers).
        with contextlib.suppress(EngineError):
            restart_engine(engine.engine)
    stop_engine(engine.engine)


def stop_bed(bed: EngineBed) -> None:
    """Stop every forwarder and engine (removing their containers) and remove the bed's directory."""
    try:
        for engine in bed.engines:
            stop_tls_engine(engine)
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
    left = {engine.name: ids for engine in bed.engines if (ids := containers_removed(engine.containers))}
    for name, ids in left.items():
        bed.engine(name).engine.docker("rm", "-f", *ids)  # so that the next test starts clean
    assert not left, f"containers left behind on the engine bed: {left}"
