"""Hostile volumes against a real `inferserver serve` with the copy model: a NRRD `data file` never reads a host
file (inputs and `?format=` outputs), decompression bombs are refused from the header with the server's memory
flat, one conversion per output, 507 and no file when the disk reserve would be eaten, nothing left after a
kill -9, NIfTI short by its datatype refused, and lossless .nii <-> .nii.gz."""

from __future__ import annotations

import contextlib
import gzip
import json
import os
import stat
import subprocess
import threading
import time
import zlib
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import nibabel
import numpy as np
import pytest

from ..conftest import TEST_MODELS, real_volume
from .conftest import (
    Server,
    kill_server,
    restart_server,
    serve_command,
    start_server,
    stop_and_check,
    write_nifti,
)

OCTETS = {"Content-Type": "application/octet-stream"}
REFUSED_FIELD = "NRRD field 'data file' is refused: only data attached right after the header is read"
GiB = 1 << 30


def write_models(root: Path) -> Path:
    """tests/models/copy.json (.nii.gz) plus the same image with .nrrd and with .nii inputs and outputs."""
    root.mkdir(parents=True, exist_ok=True)
    spec = json.loads((TEST_MODELS / "copy.json").read_text())
    (root / "copy.json").write_text(json.dumps(spec))
    for name, ext in (("copy_nrrd", ".nrrd"), ("copy_nii", ".nii")):
        spec["id"] = name
        spec["inputs"]["input_vol"]["extension"] = ext
        spec["outputs"]["output_vol"]["extension"] = ext
        (root / f"{name}.json").write_text(json.dumps(spec))
    return root


def serve(tmp: Path, **settings: str) -> Server:
    return start_server(tmp, write_models(tmp / "models"), **settings)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, fixture_images: None) -> Iterator[Server]:
    tmp = tmp_path_factory.mktemp("volumes")
    server = serve(tmp)
    with server.client() as client:  # warm up (imports, first session) so peak memory measures the volumes alone
        sid = new_session(client, "copy")
        assert upload(client, sid, _real_nrrd(tmp)).status_code == 200
        assert server.wait_status(sid, {"complete", "failed"})["status"] == "complete"
        assert client.get(f"/sessions/{sid}/outputs/output_vol", params={"format": ".nrrd"}).status_code == 200
    yield server
    stop_and_check([server])


def peak_rss(server: Server) -> int:
    """The server process's peak resident memory so far (VmHWM), in bytes."""
    for line in Path(f"/proc/{server.process.pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM")


def new_session(client: httpx.Client, model: str) -> str:
    response = client.post(f"/models/{model}", json={"inputs": {}, "params": {}, "outputs": {}})
    assert response.status_code == 200, response.text
    return response.json()["data"]["session_id"]


def upload(client: httpx.Client, sid: str, body: bytes) -> httpx.Response:
    return client.put(f"/sessions/{sid}/inputs/input_vol", content=body, headers=OCTETS)


def detail(response: httpx.Response) -> str:
    return response.json()["errors"][0]["detail"]


def inputs_of(server: Server, sid: str) -> list[str]:
    return sorted(p.name for p in (server.session_path / sid / "inputs").iterdir())


def output_files(server: Server, sid: str) -> list[str]:
    return sorted(p.name for p in (server.session_path / sid / "outputs").iterdir() if not p.name.endswith(".lock"))


def leak_nrrd(target: str, sizes: str = "64 1 1") -> bytes:
    return f"NRRD0004\ntype: uint8\ndimension: 3\nsizes: {sizes}\nencoding: raw\ndata file: {target}\n\n".encode()


LEAKS = {
    "etc-passwd": leak_nrrd("/etc/passwd"),
    "relative-db": leak_nrrd("../../inferserver.db"),
    "proc-environ": leak_nrrd("/proc/self/environ"),
    "dev-zero-huge": leak_nrrd("/dev/zero", "1024 1024 1000"),
    "list": b"NRRD0004\ntype: uint8\ndimension: 3\nsizes: 64 1 1\nencoding: raw\ndata file: LIST\n/etc/passwd\n\n",
    "pattern": leak_nrrd("../../../../../../../etc/%03d 1 64 1"),
}


