"""Reconcile: one pass over a hand-built snapshot per row; each row is a fault or an intent and its plan.

A row's expected plan is a sorted list of short lines: "restart web-0" (bucket and allocation id),
"place #1 <- web-1" (a new allocation at index 1, replacing web-1), "mark web-0 failed/stop" (a record
changed to observed/desired), "orphan n0 x-1" (a live directory nobody owns). Where a new allocation
lands is asserted by `avoid` (nodes it must never use), so a change in ranking does not break a row.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import pytest

from deployer.models import (
    DESIRED_STOP,
    NODE_READY,
    NODE_UNREACHABLE,
    Allocation,
    AllocationObservation,
    GpuState,
    HealthCheck,
    HealthResult,
    Host,
    JobSpec,
    NodeState,
    ReschedulePolicy,
    Resources,
    RestartPolicy,
    Schedule,
    UpdatePolicy,
)
from deployer.plan import (
    LOST,
    PLACE,
    RESTART,
    START,
    STOP,
    AllocTimers,
    ClusterSnapshot,
    DesiredJob,
    Plan,
)
from deployer.reconcile import backoff, reconcile
from deployer.reconcile_jobs import allocation_version

GIB = 1024**3
NOW = 1000.0  # the controller's monotonic clock
WALL = 1_700_000_000.0  # 2023-11-14 22:13:20 UTC: 20 seconds into a minute


# --- building blocks -----------------------------------------------------------------------------------


def spec(name: str = "web", *, count: int = 1, kind: str = "service", gpus: int = 0, **kw: Any) -> JobSpec:
    return JobSpec(name, ("run",), kind=kind, count=count, resources=Resources(cpus=1, memory=GIB, gpus=gpus), **kw)


WEB = spec()
WEB3 = spec(count=3)
WEB3_V2 = spec(count=3, env={"MODEL": "v2"})  # another fingerprint: a rolling update is due
ETL = spec("etl", kind="batch")
WAITING = spec(reschedule=ReschedulePolicy(policy="wait"))
PATIENT = spec(restart=RestartPolicy(mode="delay"))
GANG = spec("train", count=2, gpus=1, gang=True)
AGENT = spec("agent", kind="system")
CHECKED = spec(health=HealthCheck("tcp", port="p"))


def running(alloc_id: str, status: str = "running") -> AllocationObservation:
    return AllocationObservation(alloc_id, status, is_alive=True, pid=4242, launches=1)


def exited(alloc_id: str, code: int = 3, status: str = "exited") -> AllocationObservation:
    return AllocationObservation(alloc_id, status, exit_code=code if status == "exited" else None, launches=1)


def node(name: str, *observations: AllocationObservation, status: str = NODE_READY, down_for: float | None = None,
         gpus: tuple[GpuState, ...] = (), cpus: int = 8) -> NodeState:
    since = NOW - down_for if down_for is not None else None
    return NodeState(name, status=status, cpus=cpus, memory_total=32 * GIB, gpus_known=True, gpus=gpus,
                     unreachable_since=since, allocations={o.alloc_id: o for o in observations})


def down(name: str, seconds: float, *observations: AllocationObservation) -> NodeState:
    return node(name, *observations, status=NODE_UNREACHABLE, down_for=seconds)


def h100s(n: int, unhealthy: tuple[int, ...] = ()) -> tuple[GpuState, ...]:
    return tuple(GpuState(i, name="NVIDIA H100", is_healthy=i not in unhealthy) for i in range(n))


def rec(alloc_id: str, node_name: str, index: int = 0, *, job: JobSpec = WEB, observed: str = "running",
        desired: str = "run", **kw: Any) -> Allocation:
    return Allocation(alloc_id, job.name, node_name, index=index, job_version=allocation_version(job),
                      cpus=job.resources.cpus, memory=job.resources.memory, desired_status=desired,
                      observed_status=observed, **kw)


def snap(nodes: tuple[NodeState, ...] | list[NodeState], *allocs: Allocation, hosts: tuple[str, ...] | None = None,
         timers: Mapping[str, AllocTimers] | None = None, **kw: Any) -> ClusterSnapshot:
    names = hosts if hosts is not None else tuple(n.name for n in nodes)
    return ClusterSnapshot(hosts={n: Host(n, address=f"10.0.0.{i + 1}") for i, n in enumerate(names)},
                           nodes={n.name: n for n in nodes}, allocations=allocs, timers=timers or {},
                           wall=kw.pop("wall", WALL), **kw)


def ready(count: int, *observations: AllocationObservation) -> list[NodeState]:
    """n0..n{count-1}, all ready; each observation lands on the node its id names ("web-1@n1")."""
    return [node(f"n{i}", *[o for o in observations if o.alloc_id.endswith(f"@n{i}")]) for i in range(count)]


def settled(*alloc_ids: str) -> dict[str, AllocTimers]:
    return {a: AllocTimers(running_since=NOW - 60) for a in alloc_ids}


def digest(plan: Plan) -> list[str]:
    """The plan in short lines (see the module docstring), sorted."""
    lines = []
    for item in plan.items:
        if item.action == PLACE:
            lines.append(f"place #{item.alloc.index}" + (f" <- {item.replaces}" if item.replaces else ""))
        else:
            lines.append(f"{item.action} {item.alloc.id}")
    lines += [f"mark {a.id} {a.observed_status}/{a.desired_status}" for a, _ in plan.marks]
    lines += [f"orphan {n} {a}" for n, a, *_ in plan.orphans]
    return sorted(lines)


def words(plan: Plan) -> str:
    """Every reason of the plan, one per line."""
    return "\n".join([i.reason for i in plan.items] + [r for _, r in plan.marks]
                     + [p for p in plan.pending.values() if p])


def run(*jobs: DesiredJob | JobSpec) -> dict[str, DesiredJob]:
    out = {}
    for job in jobs:
        desired = job if isinstance(job, DesiredJob) else DesiredJob(job)
        out[desired.name] = desired
    return out


@dataclass(frozen=True)
class Row:
    """One pass: desired jobs and a snapshot in; the plan's lines, reasons and placements checked."""

    id: str
    jobs: dict[str, DesiredJob]
    snap: ClusterSnapshot
    lines: tuple[str, ...]
    reasons: tuple[str, ...] = ()  # each a substring of some reason of the plan
    avoid: frozenset[str] = frozenset()  # nodes no new allocation may land on
    requeue: tuple[float, float] | None = None  # plan.requeue_after within [low, high]
    extra: Mapping[str, Any] = field(default_factory=dict)


