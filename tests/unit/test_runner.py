"""The runner's error paths, driven through a fake engine that fails on demand.

A real Docker engine cannot be made to OOM-kill, lose its connection mid-wait or refuse a pull when a
test wants it to; the fake below has DockerBackend's async methods and records every call.
"""

from __future__ import annotations

import asyncio
import dataclasses
import tempfile
from collections.abc import AsyncIterator, Sequence
from pathlib import Path, PurePosixPath
from typing import Any

import pytest

from inferserver.config import GpuMode
from inferserver.runner import execute, outputs
from inferserver.runner.docker import LABEL_SESSION, split_image
from inferserver.runner.execute import Runner
from inferserver.runner.jobs import FileTransfer, RunFailed, RunJob, RunLimits, RunOutcome
from inferserver.runner.tarstream import SizeGuard, TarMember, extract_single_file, tar_stream

GPU_REQUEST = [{"Driver": "", "Count": -1, "Capabilities": [["gpu"]]}]
NO_DRIVER = 'Docker engine error 500: could not select device driver "" with capabilities: [[gpu]]'


class FakeBackend:
    """DockerBackend's interface; each step can be told to fail."""

    def __init__(
        self,
        *,
        exit_code: int = 0,
        oom_killed: bool = False,
        files: dict[str, bytes] | None = None,
        fail: dict[str, BaseException] | None = None,
        nvidia: bool = False,
        gpu_driver: bool = True,
        log_lines: tuple[bytes, ...] = (b"model says hello\n",),
        stall_after: int | None = None,
    ) -> None:
        self.exit_code = exit_code
        self.oom_killed = oom_killed
        self.files = dict(files or {})  # container path -> bytes the model wrote
        self.fail = dict(fail or {})
        self.nvidia = nvidia
        self.gpu_driver = gpu_driver  # False: like dockerd without the NVIDIA container toolkit
        self.log_lines = log_lines
        self.stall_after = stall_after  # the archive stops coming after this many bytes, until cancelled
        self.stalled = asyncio.Event()
        self.remove_seconds = 0.0
        self.calls: list[str] = []
        self.configs: list[dict[str, Any]] = []
        self.names: list[str] = []
        self.put: list[list[FileTransfer]] = []
        self.dirs_for: list[list[str]] = []
        self.removed: list[str] = []
        self.following = False  # a follow_logs call is still in progress
        self.exited = asyncio.Event()
        self.wait_entered = asyncio.Event()

    def _maybe_fail(self, step: str) -> None:
        self.calls.append(step)
        if step in self.fail:
            raise self.fail[step]

    async def has_nvidia_runtime(self) -> bool:
        self._maybe_fail("has_nvidia_runtime")
        return self.nvidia

    async def ensure_image(self, image: str, log) -> None:
        self._maybe_fail("ensure_image")

    async def create(self, config: dict[str, Any], name: str) -> str:
        self._maybe_fail("create")
        self.configs.append(config)
        self.names.append(name)
        return "cid-1"

    async def put_files(self, container_id: str, files: list[FileTransfer], dirs_for: Sequence[str] = ()) -> None:
        self._maybe_fail("put_files")
        self.put.append(list(files))
        self.dirs_for.append(list(dirs_for))

    async def start(self, container_id: str) -> None:
        self._maybe_fail("start")
        if "DeviceRequests" in self.configs[-1]["HostConfig"] and not self.gpu_driver:
            raise RunFailed(NO_DRIVER)

    async def follow_logs(self, container_id: str, log) -> None:
        self.following = True
        try:
            self._maybe_fail("follow_logs")
            for line in self.log_lines:
                await log.write(line)
            await self.exited.wait()  # like the engine: the stream ends when the container stops
        finally:
            self.following = False

    async def wait(self, container_id: str) -> tuple[int, bool]:
        self.wait_entered.set()
        if "wait_forever" in self.fail:
            await asyncio.Event().wait()
        self._maybe_fail("wait")
        self.exited.set()
        return self.exit_code, self.oom_killed

    async def get_file(self, container_id: str, path: str, dest: Path, guard: SizeGuard | None = None) -> int:
        self._maybe_fail(f"get_file {path}")
        if path not in self.files:
            raise FileNotFoundError(path)
        # The engine's archive of the one file, through the real extraction and the runner's guard.
        chunks = one_file_tar(path, self.files[path])
        if self.stall_after is not None:
            chunks = self._stall(chunks, self.stall_after)
        return await extract_single_file(chunks, dest, guard)

    async def _stall(self, chunks: AsyncIterator[bytes], after: int) -> AsyncIterator[bytes]:
        sent = 0
        async for chunk in chunks:
            if sent >= after:
                self.stalled.set()
                await asyncio.Event().wait()
            sent += len(chunk)
            yield chunk

    async def ping(self) -> None:
        self._maybe_fail("ping")

    async def remove(self, container_id: str) -> None:
        self.calls.append("remove")
        await asyncio.sleep(self.remove_seconds)
        self.removed.append(container_id)


