"""`inferserver models check` and `inferserver models pull`: the model directory from the command line."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, TextIO

from ..config import EngineEntry
from ..runner.docker import DockerBackend
from ..runner.jobs import RunFailed
from ..scheduling.engines import engine_ssl
from ..specs.directory import load_model_directory

BAR_WIDTH = 30


def check(directory: Path, out: TextIO = sys.stdout, err: TextIO = sys.stderr) -> int:
    """Print `file: reason` for every spec that cannot be served; 1 when there is any, else 0."""
    loaded = load_model_directory(directory)
    for model_id, model in sorted(loaded.models.items()):
        print(f"ok {model.path}: {model_id} {model.spec.version}", file=out)
    for error in loaded.errors:
        print(str(error), file=err)
    print(f"{len(loaded.models)} models can be served, {len(loaded.errors)} files cannot", file=err)
    return 1 if loaded.errors else 0


class ProgressBar:
    """A plain text bar on one line, summing every layer's download progress."""

    def __init__(self, image: str, out: TextIO) -> None:
        self.image = image
        self.out = out
        self.layers: dict[str, tuple[int, int]] = {}

    async def update(self, event: dict[str, Any]) -> None:
        detail = event.get("progressDetail") or {}
        if event.get("id") and detail.get("total"):
            self.layers[event["id"]] = (int(detail.get("current", 0)), int(detail["total"]))
        elif event.get("id") and event.get("status") in ("Download complete", "Pull complete", "Already exists"):
            _, total = self.layers.get(event["id"], (0, 0))
            self.layers[event["id"]] = (total, total)
        done = sum(current for current, _ in self.layers.values())
        total = sum(size for _, size in self.layers.values())
        fraction = done / total if total else 0.0
        filled = int(fraction * BAR_WIDTH)
        bar = "#" * filled + "." * (BAR_WIDTH - filled)
        self.out.write(f"\r{self.image} [{bar}] {fraction:4.0%} {done / 1e6:.1f}/{total / 1e6:.1f} MB")
        self.out.flush()

    def end(self, note: str) -> None:
        self.out.write(f"\r{self.image}: {note}\n")
        self.out.flush()


async def pull(directory: Path, out: TextIO = sys.stderr, engines: list[EngineEntry] | None = None) -> int:
    """Pull every served model's image that is absent, on every engine (ENGINES; None: the one of DOCKER_HOST);
    1 naming each image (and engine) that failed."""
    loaded = load_model_directory(directory)
    for error in loaded.errors:
        print(f"skipped {error}", file=out)
    images = sorted({model.spec.image for model in loaded.models.values()})
    failed: list[str] = []
    targets: list[EngineEntry | None] = list(engines) if engines else [None]
    for entry in targets:
        failed += await _pull_on(entry, images, out)
    if failed:
        print(f"could not pull {len(failed)} of {len(images) * len(targets)} images: {', '.join(failed)}", file=out)
        return 1
    print(f"all {len(images)} images are present" + (f" on all {len(engines)} engines" if engines else ""), file=out)
    return 0


async def _pull_on(entry: EngineEntry | None, images: list[str], out: TextIO) -> list[str]:
    """The images that failed on this engine (named after the image when there are engines)."""
    backend = DockerBackend(entry.docker_url, engine_ssl(entry)) if entry else DockerBackend()
    where = f" on engine {entry.name}" if entry else ""
    failed: list[str] = []
    try:
        for image in images:
            bar = ProgressBar(f"{image}{where}", out)
            try:
                if await backend.has_image(image):
                    bar.end("present")
                    continue
                await backend.pull(image, bar.update)
                bar.end("pulled")
            except RunFailed as exc:
                bar.end(f"FAILED: {exc}")
                failed.append(f"{image}{where}")
    finally:
        await backend.close()
    return failed
