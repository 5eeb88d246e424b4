"""The conversion child: `python -m inferserver.volumes.worker JOB_JSON`, started by convert.py.

It limits itself before touching the file (address space, CPU time, file size; killed with its parent),
verifies the volume with the server's own header code, and only then converts: .nii <-> .nii.gz as a plain
(g)zip/gunzip of the same bytes, anything else with SimpleITK forced to the one ImageIO of each format.
The outcome is one JSON line on stdout: {"ok": true} or {"error": KIND, "detail": MESSAGE}.
"""

from __future__ import annotations

import ctypes
import errno
import gzip
import json
import os
import resource
import signal
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from .errors import ConversionError, ConversionNoSpace, ConversionTooLarge
from .verify import BLOCK, open_regular, verify

IMAGE_IO = {".nrrd": "NrrdImageIO", ".nii": "NiftiImageIO", ".nii.gz": "NiftiImageIO"}
KINDS: dict[str, type[ConversionError]] = {
    "invalid": ConversionError,
    "too_large": ConversionTooLarge,
    "no_space": ConversionNoSpace,
}
_PR_SET_PDEATHSIG = 1


@dataclass(frozen=True)
class Job:
    source: str
    source_format: str
    dest: str  # a partial name in the same directory; the parent renames it into place
    target: str
    label: str
    max_voxel_bytes: int
    memory: int  # RLIMIT_AS
    cpu_seconds: int  # RLIMIT_CPU
    file_size: int  # RLIMIT_FSIZE

    def to_json(self) -> str:
        return json.dumps(self.__dict__)


def limit_self(job: Job) -> None:
    """Die with the parent (a kill -9 of the server must not leave a writer behind) and cap what we may use."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() == 1:  # the parent died before the line above
        os._exit(1)
    resource.setrlimit(resource.RLIMIT_AS, (job.memory, job.memory))
    # The hard limit a second later: SIGXCPU (reported as CONVERT_TIMEOUT) comes before the kernel's SIGKILL.
    resource.setrlimit(resource.RLIMIT_CPU, (job.cpu_seconds, job.cpu_seconds + 1))
    resource.setrlimit(resource.RLIMIT_FSIZE, (job.file_size, job.file_size))
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit then fails with EFBIG, reported as such


def run(job: Job) -> None:
    source, dest = Path(job.source), Path(job.dest)
    pair = {job.source_format, job.target}
    if pair == {".nii", ".nii.gz"}:
        verify(source, job.source_format, job.label, job.max_voxel_bytes)
        with open_regular(source, job.label) as src, open(dest, "xb") as out:
            _copy_gzip(src, out) if job.target == ".nii.gz" else _copy_gunzip(src, out)
        return
    # SimpleITK picks nothing by itself: it gets a hard link (same inode, in this directory) named for its format,
    # verified through that very link, and the one ImageIO of each format.
    link = dest.with_name(f"{dest.name}.source{job.source_format}")
    os.link(source, link, follow_symlinks=False)
    try:
        verify(link, job.source_format, job.label, job.max_voxel_bytes)
        _simpleitk(link, job, dest)
    finally:
        link.unlink()


def _copy_gzip(src: BinaryIO, out: BinaryIO) -> None:
    with gzip.GzipFile(filename="", mode="wb", fileobj=out, mtime=0) as packed:
        while block := src.read(BLOCK):
            packed.write(block)


def _copy_gunzip(src: BinaryIO, out: BinaryIO) -> None:
    with gzip.GzipFile(fileobj=src, mode="rb") as unpacked:
        while block := unpacked.read(BLOCK):
            out.write(block)


def _simpleitk(link: Path, job: Job, dest: Path) -> None:
    try:
        import SimpleITK as sitk
    except ImportError as exc:  # the server saw it importable: here it did not fit the address-space limit
        raise ConversionTooLarge(
            f"{job.label}: SimpleITK could not be loaded within the conversion's memory limit "
            f"of {job.memory} bytes: {exc}"
        ) from None
    try:
        image = sitk.ReadImage(str(link), sitk.sitkUnknown, IMAGE_IO[job.source_format])
        # .nrrd raw: fastest to write and to read back
        sitk.WriteImage(image, str(dest), job.target == ".nii.gz", imageIO=IMAGE_IO[job.target])
    except RuntimeError as exc:  # ITK's exceptions
        raise _itk_error(str(exc), job, dest) from exc


def _itk_error(message: str, job: Job, dest: Path) -> ConversionError:
    # A verified file that ITK fails to load did not fit in memory (nifti_image_load reports a failed malloc so).
    if any(sign in message.lower() for sign in ("bad_alloc", "allocate", "nifti_image_load failed")):
        return ConversionTooLarge(
            f"{job.label}: the conversion needs more memory than its limit of {job.memory} "
            "bytes (from MAX_CONVERT_BYTES)"
        )
    if _out_of_space(dest, job):
        return _no_space(job)
    lines = [line.strip() for line in message.splitlines() if line.strip()]
    useful = [line for line in lines if "itk::ERROR" in line or "ITK ERROR" in line or line.startswith("[nrrd]")]
    return ConversionError(f"{job.label}: SimpleITK could not convert it: " + " ".join(useful or lines[-1:])[:400])


def _out_of_space(dest: Path, job: Job) -> bool:
    """ITK does not say why a write failed: the file at its size limit, or a full disk, is why."""
    st = os.statvfs(dest.parent)
    written = dest.stat().st_size if dest.exists() else 0
    return written >= job.file_size - BLOCK or st.f_bavail * st.f_frsize < BLOCK


def _no_space(job: Job) -> ConversionNoSpace:
    return ConversionNoSpace(
        f"{job.label}: not enough disk space to write the converted file (it may take up to {job.file_size} bytes)"
    )


def outcome(job: Job) -> dict[str, Any]:
    try:
        run(job)
    except ConversionError as exc:
        kind = next(k for k, cls in reversed(KINDS.items()) if isinstance(exc, cls))
        return {"error": kind, "detail": str(exc)}
    except MemoryError:
        return {
            "error": "too_large",
            "detail": f"{job.label}: the conversion needs more memory than its limit of "
            f"{job.memory} bytes (from MAX_CONVERT_BYTES)",
        }
    except OSError as exc:
        if exc.errno in (errno.ENOSPC, errno.EFBIG, errno.EDQUOT):
            return {"error": "no_space", "detail": str(_no_space(job))}
        raise
    return {"ok": True}


def main(argv: list[str]) -> int:
    job = Job(**json.loads(argv[1]))
    limit_self(job)
    result = outcome(job)
    if "error" in result:
        Path(job.dest).unlink(missing_ok=True)
    sys.stdout.write(json.dumps(result) + "\n")
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
