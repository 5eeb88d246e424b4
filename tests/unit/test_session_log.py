"""The session log on a full SESSION_PATH: lines are lost, the run and its outcome are not."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from inferserver.scheduling.dispatch import SessionLog
from inferserver.sessions.state import Signals


async def test_a_full_disk_drops_log_lines_without_failing_the_writer(caplog: pytest.LogCaptureFixture) -> None:
    log = SessionLog(Path("/dev/full"), Signals(), "s-1")  # every write there: ENOSPC
    with caplog.at_level(logging.WARNING, logger="inferserver.scheduling.dispatch"):
        await log.write(b"model says hello\n")
        await log.write(b"inferserver: run failed: no space left on SESSION_PATH (/srv) while writing output seg\n")
    assert log.failed
    warnings = [r.getMessage() for r in caplog.records]
    assert warnings == ["session s-1: could not write its log /dev/full: [Errno 28] No space left on device"]


async def test_a_log_on_a_good_disk_gets_every_line(tmp_path: Path) -> None:
    log = SessionLog(tmp_path / "log", Signals(), "s-1")
    await log.write(b"one\n")
    await log.write(b"two\n")
    assert (tmp_path / "log").read_bytes() == b"one\ntwo\n"
    assert not log.failed
