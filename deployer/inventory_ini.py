"""Ansible's INI inventory format, fed into the same InventorySink as the YAML form.

It mirrors ansible-core's `ini` inventory plugin line by line: lines before any section belong to
`ungrouped`; `[g]` lists hosts (`host key=value ...`, split like shlex with `#` comments), `[g:vars]`
holds `key = value` lines, `[g:children]` names child groups that must be declared somewhere in the
file. Every value, inline or under `:vars`, goes through `ast.literal_eval` and stays a string when
that fails (so `a=1` is an int, `b=True` a bool, `c="5"` an int too since shlex removes the quotes,
`d=hello world` under `:vars` the string 'hello world'). Unlike Ansible, parsing does not stop at the
first bad line: every problem is reported with the line and column of the offending token.
"""

from __future__ import annotations

import ast
import io
import re
import shlex
import warnings
from dataclasses import dataclass, field
from typing import Any, Protocol

from deployer.document import did_you_mean
from deployer.errors import Location

SECTION = re.compile(r"^\[([^:\]\s]+)(?::(\w+))?\]\s*(?:#.*)?$")
HEADERISH = re.compile(r"^\[[^\]]*\](?:\s*[#;].*)?$")  # meant as a header, though SECTION refuses it
GROUP_NAME = re.compile(r"^([^:\]\s]+)\s*(?:#.*)?$")
KINDS = ("hosts", "children", "vars")


class InventorySink(Protocol):
    """What an inventory parser feeds: Ansible's InventoryData operations, each located."""

    def add_group(self, name: str, at: Location) -> None:
        """Declare a group (again is fine)."""

    def has_group(self, name: str) -> bool:
        """True when a group of that name was declared."""

    def add_child(self, parent: str, child: str, at: Location) -> None:
        """Make child a child group of parent."""

    def add_hosts(self, pattern: str, group: str, at: Location) -> list[str]:
        """Add every host a pattern expands to into group; returns their names."""

    def set_var(self, owner: str, key: str, value: Any, at: Location, value_at: Location) -> None:
        """Set a variable on a group or host (a group wins when both have that name)."""

    def report(self, at: Location, message: str, fix: str) -> None:
        """Record a problem; parsing goes on."""


@dataclass
class _Pending:
    at: Location
    kind: str
    parents: list[str] = field(default_factory=list)


@dataclass
class _State:
    sink: InventorySink
    group: str = "ungrouped"
    kind: str | None = "hosts"  # None after a bad section header: skip its lines
    pending: dict[str, _Pending] = field(default_factory=dict)


def looks_like_ini(text: str) -> bool:
    """True when the first meaningful line is an INI section header or an INI host line."""
    for line in text.splitlines():
        line = line.strip()
        if not line or line[0] in "#;":
            continue
        if line.startswith("---") or line.startswith("%"):
            return False
        return line.startswith("[") or bool(re.match(r"^[^\s:=]+(:[0-9]+)?(\s+\S+=.*)?(\s+#.*)?$", line))
    return False


def parse_ini(text: str, source: str, sink: InventorySink) -> None:
    """Feed every section and line of an INI inventory into sink, reporting problems to it."""
    state = _State(sink)
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        at = Location(source, number, len(raw) - len(raw.lstrip()) + 1)
        if SECTION.match(line) or HEADERISH.match(line):  # else `[2001:db8::1]:22` is a host line
            _section(state, line, at)
        elif state.kind == "hosts":
            _host_line(state, raw, at)
        elif state.kind == "vars":
            _var_line(state, raw, at)
        elif state.kind == "children":
            _child_line(state, line, at)
    _report_pending(state)


