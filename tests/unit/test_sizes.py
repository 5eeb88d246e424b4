"""The one size parser every size setting and spec limit goes through, and the units messages show."""

from __future__ import annotations

import pytest

from inferserver.sizes import human_size, parse_size, rough_size

KiB, MiB, GiB, TiB = 1 << 10, 1 << 20, 1 << 30, 1 << 40


@pytest.mark.parametrize(
    ("text", "size"),
    [
        ("0", 0),
        ("1048576", MiB),
        (4096, 4096),
        ("8g", 8 * GiB),  # Docker's bare letters are binary
        ("8G", 8 * GiB),
        ("512m", 512 * MiB),
        ("64k", 64 * KiB),
        ("1t", TiB),
        ("512MiB", 512 * MiB),
        ("16 GiB", 16 * GiB),
        ("2gib", 2 * GiB),
        ("2GB", 2 * 10**9),  # SI units are decimal
        ("500MB", 500 * 10**6),
        ("1kB", 1000),
        ("1.5GiB", 1536 * MiB),
        ("100B", 100),
        (" 7 ", 7),
    ],
)
def test_sizes_people_write(text: str | int, size: int) -> None:
    assert parse_size(text) == size


@pytest.mark.parametrize("bad", ["", "g", "8 gigs", "-1", -1, "1.5", "0.1k", "8x", "1e9", True, 2.5, None, "8 G i B"])
def test_what_is_not_a_size_says_what_is(bad: object) -> None:
    with pytest.raises(ValueError) as caught:
        parse_size(bad)
    assert repr(bad) in str(caught.value) or str(bad) in str(caught.value)


@pytest.mark.parametrize(
    ("size", "text"),
    [
        (8 * GiB, "8 GiB"),
        (16 * MiB, "16 MiB"),
        (1536 * MiB, "1536 MiB"),  # exact, never rounded
        (64 * KiB, "64 KiB"),
        (2 * TiB, "2 TiB"),
        (1000, "1000 bytes"),
        (1, "1 byte"),
        (0, "0 bytes"),
    ],
)
def test_limits_read_exactly(size: int, text: str) -> None:
    assert human_size(size) == text


def test_rough_sizes_for_free_space() -> None:
    assert rough_size(int(12.34 * GiB)) == "12.3 GiB"
    assert rough_size(900) == "900 bytes"
