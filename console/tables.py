"""What each table shows: its columns, and one TableRow of cell texts per model row. Pure.

    ConsoleModel ──prepare()──> Tables (nodes, gpus, jobs, allocations, events: TableRows)
                                   └─> widgets.table.KeyedTable.apply(rows): in place, by key

`prepare` runs in the poll worker's thread, so the UI thread only compares texts and updates the cells
that changed. A row that cannot be formatted (bad data) becomes a row that says so, never an exception.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from console import format as fmt
from console.model import AllocRow, ConsoleModel, EventRow, GpuRow, JobRow, NodeRow

R = TypeVar("R")
WHY_WIDTH = 90  # long sentences are cut in the table; the whole text is the row's detail


@dataclass(frozen=True)
class Column:
    """One table column: its key (the name `/key=value` filters on) and its header label."""

    key: str
    label: str


@dataclass(frozen=True)
class TableRow:
    """One row ready to show: cell texts, their styles, and what actions and the filter need."""

    key: str
    cells: tuple[str, ...]
    styles: tuple[str, ...] = ()  # rich style per cell ("" none); () none at all
    style: str = ""  # the whole row's style ("dim": stale data)
    extra: Mapping[str, str] = field(default_factory=dict)  # more fields for the filter and the scope
    targets: Mapping[str, str] = field(default_factory=dict)  # action kind -> its target for this row
    detail: str | None = None  # the long text shown in the status line when the row is highlighted

    def fields(self, columns: Sequence[Column]) -> dict[str, str]:
        """Column key -> cell text, plus the extra fields: what the `/` filter looks at."""
        return {**{c.key: text for c, text in zip(columns, self.cells)}, **self.extra}


@dataclass(frozen=True)
class Tables:
    """Every view's rows for one model."""

    nodes: tuple[TableRow, ...] = ()
    gpus: tuple[TableRow, ...] = ()
    jobs: tuple[TableRow, ...] = ()
    allocations: tuple[TableRow, ...] = ()
    events: tuple[TableRow, ...] = ()


NODE_COLUMNS = (Column("node", "NODE"), Column("state", "STATE"), Column("load", "LOAD"), Column("cpu", "CPU"),
                Column("memory", "MEMORY"), Column("gpus", "GPUS"), Column("allocs", "ALLOCS"),
                Column("rtt", "RTT"), Column("seen", "SEEN"), Column("dc", "DC"), Column("rack", "RACK"),
                Column("why", "WHY"))
GPU_COLUMNS = (Column("gpu", "GPU"), Column("util", "UTIL"), Column("history", "HISTORY"),
               Column("memory", "MEMORY"), Column("temp", "TEMP"), Column("power", "POWER"),
               Column("holder", "HOLDER"), Column("pids", "PIDS"), Column("ecc", "ECC"), Column("model", "MODEL"))
JOB_COLUMNS = (Column("job", "JOB"), Column("kind", "KIND"), Column("health", "HEALTH"), Column("run", "RUN"),
               Column("failed", "FAIL"), Column("restarts", "RESTARTS"), Column("next", "NEXT"),
               Column("why", "WHY"))
ALLOC_COLUMNS = (Column("alloc", "ALLOC"), Column("node", "NODE"), Column("status", "STATUS"),
                 Column("restarts", "RESTARTS"), Column("exit", "EXIT"), Column("gpus", "GPUS"),
                 Column("ports", "PORTS"), Column("age", "AGE"), Column("desired", "DESIRED"),
                 Column("job", "JOB"), Column("event", "LAST EVENT"))
EVENT_COLUMNS = (Column("seq", "#"), Column("age", "AGE"), Column("kind", "KIND"), Column("target", "TARGET"),
                 Column("message", "MESSAGE"), Column("by", "BY"))

STATE_STYLES = {"ready": "green", "cordoned": "yellow", "draining": "yellow", "unreachable": "bold red",
                "untrusted": "bold red", "unknown": "dim"}
HEALTH_STYLES = {"healthy": "green", "complete": "green", "starting": "cyan", "pending": "yellow",
                 "degraded": "bold red", "down": "bold red", "stopping": "yellow", "stopped": "dim"}
