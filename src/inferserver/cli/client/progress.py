"""Progress bars for uploads and downloads (rich): bytes, MiB/s and time left, on stderr."""

from __future__ import annotations

from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    ProgressColumn,
    Task,
    TextColumn,
    TimeRemainingColumn,
)
from rich.text import Text

MIB = 1 << 20


class MibSpeedColumn(ProgressColumn):
    """Speed in MiB/s (rich's own column counts in decimal MB)."""

    def render(self, task: Task) -> Text:
        speed = task.finished_speed or task.speed
        if speed is None and task.elapsed:  # a transfer over before rich sampled a speed: its average
            speed = task.completed / task.elapsed
        return Text("? MiB/s" if speed is None else f"{speed / MIB:.1f} MiB/s", style="progress.data.speed")


def transfer_progress(console: Console | None = None) -> Progress:
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(binary_units=True),
        MibSpeedColumn(),
        TimeRemainingColumn(),
        console=console or Console(stderr=True),
        transient=False,
    )