# --- the table ---------------------------------------------------------------------------------------

A, B, C = "web-0@n0", "web-1@n1", "web-2@n2"  # allocation ids name their node, see `ready`

ROWS = [
    # F1, F3: a service that exits non-zero
    Row("a service that exits 3 is restarted at once the first time",
        run(WEB), snap(ready(2, exited(A)), rec(A, "n0"), timers={A: AllocTimers(exit_seen_at=NOW)}),
        ("mark web-0@n0 exited/run", "restart web-0@n0"), ("exit 3; restart 1/2",)),
    Row("a second exit waits out its backoff before the restart",
        run(WEB), snap(ready(2, exited(A)), rec(A, "n0", observed="exited", exit_code=3),
                       timers={A: AllocTimers(exit_seen_at=NOW, restart_times=(NOW - 5,))}),
        ("ignore web-0@n0",), ("restart 2/2 in",), requeue=(0.8, 1.2)),
    Row("a second exit restarts once its backoff has passed",
        run(WEB), snap(ready(2, exited(A)), rec(A, "n0", observed="exited", exit_code=3),
                       timers={A: AllocTimers(exit_seen_at=NOW - 2, restart_times=(NOW - 5,))}),
        ("restart web-0@n0",), ("restart 2/2 after",)),
    Row("restarts older than the interval no longer count against the budget",
        run(WEB), snap(ready(2, exited(A)), rec(A, "n0", observed="exited", exit_code=3),
                       timers={A: AllocTimers(exit_seen_at=NOW, restart_times=(NOW - 4000, NOW - 3000))}),
        ("restart web-0@n0",), ("restart 1/2",)),
    Row("a service whose restart budget is spent fails and waits out the reschedule delay",
        run(WEB), snap(ready(2, exited(A)), rec(A, "n0", observed="exited", exit_code=3),
                       timers={A: AllocTimers(exit_seen_at=NOW, restart_times=(NOW - 20, NOW - 10))}),
        ("ignore web-0@n0", "mark web-0@n0 failed/stop"), ("restart budget spent (2/2", "rescheduled",
                                                             "reschedule delay 30s"), requeue=(30, 30)),
    Row("a failed service is not replaced while its reschedule delay runs",
        run(WEB), snap(ready(2, exited(A)), rec(A, "n0", observed="failed", desired=DESIRED_STOP, exit_code=3),
                       timers={A: AllocTimers(exit_seen_at=NOW - 10)}),
        ("ignore web-0@n0",), requeue=(20, 20)),
    Row("a failed service is replaced once its reschedule delay has passed, away from the node it failed on",
        run(WEB), snap(ready(2, exited(A)), rec(A, "n0", observed="failed", desired=DESIRED_STOP, exit_code=3),
                       timers={A: AllocTimers(exit_seen_at=NOW - 31)}),
        ("place #0 <- web-0@n0",), avoid=frozenset({"n0"})),
    Row("a failed service goes back to the node it failed on when no other node fits",
        run(WEB), snap([node("n0", exited(A)), node("n1", cpus=0)],
                       rec(A, "n0", observed="failed", desired=DESIRED_STOP, exit_code=3),
                       timers={A: AllocTimers(exit_seen_at=NOW - 31)}),
        ("place #0 <- web-0@n0",), avoid=frozenset({"n1"})),
    Row("restart mode delay waits for the interval instead of failing",
        run(PATIENT), snap(ready(2, exited(A)), rec(A, "n0", job=PATIENT, observed="exited", exit_code=3),
                           timers={A: AllocTimers(exit_seen_at=NOW, restart_times=(NOW - 20, NOW - 10))}),
        ("ignore web-0@n0",), ("2 restarts in 1800s",), requeue=(1780, 1780)),
    Row("a health check failing past its grace restarts the allocation",
        run(CHECKED), snap(ready(2, replace(running(A), health=HealthResult(ok=False, failures=3, detail="refused"))),
                           rec(A, "n0", job=CHECKED), timers=settled(A)),
        ("restart web-0@n0",), ("health check failed 3 times (refused)",)),
    Row("a run without a health check just seen up waits out the settle before it counts as running",
        run(WEB), snap(ready(2, running(A)), rec(A, "n0", observed="starting"),
                       timers={A: AllocTimers(running_since=NOW - 0.25)}),
        ("ignore web-0@n0",), ("up for less than 1s",), requeue=(0.75, 0.75)),
    Row("a health-checked run counts as running at its first passing check: no settle",
        run(CHECKED), snap(ready(2, replace(running(A), health=HealthResult(ok=True, failures=0, detail="ok"))),
                           rec(A, "n0", job=CHECKED, observed="starting"), timers={A: AllocTimers(running_since=NOW)}),
        ("mark web-0@n0 running/run",), ("running (pid 4242)",)),
    Row("a health-checked run whose check has not passed yet stays starting",
        run(CHECKED), snap(ready(2, running(A)), rec(A, "n0", job=CHECKED, observed="starting"),
                           timers={A: AllocTimers(running_since=NOW)}),
        ()),
    # F2: batch
    Row("a batch run that exits 0 is complete",
        run(ETL), snap(ready(2, exited("etl-0@n0", 0)), rec("etl-0@n0", "n0", job=ETL)),
        ("mark etl-0@n0 complete/run",), ("exit 0",)),
    Row("a complete batch run is never restarted nor placed again",
        run(ETL), snap(ready(2, exited("etl-0@n0", 0)), rec("etl-0@n0", "n0", job=ETL, observed="complete")),
        ()),
    Row("a complete batch run stays complete when its node loses the directory",
        run(ETL), snap(ready(2), rec("etl-0@n0", "n0", job=ETL, observed="complete")), ()),
    Row("a batch run whose restart budget is spent fails for good",
        run(ETL), snap(ready(2, exited("etl-0@n0", 1)), rec("etl-0@n0", "n0", job=ETL),
                       timers={"etl-0@n0": AllocTimers(exit_seen_at=NOW, restart_times=(NOW - 20, NOW - 10))}),
        ("mark etl-0@n0 failed/run",), ("failed for good",)),
    Row("a batch run that failed for good is never placed again",
        run(ETL), snap(ready(2, exited("etl-0@n0", 1)), rec("etl-0@n0", "n0", job=ETL, observed="failed")), ()),
    Row("a batch run that failed for good runs again in place when a restart is asked for (on-call), once",
        run(ETL), snap(ready(2, exited("etl-0@n0", 1)),
                       rec("etl-0@n0", "n0", job=ETL, observed="failed", exit_code=1, generation=1)),
        ("restart etl-0@n0",), ("restart requested (generation 1) of a run that failed (exit 1)",)),
    Row("a failed batch run whose restart was launched is final again",
        run(ETL), snap(ready(2, exited("etl-0@n0", 1)),
                       rec("etl-0@n0", "n0", job=ETL, observed="failed", exit_code=1, generation=1),
                       launched={"etl-0@n0": 1}), ()),
    Row("restarting a batch job runs its complete runs again",
        run(DesiredJob(ETL, restart_generation=1)),
        snap(ready(2, exited("etl-0@n0", 0)), rec("etl-0@n0", "n0", job=ETL, observed="complete")),
        ("restart etl-0@n0",), ("of a run that complete",)),
    Row("a failed batch run asked to restart on an unreachable node waits for it",
        run(ETL), snap([down("n0", 5), node("n1")],
                       rec("etl-0@n0", "n0", job=ETL, observed="failed", exit_code=1, generation=1)),
        ("ignore etl-0@n0",), ("restart requested: n0 is unreachable",)),
    # F4, F5, F6, F8: unreachable nodes
    Row("an allocation on a node unreachable for 5s is unknown, not replaced",
        run(WEB), snap([down("n0", 5), node("n1")], rec(A, "n0")),
        ("ignore web-0@n0", "mark web-0@n0 unknown/run"), ("grace 15s",), requeue=(10, 10)),
    Row("an allocation on a node unreachable for 20s is lost and replaced on another node",
        run(WEB), snap([down("n0", 20), node("n1")], rec(A, "n0", observed="unknown")),
        ("lost web-0@n0", "place #0 <- web-0@n0"), ("unreachable for 20s",), avoid=frozenset({"n0"})),
    Row("the lease ttl stretches the grace so a replacement never overlaps the fenced copy",
        run(WEB), snap([down("n0", 20), node("n1")], rec(A, "n0", observed="unknown"), lease_ttl=30.0),
        ("ignore web-0@n0",), ("grace 32s",), requeue=(12, 12)),
    Row("policy wait leaves an allocation on a long-unreachable node where it is",
        run(WAITING), snap([down("n0", 600), node("n1")], rec(A, "n0", observed="unknown")),
        ("ignore web-0@n0",), ("policy wait",)),
    Row("policy wait still records the allocation as unknown",
        run(WAITING), snap([down("n0", 600), node("n1")], rec(A, "n0")),
        ("ignore web-0@n0", "mark web-0@n0 unknown/run"), ("policy wait",)),
    Row("an allocation on a node never probed waits for its first probe",
        run(WEB), snap([node("n1")], rec(A, "n0"), hosts=("n0", "n1")), ("ignore web-0@n0",),
        ("first probe of n0",)),
    Row("the lost copy seen alive after the partition heals is stopped and its replacement left alone",
        run(WEB), snap(ready(2, running(A), running(B)), rec(A, "n0", observed="lost", desired=DESIRED_STOP),
                       rec(B, "n1", created_at=WALL - 5), timers=settled(B)),
        ("stop web-0@n0",), ("lost copy came back", "overlap with web-1@n1 on n1: at most 5s")),
    Row("a lost copy that stays away needs nothing more",
        run(WEB), snap([down("n0", 600), node("n1", running(B))],
                       rec(A, "n0", observed="lost", desired=DESIRED_STOP), rec(B, "n1"), timers=settled(B)), ()),
    # F9: a rebooted node
    Row("an allocation its node reports lost after a reboot is restarted at once",
        run(WEB), snap(ready(2, exited(A, status="lost")), rec(A, "n0")),
        ("mark web-0@n0 exited/run", "restart web-0@n0"), ("lost: its process is gone",)),
    Row("an allocation whose directory is gone after it started is started again at once",
        run(WEB), snap(ready(2), rec(A, "n0")), ("restart web-0@n0",), ("gone from its node",)),
    Row("a placed allocation whose launch was never confirmed is started",
        run(WEB), snap(ready(2), rec(A, "n0", observed="pending")), ("start web-0@n0",)),
    Row("a supervisor still recording an exit is left alone a moment",
        run(WEB), snap(ready(2, exited(A, status="starting")), rec(A, "n0")), ("ignore web-0@n0",),
        requeue=(0.2, 0.2)),
    # F25: restart intents (a generation bump)
    Row("a bumped restart generation restarts a running allocation once",
        run(DesiredJob(WEB, restart_generation=1)), snap(ready(2, running(A)), rec(A, "n0"), timers=settled(A)),
        ("restart web-0@n0",), ("restart requested (generation 1)",)),
    Row("a bumped restart generation restarts an exited allocation at once, whatever its backoff",
        run(DesiredJob(WEB, restart_generation=1)),
        snap(ready(2, exited(A)), rec(A, "n0", observed="exited", exit_code=3),
             timers={A: AllocTimers(exit_seen_at=NOW, restart_times=(NOW - 5, NOW - 3))}),
        ("restart web-0@n0",), ("restart requested (generation 1)",)),
    Row("a restart already launched at its generation does nothing",
        run(DesiredJob(WEB, restart_generation=1)),
        snap(ready(2, running(A)), rec(A, "n0"), timers=settled(A), launched={A: 1}), ()),
    Row("an allocation's own restart generation restarts only that allocation",
        run(spec(count=2)), snap(ready(2, running(A), running(B)), rec(A, "n0"), rec(B, "n1", 1, generation=1),
                                 timers=settled(A, B)),
        ("restart web-1@n1",), ("generation 1",)),
    # stopping
    Row("stopping a job stops its alive allocations",
        run(DesiredJob(spec(count=2), desired=DESIRED_STOP)),
        snap(ready(2, running(A), running(B)), rec(A, "n0"), rec(B, "n1", 1)),
        ("stop web-0@n0", "stop web-1@n1"), ("job stopped",)),
    Row("stopping a job marks allocations that no longer run as stopped",
        run(DesiredJob(WEB, desired=DESIRED_STOP)), snap(ready(2, exited(A)), rec(A, "n0")),
        ("mark web-0@n0 stopped/stop",)),
    Row("a job no longer submitted has its allocations stopped",
        {}, snap(ready(2, running(A)), rec(A, "n0")), ("stop web-0@n0",), ("job stopped",)),
    Row("a stopped allocation that is gone from its node needs nothing more",
        run(DesiredJob(WEB, desired=DESIRED_STOP)), snap(ready(2), rec(A, "n0", observed="stopped",
                                                                        desired=DESIRED_STOP)), ()),
    # counts, cordons, drains, inventory changes
    Row("lowering the count stops the extra indices",
        run(WEB), snap(ready(3, running(A), running(B), running(C)), rec(A, "n0"), rec(B, "n1", 1),
                       rec(C, "n2", 2), timers=settled(A, B, C)),
        ("stop web-1@n1", "stop web-2@n2"), ("count is 1: index 1 is not wanted",)),
    Row("raising the count places only the new indices",
        run(WEB3), snap(ready(3, running(A)), rec(A, "n0"), timers=settled(A)), ("place #1", "place #2")),
    Row("lowering the count keeps the remaining allocations as they are",
        run(WEB), snap(ready(3, running(A), running(B), running(C)), rec(A, "n0", job=WEB3), rec(B, "n1", 1, job=WEB3),
                       rec(C, "n2", 2, job=WEB3), timers=settled(A, B, C)),
        ("stop web-1@n1", "stop web-2@n2")),
    Row("an exited allocation beyond the count is stopped, not restarted",
        run(WEB), snap(ready(2, running(A), exited(B)), rec(A, "n0"), rec(B, "n1", 1), timers=settled(A)),
        ("mark web-1@n1 exited/run", "stop web-1@n1")),
    Row("an unconfirmed launch of an old version is replaced, not started",
        run(WEB3_V2), snap(ready(3, running(B), running(C)), rec(A, "n0", job=WEB3, observed="pending"),
                           rec(B, "n1", 1, job=WEB3_V2), rec(C, "n2", 2, job=WEB3_V2), timers=settled(B, C)),
        ("place #0 <- web-0@n0", "stop web-0@n0")),
    Row("a cordoned node never gets a placement",
        run(WEB3), snap(ready(3), cordoned=frozenset({"n0", "n2"})), ("place #0", "place #1", "place #2"),
        avoid=frozenset({"n0", "n2"})),
    Row("an unreachable, untrusted or never probed node never gets a placement",
        run(WEB3), snap([down("n0", 1), node("n1"), node("n2", status="untrusted")], hosts=("n0", "n1", "n2", "n3")),
        ("place #0", "place #1", "place #2"), avoid=frozenset({"n0", "n2", "n3"})),
    Row("a draining node's allocation is replaced elsewhere first and keeps running",
        run(WEB), snap(ready(2, running(A)), rec(A, "n0"), timers=settled(A), draining=frozenset({"n0"})),
        ("place #0 <- web-0@n0",), avoid=frozenset({"n0"})),
    Row("a drained allocation keeps running while its replacement starts",
        run(WEB), snap(ready(2, running(A), running(B, "starting")), rec(A, "n0"),
                       rec(B, "n1", observed="starting"), timers=settled(A), draining=frozenset({"n0"})),
        ("ignore web-0@n0",), ("waiting for replacement web-1@n1",)),
    Row("a drained allocation stops once its replacement runs",
        run(WEB), snap(ready(2, running(A), running(B)), rec(A, "n0"), rec(B, "n1"), timers=settled(A, B),
                       draining=frozenset({"n0"})),
        ("stop web-0@n0",), ("migrated: replacement web-1@n1 runs on n1",)),
    Row("a node removed from the inventory is drained, not lost",
        run(WEB), snap(ready(2, running(A)), rec(A, "n0"), timers=settled(A), hosts=("n1",)),
        ("place #0 <- web-0@n0",), avoid=frozenset({"n0"})),
    Row("work on a node removed from the inventory stops once its replacement runs",
        run(WEB), snap(ready(2, running(A), running(B)), rec(A, "n0"), rec(B, "n1"), timers=settled(A, B),
                       hosts=("n1",)),
        ("stop web-0@n0",), ("migrated",)),
    Row("a lost record is never launched again: its index is placed anew",
        run(WEB), snap(ready(2), rec(A, "n0", observed="lost")), ("mark web-0@n0 lost/stop", "place #0 <- web-0@n0")),
    Row("a job takes what another job's stop frees in the same pass",
        run(spec("api"), spec(count=0)), snap([node("n0", running(A), cpus=1)], rec(A, "n0", job=spec(count=0)),
                                              timers=settled(A)),
        ("place #0", "stop web-0@n0")),
    Row("two copies of one index keep the one with an operation in flight",
        run(WEB), snap(ready(2, running(B)), rec(A, "n0", created_at=WALL - 50), rec(B, "n1", created_at=WALL - 5),
                       timers=settled(B), busy=frozenset({A})),
        ("ignore web-0@n0", "stop web-1@n1"), ("duplicate of web-0@n0",)),
    Row("two live copies of one index keep the newest",
        run(WEB), snap(ready(2, running(A), running(B)), rec(A, "n0", created_at=WALL - 50),
                       rec(B, "n1", created_at=WALL - 5), timers=settled(A, B)),
        ("stop web-0@n0",), ("duplicate of web-1@n1",)),
    # rolling updates
    Row("a changed spec replaces one allocation per pass",
        run(WEB3_V2), snap(ready(3, running(A), running(B), running(C)), rec(A, "n0", job=WEB3),
                           rec(B, "n1", 1, job=WEB3), rec(C, "n2", 2, job=WEB3), timers=settled(A, B, C)),
        ("place #0 <- web-0@n0", "stop web-0@n0"), ("rolling update",)),
    Row("a rolling update waits while the new allocation is not settled",
        run(WEB3_V2), snap(ready(3, running(B), running(C), running("web-0-new@n0")),
                           rec(A, "n0", job=WEB3, observed="stopped", desired=DESIRED_STOP),
                           rec(B, "n1", 1, job=WEB3), rec(C, "n2", 2, job=WEB3), rec("web-0-new@n0", "n0", job=WEB3_V2),
                           timers={**settled(B, C), "web-0-new@n0": AllocTimers(running_since=NOW - 2)}),
        ()),
    Row("a rolling update moves on once the new allocation has been running for min_healthy_time",
        run(WEB3_V2), snap(ready(3, running(B), running(C), running("web-0-new@n0")),
                           rec(A, "n0", job=WEB3, observed="stopped", desired=DESIRED_STOP),
                           rec(B, "n1", 1, job=WEB3), rec(C, "n2", 2, job=WEB3), rec("web-0-new@n0", "n0", job=WEB3_V2),
                           timers={**settled(B, C), "web-0-new@n0": AllocTimers(running_since=NOW - 11)}),
        ("place #1 <- web-1@n1", "stop web-1@n1"), ("rolling update",)),
    Row("max_parallel 2 replaces two allocations per pass",
        run(spec(count=3, env={"MODEL": "v2"}, update=UpdatePolicy(max_parallel=2))),
        snap(ready(3, running(A), running(B), running(C)), rec(A, "n0", job=WEB3), rec(B, "n1", 1, job=WEB3),
             rec(C, "n2", 2, job=WEB3), timers=settled(A, B, C)),
        ("place #0 <- web-0@n0", "place #1 <- web-1@n1", "stop web-0@n0", "stop web-1@n1")),
    # system and gang jobs
    Row("a system job runs once on every eligible node and never on a cordoned one",
        run(AGENT), snap(ready(3), cordoned=frozenset({"n2"})), ("place #0", "place #1"), avoid=frozenset({"n2"})),
    Row("a system job already on every eligible node needs nothing",
        run(AGENT), snap(ready(2, running("agent-0@n0"), running("agent-1@n1")), rec("agent-0@n0", "n0", job=AGENT),
                         rec("agent-1@n1", "n1", 1, job=AGENT), timers=settled("agent-0@n0", "agent-1@n1")), ()),
    Row("a system job on a node that left the inventory is stopped there",
        run(AGENT), snap(ready(2, running("agent-0@n0"), running("agent-1@n1")), rec("agent-0@n0", "n0", job=AGENT),
                         rec("agent-1@n1", "n1", 1, job=AGENT), timers=settled("agent-0@n0", "agent-1@n1"),
                         hosts=("n1",)),
        ("stop agent-0@n0",), ("left the inventory",)),
    Row("a gang that lost a member restarts every member together",
        run(GANG), snap([node("n0", running("train-0@n0"), gpus=h100s(1)), down("n1", 60, running("train-1@n1")),
                         node("n2", gpus=h100s(1))],
                        rec("train-0@n0", "n0", job=GANG, gpus=(0,)), rec("train-1@n1", "n1", 1, job=GANG, gpus=(0,)),
                        timers=settled("train-0@n0")),
        ("lost train-1@n1", "place #0 <- train-0@n0", "place #1 <- train-1@n1", "stop train-0@n0"),
        ("gang restarts together",), avoid=frozenset({"n1"})),
    Row("a changed gang is replaced whole, never one member at a time",
        run(replace(GANG, env={"LR": "0.1"})),
        snap([node("n0", running("train-0@n0"), gpus=h100s(1)), node("n1", running("train-1@n1"), gpus=h100s(1))],
             rec("train-0@n0", "n0", job=GANG, gpus=(0,)), rec("train-1@n1", "n1", 1, job=GANG, gpus=(0,)),
             timers=settled("train-0@n0", "train-1@n1")),
        ("place #0 <- train-0@n0", "place #1 <- train-1@n1", "stop train-0@n0", "stop train-1@n1"),
        ("the gang is replaced whole",)),
    Row("a busy member past the count does not hold a gang restart back",
        run(GANG), snap([node("n0", running("train-0@n0"), gpus=h100s(1)), down("n1", 60),
                         node("n2", running("train-2@n2"), gpus=h100s(1)), node("n3", gpus=h100s(1))],
                        rec("train-0@n0", "n0", job=GANG, gpus=(0,)), rec("train-1@n1", "n1", 1, job=GANG, gpus=(0,)),
                        rec("train-2@n2", "n2", 2, job=GANG, gpus=(0,)), timers=settled("train-0@n0"),
                        busy=frozenset({"train-2@n2"})),
        ("ignore train-2@n2", "ignore train-2@n2", "lost train-1@n1", "place #0 <- train-0@n0",
         "place #1 <- train-1@n1", "stop train-0@n0")),
    Row("a gang that cannot place every member places none",
        run(GANG), snap([node("n0", gpus=h100s(1)), node("n1", gpus=h100s(1, unhealthy=(0,)))]), (),
        ("gang of 2, nothing placed",)),
    # F28: orphans; busy allocations
    Row("a live allocation directory that no record owns is an orphan",
        run(WEB), snap(ready(2, running(A), running("web-9-abcdef@n1")), rec(A, "n0"), timers=settled(A)),
        ("orphan n1 web-9-abcdef@n1",)),
    Row("a dead allocation directory that no record owns is no orphan",
        run(WEB), snap(ready(2, running(A), exited("web-9-abcdef@n1")), rec(A, "n0"), timers=settled(A)), ()),
    Row("a busy allocation that exited is left alone this pass",
        run(WEB), snap(ready(2, exited(A)), rec(A, "n0"), busy=frozenset({A})), ("ignore web-0@n0",),
        ("in flight",)),
    Row("a busy allocation beyond the count is stopped only after its operation",
        run(WEB), snap(ready(2, running(A), running(B)), rec(A, "n0"), rec(B, "n1", 1), timers=settled(A, B),
                       busy=frozenset({B})),
        ("ignore web-1@n1", "ignore web-1@n1"), ("after the operation in flight",)),
    Row("a busy allocation on a node unreachable past its grace is not declared lost yet",
        run(WEB), snap([down("n0", 60), node("n1")], rec(A, "n0"), busy=frozenset({A})), ("ignore web-0@n0",)),
    Row("a busy allocation of a stopped job is not marked while its operation runs",
        run(DesiredJob(WEB, desired=DESIRED_STOP)), snap(ready(2), rec(A, "n0", observed="pending"),
                                                         busy=frozenset({A})),
        ("ignore web-0@n0",)),
]