STATUS_STYLES = {"running": "green", "complete": "green", "pending": "yellow", "starting": "cyan",
                 "failed": "bold red", "lost": "bold red", "unknown": "yellow", "stopped": "dim"}


class RowCache:
    """The GPU rows of the last prepare, reused while their GpuRow (and staleness) did not change.

    GPU rows are most of a big fleet and do not depend on the clock; a node's GPUs change only when
    the node reports, not at every poll. Owned by one poll worker.
    """

    def __init__(self) -> None:
        self.gpus: dict[str, tuple[GpuRow, bool, TableRow]] = {}

    def gpu(self, row: GpuRow, stale: frozenset[str]) -> TableRow:
        """gpu_row(row), from the cache when row is unchanged."""
        is_stale = row.node in stale
        hit = self.gpus.get(row.key)
        if hit is not None and hit[1] == is_stale and hit[0] == row:
            return hit[2]
        made = gpu_row(row, stale)
        self.gpus[row.key] = (row, is_stale, made)
        return made

    def keep_only(self, keys: Iterable[str]) -> None:
        """Forget the rows of GPUs that are gone."""
        keep = set(keys)
        for key in [k for k in self.gpus if k not in keep]:
            del self.gpus[key]


def prepare(model: ConsoleModel, cache: RowCache | None = None) -> Tables:
    """Every view's rows for model (events newest first); cache reuses unchanged GPU rows."""
    now, stale = model.now, model.stale_nodes or frozenset()
    make_gpu = (lambda r: gpu_row(r, stale)) if cache is None else (lambda r: cache.gpu(r, stale))
    tables = Tables(
        nodes=_rows(model.nodes, lambda r: node_row(r, now, stale), NODE_COLUMNS),
        gpus=_rows(model.gpus, make_gpu, GPU_COLUMNS)
        + _rows(unknown_gpu_nodes(model), lambda r: unknown_gpu_row(r, stale), GPU_COLUMNS),
        jobs=_rows(model.jobs, lambda r: job_row(r, now), JOB_COLUMNS),
        allocations=_rows(model.allocations, lambda r: alloc_row(r, now, stale), ALLOC_COLUMNS),
        events=_rows(reversed(model.events or ()), lambda r: event_row(r, now), EVENT_COLUMNS),
    )
    if cache is not None:
        cache.keep_only(r.key for r in tables.gpus)
    return tables


def _rows(items: Iterable[R] | None, make: Callable[[R], TableRow], columns: Sequence[Column]) -> tuple[TableRow, ...]:
    """make(item) for each item, a broken item as a 'bad data' row; keys stay unique (first wins)."""
    out: dict[str, TableRow] = {}
    for number, item in enumerate(items or ()):
        try:
            row = make(item)
        except Exception as exc:  # noqa: BLE001 - bad data must not take the console down
            row = bad_row(item, number, exc, len(columns))
        out.setdefault(row.key, row)
    return tuple(out.values())


def bad_row(item: Any, number: int, exc: Exception, width: int) -> TableRow:
    """The row shown for an item that could not be formatted: its key (if any) and what was wrong."""
    key = str(getattr(item, "key", None) or f"?{number}")
    cells = (key, "bad data", *("?" for _ in range(width - 2)))
    return TableRow(key, cells[:width], style="bold red", detail=f"{key}: bad data ({type(exc).__name__}: {exc})")


def _styled(width: int, at: Mapping[int, str]) -> tuple[str, ...]:
    """Per-cell styles: at[column index], "" elsewhere."""
    return tuple(at.get(i, "") for i in range(width))


# --- the views' rows ---------------------------------------------------------------------------------


