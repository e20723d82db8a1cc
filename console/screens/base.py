"""What every view shares: the chrome (header, banner, detail, status), the `/` prompt, Esc, the keys
for `?`, and for table views the filter, the marks and the actions on rows.

Screens receive data (`show(frame)`, from the app) and emit intents (`Act`, to the app); they never do
I/O themselves.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.message import Message
from textual.screen import Screen
from textual.widgets import DataTable

from console import format as fmt
from console.filtering import RowFilter, parse_filter
from console.model import ConsoleModel
from console.tables import Column, TableRow, Tables
from console.widgets.chrome import Banner, DetailLine, HeaderBar, StatusLine
from console.widgets.prompt import Prompt
from console.widgets.table import KeyedTable

KEY_NAMES = {"slash": "/", "question_mark": "?", "colon": ":", "escape": "esc", "space": "space", "enter": "enter"}
ACTION_WORDS = {"restart": "Restart", "stop": "Stop", "drain": "Drain", "cordon": "Cordon", "uncordon": "Uncordon"}


@dataclass(frozen=True)
class Frame:
    """What the app hands every view: the last good model and its rows, the latest error, and more."""

    model: ConsoleModel | None = None
    tables: Tables = field(default_factory=Tables)
    error: str | None = None
    source_label: str = ""
    read_only: bool = False


class Act(Message):
    """A confirmed action: write a `kind` intent for each target (the app does, in a worker)."""

    def __init__(self, kind: str, targets: list[str]) -> None:
        super().__init__()
        self.kind = kind
        self.targets = targets


def key_name(key: str) -> str:
    """A binding's key as the help shows it: 'slash' -> '/'."""
    return ",".join(KEY_NAMES.get(k, k) for k in key.split(","))


def header_text(frame: Frame, title: str, extra: str = "") -> str:
    """The header line: view, where the data comes from, its age, the inventory."""
    model = frame.model
    if model is None:
        return f"flex │ {title} │ {frame.source_label or 'starting'} │ waiting for the first snapshot"
    age = "no node seen yet" if model.data_age is None else f"data {fmt.compact_duration(model.data_age)} old"
    source = model.source or frame.source_label
    if frame.read_only and "read-only" not in source:
        source += " (read-only)"
    parts = [f"flex │ {title}{extra}", source, age, model.inventory]
    return " │ ".join(p for p in parts if p)


