"""The log cap: a runaway model's output stops at LOG_MAX_BYTES with one line saying so."""

from __future__ import annotations

from inferserver.runner.logcap import CappedLog

NOTE = b"inferserver: log truncated at 1 KiB (LOG_MAX_BYTES)\n"


class Collect:
    def __init__(self) -> None:
        self.writes: list[bytes] = []

    async def write(self, data: bytes) -> None:
        self.writes.append(data)

    @property
    def data(self) -> bytes:
        return b"".join(self.writes)


async def test_under_the_cap_everything_passes_unchanged() -> None:
    inner = Collect()
    log = CappedLog(inner, 1024)
    for _ in range(4):
        await log.write(b"x" * 255 + b"\n")
    assert inner.data == (b"x" * 255 + b"\n") * 4  # exactly 1024: no note
    assert not log.truncated


async def test_a_cut_mid_line_ends_the_line_then_notes_once_then_drops_everything() -> None:
    inner = Collect()
    log = CappedLog(inner, 1024)
    await log.write(b"a" * 1000)
    await log.write(b"b" * 100 + b"\n")
    await log.write(b"more\n")
    await log.write(b"and more\n" * 1000)
    assert inner.data == b"a" * 1000 + b"b" * 24 + b"\n" + NOTE
    assert inner.data.count(b"truncated") == 1


async def test_a_cut_at_a_line_end_adds_no_empty_line() -> None:
    inner = Collect()
    log = CappedLog(inner, 1024)
    await log.write(b"y" * 1023 + b"\n")
    await log.write(b"next\n")
    assert inner.data == b"y" * 1023 + b"\n" + NOTE


async def test_a_single_huge_write_is_cut_to_the_cap() -> None:
    inner = Collect()
    await CappedLog(inner, 1024).write(b"z\n" * 100_000)
    assert inner.data == b"z\n" * 512 + NOTE
    assert len(inner.data) == 1024 + len(NOTE)  # the file stops growing just past the cap


async def test_nothing_is_written_for_an_empty_remainder_beyond_the_note() -> None:
    inner = Collect()
    log = CappedLog(inner, 4)
    await log.write(b"abcd")
    await log.write(b"e")
    assert inner.data == b"abcd\ninferserver: log truncated at 4 bytes (LOG_MAX_BYTES)\n"


async def test_a_reattached_run_counts_what_the_log_already_holds() -> None:
    inner = Collect()
    log = CappedLog(inner, 1024, written=1000)
    await log.write(b"c" * 100)
    assert inner.data == b"c" * 24 + b"\n" + NOTE