def node_row(n: NodeRow, now: float, stale: frozenset[str]) -> TableRow:
    """A node of the Fleet view."""
    why = n.error or (f"GPUs unknown: {n.gpu_reason}" if n.gpu_reason else None)
    cells = (str(n.key), fmt.node_state(n.state, n.last_seen, now), fmt.fixed(n.load),
             fmt.ratio(n.cpus_used, n.cpus), fmt.used_total(n.memory_used, n.memory_total),
             fmt.gpus_busy(n.gpus_busy, n.gpus_total), fmt.count(n.allocations), fmt.compact_duration(n.rtt),
             fmt.age(n.last_seen, now), fmt.na(n.datacenter), fmt.na(n.rack), fmt.shorten(why or "-", WHY_WIDTH))
    return TableRow(str(n.key), cells, _styled(len(cells), {1: STATE_STYLES.get(str(n.state), "")}),
                    style="dim" if n.key in stale else "",
                    targets={"drain": str(n.key), "cordon": str(n.key), "uncordon": str(n.key)},
                    detail=f"{n.key}: {why}" if why else None)


def gpu_row(g: GpuRow, stale: frozenset[str]) -> TableRow:
    """A GPU of the GPUs view: metrics, who holds it, unowned processes flagged."""
    holder = g.alloc or g.job or ("cordoned" if g.is_cordoned else "free")
    if g.is_cordoned and holder != "cordoned":
        holder += " (cordoned)"
    if g.unowned_pids:
        holder = f"{'' if holder == 'free' else holder + ' '}! unowned pid {fmt.joined(g.unowned_pids)}"
    note = g.error or ("unhealthy" if g.is_healthy is False else None)
    cells = (str(g.key), fmt.utilization(g.utilization), fmt.sparkline(g.history), fmt.used_total(g.memory_used, g.memory_total),
             fmt.temperature(g.temperature), fmt.power(g.power_draw, g.power_limit), holder, fmt.joined(g.pids),
             fmt.count(g.ecc_uncorrected), fmt.shorten(f"{note}: {fmt.na(g.model)}" if note else fmt.na(g.model), 40))
    styles = _styled(len(cells), {0: "yellow" if g.is_cordoned else "", 1: util_style(g.utilization),
                                  6: "bold red" if g.unowned_pids else "yellow" if g.is_cordoned else "",
                                  9: "bold red" if note else ""})
    detail = "; ".join(t for t in (note and f"{g.key}: {note}",
                                   g.unowned_pids and f"processes no allocation owns: {fmt.joined(g.unowned_pids)}") if t)
    return TableRow(str(g.key), cells, styles, style="dim" if g.node in stale else "",
                    extra={"node": str(g.node), "index": str(g.index), "job": fmt.na(g.job), "alloc": fmt.na(g.alloc)},
                    targets={"cordon": str(g.key), "uncordon": str(g.key), "drain": str(g.node),
                             **({"restart": g.alloc} if g.alloc else {})},
                    detail=detail or None)


def unknown_gpu_nodes(model: ConsoleModel) -> list[NodeRow]:
    """Nodes whose GPUs are unknown (no GPU rows, and a reason): each gets one row saying why."""
    listed = {g.node for g in model.gpus or ()}
    return [n for n in model.nodes or () if n.gpus_total is None and n.gpu_reason and n.key not in listed]


def unknown_gpu_row(n: NodeRow, stale: frozenset[str]) -> TableRow:
    """The GPUs view's row for a node whose GPUs are unknown: why (the driver is missing...)."""
    cells = (f"{n.key}/?", "unknown", "", fmt.NA, fmt.NA, fmt.NA, "-", "-", fmt.NA,
             fmt.shorten(n.gpu_reason, 40))
    return TableRow(f"{n.key}/?", cells, _styled(len(cells), {1: "yellow", 9: "yellow"}),
                    style="dim" if n.key in stale else "", extra={"node": str(n.key)},
                    targets={"drain": str(n.key)}, detail=f"{n.key}: GPUs unknown: {n.gpu_reason}")


def util_style(utilization: float | None) -> str:
    """The utilization bar's colour: green under 50%, yellow under 80%, red above."""
    p = fmt.clamp_percent(utilization)
    return "" if p is None else "green" if p < 50 else "yellow" if p < 80 else "red"


