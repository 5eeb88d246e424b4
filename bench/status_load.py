"""Status polls under load: wrk against `GET /sessions/{sid}` of a waiting session, per worker count and load.

    .venv/bin/python -m bench.status_load [--workers 1,2] [--connections 50,200] [--seconds 10] [--repeats 1]
                                          [SETTING=VALUE ...]

Needs wrk (Debian's `wrk`). Each worker count gets its own server: gunicorn with the shipped
deploy/gunicorn.conf.py (as the systemd unit runs it) on a free loopback port, the test models and a fresh
session directory; SETTING=VALUE pairs become INFERSERVER_<SETTING> (e.g. MAX_CONCURRENT_REQUESTS=0 turns the
limiter off). wrk runs `-t2 -cN -dSs --latency` with its default 2 s timeout, so "timeouts" are requests that
waited over 2 s. Prints one line per run: req/s, p50, p99, max, timeouts and 503 answers.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

REPO = Path(__file__).resolve().parent.parent
MODELS = REPO / "tests" / "models"
CONFIG = REPO / "deploy" / "gunicorn.conf.py"
CREATE_COPY = {"inputs": {"input_vol": {"enabled": True}}, "params": {}, "outputs": {"output_vol": {"enabled": True}}}
LATENCY = re.compile(r"^\s+(50|99)%\s+([\d.]+)(us|ms|s)\s*$", re.M)
MAX = re.compile(r"^\s+Latency\s+\S+\s+\S+\s+([\d.]+)(us|ms|s)", re.M)
UNIT_MS = {"us": 1e-3, "ms": 1.0, "s": 1e3}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@contextmanager
def gunicorn(workers: int, settings: dict[str, str]) -> Iterator[str]:
    """A server with the shipped gunicorn config and `workers` workers; its URL."""
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="inferserver-statusload-", dir="/var/tmp") as tmp:
        env = {
            **os.environ,
            "INFERSERVER_WORKERS": str(workers),
            "INFERSERVER_MODEL_PATH": str(MODELS),
            "INFERSERVER_SESSION_PATH": str(Path(tmp) / "sessions"),
            **{f"INFERSERVER_{k}": v for k, v in settings.items()},
        }
        argv = [sys.executable, "-m", "gunicorn", "-c", str(CONFIG), "--bind", f"127.0.0.1:{port}"]
        argv.append("inferserver.app:app")
        with open(Path(tmp) / "server.log", "wb") as log:
            process = subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT)
        url = f"http://127.0.0.1:{port}"
        try:
            _wait_ready(url, process, Path(tmp) / "server.log")
            yield url
        finally:
            process.terminate()
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def _wait_ready(url: str, process: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"server exited with {process.returncode}:\n{log.read_text()[-3000:]}")
        try:
            if httpx.get(url + "/", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise SystemExit(f"server at {url} not ready within 60 s:\n{log.read_text()[-3000:]}")


def wrk(url: str, connections: int, seconds: int) -> dict[str, Any]:
    """One wrk run; its numbers, parsed."""
    done = subprocess.run(
        ["wrk", "-t2", f"-c{connections}", f"-d{seconds}s", "--latency", url],
        capture_output=True,
        text=True,
        timeout=seconds + 60,
        check=True,
    )
    out = done.stdout
    found = re.search(r"Requests/sec:\s+([\d.]+)", out)
    result: dict[str, Any] = {"rps": float(found.group(1)) if found else None}
    for pct, value, unit in LATENCY.findall(out):
        result[f"p{pct}_ms"] = float(value) * UNIT_MS[unit]
    if most := MAX.search(out):
        result["max_ms"] = float(most.group(1)) * UNIT_MS[most.group(2)]
    timeouts = re.search(r"timeout (\d+)", out)
    result["timeouts"] = int(timeouts.group(1)) if timeouts else 0
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    # Every answer a waiting session's status gets is 200 or the limiter's 503: the rest is the 503 count.
    result["503"] = int(non2xx.group(1)) if non2xx else 0
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", default="1,2")
    parser.add_argument("--connections", default="50,200")
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("settings", nargs="*", metavar="SETTING=VALUE")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        raise SystemExit("bench.status_load needs wrk (apt-get install wrk)")
    settings = dict(pair.split("=", 1) for pair in args.settings)
    for workers in (int(w) for w in args.workers.split(",")):
        with gunicorn(workers, settings) as url:
            sid = httpx.post(url + "/models/copy", json=CREATE_COPY, timeout=30).json()["data"]["session_id"]
            target = f"{url}/sessions/{sid}"
            wrk(target, 10, 1)  # warm-up: the first answer reads the database, later ones come from the cache
            for connections in (int(c) for c in args.connections.split(",")):
                for _ in range(args.repeats):
                    r = wrk(target, connections, args.seconds)
                    print(
                        f"workers={workers} connections={connections}: {r['rps']:.0f} req/s, "
                        f"p50 {r.get('p50_ms', 0):.1f} ms, p99 {r.get('p99_ms', 0):.1f} ms, "
                        f"max {r.get('max_ms', 0):.0f} ms, timeouts(>2s) {r['timeouts']}, 503 {r['503']}",
                        flush=True,
                    )


if __name__ == "__main__":
    main()
