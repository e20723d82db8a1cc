"""Values to cell text: bars, sparklines, sizes, ages, "n/a". Pure: no clock, no I/O, no textual.

Every helper accepts None (and anything else a broken row may carry) and answers with text, so a bad
value shows as "n/a" or "?" instead of taking the console down. Times are wall-clock seconds; ages are
measured against the `now` given (the model's), so a fixed model renders the same text every time.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any

NA = "n/a"
BAR_FULL, BAR_EMPTY = "█", "░"
BAR_EIGHTHS = " ▏▎▍▌▋▊▉"  # partial blocks, 0/8 to 7/8 of a cell
SPARKS = "▁▂▃▄▅▆▇█"  # eight levels on a fixed 0-100 scale
SPARK_GAP = " "  # a sample that was not supported (None), or no sample yet
SIZE_UNITS = ("K", "M", "G", "T", "P")


def number(value: Any) -> float | None:
    """value as a finite float, or None (None, text, bool, NaN, inf)."""
    kind = type(value)
    if kind is float:
        return value if value - value == 0 else None  # inf - inf and nan - nan are nan
    if kind is int:
        return float(value)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


def na(value: Any) -> str:
    """Any value as text; None as "n/a"."""
    return NA if value is None else str(value)


def clamp_percent(value: Any) -> float | None:
    """A percentage clamped to 0-100; None when it is not a number."""
    x = number(value)
    return None if x is None else min(100.0, max(0.0, x))


def bar(percent: Any, width: int = 8) -> str:
    """A horizontal bar on a fixed 0-100 scale, in eighths of a cell: 97 -> '███████▊', None -> 'n/a'."""
    p = clamp_percent(percent)
    if p is None:
        return NA.ljust(width)
    eighths = round(p / 100 * width * 8)
    if p > 0 and eighths == 0:
        eighths = 1  # any use at all shows
    full, part = divmod(eighths, 8)
    text = BAR_FULL * full + (BAR_EIGHTHS[part] if part else "")
    return text + BAR_EMPTY * (width - len(text))


def percent(value: Any) -> str:
    """'97%', or 'n/a'."""
    p = number(value)
    return NA if p is None else f"{p:.0f}%"


def utilization(value: Any, width: int = 8) -> str:
    """The utilization cell: bar plus percentage, '███████▊  97%'; 'n/a' alone when unsupported."""
    if clamp_percent(value) is None:
        return NA
    return f"{bar(value, width)} {percent(value):>4}"


def spark(value: Any) -> str:
    """One sample on the fixed 0-100 scale: 2 -> '▁', 97 -> '█', None -> ' '."""
    p = number(value)
    if p is None:
        return SPARK_GAP
    level = int(p * 0.08)  # 8 levels over 0-100
    return SPARKS[0 if level < 0 else 7 if level > 7 else level]


def sparkline(history: Iterable[Any] | None, width: int = 10) -> str:
    """The newest `width` samples, oldest left, on a fixed 0-100 scale; padded on the left."""
    try:
        samples = list(history or ())[-width:] if width > 0 else []
    except TypeError:
        samples = []
    return (SPARK_GAP * (width - len(samples)) + "".join(map(spark, samples))) if width > 0 else ""


def size(value: Any) -> str:
    """Bytes in short binary units: 80*2**30 -> '80G', 375*2**20 -> '375M', 1536 -> '1.5K'."""
    n = number(value)
    if n is None:
        return NA
    if abs(n) < 1024:
        return f"{n:.0f}B"
    unit = ""
    for unit in SIZE_UNITS:
        n /= 1024
        if abs(n) < 1024:
            break
    return (f"{n:.1f}".rstrip("0").rstrip(".") if abs(n) < 10 else f"{n:.0f}") + unit


def used_total(used: Any, total: Any, show: Any = size) -> str:
    """'used/total' ('375M/23.5G'), 'n/a' when neither is known."""
    if number(used) is None and number(total) is None:
        return NA
    return f"{show(used)}/{show(total)}"


def compact_duration(seconds: Any) -> str:
    """A duration in its largest unit: 0.197 -> '197ms', 42 -> '42s', 300 -> '5m', 7200 -> '2h', n/a."""
    s = number(seconds)
    if s is None:
        return NA
    s = abs(s)
    if s < 1:
        return f"{s * 1000:.0f}ms"
    for unit, length in (("d", 86400), ("h", 3600), ("m", 60)):
        if s >= length:
            return f"{s // length:.0f}{unit}"
    return f"{s:.0f}s"


def age(then: Any, now: Any) -> str:
    """How long ago `then` was, against `now`: '3s ago', '5m ago'; 'n/a' when unknown."""
    t, n = number(then), number(now)
    if t is None or n is None:
        return NA
    if n - t < 1:
        return "just now"
    return f"{compact_duration(n - t)} ago"


def until(when: Any, now: Any) -> str:
    """How long until `when`: 'in 3m', 'due' when it is past; '-' when there is none."""
    w, n = number(when), number(now)
    if w is None or n is None:
        return "-"
    return "due" if w <= n else f"in {compact_duration(w - n)}"


def ratio(used: Any, total: Any) -> str:
    """'3/8' style counts; 'n/a' for an unknown part."""
    def part(v: Any) -> str:
        x = number(v)
        return NA if x is None else (f"{x:.0f}" if x == int(x) else f"{x:.1f}")
    return f"{part(used)}/{part(total)}"


def fixed(value: Any, digits: int = 2) -> str:
    """A number with `digits` decimals ('0.29'), or 'n/a'."""
    x = number(value)
    return NA if x is None else f"{x:.{digits}f}"


def temperature(value: Any) -> str:
    """'67C', or 'n/a'."""
    x = number(value)
    return NA if x is None else f"{x:.0f}C"


def power(draw: Any, limit: Any) -> str:
    """'350/700W'; 'n/a' when neither is supported."""
    d, lim = number(draw), number(limit)
    if d is None and lim is None:
        return NA
    return f"{NA if d is None else f'{d:.0f}'}/{NA if lim is None else f'{lim:.0f}'}W"


def count(value: Any) -> str:
    """An integer count ('0'), or 'n/a'."""
    x = number(value)
    return NA if x is None else f"{x:.0f}"


def joined(values: Iterable[Any] | None, sep: str = ",", empty: str = "-") -> str:
    """Values joined ('0,1'); `empty` when there are none."""
    try:
        items = [str(v) for v in (values or ())]
    except TypeError:
        return "?"
    return sep.join(items) if items else empty


def ports(pairs: Sequence[Any] | None) -> str:
    """Named ports as 'http:8080,grpc:9000'; '-' when there are none."""
    try:
        return joined(f"{name}:{port}" for name, port in (pairs or ()))
    except (TypeError, ValueError):
        return "?"


def node_state(state: Any, last_seen: Any, now: Any) -> str:
    """The Fleet view's state: 'ready', 'cordoned', 'unreachable 2m' (how long since it was seen)."""
    text = na(state)
    if text in ("unreachable", "untrusted") and number(last_seen) is not None:
        return f"{text} {age(last_seen, now).removesuffix(' ago')}"
    return text


def gpus_busy(busy: Any, total: Any) -> str:
    """'3/8'; 'unknown' when the node's GPUs are unknown (total None)."""
    return "unknown" if number(total) is None else ratio(busy, total)


def exit_code(value: Any) -> str:
    """An exit code ('3'), or '-' while there is none."""
    x = number(value)
    return "-" if x is None else f"{x:.0f}"


def shorten(text: Any, width: int) -> str:
    """text cut to width with an ellipsis."""
    s = na(text)
    return s if len(s) <= width else s[: max(0, width - 1)] + "…"


__all__ = [
    "NA", "age", "bar", "clamp_percent", "compact_duration", "count", "exit_code", "fixed", "gpus_busy", "joined",
    "na", "node_state", "number", "percent", "ports", "power", "ratio", "shorten", "size", "spark", "sparkline",
    "temperature", "until", "used_total", "utilization",
]
