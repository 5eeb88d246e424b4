"""Several server hosts as one service: two `inferserver serve --workers 2` standing for two hosts, one PostgreSQL,
one shared session directory, behind the shipped NGINX site with both as upstreams.

The session directory is a plain directory both servers use: this machine's kernel has neither the `nfs` nor the
`nfsd` filesystem (see /proc/filesystems) and loads no modules, so a loopback NFS mount cannot be made here.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
import requests

from inferserver.scheduling.leadership import LOCK_RETRY, TAKEOVER_GRACE

from .conftest import (
    SESSION_LABEL,
    QuietRemote,
    Server,
    containers_removed,
    leftover_containers,
    serve_command,
    start_server,
    stop_and_check,
    stop_server,
    stream_log,
    write_nifti,
)
from .postgres import USER, Postgres
from .test_deploy_nginx import Nginx, start_nginx, stop_nginx

OCTET = {"Content-Type": "application/octet-stream"}
LEADS = re.compile(r"this process dispatches runs \(pid (\d+)\)")
STOPS = re.compile(r"this process stops dispatching: .* \(pid (\d+)\)")
HOST_SETTINGS = {"WORKER_THREADS": "4"}
FEEDS = (
    "SELECT {what} FROM pg_stat_activity WHERE application_name = 'inferserver-changes' "
    "AND datname = current_database()"
)
LOCK_HOLDER = (
    "SELECT a.pid, a.client_port FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid "
    "WHERE l.locktype = 'advisory' AND l.granted AND a.application_name = 'inferserver-dispatch-lock' "
    "AND a.datname = current_database()"  # pg_locks is the whole cluster's; other tests have databases of their own
)


@dataclass
class Hosts:
    pg: Postgres
    database_url: str
    session_path: Path
    servers: list[Server]
    nginx: Nginx
    tmp: Path
    extra: list[Server] = field(default_factory=list)

    def psql(self, sql: str) -> list[list[str]]:
        return psql(self.pg, self.database_url, sql)


def psql(pg: Postgres, database_url: str, sql: str) -> list[list[str]]:
    database = database_url.rsplit("/", 1)[1]
    result = pg.run("psql", "-h", str(pg.root), "-p", str(pg.port), "-U", USER, "-d", database, "-Atc", sql)
    assert result.returncode == 0, result.stderr
    return [line.split("|") for line in result.stdout.splitlines()]


def start_host(tmp: Path, name: str, session_path: Path, database_url: str, workers: int = 2) -> Server:
    return start_server(
        tmp / name,
        session_path=session_path,
        command=serve_command(workers),
        DATABASE_URL=database_url,
        **HOST_SETTINGS,
    )


def port_of(server: Server) -> int:
    return int(server.url.rsplit(":", 1)[1])


@pytest.fixture(scope="module")
def hosts(postgres: Postgres, tmp_path_factory: pytest.TempPathFactory, fixture_images: None) -> Iterator[Hosts]:
    tmp = tmp_path_factory.mktemp("two-hosts")
    database_url = postgres.create_database()
    shared = tmp / "shared"
    servers = [start_host(tmp, name, shared, database_url) for name in ("host1", "host2")]
    nginx = start_nginx(tmp / "nginx", port_of(servers[0]), shared, also=(port_of(servers[1]),))
    found = Hosts(postgres, database_url, shared, servers, nginx, tmp)
    yield found
    stop_nginx(nginx)
    stop_and_check(found.servers + found.extra)


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def leading_pids(server: Server) -> set[int]:
    """Worker pids of this server that said they dispatch and have not said they stopped (and live)."""
    leading: set[int] = set()
    for line in server.output().splitlines():
        if found := LEADS.search(line):
            leading.add(int(found.group(1)))
        elif found := STOPS.search(line):
            leading.discard(int(found.group(1)))
    return {pid for pid in leading if alive(pid) and server.process.poll() is None}


def the_leader(servers: list[Server], timeout: float = 30) -> tuple[Server, int]:
    """The one server process that dispatches; fails when there is none or more than one for `timeout` s."""
    deadline = time.monotonic() + timeout
    while True:
        found = [(server, pid) for server in servers for pid in leading_pids(server)]
        if len(found) == 1:
            return found[0]
        if time.monotonic() > deadline:
            raise AssertionError(f"not exactly one dispatcher after {timeout} s: {found}")
        time.sleep(0.1)


def children(pid: int) -> list[int]:
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            kids = [int(p) for p in (task / "children").read_text().split()]
        except OSError:
            continue
        for kid in kids:
            found += [kid, *children(kid)]
    return found


def kill_host(server: Server) -> None:
    """kill -9 of every process of the server (its supervisor and workers), as when its host dies."""
    pids = [server.process.pid, *children(server.process.pid)]
    for pid in pids:
        os.kill(pid, signal.SIGKILL)
    server.process.wait()


class StartCounter:
    """Container starts per session, from the engine's own event stream (a run started twice shows here)."""

    def __init__(self) -> None:
        self.process = subprocess.Popen(
            [
                "docker",
                "events",
                "--filter",
                f"label={SESSION_LABEL}",
                "--filter",
                "event=start",
                "--format",
                f'{{{{index .Actor.Attributes "{SESSION_LABEL}"}}}}',
            ],
            stdout=subprocess.PIPE,
            text=True,
        )
        self.starts: Counter[str] = Counter()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.starts[line.strip()] += 1

    def stop(self) -> Counter[str]:
        time.sleep(1)  # events of the last starts are delivered
        self.process.terminate()
        self.process.wait()
        self._reader.join(5)
        return self.starts


