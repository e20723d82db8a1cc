"""Durations and sizes as people write them, and back."""

from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from deployer.units import (
    DURATION_PATTERN,
    SIZE_PATTERN,
    format_duration,
    format_size,
    parse_duration,
    parse_size,
)


@pytest.mark.parametrize("text, seconds", [
    ("30s", 30.0), ("5m", 300.0), ("1h30m", 5400.0), ("250ms", 0.25), ("0", 0.0), ("0s", 0.0), ("1.5h", 5400.0),
    ("2d", 172800.0), ("1m30s", 90.0), ("30m1h", 5400.0), ("1h1m1s500ms", 3661.5),
], ids=["seconds", "minutes", "hours and minutes", "milliseconds", "a bare zero", "zero seconds",
        "a fraction", "days", "minutes and seconds", "units in any order", "every unit at once"])
def test_durations_parse_to_seconds(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["30", "", "soon", "-5s", "5 s", "1w", "1.s", ".5s", "5S", "1h 30m", "0x10s"],
                         ids=["a number without a unit", "nothing", "a word", "a negative duration",
                              "a space before the unit", "weeks", "a dangling point", "a leading point",
                              "an upper-case unit", "a space between parts", "hexadecimal"])
def test_bad_durations_say_what_is_expected(text: str) -> None:
    with pytest.raises(ValueError, match=r"expected a number with a unit \(ms, s, m, h, d\)"):
        parse_duration(text)


def test_a_duration_must_be_text() -> None:
    with pytest.raises(ValueError, match="got 30"):
        parse_duration(30)  # type: ignore[arg-type]


@pytest.mark.parametrize("text, size", [
    ("16GiB", 16 * 2**30), ("512MiB", 512 * 2**20), ("2G", 2 * 10**9), ("1.5GB", 1_500_000_000),
    ("100B", 100), ("1Ki", 1024), ("4 TiB", 4 * 2**40), ("1.5GiB", 3 * 2**29), ("10KB", 10_000),
], ids=["gibibytes", "mebibytes", "bare G is decimal", "fractional gigabytes", "bytes", "Kubernetes style Ki",
        "a space before the unit", "fractional gibibytes", "kilobytes"])
def test_sizes_parse_to_bytes(text: str, size: int) -> None:
    assert parse_size(text) == size


@pytest.mark.parametrize("text", ["512", "16 gigs", "GiB", "1.GiB", "-1GiB", "16gib", "16GiBs", ""],
                         ids=["a number without a unit", "a word for a unit", "a unit without a number",
                              "a dangling point", "a negative size", "a lower-case unit", "a plural", "nothing"])
def test_bad_sizes_say_what_is_expected(text: str) -> None:
    with pytest.raises(ValueError, match="expected a number with a unit, like '512MiB'"):
        parse_size(text)


@pytest.mark.parametrize("seconds, text", [
    (0, "0s"), (0.25, "250ms"), (30, "30s"), (90.5, "1m30.5s"), (5400, "1h30m"), (86400 + 3600, "1d1h"),
    (-5, "-5s"),
], ids=["zero", "below a second", "seconds", "a fraction of a second", "hours and minutes", "a day and an hour",
        "a negative duration"])
def test_durations_format_short(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text


@pytest.mark.parametrize("size, text", [
    (0, "0B"), (1023, "1023B"), (1536, "1.5KiB"), (16 * 2**30, "16GiB"), (2 * 10**9, "1.9GiB"), (5 * 2**40, "5TiB"),
], ids=["zero", "just under a KiB", "a fraction", "whole GiB", "decimal gigabytes", "TiB"])
def test_sizes_format_in_binary_units(size: int, text: str) -> None:
    assert format_size(size) == text


@given(st.integers(min_value=0, max_value=10**9))
def test_a_formatted_duration_parses_back(millis: int) -> None:
    assert parse_duration(format_duration(millis / 1000)) == pytest.approx(millis / 1000)


@given(st.text(alphabet="0123456789.msdh", max_size=8))
def test_the_duration_pattern_and_parser_agree(text: str) -> None:
    matches = re.fullmatch(DURATION_PATTERN, text) is not None
    try:
        parse_duration(text)
        parses = True
    except ValueError:
        parses = False
    assert matches == parses


@given(st.text(alphabet="0123456789. KMGTPiB", max_size=8))
def test_the_size_pattern_and_parser_agree(text: str) -> None:
    matches = re.fullmatch(SIZE_PATTERN, text) is not None
    try:
        parse_size(text)
        parses = True
    except ValueError:
        parses = False
    assert matches == parses
