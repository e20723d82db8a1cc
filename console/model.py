"""What the console shows, as plain frozen rows: one immutable ConsoleModel per refresh.

Pure: built from records the state database holds (see `console/build.py`), rendered by the screens.
Every row has a stable `key` so tables update in place and the cursor stays on the same node, GPU, job
or allocation across refreshes and re-sorts. Times are wall-clock seconds (the store's); ages are
computed against `ConsoleModel.now`, so a fixed model renders the same text every time.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class NodeRow:
    """One node of the Fleet view."""

    key: str  # the node name
    state: str  # ready | unreachable | untrusted | unknown | cordoned | draining
    error: str | None  # why unreachable/untrusted, with the fix
    datacenter: str | None
    rack: str | None
    load: float | None  # 1-minute load average
    cpus: int | None
    cpus_used: float  # by allocations
    memory_total: int | None
    memory_used: int | None
    gpus_total: int | None  # None: GPUs unknown (see gpu_reason)
    gpus_busy: int
    gpu_reason: str | None
    allocations: int
    rtt: float | None  # seconds
    last_seen: float | None  # wall clock


@dataclass(frozen=True)
class GpuRow:
    """One GPU of the GPUs view (across the fleet), with who holds it."""

    key: str  # "node/index"
    node: str
    index: int
    model: str | None
    utilization: float | None  # percent; None: not supported (n/a)
    history: tuple[float | None, ...]  # recent utilization samples, oldest first, fixed 0-100 scale
    memory_used: int | None
    memory_total: int | None
    temperature: float | None
    power_draw: float | None  # watts
    power_limit: float | None
    ecc_uncorrected: int | None
    is_healthy: bool
    error: str | None
    job: str | None  # the allocation holding it (None: free)
    alloc: str | None
    pids: tuple[int, ...] = ()
    unowned_pids: tuple[int, ...] = ()  # processes on the GPU that no allocation owns (flagged)
    is_cordoned: bool = False


@dataclass(frozen=True)
class JobRow:
    """One job of the Jobs view."""

    key: str  # the job name
    kind: str  # service | batch | system
    desired: str  # run | stop
    wanted: int
    running: int
    failed: int
    restarts: int
    health: str  # healthy | starting | degraded | down | pending | complete | stopped | stopping
    pending: str | None  # why allocations cannot be placed, one sentence
    next_run: float | None  # cron jobs: wall clock of the next fire
    schedule: str | None  # the cron expression


@dataclass(frozen=True)
class AllocRow:
    """One allocation (the Jobs view's drill-down)."""

    key: str  # the allocation id
    job: str
    node: str
    index: int
    desired: str
    observed: str
    restarts: int
    exit_code: int | None
    gpus: tuple[int, ...]
    ports: tuple[tuple[str, int], ...]
    last_event: str | None  # "kind: message" of its latest event (why it is not running)
    created_at: float


@dataclass(frozen=True)
class EventRow:
    """One event of the timeline."""

    key: str  # the event seq, as text
    time: float
    kind: str
    job: str | None
    alloc: str | None
    node: str | None
    message: str
    actor: str | None


@dataclass(frozen=True)
class ConsoleModel:
    """Everything the console shows at one moment; the header says where it came from and how old."""

    now: float  # wall clock the model was built at
    inventory: str
    state: str  # the state database path
    source: str  # "attached to controller HOST pid N" | "running the loop here" | "read-only: no controller"
    data_age: float | None  # seconds since the newest node observation
    nodes: tuple[NodeRow, ...] = ()
    gpus: tuple[GpuRow, ...] = ()
    jobs: tuple[JobRow, ...] = ()
    allocations: tuple[AllocRow, ...] = ()
    events: tuple[EventRow, ...] = ()  # newest last
    error: str | None = None  # a failing data source: shown as a banner, the last good rows stay
    stale_nodes: frozenset[str] = field(default_factory=frozenset)  # rows to dim (no fresh data)


__all__ = ["AllocRow", "ConsoleModel", "EventRow", "GpuRow", "JobRow", "NodeRow"]
