"""The console driven by keys (Pilot, 80x24) over a FakeSource of fixed models: every view, drill-down
and back, help, the filter, the cursor across re-sorts, every action through its confirm dialog,
read-only, the error banner, and the Logs view."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import replace
from typing import Any

import pytest
from textual.pilot import Pilot
from textual.widgets import Button

from console.app import FlexConsole
from console.model import ConsoleModel
from console.screens.alloc import AllocScreen
from console.screens.base import TableScreen, ViewScreen
from console.screens.dialogs import ConfirmScreen, HelpScreen
from console.screens.events import EventsScreen
from console.screens.fleet import FleetScreen
from console.screens.gpus import GpusScreen
from console.screens.jobs import AllocsScreen, JobsScreen
from console.screens.logs import LogScreen, LogsScreen
from tests.console.fakes import FakeSource, fleet_model, node, screen_text

SIZE = (80, 24)


async def until(pilot: Pilot[Any], condition: Callable[[], Any], what: str, timeout: float = 5.0) -> Any:
    """Let the app run until condition() is true; fail naming what was awaited."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while loop.time() < deadline:
        value = condition()
        if value:
            return value
        await pilot.pause(0.02)
    pytest.fail(f"timed out waiting for {what}")


@asynccontextmanager
async def running(source: FakeSource | None = None, *, read_only: bool = False
                  ) -> AsyncIterator[tuple[FlexConsole, Pilot[Any], FakeSource]]:
    """The app over source, started, its first model applied."""
    source = source or FakeSource()
    app = FlexConsole(source, read_only=read_only, interval=0.05)
    try:
        async with app.run_test(size=SIZE) as pilot:
            await until(pilot, lambda: app.updates > 0, "the first model")
            await pilot.pause()
            yield app, pilot, source
    finally:
        source.stop()


async def refreshed(app: FlexConsole, pilot: Pilot[Any], source: FakeSource, model: ConsoleModel) -> None:
    """Serve model and wait until the app applied it."""
    source.serve(model)
    await until(pilot, lambda: app.latest is model, "the new model")
    await pilot.pause()


def table_screen(app: FlexConsole) -> TableScreen:
    screen = app.screen
    assert isinstance(screen, TableScreen), type(screen).__name__
    return screen


async def press(pilot: Pilot[Any], *keys: str) -> None:
    await pilot.press(*keys)
    await pilot.pause()


async def type_command(pilot: Pilot[Any], text: str) -> None:
    await press(pilot, "colon", *text, "enter")


# --- views ---------------------------------------------------------------------------------------


VIEWS = [("fleet", "1", FleetScreen, "node3"), ("gpus", "2", GpusScreen, "node1/0"),
         ("jobs", "3", JobsScreen, "crashy"), ("events", "4", EventsScreen, "restart requested"),
         ("logs", "5", LogsScreen, "web-0-aaaaaa")]


@pytest.mark.parametrize(("name", "digit", "screen", "shown"), VIEWS, ids=[v[0] for v in VIEWS])
async def test_every_view_is_reached_by_name_and_by_digit(name: str, digit: str, screen: type, shown: str) -> None:
    async with running() as (app, pilot, _):
        await type_command(pilot, name)
        assert isinstance(app.screen, screen) and shown in screen_text(app)
        await press(pilot, "1" if digit != "1" else "3")
        assert not isinstance(app.screen, screen)
        await press(pilot, digit)
        assert isinstance(app.screen, screen) and shown in screen_text(app)


async def test_view_names_complete_with_tab_and_by_prefix_and_unknown_ones_say_so() -> None:
    async with running() as (app, pilot, _):
        await press(pilot, "colon", "g", "p", "tab", "enter")
        assert isinstance(app.screen, GpusScreen)
        await type_command(pilot, "ev")
        assert isinstance(app.screen, EventsScreen)
        await type_command(pilot, "pods")
        assert isinstance(app.screen, EventsScreen) and "no view 'pods'" in screen_text(app)


async def test_header_says_where_the_data_comes_from_its_age_and_the_inventory() -> None:
    async with running() as (app, pilot, _):
        header = screen_text(app).splitlines()[0]
        assert "Fleet" in header and "running the loop here" in header and "data 1s old" in header
        assert "inventory/lab.yaml" in header


