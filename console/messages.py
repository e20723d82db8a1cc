"""The messages workers post to the UI thread: small, immutable, newest wins where it may."""

from __future__ import annotations

from textual.message import Message

from console.model import ConsoleModel
from console.tables import Tables


class ModelUpdated(Message):
    """A new model (and its rows, prepared off the UI thread); a newer one replaces one still queued."""

    def __init__(self, model: ConsoleModel, tables: Tables) -> None:
        super().__init__()
        self.model = model
        self.tables = tables

    def can_replace(self, message: Message) -> bool:
        return isinstance(message, ModelUpdated)


class RequestsDone(Message):
    """The results of the intents one confirmed action wrote (one line per target), and failures."""

    def __init__(self, kind: str, results: list[str], failures: list[str]) -> None:
        super().__init__()
        self.kind = kind
        self.results = results
        self.failures = failures


__all__ = ["ModelUpdated", "RequestsDone"]