async def one_file_tar(path: str, data: bytes, chunk: int = 64 << 10) -> AsyncIterator[bytes]:
    with tempfile.TemporaryDirectory() as tmp:
        source = Path(tmp) / "file"
        source.write_bytes(data)
        async for piece in tar_stream([TarMember(PurePosixPath(path).name, source)], chunk_size=chunk):
            yield piece


class MemoryLog:
    def __init__(self) -> None:
        self.data = b""

    async def write(self, data: bytes) -> None:
        self.data += data


GiB = 1 << 30
LIMITS = RunLimits(
    memory=8 * GiB,
    cpus=0,
    pids=4096,
    shm_size=2 * GiB,
    timeout=600,
    log_bytes=1 << 20,
    output_bytes=GiB,
    disk_reserve=0,
)


def make_job(
    tmp_path: Path,
    outputs: tuple[str, ...] = ("seg", "vol"),
    labels: dict[str, str] | None = None,
    limits: RunLimits = LIMITS,
) -> RunJob:
    inputs_dir = tmp_path / "inputs"
    outputs_dir = tmp_path / "outputs"
    inputs_dir.mkdir(exist_ok=True)
    outputs_dir.mkdir(exist_ok=True)
    (inputs_dir / "in.nii.gz").write_bytes(b"input bytes")
    return RunJob(
        job_id="sess-42",
        image="example/model:2",
        argv=["-i", "/data/in.nii.gz", "-o", "/data/seg.nii.gz", "--threshold", "0.5"],
        inputs=[FileTransfer("in", inputs_dir / "in.nii.gz", "/data/in.nii.gz")],
        outputs=[FileTransfer(name, outputs_dir / f"{name}.nii.gz", f"/data/{name}.nii.gz") for name in outputs],
        limits=limits,
        labels=labels or {},
    )


async def run(
    backend: FakeBackend, job: RunJob, gpus: GpuMode = GpuMode.NONE
) -> tuple[RunOutcome, list[str], MemoryLog]:
    started: list[str] = []

    async def on_started(container_id: str) -> None:
        started.append(container_id)

    log = MemoryLog()
    outcome = await Runner(backend, gpus).run(job, log, on_started)
    return outcome, started, log


ALL_OUTPUTS = {"/data/seg.nii.gz": b"segmentation", "/data/vol.nii.gz": b"volume"}


async def test_a_good_run_collects_every_output_and_removes_the_container(tmp_path: Path) -> None:
    backend = FakeBackend(files=ALL_OUTPUTS)
    job = make_job(tmp_path)
    outcome, started, log = await run(backend, job)
    assert outcome == RunOutcome(True, "", 0)
    assert started == ["cid-1"]
    assert (tmp_path / "outputs" / "seg.nii.gz").read_bytes() == b"segmentation"
    assert (tmp_path / "outputs" / "vol.nii.gz").read_bytes() == b"volume"
    assert sorted(p.name for p in (tmp_path / "outputs").iterdir()) == ["seg.nii.gz", "vol.nii.gz"]  # no partials
    assert backend.put == [job.inputs]
    assert backend.dirs_for == [["/data/seg.nii.gz", "/data/vol.nii.gz"]]  # their directory exists before the start
    assert b"model says hello\n" in log.data
    assert backend.removed == ["cid-1"]
    # Inputs are in place before the model starts; outputs are taken after it exits.
    order = backend.calls
    assert order.index("ensure_image") < order.index("create") < order.index("put_files") < order.index("start")
    assert order.index("wait") < order.index("get_file /data/seg.nii.gz") < order.index("remove")


async def test_oom_killed_run_names_the_memory_limit(tmp_path: Path) -> None:
    backend = FakeBackend(exit_code=137, oom_killed=True, files=ALL_OUTPUTS)
    outcome, _, _ = await run(backend, make_job(tmp_path))
    assert outcome.ok is False
    assert outcome.reason == "exceeded the memory limit of 8 GiB"
    assert outcome.exit_code == 137
    assert backend.removed == ["cid-1"]
    assert not any(c.startswith("get_file") for c in backend.calls)  # a failed run's outputs are not taken