def parse_value(text: str) -> Any:
    """An INI value as Ansible reads it: a Python literal when ast.literal_eval accepts it, else the text."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", SyntaxWarning)
            value = ast.literal_eval(text)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        value = text
    return _coerce(value)


def _coerce(value: Any) -> Any:
    if isinstance(value, (list, tuple, set)):
        return [_coerce(item) for item in value]
    if isinstance(value, dict):
        return {key: _coerce(item) for key, item in value.items()}
    if value is ...:
        return "..."
    if isinstance(value, complex):
        return str(value)
    if isinstance(value, bytes):
        return value.decode("utf-8", "surrogateescape")
    return value


def _section(state: _State, line: str, at: Location) -> None:
    match = SECTION.match(line)
    if not match:
        state.kind = None
        state.sink.report(at, f"invalid section header {line!r}",
                          "write [group], [group:vars] or [group:children]: no spaces inside, '#' for a comment after")
        return
    name, kind = match.group(1), match.group(2) or "hosts"
    if kind not in KINDS:
        state.kind = None
        column = at.column + len(name) + 2
        state.sink.report(Location(at.source, at.line, column), f"unknown section type ':{kind}' in [{name}:{kind}]",
                          f"use [{name}], [{name}:vars] or [{name}:children]; {did_you_mean(kind, KINDS)}")
        return
    state.group, state.kind = name, kind
    _declare(state, name, kind, Location(at.source, at.line, at.column + 1))


def _declare(state: _State, name: str, kind: str, at: Location) -> None:
    if not state.sink.has_group(name):
        if kind == "vars" and name not in state.pending:
            state.pending[name] = _Pending(at, kind)
        state.sink.add_group(name, at)
    waiting = state.pending.get(name)
    if waiting is not None and kind != "vars":
        if waiting.kind == "children":
            _add_pending_children(state, name)
        else:
            del state.pending[name]


def _add_pending_children(state: _State, group: str) -> None:
    waiting = state.pending.pop(group)
    for parent in waiting.parents:
        state.sink.add_child(parent, group, waiting.at)
        if parent in state.pending and state.pending[parent].kind == "children":
            _add_pending_children(state, parent)


def _host_line(state: _State, raw: str, at: Location) -> None:
    try:
        tokens = _tokens(raw)
    except ValueError as exc:
        state.sink.report(at, f"cannot split host line: {exc}", "close the quote or escape it")
        return
    column, pattern = tokens[0]
    where = Location(at.source, at.line, column)
    if pattern.endswith(":"):
        state.sink.report(where, f"host pattern '{pattern}' ends in ':'", "write host:PORT or drop the ':'")
        return
    names = state.sink.add_hosts(pattern, state.group, where)
    for column, token in tokens[1:]:
        if not _inline_var(state, names, token, Location(at.source, at.line, column)):
            return  # one problem per line: the rest of it is likely the same mistake


def _inline_var(state: _State, names: list[str], token: str, at: Location) -> bool:
    key, equals, text = token.partition("=")
    if not equals or not key:
        state.sink.report(at, f"expected key=value after the host name, got {token!r}",
                          "write variables as key=value (quote values with spaces), or start a comment with '#'")
        return False
    value_at = Location(at.source, at.line, at.column + len(key) + 1)
    value = parse_value(text)
    for name in names:
        state.sink.set_var(name, key, value, at, value_at)
    return True


def _var_line(state: _State, raw: str, at: Location) -> None:
    key, equals, text = raw.strip().partition("=")
    if not equals or not key.strip():
        state.sink.report(at, f"expected key = value in [{state.group}:vars], got {raw.strip()!r}",
                          "write one variable per line as key = value")
        return
    value_at = Location(at.source, at.line, raw.index("=") + 2 + len(text) - len(text.lstrip()))
    state.sink.set_var(state.group, key.strip(), parse_value(text.strip()), at, value_at)


def _child_line(state: _State, line: str, at: Location) -> None:
    match = GROUP_NAME.match(line)
    if not match:
        state.sink.report(at, f"expected a group name in [{state.group}:children], got {line!r}",
                          "list one child group name per line")
        return
    child = match.group(1)
    if state.sink.has_group(child):
        state.sink.add_child(state.group, child, at)
    elif child in state.pending:
        state.pending[child].parents.append(state.group)
    else:
        state.pending[child] = _Pending(at, "children", [state.group])


def _report_pending(state: _State) -> None:
    for name, waiting in state.pending.items():
        if waiting.kind == "vars":
            state.sink.report(waiting.at, f"[{name}:vars] is for a group that is never declared",
                              f"add a [{name}] section (it may be empty) or a [{name}:children] section")
        else:
            state.sink.report(waiting.at, f"[{waiting.parents[-1]}:children] includes undefined group '{name}'",
                              f"add a [{name}] section listing its hosts, or remove '{name}' from the children")


def _tokens(raw: str) -> list[tuple[int, str]]:
    """shlex tokens of a host line (with '#' comments) and the 1-based column where each starts."""
    stream = io.StringIO(raw)
    lexer = shlex.shlex(stream, posix=True)
    lexer.whitespace_split = True
    tokens: list[tuple[int, str]] = []
    while True:
        before = stream.tell()
        token = lexer.get_token()
        if token is None:
            return tokens
        start = before + len(raw[before:]) - len(raw[before:].lstrip())
        tokens.append((start + 1, token))


__all__ = ["InventorySink", "looks_like_ini", "parse_ini", "parse_value"]
