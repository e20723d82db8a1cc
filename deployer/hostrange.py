"""Ansible host patterns: `web[01:16].dc1`, `node-[a:c]`, `gpu[1:9:2]`, and an optional `:port`.

Expansion follows ansible-core's `expand_hostname_range` (the first bracket is the outer loop,
zero padding is kept when the begin value has a leading zero, letters run through a-z then A-Z),
but where Ansible silently yields no host (`[3:1]`) or crashes (`[a:01]`, step 0, an unclosed
bracket) this module raises RangeError with the offset of the offending bracket.
"""

from __future__ import annotations

import ipaddress
import re
import string

_BRACKETED_PORT = re.compile(r"^\[(.+)\]:([0-9]+)$")
_HOST_PORT = re.compile(r"^((?:[^:\[\]]|\[[^\]]*\])*):([0-9]+)$")
_RANGE = r"\[[^\]]*\]"
_LABEL = rf"(?:\w|{_RANGE})(?:[\w-]|{_RANGE})*(?<![_-])"
_PLAIN_LABEL = r"\w(?:[\w-]*)(?<![_-])"
_HOSTNAME = re.compile(rf"^{_LABEL}(?:\.{_LABEL})*$", re.UNICODE)
_PLAIN_HOSTNAME = re.compile(rf"^{_PLAIN_LABEL}(?:\.{_PLAIN_LABEL})*\.?$", re.ASCII)
_IPV4 = re.compile(r"^(?:(?:[0-9]{1,3}|\[[0-9:]+\])\.){3}(?:[0-9]{1,3}|\[[0-9:]+\])$")


class RangeError(ValueError):
    """A host range that cannot be expanded; `offset` is where it starts in the pattern (0-based)."""

    def __init__(self, message: str, offset: int = 0) -> None:
        super().__init__(message)
        self.message = message
        self.offset = offset


def split_port(pattern: str) -> tuple[str, int | None]:
    """Split `host:2222` or `[v6::addr]:2222` into host and port, as Ansible's parse_address does."""
    host, port = pattern, None
    for regex in (_BRACKETED_PORT, _HOST_PORT):
        match = regex.match(host)
        if match:
            host, port = match.group(1), int(match.group(2))
    if port is not None and not is_host_like(host, ranges=True):
        return pattern, None  # Ansible keeps a pattern it cannot parse whole, ':NN' included
    return host, port


def is_host_like(text: str, *, ranges: bool = False) -> bool:
    """True when text is an IP address or a DNS-style name (underscores allowed, as Ansible allows)."""
    if ranges and (_IPV4.match(text) or _HOSTNAME.match(text)):
        return True
    if not ranges and _PLAIN_HOSTNAME.match(text):
        return True
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def expand(pattern: str) -> list[str]:
    """Every host name a pattern stands for, in Ansible's order (the first range varies slowest).

    Raises:
        RangeError: unclosed bracket, bad bounds, begin after end, step 0, unequal zero padding.
    """
    names = [""]
    for piece in _pieces(pattern):
        names = [name + value for name in names for value in piece]
    return names


def _pieces(pattern: str) -> list[list[str]]:
    pieces: list[list[str]] = []
    position = 0
    while (start := pattern.find("[", position)) >= 0:
        close = pattern.find("]", start)
        if close < 0:
            raise RangeError(f"unclosed '[' in host pattern '{pattern}'", start)
        try:
            values = _range_values(pattern[start + 1:close])
        except RangeError as exc:
            raise RangeError(f"{exc.message} in host pattern '{pattern}'", start) from None
        pieces += [[pattern[position:start]], values]
        position = close + 1
    return pieces + [[pattern[position:]]]


def _range_values(body: str) -> list[str]:
    parts = body.split(":")
    if len(parts) not in (2, 3):
        raise RangeError(f"range '[{body}]' must be [begin:end] or [begin:end:step]")
    begin, end = parts[0] or "0", parts[1]
    step = _step(parts[2] if len(parts) == 3 else "1", body)
    if not end:
        raise RangeError(f"range '[{body}]' has no end value")
    if len(begin) == 1 and len(end) == 1 and begin in string.ascii_letters and end in string.ascii_letters:
        return _letters(begin, end, step, body)
    if not (begin.isdigit() and end.isdigit()) or not (begin.isascii() and end.isascii()):
        raise RangeError(f"range '[{body}]' must have two numbers or two single letters as bounds")
    return _numbers(begin, end, step, body)


def _step(text: str, body: str) -> int:
    if not (text.isascii() and text.isdigit()):
        raise RangeError(f"range '[{body}]' has a step that is not a positive integer")
    if int(text) == 0:
        raise RangeError(f"range '[{body}]' has step 0")
    return int(text)


def _letters(begin: str, end: str, step: int, body: str) -> list[str]:
    first, last = string.ascii_letters.index(begin), string.ascii_letters.index(end)
    if first > last:
        raise RangeError(f"range '[{body}]' begins after it ends (letters run a-z then A-Z)")
    return list(string.ascii_letters[first:last + 1:step])


def _numbers(begin: str, end: str, step: int, body: str) -> list[str]:
    width = len(begin) if begin.startswith("0") and len(begin) > 1 else 0
    if width and len(end) != width:
        raise RangeError(f"range '[{body}]' pads begin and end to different widths")
    if int(begin) > int(end):
        raise RangeError(f"range '[{body}]' begins after it ends")
    return [str(n).zfill(width) for n in range(int(begin), int(end) + 1, step)]


__all__ = ["RangeError", "expand", "is_host_like", "split_port"]