def job_row(j: JobRow, now: float) -> TableRow:
    """A job of the Jobs view; a pending job says why it cannot be placed."""
    kind = f"{j.kind}/cron" if j.schedule else fmt.na(j.kind)
    why = j.pending or ("-" if not j.schedule else f"cron {j.schedule}")
    cells = (str(j.key), kind, fmt.na(j.health), fmt.ratio(j.running, j.wanted), fmt.count(j.failed),
             fmt.count(j.restarts), fmt.until(j.next_run, now), fmt.shorten(why, WHY_WIDTH))
    return TableRow(str(j.key), cells, _styled(len(cells), {2: HEALTH_STYLES.get(str(j.health), ""),
                                                                  7: "yellow" if j.pending else ""}),
                    targets={"restart": str(j.key), "stop": str(j.key)},
                    detail=f"{j.key}: {j.pending}" if j.pending else None)


def alloc_row(a: AllocRow, now: float, stale: frozenset[str]) -> TableRow:
    """An allocation of a job (the Jobs drill-down, and the Logs view's list)."""
    cells = (str(a.key), fmt.na(a.node), fmt.na(a.observed), fmt.count(a.restarts), fmt.exit_code(a.exit_code),
             fmt.joined(a.gpus), fmt.ports(a.ports), fmt.age(a.created_at, now).removesuffix(" ago"),
             fmt.na(a.desired), fmt.na(a.job), fmt.shorten(a.last_event or "-", WHY_WIDTH))
    return TableRow(str(a.key), cells, _styled(len(cells), {2: STATUS_STYLES.get(str(a.observed), "")}),
                    style="dim" if a.node in stale else "", extra={"job": fmt.na(a.job)},
                    targets={"restart": str(a.key), "stop": str(a.job)},
                    detail=f"{a.key}: {a.last_event}" if a.last_event else None)


def event_row(e: EventRow, now: float) -> TableRow:
    """An event of the timeline: what happened to what, and who asked."""
    target = e.alloc or e.job or e.node or "-"
    cells = (str(e.key), fmt.age(e.time, now).removesuffix(" ago"), fmt.na(e.kind), str(target),
             fmt.shorten(e.message, 100), e.actor or "-")
    return TableRow(str(e.key), cells, _styled(len(cells), {2: "bold red" if e.kind in ("error", "lost") else ""}),
                    extra={"job": fmt.na(e.job), "alloc": fmt.na(e.alloc), "node": fmt.na(e.node)},
                    detail=f"#{e.key} {e.kind}: {e.message}" + (f" (by {e.actor})" if e.actor else ""))


# --- the allocation detail --------------------------------------------------------------------------


def alloc_detail(model: ConsoleModel, alloc_id: str) -> list[tuple[str, str]]:
    """An allocation's facts as (label, value) lines, then its newest events; [] when it is gone."""
    a = next((r for r in model.allocations or () if r.key == alloc_id), None)
    if a is None:
        return []
    gpus = [g for g in model.gpus or () if g.alloc == alloc_id]
    lines = [("allocation", str(a.key)), ("job", fmt.na(a.job)), ("node", fmt.na(a.node)),
             ("status", f"{fmt.na(a.observed)} (desired {fmt.na(a.desired)})"),
             ("gpus", fmt.joined(a.gpus) + (f"  ({', '.join(gpu_summary(g) for g in gpus)})" if gpus else "")),
             ("ports", fmt.ports(a.ports)), ("exit code", fmt.exit_code(a.exit_code)),
             ("restarts", fmt.count(a.restarts)), ("created", fmt.age(a.created_at, model.now)),
             ("last event", a.last_event or "-")]
    events = [e for e in model.events or () if e.alloc == alloc_id][-8:]
    return lines + [(fmt.age(e.time, model.now), f"{e.kind}: {e.message}") for e in reversed(events)]


def gpu_summary(g: GpuRow) -> str:
    """'0: 97% 40G/80G' for the allocation detail."""
    return f"{g.index}: {fmt.percent(g.utilization)} {fmt.used_total(g.memory_used, g.memory_total)}"


__all__ = ["ALLOC_COLUMNS", "EVENT_COLUMNS", "GPU_COLUMNS", "JOB_COLUMNS", "NODE_COLUMNS", "Column", "RowCache",
           "TableRow", "Tables", "alloc_detail", "prepare"]
