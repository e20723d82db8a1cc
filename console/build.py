"""The console's rows, built from what the state database holds: pure, no I/O, no clock.

    jobs, allocations, nodes (+ flags), events, cron, pending ──> build_model(now=...) ──> ConsoleModel
    GpuHistory (utilization samples, one per new node observation) ──┘

A node's `last_state` is `controller.node_record(NodeState)`: the normalized observation (load as a
list, GPUs with their processes, allocations) without log tails. `console/source.py` reads the store
and calls `build_model`; tests call it with records they made, and a fixed `now`.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from console.model import AllocRow, ConsoleModel, EventRow, GpuRow, JobRow, NodeRow
from deployer.commands.status import is_current, latest_messages, summarize

if TYPE_CHECKING:
    from deployer.models import Allocation, Host
    from deployer.store_schema import Event, JobRecord, NodeRecord

HISTORY_LENGTH = 60  # utilization samples kept per GPU
EVENT_ROWS = 500  # events shown in the timeline (the newest)
STALE_AFTER = 10.0  # seconds without a node observation before its row is dimmed
LEASE_STALE_AFTER = 5.0  # a controller passes at least every second: a lease this old means it is stuck
FINISHED_KEPT = 10  # finished allocations shown per job (the newest), besides the current ones
READY_STATES = ("ready", "cordoned", "draining")


class GpuHistory:
    """The last `length` utilization samples of each GPU ("node/index"), oldest first.

    Mutable, owned by one data source: `feed` adds one sample per GPU of a node only when that node's
    observation is new, so refreshing the console without new data adds nothing. None is a sample
    (utilization not supported), kept so the graph shows the gap.
    """

    def __init__(self, length: int = HISTORY_LENGTH) -> None:
        self.length = length
        self._samples: dict[str, deque[float | None]] = {}
        self._marks: dict[str, object] = {}  # node -> the observation its latest samples came from

    def feed(self, node: str, mark: object, utilization: Iterable[tuple[int, float | None]]) -> bool:
        """Add (index, utilization) samples of one observation of node; False when mark was fed already."""
        if mark is None or self._marks.get(node) == mark:
            return False
        self._marks[node] = mark
        for index, value in utilization:
            self._samples.setdefault(gpu_key(node, index), deque(maxlen=self.length)).append(value)
        return True

    def samples(self, key: str) -> tuple[float | None, ...]:
        """The samples of GPU key ("node/index"), oldest first."""
        return tuple(self._samples.get(key, ()))

    def forget_others(self, nodes: Iterable[str]) -> None:
        """Drop the history of every node not named (it left the store)."""
        keep = set(nodes)
        for node in [n for n in self._marks if n not in keep]:
            del self._marks[node]
        for key in [k for k in self._samples if k.rpartition("/")[0] not in keep]:
            del self._samples[key]


def gpu_key(node: str, index: int) -> str:
    """The key of a GPU row and of its history: "node/index"."""
    return f"{node}/{index}"


def build_model(*, now: float, inventory: str, state: str, source: str, jobs: Sequence[JobRecord],
                allocations: Sequence[Allocation], nodes: Sequence[NodeRecord], pending: Mapping[str, str | None],
                cron: Mapping[str, tuple[float | None, float | None]], events: Sequence[Event],
                hosts: Mapping[str, Host] | None, history: GpuHistory, lease_age: float | None = None,
                error: str | None = None) -> ConsoleModel:
    """Every row the console shows at wall-clock time now (feeds history with new GPU observations).

    hosts (the inventory) adds datacenter and rack, and a row for a host the store has not seen yet;
    events are oldest first (the reasons of allocations come from all of them, the timeline shows the
    last EVENT_ROWS); lease_age is how long ago the controller holding the lease renewed it (None: no
    controller), and an old one is reported in `error`, as is the error given.
    """
    hosts = hosts or {}
    held: dict[str, list[Allocation]] = {}  # node -> its allocations holding resources
    for alloc in allocations:
        if alloc.holds_resources:
            held.setdefault(alloc.node, []).append(alloc)
    history.forget_others(r.name for r in nodes)
    stored = {r.name for r in nodes}
    node_rows = (*(node_row(r, held.get(r.name, []), hosts.get(r.name)) for r in nodes),
                 *(unseen_row(host) for name, host in hosts.items() if name not in stored))
    reasons = latest_messages(events)
    by_job: dict[str, list[Allocation]] = {}
    for alloc in allocations:
        by_job.setdefault(alloc.job, []).append(alloc)
    return ConsoleModel(
        now=now, inventory=inventory, state=state, source=source, data_age=data_age(nodes, now),
        nodes=node_rows, gpus=tuple(row for r in nodes for row in gpu_rows(r, held.get(r.name, []), history)),
        jobs=tuple(job_row(j, by_job.get(j.name, []), pending.get(j.name), cron.get(j.name, (None, None))[1])
                   for j in jobs),
        allocations=tuple(alloc_row(a, reasons.get(a.id)) for a in shown_allocations(allocations)),
        events=tuple(event_row(e) for e in events[-EVENT_ROWS:]),
        error="; ".join(e for e in (error, lease_warning(lease_age)) if e) or None,
        stale_nodes=frozenset(row.key for row in node_rows if is_stale(row, now)),
    )


# --- nodes and GPUs ------------------------------------------------------------------------------------


def node_row(record: NodeRecord, mine: Sequence[Allocation], host: Host | None) -> NodeRow:
    """A node's row: its last observation, operator flags, and what its allocations (mine: those
    holding resources there) hold."""
    state = record.last_state or {}
    total, available = state.get("memory_total"), state.get("memory_available")
    gpus_known = bool(state.get("gpus_known"))
    load = state.get("load")
    return NodeRow(
        key=record.name, state=node_state(record), error=state.get("error"),
        datacenter=host.datacenter if host else None, rack=host.rack if host else None,
        load=float(load[0]) if load else None, cpus=state.get("cpus"), cpus_used=float(sum(a.cpus for a in mine)),
        memory_total=total, memory_used=None if total is None or available is None else total - available,
        gpus_total=len(state.get("gpus") or ()) if gpus_known else None,
        gpus_busy=len({g for a in mine for g in a.gpus}),
        gpu_reason=None if gpus_known else state.get("gpu_reason"),
        allocations=len(mine), rtt=state.get("rtt"), last_seen=record.last_seen,
    )


def unseen_row(host: Host) -> NodeRow:
    """The row of an inventory host the store knows nothing about yet (never probed)."""
    return NodeRow(key=host.name, state="unknown", error=None, datacenter=host.datacenter, rack=host.rack,
                   load=None, cpus=None, cpus_used=0.0, memory_total=None, memory_used=None, gpus_total=None,
                   gpus_busy=0, gpu_reason=None, allocations=0, rtt=None, last_seen=None)


def node_state(record: NodeRecord) -> str:
    """ready | unreachable | untrusted | unknown, or draining / cordoned for a ready node so flagged."""
    status = str((record.last_state or {}).get("status") or "unknown")
    if status != "ready":
        return status
    return "draining" if record.draining else "cordoned" if record.cordoned else status


def gpu_rows(record: NodeRecord, held: Sequence[Allocation], history: GpuHistory) -> list[GpuRow]:
    """One row per GPU of the node's last observation (held: the node's allocations holding resources);
    a new observation adds a history sample first."""
    state = record.last_state or {}
    gpus: Sequence[Mapping[str, Any]] = state.get("gpus") or ()
    if state.get("status") == "ready":
        mark = state.get("observed_at") if state.get("observed_at") is not None else record.last_seen
        history.feed(record.name, mark, ((int(g["index"]), g.get("utilization")) for g in gpus))
    return [gpu_row(record, gpu, held, history) for gpu in gpus]


def gpu_row(record: NodeRecord, gpu: Mapping[str, Any], held: Sequence[Allocation], history: GpuHistory) -> GpuRow:
    """One GPU: its metrics, the allocation holding it, and the processes on it (unowned ones flagged)."""
    index = int(gpu["index"])
    holder = next((a for a in held if index in a.gpus), None)
    processes: Sequence[Mapping[str, Any]] = gpu.get("processes") or ()
    key = gpu_key(record.name, index)
    return GpuRow(
        key=key, node=record.name, index=index, model=gpu.get("name"), utilization=gpu.get("utilization"),
        history=history.samples(key), memory_used=gpu.get("memory_used"), memory_total=gpu.get("memory_total"),
        temperature=gpu.get("temperature"), power_draw=gpu.get("power_draw"), power_limit=gpu.get("power_limit"),
        ecc_uncorrected=gpu.get("ecc_uncorrected"), is_healthy=bool(gpu.get("is_healthy", True)),
        error=gpu.get("error"), job=holder.job if holder else None, alloc=holder.id if holder else None,
        pids=tuple(int(p["pid"]) for p in processes),
        unowned_pids=tuple(int(p["pid"]) for p in processes if not p.get("alloc_id")),
        is_cordoned=index in record.cordoned_gpus,
    )


def data_age(records: Sequence[NodeRecord], now: float) -> float | None:
    """Seconds since the newest node observation (None: no node observed yet)."""
    seen = [r.last_seen for r in records if r.last_seen is not None]
    return now - max(seen) if seen else None


def is_stale(row: NodeRow, now: float) -> bool:
    """True when the node's row has no fresh data: not ready, or not seen for STALE_AFTER seconds."""
    return row.state not in READY_STATES or row.last_seen is None or now - row.last_seen > STALE_AFTER


