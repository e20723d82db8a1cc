"""The console's pure helpers: cell text from values (bars, sparklines, sizes, ages, n/a), the `/`
filter, and rows from a model. Table-driven; no textual."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest

from console import format as fmt
from console.filtering import parse_filter
from console.model import ConsoleModel, GpuRow, NodeRow
from console.tables import GPU_COLUMNS, NODE_COLUMNS, alloc_detail, prepare
from tests.console.fakes import GIB, NOW, fleet_model, gpu, node

CASES: list[tuple[str, Any, Any]] = [
    # (id, call, expected)
    ("a busy GPU's bar is nearly full", lambda: fmt.bar(97, 8), "███████▊"),
    ("an idle GPU's bar is nearly empty but shows the use", lambda: fmt.bar(2, 8), "▏░░░░░░░"),
    ("zero is an empty bar", lambda: fmt.bar(0, 8), "░░░░░░░░"),
    ("over 100 is clamped", lambda: fmt.bar(250, 4), "████"),
    ("unsupported utilization is n/a, not an empty bar", lambda: fmt.bar(None, 4), "n/a "),
    ("utilization cell: bar and percent", lambda: fmt.utilization(97), "███████▊  97%"),
    ("utilization cell of an unsupported metric", lambda: fmt.utilization(None), "n/a"),
    ("sparkline on the fixed scale: busy", lambda: fmt.sparkline([97.0] * 4, 4), "████"),
    ("sparkline on the fixed scale: idle", lambda: fmt.sparkline([2.0] * 4, 4), "▁▁▁▁"),
    ("sparkline rises oldest to newest", lambda: fmt.sparkline([0, 30, 60, 100], 4), "▁▃▅█"),
    ("sparkline pads short history on the left", lambda: fmt.sparkline([50.0], 3), "  ▅"),
    ("sparkline keeps the newest samples", lambda: fmt.sparkline([0, 0, 100, 100], 2), "██"),
    ("sparkline shows unsupported samples as gaps", lambda: fmt.sparkline([None, 100, None], 3), " █ "),
    ("sparkline of no history", lambda: fmt.sparkline(None, 3), "   "),
    ("sizes in short binary units", lambda: fmt.size(80 * GIB), "80G"),
    ("sizes keep one decimal under ten", lambda: fmt.size(int(1.5 * 2**10)), "1.5K"),
    ("sizes in bytes", lambda: fmt.size(512), "512B"),
    ("an unknown size is n/a", lambda: fmt.size(None), "n/a"),
    ("used/total", lambda: fmt.used_total(12 * GIB, 64 * GIB), "12G/64G"),
    ("used/total with an unknown part", lambda: fmt.used_total(None, 64 * GIB), "n/a/64G"),
    ("used/total when nothing is known", lambda: fmt.used_total(None, None), "n/a"),
    ("age in seconds", lambda: fmt.age(NOW - 3, NOW), "3s ago"),
    ("age in minutes", lambda: fmt.age(NOW - 300, NOW), "5m ago"),
    ("age in hours", lambda: fmt.age(NOW - 7200, NOW), "2h ago"),
    ("age under a second", lambda: fmt.age(NOW - 0.2, NOW), "just now"),
    ("age of never", lambda: fmt.age(None, NOW), "n/a"),
    ("until a cron fire", lambda: fmt.until(NOW + 3600, NOW), "in 1h"),
    ("a past fire is due", lambda: fmt.until(NOW - 1, NOW), "due"),
    ("no fire at all", lambda: fmt.until(None, NOW), "-"),
    ("round-trip in milliseconds", lambda: fmt.compact_duration(0.197), "197ms"),
    ("temperature", lambda: fmt.temperature(61.4), "61C"),
    ("unsupported temperature", lambda: fmt.temperature(None), "n/a"),
    ("power draw and limit", lambda: fmt.power(350.2, 700), "350/700W"),
    ("power draw without a limit", lambda: fmt.power(350, None), "350/n/aW"),
    ("unsupported power", lambda: fmt.power(None, None), "n/a"),
    ("counts", lambda: fmt.count(7), "7"),
    ("an unknown count", lambda: fmt.count(None), "n/a"),
    ("text where a number belongs is n/a", lambda: fmt.count("seven"), "n/a"),
    ("NaN is n/a", lambda: fmt.percent(float("nan")), "n/a"),
    ("cpu ratio", lambda: fmt.ratio(1.5, 8), "1.5/8"),
    ("GPUs busy of total", lambda: fmt.gpus_busy(1, 2), "1/2"),
    ("GPUs unknown", lambda: fmt.gpus_busy(0, None), "unknown"),
    ("ports", lambda: fmt.ports((("http", 8080), ("grpc", 9000))), "http:8080,grpc:9000"),
    ("no ports", lambda: fmt.ports(()), "-"),
    ("broken ports", lambda: fmt.ports(((1, 2, 3),)), "?"),
    ("an unreachable node says for how long", lambda: fmt.node_state("unreachable", NOW - 31, NOW),
     "unreachable 31s"),
    ("a ready node", lambda: fmt.node_state("ready", NOW, NOW), "ready"),
    ("no exit code yet", lambda: fmt.exit_code(None), "-"),
    ("long text is cut with an ellipsis", lambda: fmt.shorten("abcdefgh", 5), "abcd…"),
    ("None anywhere is n/a", lambda: fmt.na(None), "n/a"),
]


@pytest.mark.parametrize(("call", "expected"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_format(call: Any, expected: Any) -> None:
    assert call() == expected


def test_a_busy_and_an_idle_gpu_look_different_in_bar_and_sparkline() -> None:
    busy, idle = gpu("n", 0, 97.0, history=(97.0,) * 10), gpu("n", 1, 2.0, history=(2.0,) * 10)
    rows = prepare(replace(fleet_model(), gpus=(busy, idle), nodes=())).gpus
    util, history = GPU_COLUMNS.index(next(c for c in GPU_COLUMNS if c.key == "util")), 2
    assert rows[0].cells[util] != rows[1].cells[util]
    assert rows[0].cells[history] != rows[1].cells[history]
    assert set(rows[0].cells[history]) == {"█"} and set(rows[1].cells[history]) == {"▁"}


FILTERS = [
    ("plain text matches any column", "node2", {"node2"}),
    ("plain text is case-insensitive", "NODE3", {"node3"}),
    ("re: prefix is a regex", "re:^node[12]$", {"node1", "node2"}),
    ("/.../ is a regex", "/node[23]/", {"node2", "node3"}),
    ("column=value", "state=ready", {"node1", "node3"}),
    ("column=value with a wildcard", "state=unreach*", {"node2"}),
    ("two terms: both hold", "state=ready rack=r2", {"node3"}),
    ("an unknown column name is plain text", "colour=red", set()),
    ("a bad regex matches as text", "re:([", set()),
    ("an empty filter shows everything", "  ", {"node1", "node2", "node3"}),
]


@pytest.mark.parametrize(("text", "expected"), [f[1:] for f in FILTERS], ids=[f[0] for f in FILTERS])
def test_filter(text: str, expected: set[str]) -> None:
    rows = prepare(fleet_model()).nodes
    flt = parse_filter(text, tuple(c.key for c in NODE_COLUMNS))
    assert {r.key for r in rows if flt.matches(r.fields(NODE_COLUMNS))} == expected


def test_a_bad_regex_says_so() -> None:
    assert parse_filter("re:([").problem and "plain text" in (parse_filter("re:([").problem or "")


def test_rows_say_why_for_unknown_gpus_unreachable_nodes_and_pending_jobs() -> None:
    tables = prepare(fleet_model())
    unknown = next(r for r in tables.gpus if r.key == "node3/?")
    assert unknown.cells[1] == "unknown" and "NVML library not found" in (unknown.detail or "")
    assert "keepalive timeout" in (next(r for r in tables.nodes if r.key == "node2").detail or "")
    assert "0/3 nodes fit" in (next(r for r in tables.jobs if r.key == "train").detail or "")
    flagged = next(r for r in tables.gpus if r.key == "node1/1")
    assert "! unowned pid 999" in flagged.cells[6] and "bold red" in flagged.styles[6]
    assert next(r for r in tables.nodes if r.key == "node2").style == "dim"  # stale


def test_events_come_newest_first() -> None:
    assert [r.key for r in prepare(fleet_model()).events] == ["4", "3", "2", "1"]


def test_none_anywhere_makes_a_row_not_an_exception() -> None:
    broken = NodeRow(**{f: None for f in NodeRow.__dataclass_fields__})  # type: ignore[arg-type]
    worse = GpuRow(**{f: None for f in GpuRow.__dataclass_fields__})  # type: ignore[arg-type]
    model = ConsoleModel(now=None, inventory=None, state=None, source=None, data_age=None,  # type: ignore[arg-type]
                         nodes=(broken, node("ok")), gpus=(worse,), jobs=(None,), events=(None,))  # type: ignore[arg-type]
    tables = prepare(model)
    assert [r.key for r in tables.nodes][-1] == "ok"
    assert len(tables.nodes) == 2 and len(tables.gpus) >= 1 and len(tables.jobs) == 1
    assert all(isinstance(c, str) for r in tables.nodes + tables.gpus + tables.jobs for c in r.cells)


def test_allocation_detail_names_node_gpus_ports_exit_code_restarts_and_last_event() -> None:
    detail = dict(alloc_detail(fleet_model(), "crashy-0-cccccc"))
    assert detail["node"] == "node1" and detail["exit code"] == "3" and detail["restarts"] == "7"
    assert "crash loop" in detail["last event"]
    assert "0: 97%" in dict(alloc_detail(fleet_model(), "train-0-a1b2c3"))["gpus"]
    assert alloc_detail(fleet_model(), "gone") == []
