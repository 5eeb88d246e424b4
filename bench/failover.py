"""Several hosts, measured: leader failover time, the cost of a change announcement, status load through NGINX.

    PYTHONPATH=src:. python -m bench.failover [--trials 5] [--samples 200] [--seconds 10]

Uses the machine's Docker engine with the fixture images (tests/images/build.sh), Debian's PostgreSQL (a
throwaway cluster, tests/integration/postgres.py), Debian's nginx with the shipped site and `wrk`.

- failover: two hosts (`inferserver serve --workers 2` each, one database, one session directory); kill -9 of
  every process of the leading host, then a session (sleep 0 s) is queued through the survivor; the time from
  the kill to the session leaving `ready` (its run started by the new leader). The killed host is started
  again as the next trial's standby.
- announcement: a session created on host 1, its status read (and cached) on host 2, cancelled on host 1; the
  time from the cancel's answer to host 2 answering `failed` (host 2 polled back to back).
- status load: `wrk -t2 -c50` on `GET /sessions/{sid}` of a waiting session through NGINX, with both hosts as
  upstreams and with one.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import httpx

from tests.integration.conftest import Server, stop_server, write_nifti
from tests.integration.postgres import start_postgres, stop_postgres
from tests.integration.test_deploy_nginx import start_nginx, stop_nginx
from tests.integration.test_two_hosts import kill_host, port_of, start_host, the_leader


def failover(tmp: Path, database_url: str, shared: Path, trials: int) -> list[float]:
    source = write_nifti(tmp / "in.nii.gz", 0.05)
    hosts = [start_host(tmp, f"f{n}", shared, database_url) for n in range(2)]
    took: list[float] = []
    try:
        for trial in range(trials):
            leader, _ = the_leader(hosts)
            survivor = next(h for h in hosts if h is not leader)
            time.sleep(2)  # the standby is waiting for the lock, not starting up
            with survivor.client() as client:
                sid = client.post("/models/sleep", json={"params": {"seconds": {"value": 0}}}).json()["data"]
                sid = sid["session_id"]
                kill_host(leader)
                killed = time.monotonic()
                with source.open("rb") as stream:
                    client.put(
                        f"/sessions/{sid}/inputs/input_vol",
                        content=stream,
                        headers={"Content-Type": "application/octet-stream"},
                    ).raise_for_status()
                while client.get(f"/sessions/{sid}").json()["data"]["status"] == "ready":
                    if time.monotonic() - killed > 60:
                        raise AssertionError("no run started within 60 s of the leader's kill")
                    time.sleep(0.02)
                took.append(time.monotonic() - killed)
            print(f"failover trial {trial + 1}: {took[-1]:.2f} s", flush=True)
            hosts = [survivor, start_host(tmp, f"f{trial}-again", shared, database_url)]
    finally:
        for host in hosts:
            stop_server(host)
    return took


def announcement(one: Server, two: Server, samples: int) -> list[float]:
    seen: list[float] = []
    with one.client() as first, two.client() as second:
        for _ in range(samples):
            sid = first.post("/models/sleep", json={}).json()["data"]["session_id"]
            for _ in range(2):
                second.get(f"/sessions/{sid}")
            first.delete(f"/sessions/{sid}").raise_for_status()
            changed = time.monotonic()
            while second.get(f"/sessions/{sid}").json()["data"]["status"] != "failed":
                if time.monotonic() - changed > 5:
                    raise AssertionError("host 2 did not see a change within 5 s")
            seen.append(time.monotonic() - changed)
    return seen


def wrk(url: str, connections: int, seconds: int) -> dict[str, float]:
    binary = shutil.which("wrk")
    if binary is None:
        raise SystemExit("wrk is missing: apt-get install wrk")
    out = subprocess.run(
        [binary, "-t2", f"-c{connections}", f"-d{seconds}s", "--latency", url],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    rate = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    p99 = re.search(r"99%\s+([\d.]+)(us|ms|s)", out)
    assert p99 is not None, out
    scale = {"us": 0.001, "ms": 1.0, "s": 1000.0}[p99.group(2)]
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return {"req_per_s": rate, "p99_ms": float(p99.group(1)) * scale, "non_2xx": int(errors.group(1)) if errors else 0}


def status_load(tmp: Path, one: Server, two: Server, shared: Path, seconds: int) -> dict[str, list[dict[str, float]]]:
    """Alternately one host and two, twice each: the order (warm-up, other jobs on the machine) shows as spread."""
    with one.client() as client:
        sid = client.post("/models/sleep", json={}).json()["data"]["session_id"]
    found: dict[str, list[dict[str, float]]] = {"one host": [], "two hosts": []}
    for n, (name, also) in enumerate([("one host", ()), ("two hosts", (port_of(two),))] * 2):
        nginx = start_nginx(tmp / f"nginx-{n}", port_of(one), shared, also)
        try:
            httpx.get(f"{nginx.url}sessions/{sid}").raise_for_status()
            found[name].append(wrk(f"{nginx.url}sessions/{sid}", 50, seconds))
        finally:
            stop_nginx(nginx)
        print(f"status through NGINX, {name}: {found[name][-1]}", flush=True)
    return found


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=5)
    parser.add_argument("--samples", type=int, default=200)
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--no-failover", action="store_true", help="skip the failover trials")
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="inferserver-failover-"))
    pg = start_postgres()
    try:
        database_url = pg.create_database()
        took = [] if args.no_failover else failover(tmp, database_url, tmp / "shared-failover", args.trials)
        database_url = pg.create_database()
        shared = tmp / "shared"
        one, two = (start_host(tmp, name, shared, database_url) for name in ("one", "two"))
        try:
            seen = announcement(one, two, args.samples)
            load = status_load(tmp, one, two, shared, args.seconds)
        finally:
            stop_server(one)
            stop_server(two)
    finally:
        stop_postgres(pg)
    result = {
        "failover_s": {
            "trials": [round(t, 3) for t in took],
            "median": round(statistics.median(took), 3) if took else None,
        },
        "announcement_ms": {
            "samples": len(seen),
            "p50": round(percentile(seen, 0.5) * 1000, 2),
            "p99": round(percentile(seen, 0.99) * 1000, 2),
        },
        "status_50_clients_through_nginx": load,
    }
    print(json.dumps(result, indent=2))
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