@pytest.mark.parametrize("row", ROWS, ids=[r.id for r in ROWS])
def test_one_pass(row: Row) -> None:
    plan = reconcile(row.jobs, row.snap, NOW)
    assert digest(plan) == sorted(row.lines)
    for reason in row.reasons:
        assert reason in words(plan), f"no reason says {reason!r}:\n{words(plan)}"
    for item in plan.bucket(PLACE):
        assert item.alloc.node not in row.avoid, f"{item.alloc.id} placed on {item.alloc.node}"
        assert item.alloc.node in row.snap.hosts and row.snap.node(item.alloc.node).is_ready
    if row.requeue is not None:
        assert plan.requeue_after is not None
        assert row.requeue[0] - 1e-6 <= plan.requeue_after <= row.requeue[1] + 1e-6


def test_rows_have_unique_ids() -> None:
    assert len({r.id for r in ROWS}) == len(ROWS)


# --- one job from nothing to steady state ------------------------------------------------------------


def test_a_new_job_is_placed_once_then_left_alone() -> None:
    job = DesiredJob(WEB3, restart_generation=2)
    first = reconcile(run(job), snap(ready(6), salt="db1"), NOW)
    places = first.bucket(PLACE)
    assert sorted(i.alloc.index for i in places) == [0, 1, 2]
    assert len({i.alloc.id for i in places}) == 3
    for item in places:
        assert re.fullmatch(rf"web-{item.alloc.index}-[0-9a-f]{{6}}", item.alloc.id)
        assert item.target_generation == 2
        assert item.alloc.job_version == allocation_version(WEB3) == allocation_version(WEB)
        assert (item.alloc.desired_status, item.alloc.observed_status) == ("run", "pending")
    assert first.pending == {"web": None} and not first.marks
    assert first.summary() == "3 place"
    # the next pass sees them running where they were placed: nothing to do
    records = [replace(i.alloc, observed_status="running") for i in places]
    nodes = [node(f"n{k}", *[running(a.id) for a in records if a.node == f"n{k}"]) for k in range(6)]
    second = reconcile(run(job), snap(nodes, *records, salt="db1", launched={a.id: 2 for a in records},
                                      timers=settled(*[a.id for a in records])), NOW + 1)
    assert second.is_empty, digest(second)
    assert second.items == () and second.summary() == "no changes"


