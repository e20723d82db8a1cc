"""One error hierarchy for flex: what went wrong, where, and how to fix it.

FlexError -> ConfigError (bad input, exit 2), TransportError (cannot reach or talk to a host),
ProbeError (a node answered with something flex cannot read), StoreError (state database).
The CLI maps these to exit codes and never shows a traceback for them.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Location:
    """A place in an input file: 1-based line and column (0 when unknown)."""

    source: str
    line: int = 0
    column: int = 0

    def __str__(self) -> str:
        if self.line <= 0:
            return self.source
        return f"{self.source}:{self.line}:{self.column}"


@dataclass(frozen=True)
class Problem:
    """One thing wrong with an input: where it is, what is wrong, and the fix."""

    location: Location
    message: str
    fix: str = ""
    path: str = ""

    def render(self) -> str:
        """The problem as the CLI prints it: `file:line:col: path: message` then `  fix: ...`."""
        where = f"{self.location}: " if str(self.location) else ""
        inside = f"{self.path}: " if self.path else ""
        text = f"{where}{inside}{self.message}"
        if self.fix:
            text += f"\n  fix: {self.fix}"
        return text


class FlexError(Exception):
    """Base of every error flex raises on purpose. `exit_code` is what the CLI exits with."""

    exit_code = 1


class ConfigError(FlexError):
    """Bad input (inventory, job spec, CLI arguments): every problem found, reported at once."""

    exit_code = 2

    def __init__(self, problems: list[Problem] | Problem | str, fix: str = "") -> None:
        if isinstance(problems, str):
            problems = [Problem(Location(""), problems, fix)]
        elif isinstance(problems, Problem):
            problems = [problems]
        self.problems: list[Problem] = sorted(
            problems, key=lambda p: (p.location.source, p.location.line, p.location.column)
        )
        super().__init__(self.render())

    def render(self) -> str:
        """All problems, one block each, with a count line when there are several."""
        lines = [p.render() for p in self.problems]
        if len(self.problems) > 1:
            lines.append(f"{len(self.problems)} problems found")
        return "\n".join(lines)


class TransportError(FlexError):
    """A host could not be reached or talked to (unreachable, timeout, auth, host key)."""

    exit_code = 3

    def __init__(self, host: str, message: str, fix: str = "") -> None:
        self.host = host
        self.fix = fix
        text = f"{host}: {message}"
        if fix:
            text += f"\n  fix: {fix}"
        super().__init__(text)


class ProbeError(FlexError):
    """A node's probe output could not be understood."""

    exit_code = 3


class StoreError(FlexError):
    """The state database is unusable (locked past the timeout, corrupt, wrong schema version)."""

    exit_code = 4
