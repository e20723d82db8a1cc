"""Durations ("30s", "1h30m", "250ms") and sizes ("16GiB", "512MiB", "2G") as people write them.

Pure parsing and formatting. Every parse error is a ValueError whose message says what was expected,
so the job spec can turn it into a located problem. The grammars here are the ones the job schema's
`duration` and `size` patterns describe; a unit test keeps the two in step.
"""

from __future__ import annotations

import re

DURATION_UNITS: dict[str, float] = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
DURATION_PATTERN = r"^(0|([0-9]+(\.[0-9]+)?(ms|s|m|h|d))+)$"
DURATION_HINT = "a number with a unit (ms, s, m, h, d), like '30s', '5m' or '1h30m'"

# Decimal units (K, KB, M, MB, ...) are powers of 1000 and binary units (Ki, KiB, Mi, MiB, ...) powers
# of 1024, as in Kubernetes: "2G" is 2,000,000,000 bytes and "2GiB" is 2,147,483,648.
SIZE_UNITS: dict[str, int] = {"B": 1} | {
    letter + suffix: base**power
    for power, letter in enumerate("KMGTP", start=1)
    for suffix, base in (("", 1000), ("B", 1000), ("i", 1024), ("iB", 1024))
}
SIZE_PATTERN = r"^[0-9]+(\.[0-9]+)? ?([KMGTP]i?B?|B)$"
SIZE_HINT = "a number with a unit, like '512MiB', '16GiB' or '2G' (KiB/MiB/GiB are powers of 1024, KB/MB/GB of 1000)"

_DURATION_PART = re.compile(r"([0-9]+(?:\.[0-9]+)?)(ms|s|m|h|d)")
_SIZE = re.compile(SIZE_PATTERN)


def parse_duration(text: str) -> float:
    """Seconds in a duration such as "30s", "5m", "1h30m", "250ms" or "0".

    Raises:
        ValueError: text is not a duration; the message says what is expected.
    """
    if not isinstance(text, str):
        raise ValueError(f"expected {DURATION_HINT}, got {text!r}")
    if text == "0":
        return 0.0
    if not re.fullmatch(DURATION_PATTERN, text):
        raise ValueError(f"expected {DURATION_HINT}, got {text!r}")
    return sum(float(number) * DURATION_UNITS[unit] for number, unit in _DURATION_PART.findall(text))


def parse_size(text: str) -> int:
    """Bytes in a size such as "16GiB", "512MiB", "2G" or "1.5GB".

    Raises:
        ValueError: text is not a size; the message says what is expected.
    """
    match = _SIZE.fullmatch(text) if isinstance(text, str) else None
    if match is None:
        raise ValueError(f"expected {SIZE_HINT}, got {text!r}")
    number = text[: match.start(2)].strip()
    return round(float(number) * SIZE_UNITS[match.group(2)])


def format_duration(seconds: float) -> str:
    """A duration as the shortest readable text: 5400 -> "1h30m", 0.25 -> "250ms", 0 -> "0s"."""
    if seconds < 0:
        return "-" + format_duration(-seconds)
    millis = round(seconds * 1000)
    if millis == 0:
        return "0s"
    if millis < 1000:
        return f"{millis}ms"
    out = ""
    whole, rest = divmod(millis, 1000)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        count, whole = divmod(whole, size)
        if count:
            out += f"{count}{unit}"
    if whole or rest:
        out += f"{whole}.{rest:03d}".rstrip("0").rstrip(".") + "s"
    return out


def format_size(size: int) -> str:
    """Bytes as binary units with at most one decimal: 17179869184 -> "16GiB", 1536 -> "1.5KiB"."""
    if abs(size) < 1024:
        return f"{size}B"
    value = float(size)
    unit = "B"
    for unit in ("KiB", "MiB", "GiB", "TiB"):
        value /= 1024
        if abs(value) < 1024:
            break
    return f"{value:.1f}".rstrip("0").rstrip(".") + unit
