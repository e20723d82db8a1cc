"""Logs: pick an allocation, then read its stdout as it grows (follow on by default), pause, search
with highlight, wrap, the previous run, stderr; the stream's state (live, ended, reconnecting) shown."""

from __future__ import annotations

import re
import time
from collections import deque
from collections.abc import Sequence
from typing import Any

from rich.text import Text
from textual import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.message import Message
from textual.widgets import RichLog
from textual.worker import get_current_worker

from console.screens.base import Frame, ViewScreen
from console.screens.jobs import AllocsScreen
from console.widgets.prompt import Prompt
from console.tables import TableRow

KEPT_LINES = 5000
RECONNECT_AFTER = 2.0  # seconds before following again after the stream broke


class LogsScreen(AllocsScreen):
    """Every allocation; Enter (or l) shows its logs."""

    HELP_EXTRA = [("enter", "follow the allocation's logs")]

    def __init__(self) -> None:
        super().__init__(job=None)
        self.view_title = "Logs"

    def open_row(self, row: TableRow) -> None:
        self.app.push_screen(LogScreen(row.key))


class LogDoc(Message):
    """One document of the follow stream (or a fetched tail), for the LogScreen that asked."""

    def __init__(self, doc: dict[str, Any]) -> None:
        super().__init__()
        self.doc = doc


def search_pattern(text: str) -> re.Pattern[str] | None:
    """The search as a regex: re:... or /.../ as written, anything else literally; None when empty."""
    text = text.strip()
    if not text:
        return None
    if text.startswith("re:") or (len(text) > 1 and text.startswith("/") and text.endswith("/")):
        source = text[3:] if text.startswith("re:") else text[1:-1]
        try:
            return re.compile(source, re.IGNORECASE)
        except re.error:
            pass
    return re.compile(re.escape(text), re.IGNORECASE)


def highlighted(line: str, pattern: re.Pattern[str] | None) -> Text:
    """A log line with every match of pattern highlighted."""
    text = Text(line, end="")
    if pattern is not None:
        text.highlight_regex(pattern, style="reverse bold")
    return text