@pytest.mark.parametrize("case", list(LEAKS))
def test_a_nrrd_data_file_upload_is_refused_and_reads_nothing(server: Server, case: str) -> None:
    before = peak_rss(server)
    with server.client() as client:
        sid = new_session(client, "copy")
        answer = upload(client, sid, LEAKS[case])
        assert answer.status_code == 400, answer.text
        assert detail(answer) == (
            f"input input_vol: {REFUSED_FIELD} (no detached data file, no byte or line skip) "
            "(the upload claims to be .nrrd; it cannot be converted to .nii.gz)"
        )
        status = client.get(f"/sessions/{sid}").json()["data"]
    assert status["status"] == "waiting" and status["needed"] == ["input_vol"]
    assert inputs_of(server, sid) == []
    assert peak_rss(server) - before < 32 << 20


def test_a_fifo_data_file_blocks_nothing_and_is_never_opened(server: Server, tmp_path: Path) -> None:
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    real_nrrd = _real_nrrd(tmp_path)
    with server.client() as client, ThreadPoolExecutor(2) as pool:
        hostile_sid, other_sid = new_session(client, "copy"), new_session(client, "copy")
        hostile = pool.submit(upload, client, hostile_sid, leak_nrrd(str(fifo), "1024 1024 64"))
        other = pool.submit(upload, client, other_sid, real_nrrd)  # an unrelated upload that is converted too
        assert other.result(timeout=60).status_code == 200
        answer = hostile.result(timeout=60)
    assert answer.status_code == 400 and REFUSED_FIELD in detail(answer)
    assert server.wait_status(other_sid, {"complete", "failed"})["status"] == "complete"
    with pytest.raises(OSError) as no_reader:  # nothing ever opened the FIFO for reading
        os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
    assert no_reader.value.errno == 6  # ENXIO


def _real_nrrd(tmp: Path) -> bytes:
    from ..conftest import write_real_nrrd

    return write_real_nrrd(tmp / "real.nrrd").read_bytes()


@pytest.mark.parametrize("case", ["etc-passwd", "relative-db", "proc-environ"])
def test_format_on_a_nrrd_output_with_a_data_file_is_refused_without_convert_inputs(
    make_server: object, tmp_path: Path, case: str
) -> None:
    server = serve(tmp_path / "server", CONVERT_INPUTS="false")
    try:
        with server.client() as client:
            sid = new_session(client, "copy_nrrd")
            assert upload(client, sid, LEAKS[case]).status_code == 200  # kept as it is: the model reads it
            assert server.wait_status(sid, {"complete", "failed"})["status"] == "complete"
            for target in (".nii", ".nii.gz"):
                answer = client.get(f"/sessions/{sid}/outputs/output_vol", params={"format": target})
                assert answer.status_code == 400, answer.text
                assert detail(answer) == (
                    f"output output_vol cannot be converted to {target}: output output_vol: "
                    f"{REFUSED_FIELD} (no detached data file, no byte or line skip)"
                )
        outputs = sorted(p.name for p in (server.session_path / sid / "outputs").iterdir() if p.suffix != ".lock")
        assert outputs == ["output_vol.nrrd"]
    finally:
        stop_and_check([server])


