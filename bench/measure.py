"""Each measurement on its own: bounded in count and time, loopback only, one server at a time."""

from __future__ import annotations

import asyncio
import gzip
import json
import os
import re
import shutil
import statistics
import struct
import subprocess
import sys
import tarfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from tests.integration.gpu_engine import environ

from .stack import Stack

MIB = 1 << 20
CREATE_COPY = {"inputs": {"input_vol": {"enabled": True}}, "params": {}, "outputs": {"output_vol": {"enabled": True}}}
STATUS_PROBES = 20


def make_volume(path: Path, mib: int) -> None:
    """A gzip member with a 1 KiB NIfTI-1 header (both servers sniff .nii.gz), then incompressible bytes."""
    header = bytearray(1024)
    struct.pack_into("<i", header, 0, 348)
    header[344:348] = b"n+1\0"
    block = os.urandom(MIB)
    with path.open("wb") as f:
        f.write(gzip.compress(bytes(header)))
        for _ in range(mib):
            f.write(block)


def settle(warm: tuple[Path, ...] | None = None) -> None:
    """Put the page cache in the same state before each throughput is measured, so no measure pays for the
    ones before it: dirty pages written back, and with `warm`, the whole page cache dropped and only those
    files read back in.

    Without the writeback an upload right after another 1 GiB write ran at 375 instead of 600 MiB/s. Without
    the drop, the sessions each flow leaves behind (2 GiB each) filled the page cache as the run went on, and
    the servers measured later paid for reclaiming it: inferserver's upload ran at 680-840 MiB/s measured
    early, 360-480 measured after the old server's flows, while the NGINX reference had been measured first.
    """
    os.sync()
    if warm is not None:
        try:
            Path("/proc/sys/vm/drop_caches").write_text("1\n")  # clean page cache only: it was just synced
        except OSError as exc:
            raise RuntimeError(
                f"the bench drops the page cache before each upload measure and must run as root: {exc}"
            ) from None
        for path in warm:
            with path.open("rb") as f:
                while f.read(MIB):
                    pass
    time.sleep(1)


def repeated(times: int, fn: Callable[..., dict[str, Any]], *args: Any) -> dict[str, Any]:
    """`fn`'s numbers over `times` runs: the median of each, with every run kept under "runs".

    This machine is a VM whose page-cache and disk speed swing from run to run (a plain `cp` of 1 GiB took
    0.27 s, then 1.3 s); one run of anything is a sample, not a figure. Runs that failed are kept in "runs"
    and left out of the medians; when all failed, the first one's error is the result.
    """
    runs = [fn(*args) for _ in range(times)]
    good = [run for run in runs if "error" not in run]
    if not good:
        return {**runs[0], "runs": runs}
    keys = {key for run in good for key, value in run.items() if isinstance(value, (int, float))}
    result: dict[str, Any] = {key: statistics.median(run[key] for run in good if key in run) for key in sorted(keys)}
    result["runs"] = runs
    if len(good) < len(runs):
        result["failed_runs"] = len(runs) - len(good)
    return result


def same_bytes(a: Path, b: Path) -> bool:
    return subprocess.run(["cmp", "-s", str(a), str(b)]).returncode == 0


def ablinfer_e2e(url: str, source: Path, out: Path) -> dict[str, Any]:
    """A whole inference through the real client's command line (DispatchRemote), timed from outside."""
    out.unlink(missing_ok=True)
    settle(warm=(source,))
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "ablinfer.cli", "-s", url, "copy", "-i", str(source), "-o", str(out)],
        capture_output=True,
        text=True,
        timeout=900,
    )
    seconds = time.monotonic() - started
    if done.returncode != 0 or not same_bytes(source, out):
        tail = (done.stderr or done.stdout)[-600:]
        return {
            "error": f"ablinfer client exit {done.returncode}: {tail.strip().splitlines()[-1] if tail.strip() else ''}"
        }
    out.unlink()
    return {"seconds": seconds}


class Events:
    """`docker events` of the private engine while a flow runs: (wall ns, action) of its containers."""

    def __init__(self, stack: Stack) -> None:
        env = {**os.environ, "DOCKER_HOST": stack.engine.host}
        self.process = subprocess.Popen(
            ["docker", "events", "--format", "{{json .}}", "--filter", "type=container"],
            env=env,
            stdout=subprocess.PIPE,
            text=True,
        )
        self.seen: list[tuple[int, str]] = []
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            event = json.loads(line)
            self.seen.append((int(event["timeNano"]), event["Action"]))

    def first(self, action: str, after_ns: int) -> int | None:
        return next((t for t, a in self.seen if a == action and t >= after_ns), None)

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(10)