class LogScreen(ViewScreen):
    """One allocation's output. p pause, / search, w wrap, v previous run, e stderr."""

    BINDINGS = [
        Binding("p", "pause", "pause"),
        Binding("slash", "search", "search"),
        Binding("w", "wrap", "wrap"),
        Binding("v", "previous", "previous run"),
        Binding("e", "stderr", "stderr"),
        Binding("r", "act('restart')", "restart allocation"),
    ]
    NOUNS = {"restart": "allocation"}

    def __init__(self, alloc: str) -> None:
        super().__init__()
        self.alloc = alloc
        self.view_title = f"Logs of {alloc}"
        self.lines: deque[str] = deque(maxlen=KEPT_LINES)  # the live stream
        self.other: list[str] = []  # the previous run or stderr, when shown
        self.showing = "stdout"  # stdout | previous | stderr
        self.state = "connecting"
        self.paused = False
        self.unseen = 0
        self.pattern: re.Pattern[str] | None = None
        self.search = ""

    def compose_body(self) -> ComposeResult:
        yield RichLog(id="log", max_lines=KEPT_LINES, wrap=False, markup=False, highlight=False, auto_scroll=True)

    @property
    def log_widget(self) -> RichLog:
        """The log widget."""
        return self.query_one("#log", RichLog)

    def on_mount(self) -> None:
        super().on_mount()
        self.follow()

    def focus_body(self) -> None:
        self.log_widget.focus()

    def show_body(self, frame: Frame) -> None:
        """The log does not come from the model (the header, with the stream's state, is redrawn)."""

    def title_extra(self) -> str:
        where = {"stdout": "", "previous": " (previous run)", "stderr": " (stderr)"}[self.showing]
        state = f"paused, {self.unseen} new lines" if self.paused and self.showing == "stdout" else self.state
        found = f" │ /{self.search}/" if self.search else ""
        return f"{where} │ {state}{found}"

    def show_chrome_extra(self) -> None:
        """Refresh the header (stream state, search)."""
        if self.is_mounted:
            self.show_chrome()

    # --- the stream (a thread worker; documents come back as LogDoc) -------------------------------

    @work(thread=True, exclusive=True, group="follow")
    def follow(self) -> None:
        """Follow the allocation's stdout until it ends; reconnect after a broken stream."""
        worker = get_current_worker()
        source = getattr(self.app, "source", None)
        while not worker.is_cancelled and source is not None:
            ended = False
            stream = None
            try:
                stream = source.follow(self.alloc)
                for doc in stream:
                    if worker.is_cancelled:
                        break
                    doc = dict(doc) if isinstance(doc, dict) else {"lines": [str(doc)]}
                    self.post_message(LogDoc(doc))
                    if is_final(doc):
                        ended = True
                        break
            except Exception as exc:  # noqa: BLE001 - shown as the stream's state, then retried
                self.post_message(LogDoc({"error": f"{type(exc).__name__}: {exc}"}))
            finally:
                close = getattr(stream, "close", None)
                if close is not None:
                    close()  # the source's stream lets go of its node connection now
            if ended or worker.is_cancelled:
                return
            self.post_message(LogDoc({"reconnecting": True}))
            time.sleep(RECONNECT_AFTER)

    @work(thread=True, exclusive=True, group="fetch")
    def fetch(self, showing: str) -> None:
        """The previous run's stdout, or stderr: a tail, fetched once."""
        source = getattr(self.app, "source", None)
        try:
            lines = list(source.logs(self.alloc, stream="stderr" if showing == "stderr" else "stdout",
                                     previous=showing == "previous")) if source is not None else []
            self.post_message(LogDoc({"fetched": showing, "lines": lines}))
        except Exception as exc:  # noqa: BLE001
            self.post_message(LogDoc({"fetched": showing, "error": f"{type(exc).__name__}: {exc}"}))

    def on_log_doc(self, message: LogDoc) -> None:
        doc = message.doc
        if "fetched" in doc:
            self.took_fetched(doc)
            return
        if is_final(doc):
            self.state = f"ended ({ending(doc)})"
        elif doc.get("error"):
            self.state = f"reconnecting ({doc['error']})"
        elif doc.get("reconnecting") or doc.get("state") == "reconnecting":
            self.state = "reconnecting"
        else:
            self.state = "live"
        new = [str(line) for line in doc.get("lines") or ()]
        self.lines.extend(new)
        if new and self.showing == "stdout":
            if self.paused:
                self.unseen += len(new)
            else:
                self.write(new)
        self.show_chrome_extra()

    def took_fetched(self, doc: dict[str, Any]) -> None:
        if doc["fetched"] != self.showing:
            return
        self.other = [str(line) for line in doc.get("lines") or ()]
        if doc.get("error"):
            self.other = [f"-- could not read it: {doc['error']}"]
        elif not self.other:
            self.other = ["-- nothing there"]
        self.render_all()

    # --- showing ---------------------------------------------------------------------------------

    def write(self, lines: Sequence[str]) -> None:
        """Append lines to the widget (highlighting the search)."""
        log = self.log_widget
        for line in lines:
            log.write(highlighted(line, self.pattern), scroll_end=None if not self.paused else False)

    def render_all(self) -> None:
        """Write what is shown again (after a search, wrap or source change)."""
        self.log_widget.clear()
        self.write(list(self.lines) if self.showing == "stdout" else self.other)
        self.show_chrome_extra()

    def action_pause(self) -> None:
        """p: stop scrolling the stream (lines are kept); p again shows what came meanwhile."""
        self.paused = not self.paused
        self.log_widget.auto_scroll = not self.paused
        if not self.paused and self.unseen:
            self.write(list(self.lines)[-self.unseen:])
        self.unseen = 0
        self.show_chrome_extra()

    def action_search(self) -> None:
        """/: highlight a text (or re:regex) in the log."""
        self.open_prompt("search", self.search)

    def set_search(self, text: str) -> None:
        """Highlight text in every line."""
        self.search = text.strip()
        self.pattern = search_pattern(text)
        self.render_all()

    def on_prompt_edited(self, event: Prompt.Edited) -> None:
        if event.mode == "search":
            self.set_search(event.value)

    def on_prompt_done(self, event: Prompt.Done) -> None:
        if event.mode == "search":
            self.set_search(event.value)
        super().on_prompt_done(event)

    def on_prompt_cancelled(self, event: Prompt.Cancelled) -> None:
        if event.mode == "search":
            self.set_search(event.before)
        super().on_prompt_cancelled(event)

    def clear_filter(self) -> bool:
        if not self.search:
            return False
        self.set_search("")
        return True

    def action_wrap(self) -> None:
        """w: wrap long lines (or not)."""
        self.log_widget.wrap = not self.log_widget.wrap
        self.render_all()

    def action_previous(self) -> None:
        """v: the previous run's output; v again: back to the live stream."""
        self.switch_to("stdout" if self.showing == "previous" else "previous")

    def action_stderr(self) -> None:
        """e: stderr (its tail); e again: back to stdout."""
        self.switch_to("stdout" if self.showing == "stderr" else "stderr")

    def switch_to(self, showing: str) -> None:
        self.showing = showing
        self.other = ["-- loading"] if showing != "stdout" else []
        if showing != "stdout":
            self.fetch(showing)
        self.render_all()

    def targets(self, kind: str) -> list[str]:
        return [self.alloc] if kind == "restart" else []


def is_final(doc: dict[str, Any]) -> bool:
    """True for the document that ends a stream for good: the workload ended (a broken stream with
    only an error is followed again)."""
    if not doc.get("end"):
        return False
    return not doc.get("error") or any(doc.get(k) is not None for k in ("ended", "exit_code", "signal"))


def ending(doc: dict[str, Any]) -> str:
    """How the workload ended: 'exit 0', 'signal 9', or the reason."""
    if doc.get("ended"):
        return str(doc["ended"])
    if doc.get("exit_code") is not None:
        return f"exit {doc['exit_code']}"
    if doc.get("signal") is not None:
        return f"signal {doc['signal']}"
    return str(doc.get("reason") or doc.get("status") or "ended")