def test_while_nodes_have_not_answered_a_system_job_goes_where_they_did_and_other_jobs_wait() -> None:
    """A starting controller passes at once: a system job is placed on each node that answered (one per
    node, nothing on the others yet, pending until all did); a job that picks among nodes waits, so it
    does not pile onto the nodes that answered first."""
    hosts = ("n0", "n1", "n2", "n3")
    early = reconcile(run(AGENT, WEB3), snap(ready(2), hosts=hosts, warming=frozenset({"n2", "n3"})), NOW)
    assert sorted(i.alloc.node for i in early.bucket(PLACE)) == ["n0", "n1"]
    assert all(i.job == "agent" for i in early.items)
    assert early.pending["web"] == early.pending["agent"] == "waiting for the first probe of n2, n3"
    placed = [replace(i.alloc, observed_status="running") for i in early.bucket(PLACE)]
    nodes = [node(f"n{k}", *[running(a.id) for a in placed if a.node == f"n{k}"]) for k in range(4)]
    warm = reconcile(run(AGENT, WEB3), snap(nodes, *placed, timers=settled(*[a.id for a in placed])), NOW + 1)
    assert sorted(i.alloc.node for i in warm.bucket(PLACE) if i.job == "agent") == ["n2", "n3"]
    assert len([i for i in warm.bucket(PLACE) if i.job == "web"]) == 3
    assert warm.pending == {"agent": None, "web": None}