class RssSampler:
    """Sum of VmRSS over the server's processes every 10 ms, from /proc."""

    def __init__(self, stack: Stack, name: str) -> None:
        self.stack, self.name = stack, name
        self.baseline = stack.rss_kib(name)
        self.peak = self.baseline
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.01):
            self.peak = max(self.peak, self.stack.rss_kib(self.name))

    def stop(self) -> None:
        self._stop.set()
        self.thread.join()


def file_chunks(path: Path, size: int = MIB):
    with path.open("rb") as f:
        while block := f.read(size):
            yield block


def timed_upload(client: httpx.Client, url: str, source: Path) -> tuple[float, httpx.Response]:
    """PUT the file with a Content-Length, as the ablinfer client does; seconds until the answer."""
    settle(warm=(source,))
    started = time.monotonic()
    answer = client.put(
        url,
        content=file_chunks(source),
        headers={"Content-Type": "application/octet-stream", "Content-Length": str(source.stat().st_size)},
    )
    return time.monotonic() - started, answer


def timed_download(client: httpx.Client, url: str) -> tuple[float, int]:
    """GET and discard; seconds and bytes."""
    settle()
    started = time.monotonic()
    received = 0
    with client.stream("GET", url) as response:
        response.raise_for_status()
        for chunk in response.iter_raw(MIB):
            received += len(chunk)
    return time.monotonic() - started, received


def flow(stack: Stack, name: str, url: str, source: Path) -> dict[str, Any]:
    """Raw HTTP through NGINX: upload (RSS sampled), run (docker events), download. (b), (e), (f)."""
    size = source.stat().st_size
    events = Events(stack)
    try:
        with httpx.Client(base_url=url, timeout=httpx.Timeout(900, connect=10)) as client:
            sid = client.post("/models/copy", json=CREATE_COPY).json()["data"]["session_id"]
            sampler = RssSampler(stack, name)
            try:
                upload_s, answer = timed_upload(client, f"/sessions/{sid}/inputs/input_vol", source)
            finally:
                sampler.stop()
            last_byte_ns = time.time_ns()
            if answer.status_code != 200:
                return {"error": f"upload answered {answer.status_code}: {answer.text[:200]}"}
            deadline = time.monotonic() + 600
            while (status := client.get(f"/sessions/{sid}").json()["data"]["status"]) not in ("complete", "failed"):
                if time.monotonic() > deadline:
                    return {"error": "run did not finish within 600 s"}
                time.sleep(0.005)
            complete_ns = time.time_ns()
            if status != "complete":
                return {"error": f"run failed: {client.get(f'/sessions/{sid}').json()['data']['info']}"}
            download_s, received = timed_download(client, f"/sessions/{sid}/outputs/output_vol")
    finally:
        time.sleep(0.2)  # let the last events arrive
        events.stop()
    create_ns = events.first("create", last_byte_ns - 10**9)
    start_ns, die_ns = events.first("start", last_byte_ns - 10**9), events.first("die", last_byte_ns)
    result: dict[str, Any] = {
        "upload_mbs": size / MIB / upload_s,
        "download_mbs": received / MIB / download_s,
        "rss_baseline_mib": sampler.baseline / 1024,
        "rss_peak_mib": sampler.peak / 1024,
        "rss_growth_mib": (sampler.peak - sampler.baseline) / 1024,
    }
    if create_ns:  # what the server spends before it asks the engine for anything lasting
        result["last_byte_to_create_ms"] = (create_ns - last_byte_ns) / 1e6
    if start_ns and die_ns:
        result["last_byte_to_start_ms"] = (start_ns - last_byte_ns) / 1e6
        result["exit_to_complete_ms"] = (complete_ns - die_ns) / 1e6
    if received != size:
        result["error"] = f"downloaded {received} bytes of {size}"
    return result


WRK_LATENCY = re.compile(r"^\s+(50|99)%\s+([\d.]+)(us|ms|s)\s*$", re.M)
UNIT_MS = {"us": 1e-3, "ms": 1.0, "s": 1e3}