async def test_exit_137_without_oom_is_a_plain_exit_status(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(execute, "ENGINE_GONE_SECONDS", 0.3)
    backend = FakeBackend(exit_code=137, oom_killed=False)
    outcome, _, _ = await run(backend, make_job(tmp_path))
    assert outcome.reason == "model exited with status 137"
    assert backend.calls.count("ping") >= 2  # the engine kept answering: the model was killed, not the engine


@pytest.mark.parametrize("exit_code", [137, 143])
async def test_container_stopped_by_a_stopping_engine_names_the_engine(tmp_path: Path, exit_code: int) -> None:
    backend = FakeBackend(exit_code=exit_code, fail={"ping": RunFailed("Docker engine unreachable: gone")})
    outcome, _, _ = await run(backend, make_job(tmp_path))
    assert outcome.ok is False and outcome.exit_code == exit_code
    assert (
        outcome.reason
        == f"the Docker engine stopped during the run (it stopped the container: exit status {exit_code})"
    )
    assert backend.removed == ["cid-1"]  # tried; when the engine is back the dispatcher removes what is left


async def test_nonzero_exit_gives_its_status(tmp_path: Path) -> None:
    backend = FakeBackend(exit_code=3, files=ALL_OUTPUTS)
    outcome, _, log = await run(backend, make_job(tmp_path))
    assert outcome == RunOutcome(False, "model exited with status 3", 3)
    assert b"model says hello\n" in log.data  # the model's own output stays readable
    assert backend.removed == ["cid-1"]
    assert list((tmp_path / "outputs").iterdir()) == []


async def test_two_missing_outputs_are_named_in_one_reason(tmp_path: Path) -> None:
    backend = FakeBackend(files={})
    outcome, _, _ = await run(backend, make_job(tmp_path))
    assert outcome.ok is False
    assert "seg (expected at /data/seg.nii.gz)" in outcome.reason
    assert "vol (expected at /data/vol.nii.gz)" in outcome.reason
    assert outcome.reason.startswith("the model did not write output")
    assert backend.removed == ["cid-1"]
    assert list((tmp_path / "outputs").iterdir()) == []


async def test_one_missing_output_names_only_it(tmp_path: Path) -> None:
    backend = FakeBackend(files={"/data/seg.nii.gz": b"segmentation"})
    outcome, _, _ = await run(backend, make_job(tmp_path))
    assert outcome.ok is False
    assert "vol (expected at /data/vol.nii.gz)" in outcome.reason
    assert "seg" not in outcome.reason
    assert not any(p.name.endswith(".partial") for p in (tmp_path / "outputs").iterdir())


async def test_an_output_that_is_not_a_file_names_it_and_leaves_no_partial(tmp_path: Path) -> None:
    backend = FakeBackend(files=ALL_OUTPUTS, fail={"get_file /data/vol.nii.gz": ValueError("it is a directory")})
    outcome, _, _ = await run(backend, make_job(tmp_path))
    assert outcome.ok is False
    assert outcome.reason == "output vol at /data/vol.nii.gz: it is a directory"
    assert backend.removed == ["cid-1"]
    assert not any(p.name.endswith(".partial") for p in (tmp_path / "outputs").iterdir())


async def test_a_pull_failure_is_the_reason_and_nothing_is_created(tmp_path: Path) -> None:
    backend = FakeBackend(fail={"ensure_image": RunFailed("could not pull image example/model:2: not found")})
    outcome, started, _ = await run(backend, make_job(tmp_path))
    assert outcome == RunOutcome(False, "could not pull image example/model:2: not found", None)
    assert started == []
    assert "create" not in backend.calls
    assert backend.removed == []  # nothing to remove


@pytest.mark.parametrize("step", ["put_files", "start", "wait"])
async def test_an_engine_failure_after_create_fails_the_run_and_removes_once(tmp_path: Path, step: str) -> None:
    backend = FakeBackend(files=ALL_OUTPUTS, fail={step: RunFailed(f"Docker engine error 500: {step} broke")})
    outcome, _, _ = await run(backend, make_job(tmp_path))
    assert outcome.ok is False
    assert outcome.reason == f"Docker engine error 500: {step} broke"
    assert backend.removed == ["cid-1"]


async def test_a_failing_create_removes_nothing(tmp_path: Path) -> None:
    backend = FakeBackend(fail={"create": RunFailed("Docker engine error 409: name in use")})
    outcome, _, _ = await run(backend, make_job(tmp_path))
    assert outcome.reason == "Docker engine error 409: name in use"
    assert backend.removed == []


async def test_an_engine_failure_in_auto_gpu_detection_fails_the_run(tmp_path: Path) -> None:
    backend = FakeBackend(fail={"has_nvidia_runtime": RunFailed("Docker engine unreachable: gone")})
    outcome, _, _ = await run(backend, make_job(tmp_path), GpuMode.AUTO)
    assert outcome == RunOutcome(False, "Docker engine unreachable: gone", None)
    assert backend.removed == []


async def test_an_unexpected_error_after_create_still_removes_once(tmp_path: Path) -> None:
    backend = FakeBackend(fail={"put_files": PermissionError("input unreadable")})
    with pytest.raises(PermissionError):
        await run(backend, make_job(tmp_path))
    assert backend.removed == ["cid-1"]


async def cancel_while_waiting(tmp_path: Path) -> FakeBackend:
    """A run cancelled while it waits for its container (server shutdown or DELETE); its fake engine."""
    backend = FakeBackend(fail={"wait_forever": RuntimeError()})
    task = asyncio.create_task(run(backend, make_job(tmp_path)))
    async with asyncio.timeout(2):
        await backend.wait_entered.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    return backend


async def test_cancelling_a_run_removes_the_container_once(tmp_path: Path) -> None:
    backend = await cancel_while_waiting(tmp_path)
    assert backend.removed == ["cid-1"]


async def test_a_broken_log_stream_is_noted_but_the_run_goes_on(tmp_path: Path) -> None:
    backend = FakeBackend(files=ALL_OUTPUTS, fail={"follow_logs": RunFailed("Docker engine error 500: logs")})
    outcome, _, log = await run(backend, make_job(tmp_path))
    assert outcome.ok is True
    assert b"the container log may be incomplete: Docker engine error 500: logs" in log.data
    assert backend.removed == ["cid-1"]


async def test_after_an_engine_failure_in_wait_nothing_still_follows_the_log(tmp_path: Path) -> None:
    """Once run() has reported the outcome, no task of it may still write into the session's log."""
    backend = FakeBackend(fail={"wait": RunFailed("Docker engine unreachable: connection reset")})
    outcome, _, _ = await run(backend, make_job(tmp_path))
    assert outcome.reason == "Docker engine unreachable: connection reset"
    await asyncio.sleep(0)
    try:
        assert backend.following is False
    finally:
        backend.exited.set()  # were a task leaked, let it end rather than outlive the test


async def test_after_a_cancelled_run_nothing_still_follows_the_log(tmp_path: Path) -> None:
    backend = await cancel_while_waiting(tmp_path)
    await asyncio.sleep(0)
    try:
        assert backend.following is False
    finally:
        backend.exited.set()


# -- the container's configuration ---------------------------------------------------------------


async def test_config_carries_image_argv_and_session_label(tmp_path: Path) -> None:
    backend = FakeBackend(files=ALL_OUTPUTS)
    job = make_job(tmp_path, labels={"org.inferserver.model": "copy"})
    await run(backend, job)
    [config] = backend.configs
    assert config["Image"] == "example/model:2"
    assert config["Cmd"] == job.argv
    assert config["Labels"][LABEL_SESSION] == "sess-42"
    assert config["Labels"]["org.inferserver.model"] == "copy"
    assert "sess-42" in backend.names[0]


@pytest.mark.parametrize(
    ("mode", "nvidia", "wants"),
    [
        (GpuMode.ALL, False, True),
        (GpuMode.ALL, True, True),
        (GpuMode.NONE, False, False),
        (GpuMode.NONE, True, False),
        (GpuMode.AUTO, True, True),
        (GpuMode.AUTO, False, True),  # no runtime listed, but the engine's device driver serves the request
    ],
)
async def test_gpu_requests_follow_the_gpus_setting(tmp_path: Path, mode: GpuMode, nvidia: bool, wants: bool) -> None:
    backend = FakeBackend(files=ALL_OUTPUTS, nvidia=nvidia)
    outcome, _, _ = await run(backend, make_job(tmp_path), mode)
    assert outcome.ok
    [config] = backend.configs
    if wants:
        assert config["HostConfig"]["DeviceRequests"] == GPU_REQUEST
    else:
        assert "DeviceRequests" not in config.get("HostConfig", {})


async def test_auto_falls_back_to_the_cpu_once_the_engine_refuses_gpus_and_remembers(tmp_path: Path) -> None:
    backend = FakeBackend(files=ALL_OUTPUTS, gpu_driver=False)
    runner = Runner(backend, GpuMode.AUTO)
    log = MemoryLog()

    async def on_started(container_id: str) -> None:
        return

    first = await runner.run(make_job(tmp_path), log, on_started)
    assert first.ok, first
    assert [c["HostConfig"].get("DeviceRequests") for c in backend.configs] == [GPU_REQUEST, None]
    assert backend.removed == ["cid-1", "cid-1"]  # the refused container, then the finished one
    assert b"the Docker engine has no GPU support; running on the CPU" in log.data
    second = await runner.run(make_job(tmp_path), log, on_started)
    assert second.ok
    assert "DeviceRequests" not in backend.configs[-1]["HostConfig"] and len(backend.configs) == 3


async def test_gpus_all_on_an_engine_without_gpu_support_fails_with_the_engine_reason(tmp_path: Path) -> None:
    backend = FakeBackend(files=ALL_OUTPUTS, gpu_driver=False)
    outcome, started, _ = await run(backend, make_job(tmp_path), GpuMode.ALL)
    assert not outcome.ok and outcome.reason == NO_DRIVER
    assert started == [] and backend.removed == ["cid-1"]


async def test_fixed_gpu_modes_never_ask_the_engine(tmp_path: Path) -> None:
    for mode in (GpuMode.ALL, GpuMode.NONE):
        backend = FakeBackend(files=ALL_OUTPUTS, fail={"has_nvidia_runtime": RunFailed("must not be asked")})
        outcome, _, _ = await run(backend, make_job(tmp_path), mode)
        assert outcome.ok, outcome.reason


# -- inputs staged by bind mount (INPUT_STAGING=mount) ------------------------------------------


def mounted_job(tmp_path: Path, **changes: Any) -> RunJob:
    """make_job's job with its input bind-mounted from the engine host's /host/sessions instead of copied in."""
    job = make_job(tmp_path)
    [copied] = job.inputs
    mounted = dataclasses.replace(copied, mount_source="/host/sessions/sess-42/inputs/in.nii.gz")
    second = FileTransfer("mask", tmp_path / "inputs" / "mask.nrrd", "/data/mask.nrrd")  # copied in as before
    return dataclasses.replace(job, inputs=[mounted, second], **changes)


async def test_a_mounted_input_is_a_read_only_bind_and_only_directories_are_copied(tmp_path: Path) -> None:
    backend = FakeBackend(files=ALL_OUTPUTS)
    job = mounted_job(tmp_path)
    outcome, _, _ = await run(backend, job)
    assert outcome.ok, outcome.reason
    [config] = backend.configs
    assert config["HostConfig"]["Mounts"] == [
        {
            "Type": "bind",
            "Source": "/host/sessions/sess-42/inputs/in.nii.gz",
            "Target": "/data/in.nii.gz",
            "ReadOnly": True,
        }
    ]
    assert backend.put == [[job.inputs[1]]]  # only the input without a mount source is copied in
    assert backend.dirs_for == [["/data/seg.nii.gz", "/data/vol.nii.gz"]]  # the outputs' directories as before
    assert config["Cmd"] == job.argv  # the model sees the same paths in both modes


async def test_archive_staging_mounts_nothing(tmp_path: Path) -> None:
    backend = FakeBackend(files=ALL_OUTPUTS)
    await run(backend, make_job(tmp_path))
    assert "Mounts" not in backend.configs[0]["HostConfig"]


async def test_a_bind_source_the_engine_lacks_names_the_settings(tmp_path: Path) -> None:
    refusal = (
        'Docker engine error 400: invalid mount config for type "bind": bind source path does not exist: '
        "/host/sessions/sess-42/inputs/in.nii.gz"
    )
    backend = FakeBackend(fail={"create": RunFailed(refusal)})
    outcome, started, _ = await run(backend, mounted_job(tmp_path, mount_note="look at MOUNT_SOURCE_PATH"))
    assert outcome.reason == f"{refusal} (look at MOUNT_SOURCE_PATH)"
    assert started == [] and backend.removed == []


async def test_other_create_failures_get_no_mount_note(tmp_path: Path) -> None:
    backend = FakeBackend(fail={"create": RunFailed("Docker engine error 409: name in use")})
    outcome, _, _ = await run(backend, mounted_job(tmp_path, mount_note="look at MOUNT_SOURCE_PATH"))
    assert outcome.reason == "Docker engine error 409: name in use"


async def test_mounts_survive_the_fall_back_to_the_cpu(tmp_path: Path) -> None:
    backend = FakeBackend(files=ALL_OUTPUTS, gpu_driver=False)
    outcome, _, _ = await run(backend, mounted_job(tmp_path), GpuMode.AUTO)
    assert outcome.ok, outcome.reason
    first, second = backend.configs
    assert "DeviceRequests" in first["HostConfig"] and "DeviceRequests" not in second["HostConfig"]
    assert first["HostConfig"]["Mounts"] == second["HostConfig"]["Mounts"] != []


# -- limits --------------------------------------------------------------------------------------


async def test_config_carries_the_limits_and_drops_every_privilege(tmp_path: Path) -> None:
    backend = FakeBackend(files=ALL_OUTPUTS)
    limits = RunLimits(
        memory=16 << 20,
        cpus=1.5,
        pids=64,
        shm_size=1 * GiB,
        timeout=600,
        log_bytes=1 << 20,
        output_bytes=GiB,
        disk_reserve=0,
    )
    await run(backend, make_job(tmp_path, limits=limits))
    [config] = backend.configs
    host = config["HostConfig"]
    assert host["Memory"] == 16 << 20
    assert host["MemorySwap"] == 16 << 20  # equal to Memory: no swap on top
    assert host["NanoCpus"] == 1_500_000_000
    assert host["PidsLimit"] == 64
    assert host["ShmSize"] == 1 * GiB
    assert host["CapDrop"] == ["ALL"]
    assert host["SecurityOpt"] == ["no-new-privileges"]
    assert host["Init"] is True
    assert host["NetworkMode"] == "none"


async def test_no_cpu_limit_sets_no_nanocpus(tmp_path: Path) -> None:
    backend = FakeBackend(files=ALL_OUTPUTS)
    await run(backend, make_job(tmp_path))  # LIMITS.cpus == 0
    assert "NanoCpus" not in backend.configs[0]["HostConfig"]


async def test_oom_reason_names_the_runs_own_limit(tmp_path: Path) -> None:
    backend = FakeBackend(exit_code=137, oom_killed=True)
    limits = RunLimits(
        memory=16 << 20, cpus=0, pids=64, shm_size=GiB, timeout=600, log_bytes=1 << 20, output_bytes=GiB, disk_reserve=0
    )
    outcome, _, _ = await run(backend, make_job(tmp_path, limits=limits))
    assert outcome == RunOutcome(False, "exceeded the memory limit of 16 MiB", 137)


async def test_a_run_over_its_time_is_stopped_and_fails_saying_so(tmp_path: Path) -> None:
    backend = FakeBackend(files=ALL_OUTPUTS, fail={"wait_forever": RuntimeError()})
    limits = RunLimits(
        memory=GiB, cpus=0, pids=64, shm_size=GiB, timeout=1, log_bytes=1 << 20, output_bytes=GiB, disk_reserve=0
    )
    outcome, started, log = await run(backend, make_job(tmp_path, limits=limits))
    assert outcome == RunOutcome(False, "timed out after 1 s", None)
    assert started == ["cid-1"]
    assert backend.removed == ["cid-1"]  # removed with force: the engine kills it first
    assert not any(c.startswith("get_file") for c in backend.calls)
    assert b"model says hello\n" in log.data  # what it said before the limit stays in the log
    await asyncio.sleep(0)
    assert backend.following is False  # and nothing writes into the log after the outcome


async def test_the_run_log_is_capped(tmp_path: Path) -> None:
    backend = FakeBackend(files=ALL_OUTPUTS, log_lines=(b"0123456789" * 10 + b"\n",) * 50)
    limits = RunLimits(
        memory=GiB, cpus=0, pids=64, shm_size=GiB, timeout=600, log_bytes=1024, output_bytes=GiB, disk_reserve=0
    )
    outcome, _, log = await run(backend, make_job(tmp_path, limits=limits))
    assert outcome.ok  # a long log is no failure
    assert log.data.endswith(b"\ninferserver: log truncated at 1 KiB (LOG_MAX_BYTES)\n")
    assert len(log.data) == 1024 + len(b"\ninferserver: log truncated at 1 KiB (LOG_MAX_BYTES)\n")


# -- image names ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("image", "expected"),
    [
        ("a/b:1", ("a/b", "1")),
        ("a/b", ("a/b", "latest")),
        ("ubuntu", ("ubuntu", "latest")),
        ("localhost:5000/a", ("localhost:5000/a", "latest")),
        ("localhost:5000/a:2", ("localhost:5000/a", "2")),
        ("a@sha256:abc", ("a", "sha256:abc")),
        ("localhost:5000/a@sha256:abc", ("localhost:5000/a", "sha256:abc")),
    ],
)
def test_split_image(image: str, expected: tuple[str, str]) -> None:
    assert split_image(image) == expected