async def test_gpus_view_flags_unowned_processes_and_unknown_gpus_and_shows_na() -> None:
    async with running() as (app, pilot, _):
        await press(pilot, "2")
        text = screen_text(app)
        assert "! unowned pid 999" in text and "node3/?" in text and "unknown" in text
        rows = {line.split()[0]: line for line in text.splitlines() if line.strip().startswith("node")}
        assert "n/a" in rows["node1/1"] and "97%" in rows["node1/0"] and "2%" in rows["node2/0"]
        await press(pilot, "end", "ctrl+end")
        table_screen(app).table.move_cursor(row=3)
        await pilot.pause()
        assert "NVML library not found" in screen_text(app)  # the reason, on the detail line


async def test_jobs_drill_down_to_allocations_then_one_allocation_and_esc_goes_back() -> None:
    async with running() as (app, pilot, _):
        await press(pilot, "3", "down", "enter")
        assert isinstance(app.screen, AllocsScreen) and app.screen.job == "crashy"
        assert table_screen(app).table.keys == ["crashy-0-cccccc"]
        await press(pilot, "enter")
        assert isinstance(app.screen, AllocScreen)
        text = screen_text(app)
        for fact in ("node1", "exit code  3", "restarts  7", "crash loop", "exited: exit 3"):
            assert fact in text
        await press(pilot, "escape")
        assert isinstance(app.screen, AllocsScreen)
        await press(pilot, "escape")
        assert isinstance(app.screen, JobsScreen) and table_screen(app).table.cursor_key == "crashy"


async def test_a_pending_job_says_why_on_the_detail_line() -> None:
    async with running() as (app, pilot, _):
        await press(pilot, "3", "down", "down")
        below_table = " ".join(screen_text(app).splitlines()[-3:-1])
        assert "0/3 nodes fit gpu: 1 has GPUs unknown, 2 are short of GPUs" in below_table


async def test_help_lists_the_views_keys() -> None:
    async with running() as (app, pilot, _):
        await press(pilot, "3", "question_mark")
        assert isinstance(app.screen, HelpScreen)
        text = screen_text(app)
        assert "restart job" in text and "stop job" in text and "filter" in text and "enter" in text
        await press(pilot, "escape")
        assert isinstance(app.screen, JobsScreen)


# --- filter and cursor ----------------------------------------------------------------------------


FILTERS = [("text", "node3", ["node3"]), ("regex", "re:node[12]", ["node1", "node2"]),
           ("slashed regex", "/^node[13]$/", ["node1", "node3"]), ("key=value", "state=ready", ["node1", "node3"])]


@pytest.mark.parametrize(("text", "keys"), [f[1:] for f in FILTERS], ids=[f[0] for f in FILTERS])
async def test_the_filter_survives_a_refresh(text: str, keys: list[str]) -> None:
    async with running() as (app, pilot, source):
        await press(pilot, "slash", *text, "enter")
        assert table_screen(app).table.keys == keys
        more = fleet_model(nodes=fleet_model().nodes + (node("node4", state="ready"), node("node5", "unreachable")))
        await refreshed(app, pilot, source, more)
        expected = keys + (["node4"] if text in ("state=ready",) else [])
        assert table_screen(app).table.keys == expected
        assert f"/{text}/" in screen_text(app).splitlines()[0]
        await press(pilot, "escape")  # clears the filter
        assert len(table_screen(app).table.keys) == 5


async def test_the_cursor_stays_on_its_key_when_a_refresh_reorders_and_adds_rows() -> None:
    async with running() as (app, pilot, source):
        await press(pilot, "down")
        assert table_screen(app).table.cursor_key == "node2"
        nodes = fleet_model().nodes
        reordered = fleet_model(nodes=(node("node0"), nodes[2], node("node1b"), nodes[1], nodes[0]))
        await refreshed(app, pilot, source, reordered)
        table = table_screen(app).table
        assert table.keys == ["node0", "node3", "node1b", "node2", "node1"]
        assert table.cursor_key == "node2" and table.cursor_row == 3
        await refreshed(app, pilot, source, fleet_model(nodes=(nodes[1], node("node9"))))
        assert table.cursor_key == "node2" and table.keys == ["node2", "node9"]


async def test_refresh_updates_cells_in_place() -> None:
    async with running() as (app, pilot, source):
        await press(pilot, "2")
        table = table_screen(app).table
        row_count = table.row_count
        hot = replace(fleet_model().gpus[2], utilization=88.0)
        await refreshed(app, pilot, source, fleet_model(gpus=fleet_model().gpus[:2] + (hot,)))
        assert "88%" in screen_text(app) and table.row_count == row_count