def test_new_ids_are_deterministic_and_differ_per_salt() -> None:
    def ids(salt: str) -> list[str]:
        return [i.alloc.id for i in reconcile(run(WEB3), snap(ready(6), salt=salt), NOW).bucket(PLACE)]

    assert ids("a") == ids("a")
    assert set(ids("a")).isdisjoint(ids("b"))


def test_the_replacement_of_a_lost_allocation_gets_a_new_id_and_the_lost_record_is_persisted() -> None:
    plan = reconcile(run(WEB), snap([down("n0", 20), node("n1")], rec(A, "n0")), NOW)
    (lost,) = plan.bucket(LOST)
    assert (lost.alloc.desired_status, lost.alloc.observed_status) == (DESIRED_STOP, "lost")
    (placed,) = plan.bucket(PLACE)
    assert placed.alloc.id != A and placed.alloc.node == "n1" and placed.replaces == A


# --- restart budget and restart intents --------------------------------------------------------------


def test_an_exit_restart_counts_against_the_budget_and_a_requested_one_does_not() -> None:
    exit_plan = reconcile(run(WEB), snap(ready(1, exited(A)), rec(A, "n0")), NOW)
    (restart,) = exit_plan.bucket(RESTART)
    assert restart.is_budgeted and restart.target_generation == 0
    gone_plan = reconcile(run(WEB), snap(ready(1), rec(A, "n0")), NOW)
    assert [i.is_budgeted for i in gone_plan.bucket(RESTART)] == [False]
    asked = reconcile(run(DesiredJob(WEB, restart_generation=3)), snap(ready(1, running(A)), rec(A, "n0", generation=1),
                                                                         launched={A: 2}, timers=settled(A)), NOW)
    (restart,) = asked.bucket(RESTART)
    assert (restart.is_budgeted, restart.target_generation) == (False, 4)
    done = reconcile(run(DesiredJob(WEB, restart_generation=3)), snap(ready(1, running(A)), rec(A, "n0", generation=1),
                                                                        launched={A: 4}, timers=settled(A)), NOW)
    assert done.is_empty, digest(done)