@pytest.mark.parametrize("mode", list(GpuMode))
async def test_a_job_with_pool_devices_asks_for_exactly_those_whatever_the_mode(tmp_path: Path, mode: GpuMode) -> None:
    backend = FakeBackend(files=ALL_OUTPUTS)
    job = dataclasses.replace(make_job(tmp_path), gpu_ids=["2", "GPU-aa"])
    outcome, _, _ = await run(backend, job, mode)
    assert outcome.ok
    assert backend.configs[0]["HostConfig"]["DeviceRequests"] == [
        {"Driver": "", "DeviceIDs": ["2", "GPU-aa"], "Capabilities": [["gpu"]]}
    ]


@pytest.mark.parametrize("mode", list(GpuMode))
async def test_a_cpu_only_job_asks_for_no_gpu_whatever_the_mode(tmp_path: Path, mode: GpuMode) -> None:
    backend = FakeBackend(files=ALL_OUTPUTS, nvidia=True)
    outcome, _, _ = await run(backend, dataclasses.replace(make_job(tmp_path), gpu_ids=[]), mode)
    assert outcome.ok
    assert "DeviceRequests" not in backend.configs[0]["HostConfig"]


async def test_pool_devices_refused_by_the_engine_fail_the_run_with_its_reason(tmp_path: Path) -> None:
    # No CPU fallback: the operator listed the GPUs, so a refusal is a real problem to show.
    backend = FakeBackend(files=ALL_OUTPUTS, gpu_driver=False)
    outcome, started, _ = await run(backend, dataclasses.replace(make_job(tmp_path), gpu_ids=["0"]), GpuMode.AUTO)
    assert not outcome.ok and "could not select device driver" in outcome.reason
    assert started == []