async def test_a_row_out_of_view_shows_its_new_cells_when_scrolled_to() -> None:
    many = fleet_model(nodes=tuple(node(f"n{i:03d}", load=1.0) for i in range(100)))
    async with running(FakeSource(many)) as (app, pilot, source):
        changed = replace(many, nodes=many.nodes[:-1] + (replace(many.nodes[-1], load=7.25),))
        await refreshed(app, pilot, source, changed)
        assert "7.25" not in screen_text(app)
        await press(pilot, "G")
        await until(pilot, lambda: "n099" in screen_text(app) and "7.25" in screen_text(app), "the scrolled-to row")
        assert table_screen(app).table.cursor_key == "n099"


# --- actions --------------------------------------------------------------------------------------


ACTIONS = [
    # (id, keys to reach the row, action key, expected requests)
    ("restart an allocation", ["3", "down", "enter"], "r", [("restart", "crashy-0-cccccc")]),
    ("restart an allocation from its detail", ["3", "down", "enter", "enter"], "r",
     [("restart", "crashy-0-cccccc")]),
    ("restart a job", ["3", "down"], "r", [("restart", "crashy")]),
    ("stop a job", ["3"], "s", [("stop", "web")]),
    ("stop the job of an allocation", ["3", "enter"], "s", [("stop", "web")]),
    ("drain a node", ["1", "down"], "d", [("drain", "node2")]),
    ("cordon a node", ["1"], "c", [("cordon", "node1")]),
    ("uncordon a node", ["1", "down", "down"], "u", [("uncordon", "node3")]),
    ("cordon a GPU", ["2", "down"], "c", [("cordon", "node1/1")]),
    ("uncordon a GPU", ["2"], "u", [("uncordon", "node1/0")]),
    ("restart the allocation holding a GPU", ["2"], "r", [("restart", "train-0-a1b2c3")]),
    ("drain marked nodes", ["1", "space", "down", "space"], "d", [("drain", "node1"), ("drain", "node3")]),
    ("restart marked jobs", ["3", "space", "space"], "r", [("restart", "web"), ("restart", "crashy")]),
    ("restart marked allocations", ["3", "enter", "space", "space"], "r",
     [("restart", "web-0-aaaaaa"), ("restart", "web-1-bbbbbb")]),
]


@pytest.mark.parametrize(("keys", "key", "expected"), [a[1:] for a in ACTIONS], ids=[a[0] for a in ACTIONS])
async def test_an_action_confirms_naming_every_target_with_cancel_focused(
        keys: list[str], key: str, expected: list[tuple[str, str]]) -> None:
    async with running() as (app, pilot, source):
        await press(pilot, *keys, key)
        assert isinstance(app.screen, ConfirmScreen)
        assert isinstance(app.focused, Button) and app.focused.id == "cancel"
        text = screen_text(app)
        assert all(target in text for _, target in expected)
        await press(pilot, "enter")  # Cancel has the focus
        assert isinstance(app.screen, ViewScreen) and "cancelled" in screen_text(app)
        await pilot.pause(0.1)
        assert source.requests == []

        await press(pilot, key)  # the marks outlive a cancel
        assert isinstance(app.screen, ConfirmScreen)
        await press(pilot, "right", "enter")  # the confirm button
        await until(pilot, lambda: len(source.requests) == len(expected), "the requests")
        assert source.requests == expected
        await until(pilot, lambda: "requested" in screen_text(app), "the result on the status line")


async def test_y_confirms_and_a_refused_target_is_reported() -> None:
    broken = fleet_model(jobs=fleet_model().jobs + (replace(fleet_model().jobs[0], key="nosuch"),))
    async with running(FakeSource(broken)) as (app, pilot, source):
        await press(pilot, "3", "space", "ctrl+end", "space", "r")
        await press(pilot, "y")
        await until(pilot, lambda: "failed" in screen_text(app), "the failure on the status line")
        assert source.requests == [("restart", "web")]
        assert "nosuch: no job or allocation named 'nosuch'" in screen_text(app)


async def test_read_only_blocks_every_action_and_says_so() -> None:
    async with running(read_only=True) as (app, pilot, source):
        for keys in (["1", "d"], ["1", "c"], ["1", "u"], ["2", "c"], ["3", "r"], ["3", "s"], ["3", "enter", "r"]):
            await press(pilot, *keys)
            assert isinstance(app.screen, ViewScreen), keys
            assert "read-only" in screen_text(app).splitlines()[-1], keys
        await press(pilot, "question_mark")
        assert "(read-only: off)" in screen_text(app)
        assert source.requests == []