@pytest.fixture(scope="module")
def bomb(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    """A 2 MB .nii.gz of zeros that decompresses to a 1024^3 int16 volume (2 GiB)."""
    header = nibabel.Nifti1Header()
    header.set_data_shape((1024, 1024, 1024))
    header.set_data_dtype(np.int16)
    header["vox_offset"] = 352
    packer = zlib.compressobj(9, zlib.DEFLATED, 31)
    parts = [packer.compress(header.binaryblock + b"\0" * 4)]
    zeros = bytes(64 << 20)
    parts += [packer.compress(zeros) for _ in range(32)]
    parts.append(packer.flush())
    data = b"".join(parts)
    assert len(data) < 3_000_000
    return data


BOMB_REFUSAL = (
    "its NIfTI header describes 2147483648 bytes of voxels (1024 x 1024 x 1024, 2 bytes each), over the "
    "conversion limit of 1073741824 bytes (MAX_CONVERT_BYTES)"
)


def test_a_decompression_bomb_is_413_from_its_header_with_memory_flat(server: Server, bomb: bytes) -> None:
    before = peak_rss(server)
    with server.client() as client:
        sid = new_session(client, "copy_nrrd")
        answer = upload(client, sid, bomb)
        assert answer.status_code == 413, answer.text
        assert detail(answer) == f"input input_vol: {BOMB_REFUSAL}"
        assert inputs_of(server, sid) == []
        # the same bytes as an output (the copy model keeps .nii.gz as it is), asked for as .nrrd
        sid = new_session(client, "copy")
        assert upload(client, sid, bomb).status_code == 200
        assert server.wait_status(sid, {"complete", "failed"})["status"] == "complete"
        with ThreadPoolExecutor(6) as pool:
            answers = list(
                pool.map(
                    lambda _: client.get(f"/sessions/{sid}/outputs/output_vol", params={"format": ".nrrd"}), range(6)
                )
            )
    for answer in answers:
        assert answer.status_code == 413 and detail(answer) == f"output output_vol: {BOMB_REFUSAL}"
    grown = peak_rss(server) - before
    print(f"peak RSS growth while refusing the bomb: {grown / 2**20:.1f} MiB")
    assert grown < 32 << 20


def test_six_parallel_format_requests_run_one_conversion(server: Server, tmp_path: Path) -> None:
    _six_parallel_requests_run_one_conversion(server, tmp_path, measure=True)


def test_single_flight_holds_across_worker_processes(fixture_images: None, tmp_path: Path) -> None:
    server = start_server(tmp_path / "server", write_models(tmp_path / "models"), command=serve_command(workers=2))
    try:
        _six_parallel_requests_run_one_conversion(server, tmp_path, measure=False)
    finally:
        stop_and_check([server])


def _six_parallel_requests_run_one_conversion(server: Server, tmp_path: Path, *, measure: bool) -> None:
    volume = write_nifti(tmp_path / "v.nii.gz", 40)
    with server.client() as client:
        sid = new_session(client, "copy")
        assert upload(client, sid, volume.read_bytes()).status_code == 200
        assert server.wait_status(sid, {"complete", "failed"})["status"] == "complete"
        before = peak_rss(server) if measure else 0
        with ThreadPoolExecutor(6) as pool:
            answers = list(
                pool.map(
                    lambda _: client.get(f"/sessions/{sid}/outputs/output_vol", params={"format": ".nrrd"}), range(6)
                )
            )
    grown = peak_rss(server) - before if measure else 0
    if measure:
        print(f"peak RSS growth serving six parallel ?format=.nrrd of a 40 MB volume: {grown / 2**20:.1f} MiB")
    assert [a.status_code for a in answers] == [200] * 6
    assert len({a.content for a in answers}) == 1 and len(answers[0].content) > 39_000_000
    log = server.output()
    assert (
        log.count(
            f"output output_vol: converting .nii.gz to .nrrd (39753500 bytes of voxels): {server.session_path / sid}"
        )
        == 1
    ), log
    assert grown < 64 << 20


@pytest.mark.parametrize("datatype_case", ["bitpix lies", "short by datatype"])
def test_nifti_short_by_its_datatype_is_refused(server: Server, datatype_case: str) -> None:
    header = nibabel.Nifti1Header()
    header.set_data_shape((20, 20, 20))
    header.set_data_dtype(np.float32)  # datatype 16, bitpix 32: 32000 bytes of voxels
    header["vox_offset"] = 352
    if datatype_case == "bitpix lies":
        header["bitpix"] = 8  # what the old check trusted: 8000 bytes would have been "enough"
    body = header.binaryblock + b"\0" * 4 + b"\1" * 8000
    with server.client() as client:
        sid = new_session(client, "copy_nrrd")
        answer = upload(client, sid, body)
    assert answer.status_code == 400, answer.text
    reason = (
        "NIfTI bitpix 8 disagrees with datatype 16 (32 bits)"
        if datatype_case == "bitpix lies"
        else "its header describes 32352 bytes of header and voxels, but the file holds 8352"
    )
    assert detail(answer) == (
        f"input input_vol: {reason} (the upload claims to be .nii; it cannot be converted to .nrrd)"
    )
    assert inputs_of(server, sid) == []


def test_nifti_gzip_and_gunzip_are_lossless_for_inputs_and_outputs(server: Server) -> None:
    original = real_volume().read_bytes()  # big-endian, qform/sform codes 2
    with server.client() as client:
        sid = new_session(client, "copy")  # .nii.gz input: the .nii upload is gzipped
        assert upload(client, sid, original).status_code == 200
        assert gzip.decompress((server.session_path / sid / "inputs" / "input_vol.nii.gz").read_bytes()) == original
        assert server.wait_status(sid, {"complete", "failed"})["status"] == "complete"
        as_nii = client.get(f"/sessions/{sid}/outputs/output_vol", params={"format": ".nii"})
        sid = new_session(client, "copy_nii")  # .nii input: a .nii.gz upload is gunzipped
        assert upload(client, sid, gzip.compress(original)).status_code == 200
        assert (server.session_path / sid / "inputs" / "input_vol.nii").read_bytes() == original
        assert server.wait_status(sid, {"complete", "failed"})["status"] == "complete"
        as_gz = client.get(f"/sessions/{sid}/outputs/output_vol", params={"format": ".nii.gz"})
    assert as_nii.status_code == 200 and as_nii.content == original
    assert as_gz.status_code == 200 and gzip.decompress(as_gz.content) == original


def test_nrrd_round_trip_keeps_voxels_geometry_and_descrip_but_not_byte_order_or_codes(
    server: Server, tmp_path: Path
) -> None:
    """NRRD <-> NIfTI goes through SimpleITK: what survives it (the README says the same)."""
    original = nibabel.load(real_volume())
    with server.client() as client:
        sid = new_session(client, "copy_nrrd")
        assert upload(client, sid, real_volume().read_bytes()).status_code == 200
        assert server.wait_status(sid, {"complete", "failed"})["status"] == "complete"
        answer = client.get(f"/sessions/{sid}/outputs/output_vol", params={"format": ".nii"})
    assert answer.status_code == 200
    (tmp_path / "back.nii").write_bytes(answer.content)
    back = nibabel.load(tmp_path / "back.nii")
    assert np.array_equal(np.asanyarray(back.dataobj), np.asanyarray(original.dataobj))
    np.testing.assert_allclose(back.affine, original.affine, atol=1e-4)
    assert back.get_data_dtype().kind == "i" and back.get_data_dtype().itemsize == 2
    assert np.array_equal(back.header["pixdim"][1:4], original.header["pixdim"][1:4])
    assert back.header["descrip"] == original.header["descrip"]
    # not kept: the byte order (written little-endian) and the qform/sform codes (2, aligned, become 1, scanner)
    assert back.header.endianness == "<" and original.header.endianness == ">"
    assert (int(back.header["qform_code"]), int(back.header["sform_code"])) == (1, 1)


def test_the_disk_reserve_is_507_and_leaves_no_file(fixture_images: None, tmp_path: Path) -> None:
    disk = tmp_path / "disk"
    disk.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=300m", "tmpfs", str(disk)], check=True)
    try:
        server = start_server(
            tmp_path / "srv",
            write_models(tmp_path / "models"),
            session_path=disk / "sessions",
            DISK_RESERVE_BYTES="100MiB",
        )
        try:
            # 250 KB of gzip that decompresses to 230 MB of voxels: the .nii.gz written would eat into the reserve
            data = gzip.compress(bytes(230_000_000), 9)
            body = b"NRRD0004\ntype: uint8\ndimension: 3\nsizes: 1000 1000 230\nencoding: gzip\n\n" + data
            free_before = os.statvfs(disk).f_bavail
            with server.client() as client:
                sid = new_session(client, "copy")
                answer = upload(client, sid, body)
            assert answer.status_code == 507, answer.text
            assert detail(answer).startswith(
                "not enough disk space for input input_vol: the server keeps 100 MiB free (DISK_RESERVE_BYTES) and has "
            )
            assert inputs_of(server, sid) == []
            assert abs(os.statvfs(disk).f_bavail - free_before) < 64  # pages: nothing was written and left
        finally:
            stop_and_check([server])
    finally:
        subprocess.run(["umount", str(disk)], check=True)


def test_kill_9_during_a_conversion_leaves_no_partial_after_restart(fixture_images: None, tmp_path: Path) -> None:
    server = serve(tmp_path / "server")
    servers = [server]
    try:
        volume = tmp_path / "v.nii"
        data = np.random.default_rng(0).standard_normal((400, 400, 400), dtype=np.float32)  # 256 MB, slow to gzip
        nibabel.save(nibabel.Nifti1Image(data, np.eye(4)), volume)
        del data
        with server.client() as client:
            sid = new_session(client, "copy_nii")
            with volume.open("rb") as stream:
                assert (
                    client.put(f"/sessions/{sid}/inputs/input_vol", content=stream, headers=OCTETS).status_code == 200
                )
        assert server.wait_status(sid, {"complete", "failed"}, timeout=120)["status"] == "complete"
        outputs = server.session_path / sid / "outputs"
        request = threading.Thread(target=lambda: _get_quietly(server, sid), daemon=True)
        request.start()
        deadline = time.monotonic() + 60
        while not (partials := list(outputs.glob(".*.convert-*"))):
            assert time.monotonic() < deadline, "the conversion never started writing"
            time.sleep(0.02)
        while partials[0].exists() and partials[0].stat().st_size < 1 << 20:
            time.sleep(0.02)
        kill_server(server)
        time.sleep(1)
        sizes = [p.stat().st_size for p in partials if p.exists()]
        time.sleep(1)
        assert sizes == [p.stat().st_size for p in partials if p.exists()]  # the child died with the server
        assert partials[0].exists(), "the test needs a partial to be left by the kill"
        server = restart_server(server)
        servers.append(server)
        deadline = time.monotonic() + 30
        while list(outputs.glob(".*.convert-*")) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert sorted(p.name for p in outputs.iterdir() if not p.name.endswith(".lock")) == ["output_vol.nii"]
        assert all(stat.S_ISREG(p.stat().st_mode) for p in outputs.iterdir())
    finally:
        stop_and_check(servers)


def _get_quietly(server: Server, sid: str) -> None:
    with contextlib.suppress(httpx.HTTPError):  # the server is killed under this request
        httpx.get(f"{server.url}/sessions/{sid}/outputs/output_vol", params={"format": ".nii.gz"}, timeout=120)


def test_a_disk_that_fills_during_conversion_is_507_not_400(fixture_images: None, tmp_path: Path) -> None:
    """Two conversions pass the reserve check together (DISK_RESERVE_BYTES=0), then both write 154 MB to a 250 MB
    disk: each that runs out answers 507 (not 400) and leaves no file."""
    disk = tmp_path / "disk"
    disk.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=250m", "tmpfs", str(disk)], check=True)
    try:
        server = start_server(
            tmp_path / "srv", write_models(tmp_path / "models"), session_path=disk / "sessions", DISK_RESERVE_BYTES="0"
        )
        try:
            volume = tmp_path / "zeros.nii.gz"  # 154 MB of float32 zeros, 150 KB gzipped
            nibabel.save(nibabel.Nifti1Image(np.zeros((400, 400, 240), np.float32), np.eye(4)), volume)
            with server.client() as client:
                sids = [new_session(client, "copy") for _ in range(2)]
                for sid in sids:
                    assert upload(client, sid, volume.read_bytes()).status_code == 200
                for sid in sids:
                    assert server.wait_status(sid, {"complete", "failed"})["status"] == "complete"
                with ThreadPoolExecutor(2) as pool:
                    answers = list(
                        pool.map(
                            lambda sid: client.get(f"/sessions/{sid}/outputs/output_vol", params={"format": ".nrrd"}),
                            sids,
                        )
                    )
            # Both may run out (their writes interleave) or one may finish first: never a 400, never a leftover.
            statuses = [a.status_code for a in answers]
            assert 507 in statuses and set(statuses) <= {200, 507}, [a.text[:300] for a in answers]
            for sid, answer in zip(sids, answers, strict=True):
                if answer.status_code == 507:
                    assert detail(answer).startswith(
                        "output output_vol: not enough disk space to write the converted file"
                    )
                kept = ["output_vol.nii.gz"] + ([".output_vol.nii.gz.as.nrrd"] if answer.status_code == 200 else [])
                assert output_files(server, sid) == sorted(kept)
            # Asked again: with both failed the space is free and one conversion alone fits; with the other's
            # result on the disk, the check before starting refuses it.
            retry = next(sid for sid, answer in zip(sids, answers, strict=True) if answer.status_code == 507)
            with server.client() as client:
                again = client.get(f"/sessions/{retry}/outputs/output_vol", params={"format": ".nrrd"})
            if statuses == [507, 507]:
                assert again.status_code == 200 and len(again.content) > 153_600_000
            else:
                assert again.status_code == 507 and "(DISK_RESERVE_BYTES)" in detail(again)
        finally:
            stop_and_check([server])
    finally:
        subprocess.run(["umount", str(disk)], check=True)
