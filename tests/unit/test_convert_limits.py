"""The conversion child's limits, run for real: file size (EFBIG -> 507), memory (413), wall clock (413, killed),
cancellation (killed, no file), single flight and the MAX_CONVERSIONS slots; and lossless .nii <-> .nii.gz."""

from __future__ import annotations

import asyncio
import gzip
import logging
import shutil
import sys
import time
from pathlib import Path

import nibabel
import numpy as np
import pytest

from inferserver.sessions.errors import InsufficientStorage
from inferserver.sessions.quotas import UploadLimits
from inferserver.volumes.convert import Converter, ConvertLimits
from inferserver.volumes.errors import ConversionNoSpace, ConversionTooLarge
from inferserver.volumes.verify import Volume

from ..conftest import real_volume

LABEL = "output v"


class Limited(ConvertLimits):
    """The server's limits with the child's memory and file size set by the test."""

    memory: int = 0
    file_size: int = 0

    def child_limits(self, volume: Volume) -> tuple[int, int]:
        memory, file_size = super().child_limits(volume)
        return self.memory or memory, self.file_size or file_size


def converter(tmp: Path, *, memory: int = 0, file_size: int = 0, timeout: int = 60, parallel: int = 2) -> Converter:
    limits = Limited(1 << 30, timeout, parallel, tmp / "slots")
    object.__setattr__(limits, "memory", memory)
    object.__setattr__(limits, "file_size", file_size)
    return Converter(limits, lambda label, coming: None)


def volume(tmp: Path, shape: tuple[int, int, int] = (200, 200, 200)) -> Path:
    path = tmp / "outputs" / "v.nii"
    path.parent.mkdir(parents=True, exist_ok=True)
    data = np.random.default_rng(0).random(shape, dtype=np.float32)  # gzip cannot shrink it
    nibabel.save(nibabel.Nifti1Image(data, np.eye(4)), path)
    return path


def leftovers(path: Path) -> list[str]:
    return sorted(p.name for p in path.parent.iterdir() if p != path and not p.name.endswith(".lock"))


async def test_a_write_past_the_file_size_limit_is_507_and_leaves_nothing(tmp_path: Path) -> None:
    path = volume(tmp_path)
    with pytest.raises(ConversionNoSpace, match=rf"^{LABEL}: not enough disk space to write the converted file"):
        await converter(tmp_path, file_size=1 << 20).converted_copy(path, ".nrrd", LABEL)
    with pytest.raises(ConversionNoSpace):
        await converter(tmp_path, file_size=1 << 16).converted_copy(path, ".nii.gz", LABEL)
    assert leftovers(path) == []


async def test_too_little_memory_is_413(tmp_path: Path) -> None:
    path = volume(tmp_path, (400, 400, 400))  # 256 MB of voxels in a 700 MiB address space
    with pytest.raises(
        ConversionTooLarge,
        match=rf"^{LABEL}: the conversion needs more memory than its limit of "
        r"734003200 bytes \(from MAX_CONVERT_BYTES\)$",
    ):
        await converter(tmp_path, memory=700 << 20).converted_copy(path, ".nrrd", LABEL)
    assert leftovers(path) == []


async def test_the_disk_reserve_is_checked_against_what_the_conversion_will_write(tmp_path: Path) -> None:
    path = volume(tmp_path)
    free = shutil.disk_usage(tmp_path).free
    reserve = UploadLimits(1 << 40, free - 16_000_000, tmp_path)  # room for 16 MB, the result is 32 MB
    conv = Converter(ConvertLimits(1 << 30, 60, 2, tmp_path / "slots"), reserve.check_disk)
    with pytest.raises(InsufficientStorage, match=rf"^not enough disk space for {LABEL}: .*\(DISK_RESERVE_BYTES\)"):
        await conv.converted_copy(path, ".nrrd", LABEL)
    assert leftovers(path) == []


def sleeper(tmp: Path, timeout: int) -> tuple[Converter, Path]:
    """A converter whose child never finishes (the wall-clock limit or a cancel ends it); it writes its pid."""
    pid_file = tmp / "child.pid"

    class Sleeper(Converter):
        command = (
            sys.executable,
            "-c",
            (f"import os, time; open('{pid_file}', 'w').write(str(os.getpid())); time.sleep(60)"),
        )

    return Sleeper(ConvertLimits(1 << 30, timeout, 2, tmp / "slots"), lambda label, coming: None), pid_file


def gone(pid_file: Path) -> bool:
    return not Path(f"/proc/{pid_file.read_text()}").exists()


async def test_a_conversion_past_convert_timeout_is_killed_413(tmp_path: Path) -> None:
    path = volume(tmp_path, (10, 10, 10))
    conv, pid_file = sleeper(tmp_path, 1)
    started = time.monotonic()
    with pytest.raises(
        ConversionTooLarge, match=rf"^{LABEL}: the conversion took longer than CONVERT_TIMEOUT \(1 s\)$"
    ):
        await conv.converted_copy(path, ".nrrd", LABEL)
    assert time.monotonic() - started < 5
    assert leftovers(path) == [] and gone(pid_file)


