"""The flex console: k9s-style views over one data source, nvitop-style GPU rows.

    poll worker (thread) ── source.poll() ── prepare() ──> ModelUpdated ──> UI thread: screens apply it
    screen ── Act(kind, targets) ──> request worker (thread) ── source.request() ──> RequestsDone

The UI thread never does I/O: it applies prepared rows in place and pushes dialogs. A failing source
shows a banner over the last good rows and is polled again with backoff.
"""

from __future__ import annotations

import threading
from dataclasses import replace
from typing import ClassVar

from textual import work
from textual.app import App
from textual.binding import Binding, BindingType
from textual.worker import get_current_worker

from console.messages import ModelUpdated, RequestsDone
from console.model import ConsoleModel
from console.protocol import Source
from console.screens.base import Act, Frame, ViewRequested, ViewScreen, key_name
from console.screens.dialogs import HelpScreen
from console.screens.events import EventsScreen
from console.screens.fleet import FleetScreen
from console.screens.gpus import GpusScreen
from console.screens.jobs import JobsScreen
from console.screens.logs import LogsScreen
from console.tables import RowCache, Tables, prepare
from console.widgets.prompt import VIEWS, complete_view

POLL_INTERVAL = 0.5  # seconds between polls while the source answers
MAX_BACKOFF = 4.0  # seconds between polls while it fails


