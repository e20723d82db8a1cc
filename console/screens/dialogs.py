"""Modal dialogs: the confirm before every action (Cancel focused), and `?` help."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Button, Static

from console.protocol import INTENT_KINDS


class ConfirmScreen(ModalScreen[bool]):
    """'Restart 2 allocations?' with every target listed; Cancel has the focus, y confirms, n/esc cancel."""

    BINDINGS = [
        Binding("escape,n", "cancel", "cancel"),
        Binding("y", "confirm", "confirm"),
        Binding("left,right", "switch", "switch button", show=False),
    ]

    def __init__(self, question: str, targets: list[str], kind: str) -> None:
        super().__init__()
        self.question = question
        self.targets = list(targets)
        self.kind = kind if kind in INTENT_KINDS else "action"

    def compose(self) -> ComposeResult:
        with Vertical(id="confirm"):
            yield Static(self.question, id="question", markup=False)
            with VerticalScroll(id="targets"):
                yield Static("\n".join(f"  {t}" for t in self.targets), markup=False)
            yield Static("The controller applies it on its next pass; it shows in Events.", id="note", markup=False)
            with Horizontal(id="buttons"):
                yield Button("Cancel", id="cancel", variant="primary", compact=True)
                yield Button(self.kind.capitalize(), id="confirm-button", variant="error", compact=True)

    def on_mount(self) -> None:
        self.query_one("#cancel", Button).focus()

    def on_button_pressed(self, event: Button.Pressed) -> None:
        event.stop()
        self.dismiss(event.button.id == "confirm-button")

    def action_cancel(self) -> None:
        """Close without doing anything."""
        self.dismiss(False)

    def action_confirm(self) -> None:
        """Do it."""
        self.dismiss(True)

    def action_switch(self) -> None:
        """Move the focus to the other button."""
        self.focus_next(Button)


class HelpScreen(ModalScreen[None]):
    """The keys of the view it was opened from, and the keys every view has."""

    BINDINGS = [Binding("escape,q,question_mark,enter", "close", "close")]

    def __init__(self, title: str, keys: list[tuple[str, str]], common: list[tuple[str, str]]) -> None:
        super().__init__()
        self.title_text = title
        self.keys = keys
        self.common = common

    def compose(self) -> ComposeResult:
        width = max((len(k) for k, _ in self.keys + self.common), default=4) + 2
        lines = [f"Keys of {self.title_text}", ""]
        lines += [f"  {k.ljust(width)}{d}" for k, d in self.keys]
        lines += ["", "Everywhere", ""] + [f"  {k.ljust(width)}{d}" for k, d in self.common]
        with VerticalScroll(id="help"):
            yield Static("\n".join(lines), markup=False)
            yield Static("esc closes", id="note", markup=False)

    def action_close(self) -> None:
        """Close the help."""
        self.dismiss(None)


__all__ = ["ConfirmScreen", "HelpScreen"]
