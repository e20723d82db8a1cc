"""What the reconciler reads and what it returns: the cluster snapshot, desired jobs, and the Plan.

Pure, frozen dataclasses (see deployer/reconcile.py for the logic). Times called `mono` are the
controller's monotonic clock (immune to wall-clock steps, FAULTS.md F26); `wall` is the wall clock,
read only for cron schedules and for the records people read.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping

from deployer.models import EMPTY, Allocation, Host, JobSpec, NodeState

# Plan buckets, in the order the executor applies them (Nomad's reconciler names, plus `start` for a
# placed allocation whose launch was never confirmed, and `migrate` for drains).
PLACE, START, RESTART, STOP, UPDATE, LOST, IGNORE = "place", "start", "restart", "stop", "update", "lost", "ignore"
BUCKETS = (PLACE, START, RESTART, STOP, UPDATE, LOST, IGNORE)


@dataclass(frozen=True)
class DesiredJob:
    """A submitted job as the store holds it: the spec, run or stop, and its restart generation."""

    spec: JobSpec
    desired: str = "run"
    restart_generation: int = 0
    submitted_at: float = 0.0  # wall clock: cron jobs fire after it
    last_fire: float | None = None  # wall clock of the last cron fire (None: never fired)

    @property
    def name(self) -> str:
        """The job's name."""
        return self.spec.name


@dataclass(frozen=True)
class AllocTimers:
    """What the controller remembers about one allocation between passes (monotonic seconds)."""

    exit_seen_at: float | None = None  # when the current run's exit was first observed
    restart_times: tuple[float, ...] = ()  # restarts done by this controller, oldest first
    running_since: float | None = None  # when the current run was first seen running


@dataclass(frozen=True)
class ClusterSnapshot:
    """Everything one reconcile pass looks at, frozen at the start of the pass."""

    hosts: Mapping[str, Host] = field(default_factory=lambda: EMPTY)  # the inventory
    nodes: Mapping[str, NodeState] = field(default_factory=lambda: EMPTY)  # last observation per node
    allocations: tuple[Allocation, ...] = ()  # every record of the store, terminal ones included
    launched: Mapping[str, int] = field(default_factory=lambda: EMPTY)  # alloc id -> launched generation
    cordoned: frozenset[str] = frozenset()  # node names, or "node/gpu"
    draining: frozenset[str] = frozenset()
    timers: Mapping[str, AllocTimers] = field(default_factory=lambda: EMPTY)
    busy: frozenset[str] = frozenset()  # alloc ids with an operation in flight: left alone this pass
    wall: float = 0.0
    lease_ttl: float = 0.0  # workloads fence themselves after this without renewal (0: off)
    salt: str = ""  # mixed into new allocation ids so two state databases never pick the same id
    # inventory nodes a starting controller has not heard from yet (for at most its first 10 s): jobs
    # that pick among nodes wait for them; a system job is placed on each node as it answers
    warming: frozenset[str] = frozenset()

    def node(self, name: str) -> NodeState:
        """The last observation of a node (status unknown when never probed)."""
        return self.nodes.get(name) or NodeState(name)


@dataclass(frozen=True)
class Item:
    """One decision of a pass: what to do to which allocation, and why, in words."""

    action: str  # one of BUCKETS
    job: str
    reason: str
    alloc: Allocation  # the record to act on; for place/update the NEW record (commit before launch)
    replaces: str | None = None  # update/migrate/lost: the allocation this one replaces
    target_generation: int = 0  # the generation this launch runs at
    env: Mapping[str, str] = field(default_factory=lambda: EMPTY)  # gang variables
    requeue_after: float | None = None  # ignore: look again after this many seconds
    is_budgeted: bool = True  # restart: counts against the restart budget (a requested one does not)


@dataclass(frozen=True)
class Plan:
    """The result of `reconcile`: items per bucket, records to persist, and why jobs are pending."""

    items: tuple[Item, ...] = ()
    marks: tuple[tuple[Allocation, str], ...] = ()  # changed records (no node I/O) and the reason
    pending: Mapping[str, str | None] = field(default_factory=lambda: EMPTY)  # job -> why not placed
    fired: Mapping[str, float] = field(default_factory=lambda: EMPTY)  # cron job -> fire time (wall)
    # (node, alloc id, reason, pgid) to stop: a live allocation no record owns (pgid None: stop it by id),
    # or processes of an allocation outside its supervisor's care (kill that process group)
    orphans: tuple[tuple[str, str, str, int | None], ...] = ()
    next_fire: Mapping[str, float] = field(default_factory=lambda: EMPTY)  # cron job -> next fire (wall)
    wake: tuple[float, ...] = ()  # seconds until other planned re-checks (a cron fire, a reschedule)

    def bucket(self, action: str) -> tuple[Item, ...]:
        """The items of one bucket, in plan order."""
        return tuple(i for i in self.items if i.action == action)

    @property
    def is_empty(self) -> bool:
        """True when nothing needs doing: only ignores (and nothing to persist)."""
        return not self.marks and not self.orphans and not self.fired and all(
            i.action == IGNORE for i in self.items)

    @property
    def requeue_after(self) -> float | None:
        """The soonest planned re-check among the ignores (a backoff running out, a grace ending)."""
        times = [i.requeue_after for i in self.items if i.requeue_after is not None] + list(self.wake)
        return max(0.0, min(times)) if times else None

    def summary(self) -> str:
        """"2 place, 1 restart" (ignores left out); "no changes" when empty."""
        counts = [f"{len(self.bucket(b))} {b}" for b in BUCKETS if b != IGNORE and self.bucket(b)]
        if self.orphans:
            counts.append(f"{len(self.orphans)} orphan")
        return ", ".join(counts) or "no changes"


__all__ = ["BUCKETS", "IGNORE", "LOST", "PLACE", "RESTART", "START", "STOP", "UPDATE", "AllocTimers",
           "ClusterSnapshot", "DesiredJob", "Item", "Plan"]