class FlexConsole(App[None]):
    """The console app: give it a Source; `read_only` blocks every action."""

    CSS_PATH = "flex.tcss"
    TITLE = "flex console"
    ENABLE_COMMAND_PALETTE = False
    MODES: ClassVar[dict[str, type[ViewScreen]]] = {  # type: ignore[assignment]
        "fleet": FleetScreen, "gpus": GpusScreen, "jobs": JobsScreen, "events": EventsScreen, "logs": LogsScreen,
    }
    DEFAULT_MODE = "fleet"
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("colon", "command", "view (:fleet :gpus :jobs :events :logs)"),
        *(Binding(str(n), f"view('{name}')", name, show=False) for n, name in enumerate(VIEWS, 1)),
        Binding("question_mark", "help", "help"),
        Binding("q", "quit", "quit"),
        Binding("ctrl+c", "force_quit", "quit", show=False, priority=True),
    ]

    def __init__(self, source: Source, *, read_only: bool = False, interval: float = POLL_INTERVAL) -> None:
        super().__init__()
        self.source = source
        self.read_only = read_only
        self.interval = interval
        self.frame = Frame(source_label=str(getattr(source, "source_label", "")), read_only=read_only)
        self.updates = 0  # models applied (tests wait on it)
        self.latest: ConsoleModel | None = None  # the newest model, good or failing
        self._wake = threading.Event()
        self._stopping = threading.Event()

    def on_mount(self) -> None:
        self.poll()

    def on_unmount(self) -> None:
        self._stopping.set()
        self._wake.set()

    # --- data in ---------------------------------------------------------------------------------

    @work(thread=True, exclusive=True, group="poll")
    def poll(self) -> None:
        """Poll the source every interval (backing off while it fails); post each model to the UI."""
        worker = get_current_worker()
        failures = 0
        cache = RowCache()
        try:
            self.source.start()
        except Exception as exc:  # noqa: BLE001 - shown in the banner; poll() says more
            self.post_message(self._failed(f"could not start: {type(exc).__name__}: {exc}"))
        while not (worker.is_cancelled or self._stopping.is_set()):
            message = self._fetch(cache)
            self.post_message(message)
            failures = failures + 1 if message.model.error else 0
            self._wake.wait(min(MAX_BACKOFF, self.interval * 2 ** min(failures, 4)) if failures else self.interval)
            self._wake.clear()

    def _fetch(self, cache: RowCache) -> ModelUpdated:
        """One poll, prepared; never raises."""
        try:
            model = self.source.poll()
            return ModelUpdated(model, prepare(model, cache))
        except Exception as exc:  # noqa: BLE001 - a broken source must not stop the console
            return self._failed(f"{type(exc).__name__}: {exc}")

    def _failed(self, error: str) -> ModelUpdated:
        base = self.frame.model
        model = replace(base, error=error) if base else ConsoleModel(now=0.0, inventory="", state="", source="",
                                                                      data_age=None, error=error)
        return ModelUpdated(model, self.frame.tables)

    def on_model_updated(self, message: ModelUpdated) -> None:
        self.apply_model(message.model, message.tables)

    def apply_model(self, model: ConsoleModel, tables: Tables) -> None:
        """Show a new model: the rows of a good one, only the banner of a failing one."""
        self.latest = model
        if model.error and self.frame.model is not None and not (model.nodes or model.jobs):
            self.frame = replace(self.frame, error=model.error)  # keep the last good rows
        else:
            self.frame = replace(self.frame, model=model, tables=tables, error=model.error)
        self.updates += 1
        for screen in self.screen_stack:
            if isinstance(screen, ViewScreen):
                screen.show(self.frame)

    def poll_now(self) -> None:
        """Poll at once instead of at the next tick (after an action)."""
        self._wake.set()

    # --- intents out -----------------------------------------------------------------------------

    def on_act(self, message: Act) -> None:
        if self.read_only:
            self.set_status(f"read-only: {message.kind} is disabled")
            return
        self.send(message.kind, list(message.targets))

    @work(thread=True, group="requests")
    def send(self, kind: str, targets: list[str]) -> None:
        """Write one intent per target; the results come back as RequestsDone."""
        results, failures = [], []
        for target in targets:
            try:
                results.append(str(self.source.request(kind, target)))
            except Exception as exc:  # noqa: BLE001 - ConfigError (unknown target) and I/O both end up here
                failures.append(f"{target}: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}")
        self.post_message(RequestsDone(kind, results, failures))

    def on_requests_done(self, message: RequestsDone) -> None:
        total = len(message.results) + len(message.failures)
        if message.failures:
            summary = f"{message.kind}: {len(message.failures)} of {total} failed: " + "; ".join(
                message.failures + message.results)
        elif total == 1:
            summary = message.results[0]
        else:
            summary = f"{message.kind}: {total} requested; " + "; ".join(message.results)
        self.set_status(summary)
        self.poll_now()

    def set_status(self, text: str) -> None:
        """The status line of every view in the current stack."""
        for screen in self.screen_stack:
            if isinstance(screen, ViewScreen):
                screen.show_status(text)

    # --- keys ------------------------------------------------------------------------------------

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if action in ("command", "view", "help", "quit") and not isinstance(self.screen, ViewScreen):
            return False  # a dialog is open: its keys only
        return True

    def action_force_quit(self) -> None:
        """ctrl+c: quit from anywhere, dialogs included."""
        self.exit()

    def action_view(self, name: str) -> None:
        """Switch to a view (each keeps its own drill-down stack)."""
        if name not in self.MODES:
            return
        self.switch_mode(name)

    def action_command(self) -> None:
        """`:`: the view prompt, with completion."""
        if isinstance(self.screen, ViewScreen):
            self.screen.open_prompt("command")

    def on_view_requested(self, message: ViewRequested) -> None:
        name = complete_view(message.name)
        if name is None:
            self.set_status(f"no view {message.name.strip()!r}: try {', '.join(VIEWS)}")
        else:
            self.action_view(name)

    def action_help(self) -> None:
        """`?`: the current view's keys."""
        screen = self.screen
        if isinstance(screen, ViewScreen):
            common = [(key_name(b.key), b.description) for b in self.BINDINGS
                      if isinstance(b, Binding) and b.show and b.description]
            common.insert(1, ("1-5", "fleet, gpus, jobs, events, logs"))
            self.push_screen(HelpScreen(screen.view_title, screen.key_help(), common))


__all__ = ["FlexConsole"]