# -- staging out: limits, our own disk's errors, cancels -------------------------------------------------------


def output_limits(output_bytes: int = GiB, disk_reserve: int = 0) -> RunLimits:
    return dataclasses.replace(LIMITS, output_bytes=output_bytes, disk_reserve=disk_reserve)


def partials(tmp_path: Path) -> list[str]:
    return [p.name for p in (tmp_path / "outputs").iterdir() if p.name.endswith(".partial")]


async def test_a_full_disk_names_session_path_not_the_engine_and_leaves_no_partial(tmp_path: Path) -> None:
    job = dataclasses.replace(make_job(tmp_path), disk_note="SESSION_PATH (/srv/sessions)")
    (tmp_path / "outputs" / ".vol.nii.gz.partial").symlink_to("/dev/full")  # every write there: ENOSPC
    backend = FakeBackend(files=ALL_OUTPUTS)
    outcome, _, _ = await run(backend, job)
    assert outcome == RunOutcome(False, "no space left on SESSION_PATH (/srv/sessions) while writing output vol")
    assert backend.removed == ["cid-1"]
    assert partials(tmp_path) == []


async def test_another_local_write_error_names_the_output_and_its_file(tmp_path: Path) -> None:
    job = make_job(tmp_path)
    partial = tmp_path / "outputs" / ".seg.nii.gz.partial"
    partial.mkdir()  # opening it for writing: EISDIR
    outcome, _, _ = await run(FakeBackend(files=ALL_OUTPUTS), job)
    assert outcome == RunOutcome(False, f"could not write output seg to {partial}: Is a directory")


