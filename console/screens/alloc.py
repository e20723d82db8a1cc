"""One allocation: node, GPUs, ports, exit code, restarts, last event, and its newest events."""

from __future__ import annotations

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.widgets import Static

from console.screens.base import Frame, ViewScreen
from console.tables import alloc_detail


class AllocScreen(ViewScreen):
    """The allocation's facts; r restarts it, s stops its job, l (or enter) shows its logs."""

    NOUNS = {"restart": "allocation", "stop": "job"}
    BINDINGS = [
        Binding("r", "act('restart')", "restart allocation"),
        Binding("s", "act('stop')", "stop job"),
        Binding("l,enter", "logs", "logs"),
    ]

    def __init__(self, alloc: str) -> None:
        super().__init__()
        self.alloc = alloc
        self.job: str | None = None
        self.view_title = f"Allocation {alloc}"

    def compose_body(self) -> ComposeResult:
        with VerticalScroll(id="body"):
            yield Static("", id="facts", markup=False)

    def focus_body(self) -> None:
        self.query_one("#body").focus()

    def show_body(self, frame: Frame) -> None:
        if frame.model is None:
            return
        lines = alloc_detail(frame.model, self.alloc)
        facts = self.query_one("#facts", Static)
        if not lines:
            facts.update(Text(f"allocation {self.alloc} is not in the state database any more"))
            return
        self.job = dict(lines).get("job")
        width = max(len(label) for label, _ in lines) + 2
        text = Text()
        for number, (label, value) in enumerate(lines):
            if number == 10:
                text.append("\nevents, newest first\n", style="bold")
            text.append(f"{label.rjust(width)}  ", style="bold" if number < 10 else "dim")
            text.append(f"{value}\n")
        facts.update(text)

    def targets(self, kind: str) -> list[str]:
        if kind == "restart":
            return [self.alloc]
        return [self.job] if kind == "stop" and self.job and self.job != "n/a" else []

    def action_logs(self) -> None:
        """l: the allocation's logs."""
        from console.screens.logs import LogScreen

        self.app.push_screen(LogScreen(self.alloc))