class ReconnectingRemote(QuietRemote):
    """ablinfer 1.2.3 gives up when its log stream breaks. Through a service with several hosts the stream of a
    host that died breaks; this client opens it again (through NGINX, which then picks a live host)."""

    def __init__(self, config: dict) -> None:
        super().__init__(config)
        self.reconnects = 0

    def _run_command(self, cmd: object) -> None:
        for _ in range(10):
            try:
                super()._run_command(cmd)
                return
            except requests.exceptions.RequestException:
                self.reconnects += 1
                time.sleep(0.5)
        raise AssertionError("the log stream broke 10 times")


def sleep_config(source: Path, dest: Path, seconds: int) -> dict:
    return {
        "inputs": {"input_vol": {"enabled": True, "value": str(source)}},
        "params": {"seconds": {"value": seconds}},
        "outputs": {"output_vol": {"enabled": True, "value": str(dest)}},
    }


def status_on(server: Server, session_id: str) -> str:
    with server.client() as client:
        return str(client.get(f"/sessions/{session_id}").json()["data"]["status"])


def read_stream(url: str, session_id: str) -> bytes:
    with (
        httpx.Client(base_url=url, timeout=120) as client,
        client.stream("GET", f"/sessions/{session_id}/logs") as response,
    ):
        assert response.status_code == 200, response.read()
        return b"".join(response.iter_raw())


def log_lines(stream: bytes) -> list[bytes]:
    """The run's lines of a log stream: without keep-alive lines and the queue's "Waiting, position..." lines."""
    return [line for line in stream.split(b"\n") if line and line != b"\0" and not line.startswith(b"Waiting, ")]


def test_a_standby_host_says_so_on_readyz(hosts: Hosts) -> None:
    leader, _ = the_leader(hosts.servers)
    standby = next(server for server in hosts.servers if server is not leader)
    with standby.client() as client:
        answers = [client.get("/readyz") for _ in range(8)]
    assert [a.status_code for a in answers] == [200] * 8
    assert {a.json()["data"]["dispatch"] for a in answers} == {"standby"}