async def test_an_action_shows_in_events_on_the_next_refresh() -> None:
    async with running() as (app, pilot, source):
        await press(pilot, "3", "r", "y")
        await until(pilot, lambda: source.requests, "the request")
        model = fleet_model()
        after = replace(model, events=model.events + (replace(model.events[-1], key="5", message="restart of web"),))
        await refreshed(app, pilot, source, after)
        await press(pilot, "4")
        assert table_screen(app).table.keys[0] == "5" and "restart of web" in screen_text(app)


# --- bad data --------------------------------------------------------------------------------------


async def test_a_failing_source_shows_a_banner_and_keeps_the_last_good_rows() -> None:
    async with running() as (app, pilot, source):
        failing = replace(fleet_model(), nodes=(), gpus=(), jobs=(), allocations=(), events=(),
                          error="database is locked")
        await refreshed(app, pilot, source, failing)
        text = screen_text(app)
        assert "data source failing" in text and "database is locked" in text
        assert "node1" in text and table_screen(app).table.keys == ["node1", "node2", "node3"]
        await refreshed(app, pilot, source, fleet_model())
        assert "data source failing" not in screen_text(app)


async def test_none_everywhere_never_crashes_the_app() -> None:
    from console.model import GpuRow, NodeRow

    empty_node = NodeRow(**{f: None for f in NodeRow.__dataclass_fields__})  # type: ignore[arg-type]
    empty_gpu = GpuRow(**{f: None for f in GpuRow.__dataclass_fields__})  # type: ignore[arg-type]
    bad = ConsoleModel(now=None, inventory=None, state=None, source=None, data_age=None,  # type: ignore[arg-type]
                       nodes=(empty_node,), gpus=(empty_gpu,), jobs=(None,), events=(None,))  # type: ignore[arg-type]
    async with running(FakeSource(bad)) as (app, pilot, _):
        for view in ("1", "2", "3", "4", "5"):
            await press(pilot, view)
            assert isinstance(app.screen, ViewScreen)


async def test_a_source_that_raises_is_a_banner_not_a_crash() -> None:
    class Raising(FakeSource):
        def poll(self) -> ConsoleModel:
            raise OSError("disk on fire")

    async with running(Raising()) as (app, pilot, _):
        assert "disk on fire" in screen_text(app)


# --- logs ----------------------------------------------------------------------------------------


async def test_logs_follow_pause_search_wrap_and_previous_run() -> None:
    source = FakeSource(logs={"web-0-aaaaaa:stdout:previous": ["the run before", "it crashed"]})
    async with running(source) as (app, pilot, source):
        await press(pilot, "5", "enter")
        assert isinstance(app.screen, LogScreen)
        await until(pilot, lambda: "ERROR: disk full" in screen_text(app), "the followed lines")
        assert "live" in screen_text(app).splitlines()[0]
        await press(pilot, "p")
        assert "paused" in screen_text(app).splitlines()[0]
        await press(pilot, "p", "slash", *"disk", "enter")
        assert "/disk/" in screen_text(app).splitlines()[0]
        await press(pilot, "w")
        assert app.screen.log_widget.wrap
        await press(pilot, "v")
        await until(pilot, lambda: "it crashed" in screen_text(app), "the previous run")
        assert "previous run" in screen_text(app).splitlines()[0]
        await press(pilot, "v")
        await until(pilot, lambda: "ERROR: disk full" in screen_text(app), "the live stream again")
        await press(pilot, "escape", "escape")  # clears the search, then back to the list
        assert isinstance(app.screen, LogsScreen)


async def test_an_ended_stream_says_how_it_ended() -> None:
    source = FakeSource(follow_docs=[{"lines": ["bye"]}, {"end": True, "exit_code": 3}])
    async with running(source) as (app, pilot, source):
        await press(pilot, "3", "enter", "l")
        await until(pilot, lambda: "ended (exit 3)" in screen_text(app), "the end of the stream")


async def test_a_broken_stream_is_reconnecting() -> None:
    class Broken(FakeSource):
        def follow(self, alloc_id: str) -> Any:
            raise OSError("connection reset")

    async with running(Broken()) as (app, pilot, _):
        await press(pilot, "5", "enter")
        await until(pilot, lambda: "reconnecting" in screen_text(app), "the reconnecting state")


async def test_q_quits() -> None:
    async with running() as (app, pilot, _):
        await pilot.press("q")
        await pilot.pause()
        assert not app.is_running