async def test_an_output_over_max_output_bytes_fails_before_its_first_byte(tmp_path: Path) -> None:
    backend = FakeBackend(files={"/data/seg.nii.gz": b"s" * 100, "/data/vol.nii.gz": b"v" * 101})
    outcome, _, _ = await run(backend, make_job(tmp_path, limits=output_limits(output_bytes=100)))
    assert outcome == RunOutcome(False, "output vol is 101 bytes, over the limit of 100 bytes (MAX_OUTPUT_BYTES)")
    assert backend.removed == ["cid-1"]
    assert partials(tmp_path) == []


async def test_an_output_that_would_eat_into_the_disk_reserve_fails_naming_it(tmp_path: Path) -> None:
    job = dataclasses.replace(
        make_job(tmp_path, limits=output_limits(disk_reserve=1 << 60)), disk_note="SESSION_PATH (/srv/sessions)"
    )
    outcome, _, _ = await run(FakeBackend(files=ALL_OUTPUTS), job)
    assert outcome.ok is False
    assert outcome.reason.startswith(
        "not enough disk space for output seg (12 bytes): SESSION_PATH (/srv/sessions) "
        "keeps 1048576 TiB free (DISK_RESERVE_BYTES) and has "
    ), outcome.reason
    assert partials(tmp_path) == []


