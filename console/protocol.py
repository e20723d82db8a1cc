"""The seam between the console and where its data comes from: what a data source must offer.

`console/source.py` implements it against the state database (and, when no controller runs, the loop
it runs itself); tests implement it with fixed ConsoleModels. Every call that may block (poll, request,
logs, follow) is made from a worker thread, never from the UI thread.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Protocol

from console.model import ConsoleModel

INTENT_KINDS = ("restart", "stop", "drain", "cordon", "uncordon")


class Source(Protocol):
    """A console's data source: snapshots in, intents out."""

    source_label: str  # "attached to controller ..." | "running the loop here" | "read-only ..."

    def start(self) -> None:
        """Begin observing (attach to the controller, or start the loop here)."""

    def poll(self) -> ConsoleModel:
        """The newest model; blocks for I/O; never raises (a failure comes back in model.error)."""

    def request(self, kind: str, target: str) -> str:
        """Write one intent (kind in INTENT_KINDS) and return its one-line result.

        Raises:
            ConfigError: the target is unknown (nothing is written).
        """

    def logs(self, alloc_id: str, *, stream: str = "stdout", previous: bool = False, tail: int = 500) -> list[str]:
        """The last `tail` lines of an allocation's stream (of its previous run when asked)."""

    def follow(self, alloc_id: str) -> Iterator[dict[str, Any]]:
        """An allocation's stdout as it grows: {"lines": [...]} documents, then {"end": True, ...}."""

    def stop(self) -> None:
        """Stop observing; give back whatever start() took."""


__all__ = ["INTENT_KINDS", "Source"]