def test_a_change_on_one_host_is_seen_on_the_other_within_a_second(hosts: Hosts) -> None:
    one, two = hosts.servers
    seen_after: list[float] = []
    with one.client() as client_one, two.client() as client_two:
        for _ in range(5):
            sid = client_one.post("/models/sleep", json={}).json()["data"]["session_id"]
            for _ in range(3):  # host 2's answer is cached now
                assert client_two.get(f"/sessions/{sid}").json()["data"]["status"] == "waiting"
            changed = time.monotonic()
            assert client_one.delete(f"/sessions/{sid}").status_code == 200
            while client_two.get(f"/sessions/{sid}").json()["data"]["status"] != "failed":
                assert time.monotonic() - changed < 1.0, "host 2 still answers `waiting` a second after the cancel"
                time.sleep(0.005)
            seen_after.append(time.monotonic() - changed)
    print(f"change seen on the other host after {[round(s * 1000, 1) for s in seen_after]} ms")


def test_status_answers_are_fresh_while_change_announcements_are_cut(hosts: Hosts) -> None:
    """With the LISTEN connections terminated, no host may answer from its cache until they are back."""
    one, two = hosts.servers
    with one.client() as client_one, two.client() as client_two:
        sid = client_one.post("/models/sleep", json={}).json()["data"]["session_id"]
        assert client_two.get(f"/sessions/{sid}").json()["data"]["status"] == "waiting"
        cut = hosts.psql(FEEDS.format(what="pg_terminate_backend(pid)"))
        assert len(cut) == 4, cut  # one per worker process, two per host
        assert client_one.delete(f"/sessions/{sid}").status_code == 200
        # At once, not after a reconnect: every worker of host 2 reads the database while it hears nothing.
        assert [client_two.get(f"/sessions/{sid}").json()["data"]["status"] for _ in range(6)] == ["failed"] * 6
    deadline = time.monotonic() + 10
    feeds = FEEDS.format(what="pid")
    while len(hosts.psql(feeds)) < 4:
        assert time.monotonic() < deadline, "the change feeds did not reconnect within 10 s"
        time.sleep(0.1)
    assert "no change announcements from PostgreSQL" in one.output() + two.output()


def test_a_session_made_on_one_host_takes_its_input_on_a_second_and_gives_its_output_on_a_third(
    hosts: Hosts, tmp_path: Path
) -> None:
    third = start_host(hosts.tmp, "host3", hosts.session_path, hosts.database_url, workers=1)
    hosts.extra.append(third)
    one, two = hosts.servers
    source = write_nifti(tmp_path / "in.nii.gz", 0.05, seed=7)
    with one.client() as client:
        sid = client.post("/models/sleep", json={"params": {"seconds": {"value": 0}}}).json()["data"]["session_id"]
    with two.client() as client, source.open("rb") as stream:
        upload = client.put(
            f"/sessions/{sid}/inputs/input_vol", content=stream, headers={"Content-Type": "application/octet-stream"}
        )
    assert upload.status_code == 200, upload.text
    assert third.wait_status(sid, {"complete", "failed"})["status"] == "complete"
    with third.client() as client:
        output = client.get(f"/sessions/{sid}/outputs/output_vol")
    assert output.status_code == 200 and output.content == source.read_bytes()
    stop_server(third)


def test_a_log_reader_on_another_host_follows_the_log_as_it_grows(hosts: Hosts, tmp_path: Path) -> None:
    """Each line reaches a reader on the standby host within a second of a reader on the host that runs it."""
    leader, _ = the_leader(hosts.servers)
    standby = next(server for server in hosts.servers if server is not leader)
    source = write_nifti(tmp_path / "in.nii.gz", 0.05)
    body = {"params": {"count": {"value": 8}, "delay": {"value": 0.5}}}
    with leader.client() as client:
        sid = client.post("/models/lines", json=body).json()["data"]["session_id"]
        with source.open("rb") as stream:
            client.put(f"/sessions/{sid}/inputs/input_vol", content=stream, headers=OCTET).raise_for_status()
    # Opened as the run starts (a waiting session has no log to follow); each reads the file from its start.
    with ThreadPoolExecutor(2) as readers:
        near, far = (readers.submit(stream_log, server.url, sid) for server in (leader, standby))
        near_lines, far_lines = near.result(60)[1], far.result(60)[1]

    def arrivals(lines: list[tuple[float, bytes]]) -> dict[bytes, float]:
        return {line: at for at, line in lines if line.startswith(b"line ")}

    near_at, far_at = arrivals(near_lines), arrivals(far_lines)
    assert list(far_at) == list(near_at) == [f"line {n}".encode() for n in range(1, 9)]
    lags = [far_at[line] - near_at[line] for line in near_at]
    assert max(lags) < 1.0, lags
    print(f"the other host's reader lagged {[round(lag * 1000) for lag in lags]} ms")