def status_load(url: str, connections: int, seconds: int = 10) -> dict[str, Any]:
    """(c) wrk for a fixed duration against GET /sessions/{sid} of a waiting session.

    10 s, not 5: wrk opens all its connections at once, and in the first second some of 200 new connections
    wait up to about 1 s to be served (bare uvicorn with a 150 us app: p99 1.25 s over 5 s, 66 ms over 15 s).
    """
    sid = httpx.post(url + "/models/copy", json=CREATE_COPY, timeout=30).json()["data"]["session_id"]
    done = subprocess.run(
        ["wrk", "-t2", f"-c{connections}", f"-d{seconds}s", "--timeout", "5s", "--latency", f"{url}/sessions/{sid}"],
        capture_output=True,
        text=True,
        timeout=seconds + 60,
    )
    out = done.stdout
    rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
    result: dict[str, Any] = {"rps": float(rps.group(1)) if rps else None}
    for pct, value, unit in WRK_LATENCY.findall(out):
        result[f"p{pct}_ms"] = float(value) * UNIT_MS[unit]
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    sock = re.search(r"Socket errors: (.*)", out)
    if errors or sock:
        result["errors"] = " ".join(m.group(0) for m in (errors, sock) if m)
    return result


async def _probe_status(client: httpx.AsyncClient, url: str) -> list[float | None]:
    """STATUS_PROBES sequential status requests, each allowed 1 s; None for one that did not answer in time."""
    latencies: list[float | None] = []
    for _ in range(STATUS_PROBES):
        started = time.monotonic()
        try:
            answer = await client.get(url, timeout=1.0)
            latencies.append((time.monotonic() - started) * 1e3 if answer.status_code == 200 else None)
        except httpx.HTTPError:
            latencies.append(None)
        await asyncio.sleep(0.05)
    return latencies