class ViewScreen(Screen[None]):
    """A view: header, banner, body, prompt, detail and status lines."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape", "back", "back"),
    ]
    HELP_EXTRA: ClassVar[list[tuple[str, str]]] = []  # keys the bindings do not list (enter...)
    NOUNS: ClassVar[dict[str, str]] = {}  # action kind -> what its target is ("allocation", "job"...)
    view_title = "view"

    def __init__(self) -> None:
        super().__init__()
        self.frame = Frame()
        self.status = ""

    def compose(self) -> ComposeResult:
        yield HeaderBar(id="header")
        yield Banner(id="banner")
        yield from self.compose_body()
        yield Prompt(id="prompt")
        yield DetailLine(id="detail")
        yield StatusLine(id="status")

    def compose_body(self) -> ComposeResult:
        """The view's own widgets."""
        yield from ()

    def on_mount(self) -> None:
        self.query_one(Prompt).display = False
        self.query_one(Banner).display = False
        frame = getattr(self.app, "frame", None)
        if isinstance(frame, Frame):
            self.show(frame)

    def on_screen_resume(self) -> None:
        frame = getattr(self.app, "frame", None)
        if isinstance(frame, Frame) and frame is not self.frame:
            self.show(frame)
        self.focus_body()

    def focus_body(self) -> None:
        """Give the focus to the view's main widget."""

    def show(self, frame: Frame) -> None:
        """Apply a new frame: chrome first, then the body (once mounted; on_mount shows the latest)."""
        if not self.query(HeaderBar):
            return  # still composing: on_mount shows the app's latest frame
        self.frame = frame
        self.show_chrome()
        self.show_body(frame)

    def show_body(self, frame: Frame) -> None:
        """Apply the frame to the view's own widgets."""

    def show_chrome(self) -> None:
        """Header, banner and status from self.frame."""
        self.query_one(HeaderBar).show(header_text(self.frame, self.view_title, self.title_extra()), "bold")
        error = self.frame.error
        self.query_one(Banner).show(f"! data source failing, retrying: {error}  (showing the last good data)"
                                    if error else "", "bold reverse")
        self.show_status()

    def title_extra(self) -> str:
        """More header text after the title (the filter)."""
        return ""

    def show_status(self, text: str | None = None) -> None:
        """The status line: text, else the last action's result, else this view's keys."""
        if text is not None:
            self.status = text
        self.query_one(StatusLine).show(self.status or self.hints())

    def show_detail(self, text: str | None) -> None:
        """The detail line (the highlighted row's long text)."""
        self.query_one(DetailLine).show(text or "")

    @property
    def is_read_only(self) -> bool:
        """True when the console runs with --read-only (actions are blocked)."""
        return self.frame.read_only or bool(getattr(self.app, "read_only", False))

    # --- keys ----------------------------------------------------------------------------------

    def key_help(self) -> list[tuple[str, str]]:
        """(key, what it does) for this view, for `?` and the status line; actions marked when read-only."""
        seen: set[str] = set()
        out: list[tuple[str, str]] = []
        for cls in type(self).__mro__[:type(self).__mro__.index(ViewScreen) + 1]:
            for binding in cls.__dict__.get("BINDINGS", ()):
                if not isinstance(binding, Binding) or binding.key in seen or not binding.description:
                    continue
                seen.add(binding.key)
                blocked = self.is_read_only and binding.action.startswith("act(")
                out.append((key_name(binding.key), binding.description + (" (read-only: off)" if blocked else "")))
        return [*self.HELP_EXTRA, *out]

    def hints(self) -> str:
        """The short key list of the status line."""
        keys = [(k, d) for k, d in self.key_help() if "read-only" not in d]
        return "  ".join(f"{k} {d}" for k, d in keys[:7]) + "  ? help"

    def action_act(self, kind: str) -> None:
        """An action key: confirm, naming every target, then ask the app to write the intents."""
        if self.is_read_only:
            self.show_status(f"read-only: {kind} is disabled (the console was started with --read-only)")
            return
        targets = self.targets(kind)
        if not targets:
            self.show_status(f"nothing to {kind} here: no row, or the row has no {self.NOUNS.get(kind, 'target')}")
            return
        self.confirm(kind, targets)

    def confirm(self, kind: str, targets: list[str]) -> None:
        """Open the confirm dialog; on confirm, clear the marks and post Act."""
        from console.screens.dialogs import ConfirmScreen

        def done(ok: bool | None) -> None:
            if ok:
                self.clear_marks()
                self.post_message(Act(kind, targets))
                self.show_status(f"{kind}: sending {len(targets)} request(s)...")
            else:
                self.show_status(f"{kind} cancelled: nothing was written")

        noun = self.NOUNS.get(kind, "target")
        self.app.push_screen(ConfirmScreen(f"{ACTION_WORDS.get(kind, kind)} {plural(noun, len(targets))}?",
                                           targets, kind), done)


    def targets(self, kind: str) -> list[str]:
        """What an action of kind acts on here (the view's row, or its marked rows)."""
        return []

    def clear_marks(self) -> None:
        """Forget the marks (after an action went out)."""

    def action_back(self) -> None:
        """Esc: close the prompt, clear the filter, else go back one screen."""
        if self.clear_filter():
            return
        if len(self.app.screen_stack) > 1:
            self.app.pop_screen()

    def clear_filter(self) -> bool:
        """Clear an active filter; True when there was one."""
        return False

    def open_prompt(self, mode: str, text: str = "") -> None:
        """Show the prompt in mode."""
        self.query_one(Prompt).open(mode, text)

    def on_prompt_cancelled(self, event: Prompt.Cancelled) -> None:
        self.focus_body()

    def on_prompt_done(self, event: Prompt.Done) -> None:
        self.focus_body()
        if event.mode == "command":
            self.app.post_message(ViewRequested(event.value))


class ViewRequested(Message):
    """`:NAME` was typed: the app switches to that view (or says it does not know it)."""

    def __init__(self, name: str) -> None:
        super().__init__()
        self.name = name