async def test_six_requests_for_one_output_run_one_conversion(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = volume(tmp_path, (150, 150, 150))
    conv = converter(tmp_path)
    with caplog.at_level(logging.INFO, logger="inferserver.volumes.convert"):
        results = await asyncio.gather(*(conv.converted_copy(path, ".nrrd", LABEL) for _ in range(6)))
    assert len(set(results)) == 1 and results[0].name == ".v.nii.as.nrrd"
    converting = f"{LABEL}: converting .nii to .nrrd (13500000 bytes of voxels): {path}"
    assert [r.getMessage() for r in caplog.records].count(converting) == 1


async def test_max_conversions_are_shared_slots(tmp_path: Path) -> None:
    """With MAX_CONVERSIONS=1 two conversions of different outputs run one after the other."""
    marks = tmp_path / "marks"
    marks.mkdir()

    class Stamping(Converter):
        command = (
            sys.executable,
            "-c",
            (
                "import sys, time, os, json; d = json.loads(sys.argv[1]); "
                f"open('{marks}/' + str(time.monotonic_ns()), 'w').write(d['dest']); time.sleep(0.5); "
                f"open('{marks}/' + str(time.monotonic_ns()), 'w').write(d['dest']); print('{{\"ok\": true}}')"
            ),
        )

    conv = Stamping(ConvertLimits(1 << 30, 60, 1, tmp_path / "slots"), lambda label, coming: None)
    a = volume(tmp_path / "a", (5, 5, 5))
    b = volume(tmp_path / "b", (5, 5, 5))
    with pytest.raises(FileNotFoundError):  # the fake child writes no result file: replacing it fails
        await asyncio.gather(conv.converted_copy(a, ".nrrd", LABEL), conv.converted_copy(b, ".nrrd", LABEL))
    await asyncio.sleep(1)
    order = [(marks / name).read_text() for name in sorted(p.name for p in marks.iterdir())]
    assert len(order) == 4 and order[0] == order[1] and order[2] == order[3] and order[0] != order[2]


async def test_a_cancelled_conversion_kills_its_child_and_leaves_nothing(tmp_path: Path) -> None:
    path = volume(tmp_path, (10, 10, 10))
    conv, pid_file = sleeper(tmp_path, 60)
    task = asyncio.create_task(conv.converted_copy(path, ".nrrd", LABEL))
    await asyncio.sleep(1)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert leftovers(path) == [] and gone(pid_file)
    # the slot is free again: another conversion gets it at once
    assert (await converter(tmp_path).converted_copy(path, ".nii.gz", LABEL)).name == ".v.nii.as.nii.gz"


@pytest.mark.parametrize("target", [".nii.gz"])
async def test_nifti_to_nifti_gz_and_back_is_byte_identical(tmp_path: Path, target: str) -> None:
    """nibabel's anatomical.nii: big-endian, qform/sform codes 2; every header byte and voxel is kept."""
    original = real_volume().read_bytes()
    outputs = tmp_path / "outputs"
    outputs.mkdir()
    plain = outputs / "v.nii"
    plain.write_bytes(original)
    conv = converter(tmp_path)
    packed = await conv.converted_copy(plain, target, LABEL)
    assert gzip.decompress(packed.read_bytes()) == original
    zipped = outputs / "w.nii.gz"
    shutil.copyfile(packed, zipped)
    unpacked = await conv.converted_copy(zipped, ".nii", LABEL)
    assert unpacked.read_bytes() == original
    header = nibabel.load(unpacked).header
    assert header.endianness == ">" and int(header["qform_code"]) == 2 and int(header["sform_code"]) == 2
    assert header["descrip"].tobytes().rstrip(b"\0") == b"spm - 3D normalized"


async def test_a_rescaled_int16_volume_is_read_as_float_within_its_limits(tmp_path: Path) -> None:
    """A CT with scl_slope/scl_inter: ITK reads it as float32, so the .nrrd is twice the stored voxels; the
    file-size and memory limits are sized for that, not for the int16 on disk."""
    outputs = tmp_path / "outputs"
    outputs.mkdir()
    path = outputs / "ct.nii.gz"
    data = np.random.default_rng(0).integers(0, 3000, (128, 128, 64), dtype=np.int16)
    image = nibabel.Nifti1Image(data, np.eye(4))
    image.header.set_slope_inter(1.0, -1024.0)
    nibabel.save(image, path)
    converted = await converter(tmp_path).converted_copy(path, ".nrrd", LABEL)
    assert converted.stat().st_size > 128 * 128 * 64 * 4
