"""The `/` filter of every table: plain text, a regular expression, or key=value on column names. Pure.

    web             rows whose text contains "web" (any column, case-insensitive)
    re:^node[12]$   rows where some column matches the regex (also written /^node[12]$/)
    state=ready     rows whose STATE column is "ready" (case-insensitive; * and ? are wildcards)
    job=web node=n1 every term must hold

A filter that does not parse (a bad regex) matches as plain text and says so in `problem`.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Mapping
from dataclasses import dataclass, field

FIELD_TERM = re.compile(r"^([A-Za-z_][\w/-]*)=(.*)$")


@dataclass(frozen=True)
class RowFilter:
    """A parsed filter; `matches(fields)` tests one row's column texts (lower-cased names)."""

    text: str = ""
    pattern: re.Pattern[str] | None = None
    terms: tuple[tuple[str, re.Pattern[str]], ...] = ()
    problem: str | None = None
    needle: str = field(default="", repr=False)

    @property
    def is_active(self) -> bool:
        """True when the filter hides anything at all."""
        return bool(self.text.strip())

    def matches(self, fields: Mapping[str, str]) -> bool:
        """True when the row (column name -> cell text) passes the filter."""
        if not self.is_active:
            return True
        if self.terms:
            return all(_field_matches(fields, name, pattern) for name, pattern in self.terms)
        if self.pattern is not None:
            return any(self.pattern.search(value) for value in fields.values())
        return any(self.needle in value.lower() for value in fields.values())


def parse_filter(text: str, columns: tuple[str, ...] = ()) -> RowFilter:
    """The filter `text` means over a table whose column names are `columns` (lower case)."""
    stripped = text.strip()
    if not stripped:
        return RowFilter()
    regex = _regex_source(stripped)
    if regex is not None:
        try:
            return RowFilter(text, pattern=re.compile(regex, re.IGNORECASE))
        except re.error as exc:
            return RowFilter(text, needle=stripped.lower(), problem=f"not a regular expression ({exc}): "
                             "matching it as plain text")
    terms = _field_terms(stripped, columns)
    if terms is not None:
        return RowFilter(text, terms=terms)
    return RowFilter(text, needle=stripped.lower())


def _regex_source(text: str) -> str | None:
    if text.startswith("re:"):
        return text[3:]
    if len(text) >= 2 and text.startswith("/") and text.endswith("/"):
        return text[1:-1]
    return None


def _field_terms(text: str, columns: tuple[str, ...]) -> tuple[tuple[str, re.Pattern[str]], ...] | None:
    """Every space-separated word as name=value on a known column, or None (then it is plain text)."""
    terms = []
    for word in text.split():
        match = FIELD_TERM.match(word)
        if not match or (columns and match.group(1).lower() not in columns):
            return None
        glob = fnmatch.translate(match.group(2))
        terms.append((match.group(1).lower(), re.compile(glob, re.IGNORECASE)))
    return tuple(terms)


def _field_matches(fields: Mapping[str, str], name: str, pattern: re.Pattern[str]) -> bool:
    value = fields.get(name)
    return value is not None and pattern.match(value.strip()) is not None


__all__ = ["RowFilter", "parse_filter"]