def test_hosts_with_lock_files_of_their_own_still_have_one_dispatcher(
    postgres: Postgres, tmp_path: Path, fixture_images: None
) -> None:
    """Each host its own SESSION_PATH (so its own flock file), one database: PostgreSQL alone keeps them apart."""
    database_url = postgres.create_database()
    servers = [start_host(tmp_path, name, tmp_path / name / "own", database_url, workers=1) for name in ("a", "b")]
    try:
        the_leader(servers)
        time.sleep(LOCK_RETRY + TAKEOVER_GRACE + 1)  # a second one would have said so by now
        leader, _ = the_leader(servers, timeout=0)
        roles = {}
        for server in servers:
            with server.client() as client:
                roles[server.url] = client.get("/readyz").json()["data"]["dispatch"]
        standby = next(server for server in servers if server is not leader)
        assert roles == {leader.url: "dispatcher", standby.url: "standby"}
        assert not [p for server in servers for p in server.session_path.glob(".dispatch.lock")]
    finally:
        stop_and_check(servers)


def lock_holder(pg: Postgres, database_url: str) -> tuple[int, int]:
    """The backend pid and client port of the dispatch lock's connection."""
    rows = psql(pg, database_url, LOCK_HOLDER)
    assert len(rows) == 1, rows
    return int(rows[0][0]), int(rows[0][1])


def iptables(action: str, port: int) -> None:
    """Drop (-I) or stop dropping (-D) every packet to and from a local TCP port: a peer gone without a FIN."""
    binary = shutil.which("iptables")
    if binary is None:
        pytest.fail("iptables is missing: scripts/setup.sh installs Debian's iptables (the test drops packets)")
    for side in ("--sport", "--dport"):
        subprocess.run([binary, action, "INPUT", "-i", "lo", "-p", "tcp", side, str(port), "-j", "DROP"], check=True)


def test_a_standby_takes_over_within_30_s_when_the_leaders_host_vanishes(
    postgres: Postgres, tmp_path: Path, fixture_images: None
) -> None:
    """The leader's processes stopped (SIGSTOP) and its lock connection's packets dropped: no FIN, no RST, the
    kernel acknowledges nothing. PostgreSQL's keepalives end the session; the standby takes the lock. The old
    leader, woken again, starts nothing and gives up."""
    database_url = postgres.create_database()
    shared = tmp_path / "shared"
    servers = [start_host(tmp_path, name, shared, database_url, workers=1) for name in ("a", "b")]
    stopped: list[int] = []
    dropped: int | None = None
    try:
        leader, _ = the_leader(servers)
        standby = next(server for server in servers if server is not leader)
        old_backend, port = lock_holder(postgres, database_url)
        stopped = [leader.process.pid, *children(leader.process.pid)]
        iptables("-I", port)
        dropped = port
        for pid in stopped:
            os.kill(pid, signal.SIGSTOP)
        vanished = time.monotonic()
        the_leader([standby], timeout=30)
        took_over = time.monotonic() - vanished
        # The old leader wakes up still holding (as far as it knows) the lock: it must stop, not dispatch.
        for pid in stopped:
            os.kill(pid, signal.SIGCONT)
        deadline = time.monotonic() + 10
        while not STOPS.search(leader.output()):
            assert time.monotonic() < deadline, "the old leader did not stop dispatching within 10 s of waking"
            time.sleep(0.1)
        assert lock_holder(postgres, database_url)[0] != old_backend  # the vanished session's lock is gone
        assert [server for server in servers if leading_pids(server)] == [standby]
    finally:
        for pid in stopped:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)
        if dropped is not None:
            iptables("-D", dropped)
        stop_and_check(servers)
    print(f"standby took over {took_over:.1f} s after the leader's host vanished")