def test_a_placed_allocation_starts_at_the_jobs_generation() -> None:
    plan = reconcile(run(DesiredJob(WEB, restart_generation=5)), snap(ready(1), rec(A, "n0", observed="pending")), NOW)
    assert [(i.action, i.target_generation) for i in plan.items] == [(START, 5)]


@pytest.mark.parametrize("done, low, high", [
    (1, 0.8, 1.2), (2, 1.6, 2.4), (3, 3.2, 4.8), (4, 6.4, 9.6), (5, 12.8, 19.2), (6, 24.0, 30.0), (20, 24.0, 30.0),
], ids=["the second restart waits about the delay", "the third about twice the delay",
        "the fourth about four times", "the fifth about eight times", "the sixth about sixteen times",
        "the seventh reaches the cap", "the twenty-first stays at the cap"])
def test_backoff_grows_within_jitter_up_to_its_cap(done: int, low: float, high: float) -> None:
    policy = RestartPolicy(delay=1.0, backoff=2.0, max_delay=30.0)
    for key in ("web-0-aaaaaa", "web-1-bbbbbb", "etl-0-cccccc", "x"):
        assert low <= backoff(policy, done, key) <= high


def test_the_first_restart_has_no_backoff() -> None:
    assert backoff(RestartPolicy(delay=5.0), 0, "web-0") == 0.0


