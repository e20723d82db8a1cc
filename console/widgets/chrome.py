"""The lines around every view: header (where the data comes from, how old), error banner, the
highlighted row's detail, and the status line (action results, or this view's keys)."""

from __future__ import annotations

from rich.text import Text
from textual.widgets import Static


class Line(Static):
    """A one-line Static whose text is set as plain text (never parsed as markup)."""

    def __init__(self, *, id: str | None = None, classes: str | None = None) -> None:
        super().__init__("", id=id, classes=classes, markup=False)
        self._text = ""

    def show(self, text: str, style: str = "") -> None:
        """Show text (a no-op when it did not change)."""
        if text == self._text:
            return
        self._text = text
        self.update(Text(text, style=style, no_wrap=True, overflow="ellipsis", end=""))

    @property
    def text(self) -> str:
        """The text shown."""
        return self._text


class HeaderBar(Line):
    """View, source (attached / running the loop here / read-only), data age, inventory."""


class Banner(Line):
    """The failing data source's error; hidden while there is none."""

    def show(self, text: str, style: str = "") -> None:
        super().show(text, style)
        self.display = bool(text)


class DetailLine(Line):
    """The long text of the highlighted row: why a job is pending, why a node is unreachable (it wraps
    onto a second line, as much as the stylesheet allows)."""

    def show(self, text: str, style: str = "") -> None:
        if text == self._text:
            return
        self._text = text
        self.update(Text(text, style=style, overflow="ellipsis", end=""))


class StatusLine(Line):
    """The result of the last action, or this view's keys."""


__all__ = ["Banner", "DetailLine", "HeaderBar", "Line", "StatusLine"]
