"""A throwaway PostgreSQL server from Debian's packages, for running the server on DATABASE_URL=postgresql.

One cluster per test session, initdb'd into a temporary directory owned by the `postgres` user (initdb and
the server refuse to run as root), listening on a free loopback port with its unix socket in that directory,
so it never meets the machine's own clusters. Each inferserver gets a fresh database of its own: servers
never see each other's sessions.
"""

from __future__ import annotations

import itertools
import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from .conftest import free_port

DEBIAN_BINARIES = Path("/usr/lib/postgresql")  # postgresql-NN puts its programs in NN/bin, off PATH
USER = "postgres"
START_SECONDS = 30
# A test cluster loses nothing worth keeping in a crash: skip the fsyncs that make start-up and commits slow.
SERVER_OPTIONS = "-c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=200"


def binaries() -> Path:
    """The newest installed PostgreSQL's bin directory; fails the test run when there is none."""
    found = [d for d in DEBIAN_BINARIES.glob("*/bin") if (d / "initdb").is_file() and (d / "pg_ctl").is_file()]
    if not found:
        pytest.fail(
            f"PostgreSQL is not installed (no {DEBIAN_BINARIES}/*/bin/initdb): run scripts/setup.sh, "
            "which installs Debian's postgresql"
        )
    return max(found, key=lambda d: [int(p) for p in re.findall(r"\d+", d.parent.name)] or [0])


@dataclass
class Postgres:
    bin_dir: Path
    root: Path
    port: int
    _names: Iterator[int]

    @property
    def data(self) -> Path:
        return self.root / "data"

    def run(self, program: str, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["runuser", "-u", USER, "--", str(self.bin_dir / program), *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            cwd=self.root,
        )

    def create_database(self) -> str:
        """A new empty database; its SQLAlchemy async URL."""
        name = f"inferserver_{next(self._names)}"
        result = self.run("createdb", "-h", str(self.root), "-p", str(self.port), "-U", USER, name)
        if result.returncode != 0:
            raise AssertionError(f"createdb {name} failed: {result.stderr}")
        return f"postgresql+asyncpg://{USER}@127.0.0.1:{self.port}/{name}"

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join((self.root / "server.log").read_text(errors="replace").splitlines()[-lines:])
        except OSError as exc:
            return f"(no server log: {exc})"


def start_postgres() -> Postgres:
    bin_dir = binaries()
    if shutil.which("runuser") is None:
        pytest.fail("runuser is missing (Debian's util-linux): it runs PostgreSQL as the postgres user")
    # Not under pytest's tmp dir: that is root's and closed to the postgres user.
    root = Path(tempfile.mkdtemp(prefix="inferserver-pg-", dir="/tmp"))
    shutil.chown(root, USER, USER)
    pg = Postgres(bin_dir, root, free_port(), itertools.count(1))
    try:
        init = pg.run("initdb", "-D", str(pg.data), "-A", "trust", "-U", USER, "-E", "UTF8", "--no-sync")
        if init.returncode != 0:
            raise AssertionError(f"initdb failed:\n{init.stdout}\n{init.stderr}")
        options = f"-p {pg.port} -k {root} -c listen_addresses=127.0.0.1 {SERVER_OPTIONS}"
        started = pg.run(
            "pg_ctl",
            "-D",
            str(pg.data),
            "-l",
            str(root / "server.log"),
            "-w",
            "-t",
            str(START_SECONDS),
            "-o",
            options,
            "start",
            timeout=START_SECONDS + 10,
        )
        if started.returncode != 0:
            raise AssertionError(f"PostgreSQL did not start: {started.stdout}{started.stderr}\n{pg.log_tail()}")
    except BaseException:
        stop_postgres(pg)
        raise
    return pg


def stop_postgres(pg: Postgres) -> None:
    if (pg.data / "postmaster.pid").exists():
        pg.run("pg_ctl", "-D", str(pg.data), "-m", "fast", "-w", "stop")
    shutil.rmtree(pg.root, ignore_errors=True)