async def _hold_streams(url: str, sid: str, count: int) -> dict[str, Any]:
    limits = httpx.Limits(max_connections=None, max_keepalive_connections=0)
    opened = 0
    release = asyncio.Event()

    async def one(client: httpx.AsyncClient) -> None:
        nonlocal opened
        async with client.stream("GET", f"{url}/sessions/{sid}/logs") as response:
            if response.status_code == 200:
                opened += 1
            await release.wait()

    async with (
        httpx.AsyncClient(limits=limits, timeout=httpx.Timeout(None, connect=10)) as streams,
        httpx.AsyncClient() as probe,
    ):
        tasks = [asyncio.create_task(one(streams)) for _ in range(count)]
        deadline = time.monotonic() + 10 + count / 100
        # Waits on three things, one a deadline: polling them is simplest (a benchmark, not the server).
        while opened < count and time.monotonic() < deadline and not all(t.done() for t in tasks):  # noqa: ASYNC110
            await asyncio.sleep(0.1)
        latencies = await _probe_status(probe, f"{url}/sessions/{sid}")
        release.set()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    answered = sorted(x for x in latencies if x is not None)
    return {
        "streams": count,
        "opened": opened,
        "answered": len(answered),
        "probes": len(latencies),
        "p50_ms": answered[len(answered) // 2] if answered else None,
        "p99_ms": answered[-1] if answered else None,  # 20 probes: p99 is the slowest
        "ok": opened == count and len(answered) == len(latencies),
    }


def log_streams(stack: Stack, url: str, source: Path, counts: tuple[int, ...]) -> list[dict[str, Any]]:
    """(d) N open log streams of one long sleep run; does a status request still answer within 1 s?"""
    client = httpx.Client(base_url=url, timeout=60)
    body = {**CREATE_COPY, "params": {"seconds": {"value": 300}}}
    sid = client.post("/models/sleep", json=body).json()["data"]["session_id"]
    client.put(f"/sessions/{sid}/inputs/input_vol", content=source.read_bytes())
    deadline = time.monotonic() + 60
    while client.get(f"/sessions/{sid}").json()["data"]["status"] != "working" and time.monotonic() < deadline:
        time.sleep(0.1)
    results = []
    try:
        for count in counts:
            result = asyncio.run(_hold_streams(url, sid, count))
            results.append(result)
            if not result["ok"]:
                break  # more streams cannot do better; keep the run bounded
            time.sleep(1)
    finally:
        client.close()
        # End the sleep run: the private engine holds only our containers.
        ids = stack.docker("ps", "-q").stdout.decode().split()
        if ids:
            stack.docker("rm", "-f", *ids)
        time.sleep(2)
    return results


def raw_references(stack: Stack, source: Path) -> dict[str, Any]:
    """The machine's limits: NGINX static GET and WebDAV PUT to disk over loopback, a plain disk copy."""
    size = source.stat().st_size
    static = stack.work / "static" / "big.bin"
    os.link(source, static)
    with httpx.Client(timeout=900) as client:
        download_s, received = timed_download(client, f"{stack.static_url}/big.bin")
        upload_s, answer = timed_upload(client, f"{stack.sink_url}/big.bin", source)
    static.unlink()
    assert received == size and answer.status_code in (201, 204), (received, answer.status_code)
    (stack.work / "sink" / "big.bin").unlink()
    copy = stack.work / "copy.bin"
    settle(warm=(source,))
    started = time.monotonic()
    subprocess.run(["cp", str(source), str(copy)], check=True)
    copy_s = time.monotonic() - started
    copy.unlink()
    return {
        "download_mbs": size / MIB / download_s,
        "upload_mbs": size / MIB / upload_s,
        "disk_copy_mbs": size / MIB / copy_s,
    }


def docker_reference(stack: Stack, source: Path) -> dict[str, Any]:
    """A plain `docker` run of the copy model: docker cp in, start, docker cp out; and with a bind mount."""
    size_mib = source.stat().st_size / MIB
    image = "inferserver-test/copy:1"
    argv = ["-i", "/data/input_vol.nii.gz", "-o", "/data/output_vol.nii.gz"]
    cid = stack.docker("create", "--network", "none", image, *argv).stdout.decode().strip()
    out = stack.work / "docker-out.nii.gz"
    try:
        timings = {}
        for step, args in (
            ("cp_in", ("cp", str(source), f"{cid}:/data/input_vol.nii.gz")),
            ("run", ("start", "-a", cid)),
            ("cp_out", ("cp", f"{cid}:/data/output_vol.nii.gz", str(out))),
        ):
            settle(warm=(source,) if step == "cp_in" else None)
            started = time.monotonic()
            done = stack.docker(*args)
            timings[step] = time.monotonic() - started
            if done.returncode != 0:
                return {"error": f"docker {args[0]}: {done.stderr.decode()[:200]}"}
    finally:
        stack.docker("rm", "-f", cid)
    if not same_bytes(source, out):
        return {"error": "docker cp round trip changed the bytes"}
    out.unlink()
    mount = stack.work / "mount"
    mount.mkdir()
    os.link(source, mount / "input_vol.nii.gz")
    started = time.monotonic()
    stack.docker("run", "--rm", "--network", "none", "-v", f"{mount}:/data", image, *argv)
    bind_s = time.monotonic() - started
    shutil.rmtree(mount)
    return {
        "cp_in_mbs": size_mib / timings["cp_in"],
        "cp_out_mbs": size_mib / timings["cp_out"],
        "run_s": timings["run"],
        "bind_mount_run_s": bind_s,
        "cli_total_s": sum(timings.values()),
    }


def _engine_call(
    stack: Stack, method: str, path: str, *, body: Path | None = None, json_body: Any = None, out: str = "/dev/null"
) -> tuple[int, float]:
    """One Engine API call with curl on the engine's socket: (HTTP status, seconds curl measured)."""
    argv = [
        "curl",
        "-s",
        "--unix-socket",
        str(stack.engine.socket),
        "-X",
        method,
        "-o",
        out,
        "-w",
        "%{http_code} %{time_total}",
        f"http://docker/v1.41/{path}",
    ]
    if json_body is not None:
        argv[1:1] = ["-H", "Content-Type: application/json", "--data-binary", json.dumps(json_body)]
    elif body is not None:
        argv[1:1] = [
            "-H",
            "Content-Type: application/x-tar",
            "-T",
            str(body),
        ]  # streamed: --data-binary @ reads it whole
    done = subprocess.run(argv, capture_output=True, text=True, timeout=600, check=True)
    code, seconds = done.stdout.split()
    return int(code), float(seconds)


def _tar_of(source: Path, tar: Path) -> None:
    with tarfile.open(tar, "w") as archive:
        archive.add(source, arcname="data/input_vol.nii.gz")


def _container_configs(small: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """The copy model's container config as inferserver's own Runner builds it (default limits, every GPU),
    with the input to be copied in, and with it bind-mounted read-only (INPUT_STAGING=mount)."""
    from inferserver.config import GpuMode, Settings
    from inferserver.runner.execute import Runner
    from inferserver.runner.jobs import FileTransfer, RunJob
    from inferserver.scheduling.runlimits import limits_for
    from inferserver.specs.directory import load_spec_file
    from tests.conftest import TEST_MODELS

    limits = limits_for(Settings(), load_spec_file(TEST_MODELS / "copy.json"))
    runner = Runner(None, GpuMode.ALL)  # type: ignore[arg-type]  # only its config building is used
    configs = []
    for source in (None, str(small.resolve())):
        job = RunJob(
            job_id="bench-engine",
            image="inferserver-test/copy:1",
            argv=["-i", "/data/input_vol.nii.gz", "-o", "/data/output_vol.nii.gz"],
            inputs=[FileTransfer("input_vol", small, "/data/input_vol.nii.gz", source)],
            outputs=[],
            limits=limits,
        )
        configs.append(runner.container_config(job, gpus=True))
    return configs[0], configs[1]


def engine_reference(stack: Stack, small: Path, big: Path) -> dict[str, Any]:
    """The engine alone, driven by curl on its socket (no Python in the way), with the container config the
    servers use on this engine (no network, init, no capabilities, the default limits, every GPU: the fake
    NVIDIA hook runs at each start). The floor under (f)'s last byte → container start: create + put_archive
    of the small input + start (archive mode), and create with the input bind-mounted + put_archive of just
    the data directory + start (mount mode); and put_archive / get_archive of the big file, the floor under
    staging."""
    config, mounted = _container_configs(small)
    small_tar, big_tar, dir_tar = stack.work / "small.tar", stack.work / "big.tar", stack.work / "dir.tar"
    created = stack.work / "created.json"
    _tar_of(small, small_tar)
    _tar_of(big, big_tar)
    with tarfile.open(dir_tar, "w") as archive:
        info = tarfile.TarInfo("data")
        info.type, info.mode = tarfile.DIRTYPE, 0o1777
        archive.addfile(info)
    steps = ("create_ms", "put_small_ms", "put_dir_ms", "start_ms", "start_mounted_ms")
    timings: dict[str, list[float]] = {step: [] for step in steps}
    result: dict[str, Any] = {}

    def container(body: dict[str, Any]) -> str:
        code, seconds = _engine_call(stack, "POST", "containers/create", json_body=body, out=str(created))
        if code != 201:
            raise RuntimeError(f"create answered {code}: {created.read_text()[:200]}")
        timings["create_ms"].append(seconds * 1e3)
        return json.loads(created.read_text())["Id"]

    try:
        for _ in range(5):
            for put_step, tar, body in (("put_small_ms", small_tar, config), ("put_dir_ms", dir_tar, mounted)):
                cid = container(body)
                try:
                    _, put_s = _engine_call(stack, "PUT", f"containers/{cid}/archive?path=/", body=tar)
                    _, start_s = _engine_call(stack, "POST", f"containers/{cid}/start")
                    timings[put_step].append(put_s * 1e3)
                    timings["start_ms" if body is config else "start_mounted_ms"].append(start_s * 1e3)
                    if "in_mbs" not in result:  # the big archive into a fresh container's /data, and out again
                        settle(warm=(big_tar,))
                        code, put_s = _engine_call(stack, "PUT", f"containers/{cid}/archive?path=/", body=big_tar)
                        settle()
                        code2, get_s = _engine_call(
                            stack, "GET", f"containers/{cid}/archive?path=/data/input_vol.nii.gz"
                        )
                        if code != 200 or code2 != 200:
                            return {"error": f"archive calls answered {code} / {code2}"}
                        mib = big.stat().st_size / MIB
                        result["in_mbs"], result["out_mbs"] = mib / put_s, mib / get_s
                finally:
                    stack.docker("rm", "-f", cid)
    finally:
        for path in (small_tar, big_tar, dir_tar, created):
            path.unlink(missing_ok=True)
    result.update({step: statistics.median(values) for step, values in timings.items()})
    return result


def archive_staging(stack: Stack, source: Path) -> dict[str, Any]:
    """inferserver's own archive-API staging (runner.docker.DockerBackend) into and out of a container."""
    from inferserver.runner.docker import DockerBackend
    from inferserver.runner.jobs import FileTransfer

    size_mib = source.stat().st_size / MIB
    out = stack.work / "staged-out.bin"

    async def run() -> dict[str, Any]:
        backend = DockerBackend()
        cid = await backend.create(
            {"Image": "inferserver-test/copy:1", "Cmd": ["-i", "x", "-o", "y"], "HostConfig": {"NetworkMode": "none"}},
            name=f"bench-staging-{os.getpid()}",
        )
        try:
            settle(warm=(source,))
            started = time.monotonic()
            await backend.put_files(cid, [FileTransfer("input_vol", source, "/data/input_vol.nii.gz")])
            put_s = time.monotonic() - started
            settle()
            started = time.monotonic()
            await backend.get_file(cid, "/data/input_vol.nii.gz", out)
            get_s = time.monotonic() - started
        finally:
            await backend.remove(cid)
            await backend.close()
        return {"in_mbs": size_mib / put_s, "out_mbs": size_mib / get_s}

    with environ(DOCKER_HOST=stack.engine.host):
        result = asyncio.run(run())
    if not same_bytes(source, out):
        result["error"] = "archive round trip changed the bytes"
    out.unlink()
    return result
