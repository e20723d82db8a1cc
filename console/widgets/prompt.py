"""The one-line prompt under a view: `:` picks a view (with completion), `/` filters or searches."""

from __future__ import annotations

from textual.binding import Binding
from textual.message import Message
from textual.suggester import SuggestFromList
from textual.widgets import Input

VIEWS = ("fleet", "gpus", "jobs", "events", "logs")


class Prompt(Input):
    """Hidden until opened; Enter posts Submitted-like Done, Esc posts Cancelled, Tab completes."""

    BINDINGS = [
        Binding("escape", "cancel", "cancel", show=False),
        Binding("tab", "complete", "complete", show=False, priority=True),
    ]

    class Done(Message):
        """The prompt was submitted: mode is "command", "filter" or "search"."""

        def __init__(self, mode: str, value: str) -> None:
            super().__init__()
            self.mode = mode
            self.value = value

    class Edited(Message):
        """The text changed while open (filters and searches apply as you type)."""

        def __init__(self, mode: str, value: str) -> None:
            super().__init__()
            self.mode = mode
            self.value = value

    class Cancelled(Message):
        """Esc: the prompt closed without a result; `before` is the text it opened with."""

        def __init__(self, mode: str, before: str) -> None:
            super().__init__()
            self.mode = mode
            self.before = before

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id, compact=True, select_on_focus=False)
        self.mode = ""
        self._before = ""

    def open(self, mode: str, text: str = "") -> None:
        """Show the prompt for mode ("command": `:`, with view-name completion) and focus it."""
        self.mode, self._before = mode, text
        self.suggester = SuggestFromList(VIEWS, case_sensitive=False) if mode == "command" else None
        self.placeholder = {"command": "view: fleet gpus jobs events logs",
                            "filter": "text, re:regex or /regex/, or column=value",
                            "search": "search the log (text or re:regex)"}.get(mode, "")
        self.value = text
        self.cursor_position = len(text)
        self.display = True
        self.focus()

    def close(self) -> None:
        """Hide the prompt (the view behind it takes the focus back)."""
        self.display = False
        self.mode = ""

    @property
    def symbol(self) -> str:
        """The prompt's leading character."""
        return ":" if self.mode == "command" else "/"

    def action_complete(self) -> None:
        """Tab: take the suggested completion."""
        if self.mode == "command":
            self.cursor_position = len(self.value)
            self.action_cursor_right()  # at the end, this takes the suggestion

    def action_cancel(self) -> None:
        """Esc: close and say so."""
        mode, before = self.mode, self._before
        self.close()
        self.post_message(self.Cancelled(mode, before))

    def on_input_changed(self, event: Input.Changed) -> None:
        event.stop()
        if self.mode in ("filter", "search"):
            self.post_message(self.Edited(self.mode, event.value))

    def on_input_submitted(self, event: Input.Submitted) -> None:
        event.stop()
        mode = self.mode
        self.close()
        self.post_message(self.Done(mode, event.value))


def complete_view(text: str) -> str | None:
    """The view a `:` command names: exact, or the one view its prefix fits; None otherwise."""
    name = text.strip().lower().lstrip(":")
    if name in VIEWS:
        return name
    fits = [v for v in VIEWS if v.startswith(name)] if name else []
    aliases = {"nodes": "fleet", "node": "fleet", "gpu": "gpus", "job": "jobs", "event": "events", "log": "logs"}
    return fits[0] if len(fits) == 1 else aliases.get(name)


__all__ = ["VIEWS", "Prompt", "complete_view"]