async def test_the_reserve_is_checked_again_as_the_output_streams(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    free = iter([10 * GiB] + [GiB] * 1000)  # another writer takes the disk once the copy has begun
    monkeypatch.setattr(outputs, "free_bytes", lambda path: next(free))
    monkeypatch.setattr(outputs, "DISK_CHECK_BYTES", 64 << 10)
    job = make_job(tmp_path, outputs=("seg",), limits=output_limits(disk_reserve=2 * GiB))
    backend = FakeBackend(files={"/data/seg.nii.gz": bytes(1 << 20)})
    outcome, _, _ = await run(backend, job)
    assert outcome == RunOutcome(
        False,
        f"not enough disk space for output seg (1 MiB): {tmp_path / 'outputs'} keeps "
        "2 GiB free (DISK_RESERVE_BYTES) and has 1.0 GiB free",
    )
    assert partials(tmp_path) == []


async def test_a_cancel_while_an_output_is_staged_out_removes_the_container_and_the_partial(tmp_path: Path) -> None:
    backend = FakeBackend(files=ALL_OUTPUTS | {"/data/seg.nii.gz": bytes(4 << 20)}, stall_after=1 << 20)
    job = make_job(tmp_path)
    task = asyncio.create_task(run(backend, job))
    await asyncio.wait_for(backend.stalled.wait(), 5)
    assert partials(tmp_path) == [".seg.nii.gz.partial"]
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert backend.removed == ["cid-1"]
    assert list((tmp_path / "outputs").iterdir()) == []


async def test_a_detach_while_an_output_is_staged_out_leaves_the_container_and_no_partial(tmp_path: Path) -> None:
    backend = FakeBackend(files=ALL_OUTPUTS | {"/data/seg.nii.gz": bytes(4 << 20)}, stall_after=1 << 20)
    task = asyncio.create_task(run(backend, make_job(tmp_path)))
    await asyncio.wait_for(backend.stalled.wait(), 5)
    task.cancel(execute.DETACH)  # server shutdown: the next start re-attaches and stages out anew
    with pytest.raises(asyncio.CancelledError):
        await task
    assert backend.removed == []
    assert list((tmp_path / "outputs").iterdir()) == []


async def test_repeated_cancels_do_not_cut_the_removal_short(tmp_path: Path) -> None:
    backend = FakeBackend(files=ALL_OUTPUTS | {"/data/seg.nii.gz": bytes(4 << 20)}, stall_after=1 << 20)
    backend.remove_seconds = 0.3  # a container holding gigabytes takes a while to go
    task = asyncio.create_task(run(backend, make_job(tmp_path)))
    await asyncio.wait_for(backend.stalled.wait(), 5)
    for _ in range(5):  # the dispatcher cancels a cancelled run again at each tick
        task.cancel()
        await asyncio.sleep(0.05)
    with pytest.raises(asyncio.CancelledError):
        await task
    assert backend.removed == ["cid-1"]  # removed before the run ended, not abandoned half way


class SlowStartBackend(FakeBackend):
    """The engine takes its time in one step of a start (`create`, `put_files`, `start`) until `go` is set;
    like dockerd, it finishes that step even when the client stops waiting for the answer."""

    def __init__(self, slow: str) -> None:
        super().__init__()
        self.slow = slow
        self.entered = asyncio.Event()
        self.go = asyncio.Event()

    async def _take_time(self, step: str) -> None:
        if step == self.slow:
            self.entered.set()
            await asyncio.shield(self.go.wait())  # the engine's side: a cancelled request does not stop it

    async def create(self, config: dict[str, Any], name: str) -> str:
        await self._take_time("create")
        return await super().create(config, name)

    async def put_files(self, container_id: str, files: list[FileTransfer], dirs_for: Sequence[str] = ()) -> None:
        await self._take_time("put_files")
        await super().put_files(container_id, files, dirs_for)

    async def start(self, container_id: str) -> None:
        await self._take_time("start")
        await super().start(container_id)


async def cancel_again_and_again(task: asyncio.Task[Any], then: asyncio.Event, message: str | None = None) -> None:
    """Cancel as the dispatcher does (again at each tick), let the engine finish its step, cancel some more."""
    for tick in range(6):
        task.cancel(message)
        await asyncio.sleep(0.01)
        if tick == 2:
            then.set()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(task, 5)


@pytest.mark.parametrize("step", ["create", "put_files", "start"])
async def test_a_cancel_at_any_step_of_a_start_removes_the_container_it_made(tmp_path: Path, step: str) -> None:
    backend = SlowStartBackend(step)
    backend.remove_seconds = 0.05  # long enough for cancels to land during the removal too
    task = asyncio.create_task(run(backend, make_job(tmp_path)))
    await asyncio.wait_for(backend.entered.wait(), 5)
    await cancel_again_and_again(task, backend.go)
    assert backend.names == [make_job(tmp_path).container_name]  # created once, never started after the cancel
    assert backend.removed == ["cid-1"]


async def test_a_detach_during_create_leaves_no_unrecorded_container(tmp_path: Path) -> None:
    """Shutdown (DETACH) while the engine creates: nobody recorded the container, so nobody would re-attach it."""
    backend = SlowStartBackend("create")
    task = asyncio.create_task(run(backend, make_job(tmp_path)))
    await asyncio.wait_for(backend.entered.wait(), 5)
    await cancel_again_and_again(task, backend.go, execute.DETACH)
    assert backend.removed == ["cid-1"]


async def test_a_cancel_while_the_container_is_recorded_removes_it_after_the_record(tmp_path: Path) -> None:
    backend = FakeBackend()
    happened: list[str] = []
    recording, go = asyncio.Event(), asyncio.Event()

    async def on_started(container_id: str) -> None:
        recording.set()
        await go.wait()
        happened.append(f"recorded {container_id}")

    async def remove(container_id: str) -> None:
        happened.append(f"removed {container_id}")

    backend.remove = remove  # type: ignore[method-assign]
    task = asyncio.create_task(Runner(backend, GpuMode.NONE).run(make_job(tmp_path), MemoryLog(), on_started))
    await asyncio.wait_for(recording.wait(), 5)
    await cancel_again_and_again(task, go)
    # The record is never cut short, so it cannot land after the caller has written `cancelled`.
    assert happened == ["recorded cid-1", "removed cid-1"]