@pytest.fixture
def starts() -> Iterator[StartCounter]:
    counter = StartCounter()
    yield counter
    if counter.process.poll() is None:  # the test failed before it counted
        counter.process.kill()
        counter.process.wait()


def test_twelve_runs_survive_the_leaders_kill_and_the_next_leaders_lost_connection(
    hosts: Hosts, tmp_path: Path, starts: StartCounter
) -> None:
    leader, _ = the_leader(hosts.servers)
    survivor = next(server for server in hosts.servers if server is not leader)
    remotes = [ReconnectingRemote({"base_url": hosts.nginx.url}) for _ in range(12)]
    sources = [write_nifti(tmp_path / f"in{n}.nii.gz", 0.05, seed=n) for n in range(12)]
    outputs = [tmp_path / f"out{n}.nii.gz" for n in range(12)]

    def run(n: int) -> None:
        model = remotes[n].get_model("sleep")
        remotes[n].run(model, sleep_config(sources[n], outputs[n], 5), progress=lambda *_: None)

    with ThreadPoolExecutor(12) as clients, ThreadPoolExecutor(12) as readers:
        runs = [clients.submit(run, n) for n in range(12)]
        deadline = time.monotonic() + 60
        while any(r.remote_session is None for r in remotes) and time.monotonic() < deadline:
            time.sleep(0.05)
        sessions = [str(r.remote_session) for r in remotes]
        # Every input is in (an upload cut by a dying host is the client's to repeat; not what this tests)...
        while {status_on(survivor, sid) for sid in sessions} & {"waiting"} and time.monotonic() < deadline:
            time.sleep(0.1)
        # ...and the surviving host has a log stream open for each session.
        streams: list[Future[bytes]] = [readers.submit(read_stream, survivor.url, sid) for sid in sessions]
        while "working" not in {status_on(survivor, sid) for sid in sessions}:
            assert time.monotonic() < deadline, "no run started within 60 s"
            time.sleep(0.1)
        time.sleep(1)  # mid-run
        kill_host(leader)
        killed = time.monotonic()
        the_leader([survivor], timeout=30)
        took_over = time.monotonic() - killed
        assert took_over < 10, f"the standby took over {took_over:.1f} s after the leader's kill -9"
        time.sleep(4)
        cut = hosts.psql(f"SELECT pg_terminate_backend(pid) FROM ({LOCK_HOLDER}) AS holder")
        assert cut == [["t"]], cut
        for result in runs:
            result.result(timeout=240)
        logs = [stream.result(timeout=60) for stream in streams]

    assert [o.read_bytes() == s.read_bytes() for o, s in zip(outputs, sources, strict=True)] == [True] * 12
    for sid, stream in zip(sessions, logs, strict=True):
        whole = (hosts.session_path / sid / "log").read_bytes()
        assert log_lines(stream) == log_lines(whole), sid
        assert log_lines(whole)[-1] == b"done", whole
    counted = starts.stop()
    assert {sid: counted[sid] for sid in sessions} == dict.fromkeys(sessions, 1)
    assert STOPS.search(survivor.output()), "the leader whose lock connection was cut did not stop dispatching"
    print(f"took over {took_over:.2f} s after kill -9; clients reconnected {sum(r.reconnects for r in remotes)} times")
    hosts.servers.remove(leader)  # killed: nothing to stop
    assert containers_removed(lambda: leftover_containers(survivor)) == []