class TableScreen(ViewScreen):
    """A view that is one KeyedTable: `/` filter, space marks, actions on the row or the marked rows."""

    COLUMNS: ClassVar[tuple[Column, ...]] = ()
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("slash", "filter", "filter"),
        Binding("space", "mark", "mark"),
    ]
    def __init__(self) -> None:
        super().__init__()
        self.filter: RowFilter = RowFilter()
        self.all_rows: Sequence[TableRow] = ()

    def compose_body(self) -> ComposeResult:
        yield KeyedTable(self.COLUMNS, id="table")

    @property
    def table(self) -> KeyedTable:
        """The view's table."""
        return self.query_one(KeyedTable)

    def focus_body(self) -> None:
        self.table.focus()

    def rows(self, tables: Tables) -> Sequence[TableRow]:
        """The rows this view shows (before the filter)."""
        return ()

    def show_body(self, frame: Frame) -> None:
        if frame.model is None:
            return
        self.all_rows = self.rows(frame.tables)
        self.apply_rows()

    def apply_rows(self) -> None:
        """Show all_rows through the filter, in place."""
        rows = self.all_rows if not self.filter.is_active else \
            [r for r in self.all_rows if self.filter.matches(r.fields(self.COLUMNS))]
        self.table.apply(rows)
        self.query_one(HeaderBar).show(header_text(self.frame, self.view_title, self.title_extra()), "bold")
        self.show_detail((self.table.cursor_row_data or TableRow("", ())).detail)

    def title_extra(self) -> str:
        if not self.filter.is_active:
            return ""
        shown = len(self.table.keys) if self.is_mounted else 0
        return f" /{self.filter.text}/ {shown} of {len(self.all_rows)}"

    # --- filter ----------------------------------------------------------------------------------

    def action_filter(self) -> None:
        """`/`: edit the filter (applied as you type; Esc restores the one before)."""
        self.open_prompt("filter", self.filter.text)

    def set_filter(self, text: str) -> None:
        """Filter the table by text (plain, re:regex, /regex/ or column=value)."""
        self.filter = parse_filter(text, tuple(c.key for c in self.COLUMNS))
        self.apply_rows()
        if self.filter.problem:
            self.show_status(self.filter.problem)

    def clear_filter(self) -> bool:
        if not self.filter.is_active:
            return False
        self.set_filter("")
        return True

    def on_prompt_edited(self, event: Prompt.Edited) -> None:
        if event.mode == "filter":
            self.set_filter(event.value)

    def on_prompt_cancelled(self, event: Prompt.Cancelled) -> None:
        if event.mode == "filter":
            self.set_filter(event.before)
        super().on_prompt_cancelled(event)

    def on_prompt_done(self, event: Prompt.Done) -> None:
        if event.mode == "filter":
            self.set_filter(event.value)
        super().on_prompt_done(event)

    # --- rows: highlight, open, mark, act ---------------------------------------------------------

    def on_data_table_row_highlighted(self, event: DataTable.RowHighlighted) -> None:
        row = self.table.row(str(event.row_key.value))
        self.show_detail(row.detail if row else None)

    def on_data_table_row_selected(self, event: DataTable.RowSelected) -> None:
        row = self.table.row(str(event.row_key.value))
        if row is not None:
            self.open_row(row)

    def open_row(self, row: TableRow) -> None:
        """Enter on row: drill down (the default: nothing below)."""

    def action_mark(self) -> None:
        """space: mark or unmark the row; actions then apply to every marked row."""
        self.table.toggle_mark()
        marked = len(self.table.marks)
        self.show_status(f"{marked} marked: actions apply to all of them (esc clears the filter, not marks)"
                         if marked else "")

    def selected(self) -> list[TableRow]:
        """The marked rows (in table order), else the row under the cursor."""
        marks = self.table.marks
        if marks:
            return [r for r in (self.table.row(k) for k in self.table.keys if k in marks) if r]
        row = self.table.cursor_row_data
        return [row] if row else []

    def targets(self, kind: str) -> list[str]:
        return unique(r.targets[kind] for r in self.selected() if kind in r.targets)

    def clear_marks(self) -> None:
        self.table.clear_marks()

def unique(items: Iterable[Any]) -> list[Any]:
    """items without repeats, in order."""
    return list(dict.fromkeys(items))


def plural(noun: str, n: int) -> str:
    """'1 job', '3 jobs'."""
    return f"{n} {noun}{'' if n == 1 else 's'}"


__all__ = ["Act", "Frame", "TableScreen", "ViewRequested", "ViewScreen", "header_text"]