def test_backoff_is_deterministic_and_jittered_per_key() -> None:
    policy = RestartPolicy(delay=1.0, backoff=2.0, max_delay=1000.0)
    assert backoff(policy, 3, "web-0") == backoff(policy, 3, "web-0")
    assert len({backoff(policy, 3, f"web-{i}") for i in range(20)}) > 1
    steps = [backoff(policy, n, "web-0") for n in range(1, 9)]
    assert all(b > a for a, b in zip(steps, steps[1:])), steps


# --- GPUs, gangs -------------------------------------------------------------------------------------


def test_an_unhealthy_or_cordoned_gpu_is_never_assigned() -> None:
    job = spec("train", count=2, gpus=1)
    fleet = snap([node("n0", gpus=h100s(4, unhealthy=(0, 2)))], cordoned=frozenset({"n0/1"}))
    plan = reconcile(run(job), fleet, NOW)
    assert [i.alloc.gpus for i in plan.bucket(PLACE)] == [(3,)]
    assert "placed 1 of 2" in (plan.pending["train"] or "")
    assert plan.wake, "a job that could not be fully placed is looked at again"


def test_a_gang_is_placed_whole_with_its_rank_variables() -> None:
    plan = reconcile(run(GANG), snap([node("n0", gpus=h100s(1)), node("n1", gpus=h100s(1))]), NOW)
    places = plan.bucket(PLACE)
    assert sorted(i.alloc.index for i in places) == [0, 1]
    assert {i.alloc.node for i in places} == {"n0", "n1"}
    assert sorted(i.env["RANK"] for i in places) == ["0", "1"]
    assert {i.env["WORLD_SIZE"] for i in places} == {"2"}
    assert {i.env["MASTER_ADDR"] for i in places} == {"10.0.0.1"} or {i.env["MASTER_ADDR"] for i in places} == {
        "10.0.0.2"}