def lease_warning(lease_age: float | None) -> str | None:
    """The banner for a controller that stopped renewing its lease (None: no controller, or a live one)."""
    if lease_age is None or lease_age <= LEASE_STALE_AFTER:
        return None
    return (f"the controller has not renewed its lease for {lease_age:.0f}s: it may be stuck, and what is "
            "shown may be old")


# --- jobs, allocations, events ------------------------------------------------------------------------


def job_row(job: JobRecord, allocs: Sequence[Allocation], pending: str | None, next_run: float | None) -> JobRow:
    """A job's row, counted as `flex status` counts it, plus its cron schedule and next fire."""
    summary = summarize(job, allocs, pending)
    schedule = job.spec.get("schedule")
    return JobRow(key=job.name, kind=summary.kind, desired=summary.desired, wanted=summary.wanted,
                  running=summary.running, failed=summary.failed, restarts=summary.restarts,
                  health=summary.health, pending=summary.pending, next_run=next_run,
                  schedule=str(schedule["cron"]) if isinstance(schedule, Mapping) and schedule.get("cron") else None)


def shown_allocations(allocs: Sequence[Allocation]) -> list[Allocation]:
    """The current allocations, plus the FINISHED_KEPT newest finished ones of each job, in store order."""
    finished: dict[str, list[Allocation]] = {}
    for alloc in allocs:
        if not is_current(alloc):
            finished.setdefault(alloc.job, []).append(alloc)
    kept = {a.id for rows in finished.values()
            for a in sorted(rows, key=lambda a: (a.created_at, a.id), reverse=True)[:FINISHED_KEPT]}
    return [a for a in allocs if is_current(a) or a.id in kept]


def alloc_row(alloc: Allocation, last_event: str | None) -> AllocRow:
    """An allocation's row; last_event is "kind: message" of its newest event."""
    return AllocRow(key=alloc.id, job=alloc.job, node=alloc.node, index=alloc.index, desired=alloc.desired_status,
                    observed=alloc.observed_status, restarts=alloc.restarts, exit_code=alloc.exit_code,
                    gpus=tuple(alloc.gpus), ports=tuple(sorted(alloc.ports.items())), last_event=last_event,
                    created_at=alloc.created_at)


def event_row(event: Event) -> EventRow:
    """An event's row, keyed by its seq."""
    return EventRow(key=str(event.seq), time=event.time, kind=event.kind, job=event.job, alloc=event.alloc,
                    node=event.node, message=event.message, actor=event.actor)


__all__ = ["EVENT_ROWS", "HISTORY_LENGTH", "STALE_AFTER", "GpuHistory", "build_model", "gpu_key"]