def test_a_gang_whose_failed_member_waits_for_its_reschedule_delay_places_no_partial_gang() -> None:
    fleet = snap([node("n0", running("train-0@n0"), gpus=h100s(1)), node("n1", exited("train-1@n1"), gpus=h100s(1)),
                  node("n2", gpus=h100s(1))],
                 rec("train-0@n0", "n0", job=GANG, gpus=(0,)),
                 rec("train-1@n1", "n1", 1, job=GANG, gpus=(0,), observed="failed", desired=DESIRED_STOP),
                 timers={"train-0@n0": AllocTimers(running_since=NOW - 60),
                         "train-1@n1": AllocTimers(exit_seen_at=NOW - 5)})
    plan = reconcile(run(GANG), fleet, NOW)
    assert plan.bucket(PLACE) == (), "a gang is placed whole or not at all"
    later = reconcile(run(GANG), replace(fleet, timers={"train-1@n1": AllocTimers(exit_seen_at=NOW - 40)}), NOW)
    assert sorted(i.alloc.index for i in later.bucket(PLACE)) == [0, 1]
    assert {i.env["WORLD_SIZE"] for i in later.bucket(PLACE)} == {"2"}


def test_a_gang_with_a_busy_member_waits_for_it_before_restarting() -> None:
    fleet = snap([node("n0", running("train-0@n0"), gpus=h100s(1)), down("n1", 60), node("n2", gpus=h100s(1)),
                  node("n3", gpus=h100s(1))],
                 rec("train-0@n0", "n0", job=GANG, gpus=(0,)), rec("train-1@n1", "n1", 1, job=GANG, gpus=(0,)),
                 busy=frozenset({"train-0@n0"}))
    plan = reconcile(run(GANG), fleet, NOW)
    assert plan.bucket(PLACE) == (), "the busy member still runs: a new gang would run three members"
    assert [i.alloc.id for i in plan.bucket(STOP)] == []


# --- cron jobs ---------------------------------------------------------------------------------------

NIGHTLY = spec("report", kind="batch", count=2, schedule=Schedule("* * * * *"))
NIGHTLY_REPLACE = replace(NIGHTLY, schedule=Schedule("* * * * *", concurrency="replace"))


def test_a_cron_job_past_its_fire_time_fires_count_runs() -> None:
    plan = reconcile(run(DesiredJob(NIGHTLY, submitted_at=WALL - 120)), snap(ready(3)), NOW)
    assert plan.fired == {"report": WALL - 120 + 40}  # the first minute boundary after submission
    assert sorted(i.alloc.index for i in plan.bucket(PLACE)) == [0, 1]
    assert {i.alloc.created_at for i in plan.bucket(PLACE)} == {WALL - 80}
    assert plan.next_fire == {"report": WALL + 40}
    assert not plan.is_empty


def test_a_run_that_fails_for_good_keeps_its_exit_code_in_the_record() -> None:
    plan = reconcile(run(ETL), snap(ready(2, exited("etl-0@n0", 7)), rec("etl-0@n0", "n0", job=ETL),
                                    timers={"etl-0@n0": AllocTimers(exit_seen_at=NOW, restart_times=(NOW - 20, NOW - 10))}),
                     NOW)
    [(record, reason)] = plan.marks
    assert (record.observed_status, record.exit_code) == ("failed", 7) and "failed for good" in reason


def test_a_restart_of_an_ended_record_of_a_system_job_never_adds_a_second_copy() -> None:
    """Only a batch run ends in place; an ended record of another kind holds no index, so a restart must
    not relaunch it beside the copy placed in its stead (found by the Hypothesis properties)."""
    ended = rec("agent-0", "n0", job=AGENT, observed="complete", generation=1)
    plan = reconcile(run(AGENT), snap(ready(1), ended), NOW)
    assert not plan.bucket(RESTART) and [i.alloc.node for i in plan.bucket(PLACE)] == ["n0"]


def test_restarting_a_cron_job_leaves_its_past_runs_as_history() -> None:
    past = rec("report-0", "n0", job=NIGHTLY, observed="complete")
    plan = reconcile(run(DesiredJob(NIGHTLY, restart_generation=1, last_fire=WALL - 5)), snap(ready(2), past), NOW)
    assert "mark report-0 complete/stop" in digest(plan) and not plan.bucket(RESTART)
    assert "applies to its next runs" in words(plan)


def test_a_cron_job_whose_previous_run_still_goes_skips_with_forbid() -> None:
    fleet = snap(ready(2, running("report-0@n0")), rec("report-0@n0", "n0", job=NIGHTLY), timers=settled("report-0@n0"))
    plan = reconcile(run(DesiredJob(NIGHTLY, submitted_at=WALL - 600, last_fire=WALL - 80)), fleet, NOW)
    assert plan.fired == {"report": WALL - 20}
    assert plan.bucket(PLACE) == () and plan.bucket(STOP) == ()
    assert "skipped" in (plan.pending["report"] or "")


def test_a_cron_job_with_replace_stops_the_previous_run_and_starts_a_new_one() -> None:
    fleet = snap(ready(2, running("report-0@n0")), rec("report-0@n0", "n0", job=NIGHTLY_REPLACE),
                 timers=settled("report-0@n0"))
    plan = reconcile(run(DesiredJob(NIGHTLY_REPLACE, last_fire=WALL - 80)), fleet, NOW)
    assert [i.alloc.id for i in plan.bucket(STOP)] == ["report-0@n0"]
    assert sorted(i.alloc.index for i in plan.bucket(PLACE)) == [0, 1]


@pytest.mark.parametrize("last_fire", [WALL - 10, WALL + 3600], ids=["fired earlier this minute",
                                                                      "fired in the future (a clock step back)"])
def test_a_cron_job_not_due_yet_says_when_it_fires(last_fire: float) -> None:
    plan = reconcile(run(DesiredJob(NIGHTLY, last_fire=last_fire)), snap(ready(2)), NOW)
    assert plan.fired == {} and plan.bucket(PLACE) == ()
    fire = plan.next_fire["report"]
    assert fire > WALL and fire > last_fire
    assert plan.wake and min(plan.wake) > 0 and plan.requeue_after == pytest.approx(fire - WALL)
    assert plan.is_empty
