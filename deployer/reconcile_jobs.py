"""The job-level half of the reconciler: counts, placements, rolling updates, drains, cron and system
jobs, and `JobPass`, the accumulator a pass writes its decisions into. Pure, like reconcile.py.

`reconcile.py` decides per allocation first (restart, lost, stop...) and records the outcome in the
JobPass; `place_job` then looks at what still occupies each index of the job and fills the gaps.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping
from dataclasses import replace
from datetime import UTC, datetime

from deployer.cron import next_fire
from deployer.models import DESIRED_RUN, DESIRED_STOP, EMPTY, Allocation, JobSpec, frozen_mapping
from deployer.plan import (
    IGNORE,
    LOST,
    PLACE,
    RESTART,
    START,
    STOP,
    UPDATE,
    AllocTimers,
    ClusterSnapshot,
    DesiredJob,
    Item,
    Plan,
)
from deployer.scheduler import Assignment, Cluster, place, place_system

NOT_OCCUPYING = ("failed", "lost", "stopped")  # observed states that free a service's index


class JobPass:
    """The decisions of one pass so far, and the records as they will be once the plan is applied."""

    def __init__(self, snap: ClusterSnapshot, now: float) -> None:
        self.snap, self.now = snap, now
        self.items: list[Item] = []
        self.marks: dict[str, tuple[Allocation, str]] = {}
        self.records: dict[str, Allocation] = {a.id: a for a in snap.allocations}
        self.pending: dict[str, str | None] = {}
        self.fired: dict[str, float] = {}
        self.next_fire: dict[str, float] = {}
        self.wake: list[float] = []
        self.orphans: list[tuple[str, str, str, int | None]] = []
        self.alive: list[Allocation] = []  # observed alive on a ready node this pass
        self.migrating: list[Allocation] = []  # on a draining node or one gone from the inventory
        self._cluster: Cluster | None = None
        self._serial: dict[str, int] = {}
        self._launching: set[str] = set()  # alloc ids with a START or RESTART item
        self._placements: list[Callable[[], None]] = []  # held back until every job's stops are in
        self._versions: dict[str, str] = {}

    # --- recording decisions -------------------------------------------------------------------

    def item(self, action: str, alloc: Allocation, reason: str, *, target: int = 0, requeue: float | None = None,
             replaces: str | None = None, env: Mapping[str, str] = EMPTY, budgeted: bool = True) -> None:
        """Add one plan item; STOP and LOST also change the record the rest of the pass sees, and win over
        a START or RESTART decided earlier in the pass (an allocation is never launched and stopped at once)."""
        if action in (STOP, LOST) and alloc.id in self._launching:
            self._launching.discard(alloc.id)
            self.items = [i for i in self.items if i.alloc.id != alloc.id or i.action not in (START, RESTART)]
        elif action in (START, RESTART):
            self._launching.add(alloc.id)
        self.items.append(Item(action, alloc.job, reason, alloc, replaces, target, env, requeue, budgeted))
        if action in (STOP, LOST, PLACE, UPDATE):
            self.records[alloc.id] = alloc
            self._cluster = None

    def mark(self, alloc: Allocation, reason: str) -> None:
        """Persist a changed record (no node I/O)."""
        self.marks[alloc.id] = (alloc, reason)
        self.records[alloc.id] = alloc
        self._cluster = None

    def restart(self, alloc: Allocation, reason: str, target: int, counts: bool = True) -> None:
        """Launch the allocation again on its node (stopping what is left of it first)."""
        self.item(RESTART, alloc, reason, target=target, budgeted=counts)

    def fail(self, alloc: Allocation, reason: str, reschedule: bool) -> None:
        """The restart budget is spent: failed; a service's index is freed for a replacement."""
        failed = replace(alloc, observed_status="failed",
                         desired_status=DESIRED_STOP if reschedule else alloc.desired_status)
        self.mark(failed, reason)

    def place_later(self, placement: Callable[[], None]) -> None:
        """Hold a job's placement back until `place_all`."""
        self._placements.append(placement)

    def place_all(self) -> None:
        """Run the held-back placements, in job order: what any job's stops free this pass is free for all."""
        for placement in self._placements:
            placement()
        self._placements.clear()

    def plan(self) -> Plan:
        """The finished Plan."""
        return Plan(tuple(self.items), tuple(self.marks.values()), frozen_mapping(self.pending),
                    frozen_mapping(self.fired), tuple(self.orphans), frozen_mapping(self.next_fire),
                    tuple(self.wake))

    # --- what placement sees -------------------------------------------------------------------

    def cluster(self) -> Cluster:
        """The scheduler's view with every record as this pass leaves it (new placements included)."""
        if self._cluster is None:
            cordoned = frozenset(self.snap.cordoned)
            self._cluster = Cluster.build(self.snap.hosts, self.snap.nodes, self.records.values(), cordoned,
                                          frozenset(self.snap.draining))
        return self._cluster

    def new_id(self, job: str, index: int) -> str:
        """A fresh allocation id, deterministic for the snapshot: JOB-INDEX-TOKEN."""
        serial = self._serial.get(job)
        if serial is None:
            serial = sum(1 for a in self.snap.allocations if a.job == job)
        self._serial[job] = serial + 1
        token = hashlib.sha256(f"{self.snap.salt}:{job}:{index}:{serial}".encode()).hexdigest()[:6]
        return f"{job}-{index}-{token}"

    def version(self, spec: JobSpec) -> str:
        """`allocation_version(spec)`, computed once per job and pass."""
        version = self._versions.get(spec.name)
        if version is None:
            version = self._versions[spec.name] = allocation_version(spec)
        return version

    def timers(self, alloc_id: str) -> AllocTimers:
        """The controller's timers of an allocation (empty when it has none)."""
        return self.snap.timers.get(alloc_id) or AllocTimers()


def allocation_version(spec: JobSpec) -> str:
    """The version an allocation of spec runs (Allocation.job_version): the spec's fingerprint without its
    count, so that scaling a job replaces none of the allocations it keeps."""
    return spec.fingerprint if spec.count == 1 else replace(spec, count=1).fingerprint


def occupies(alloc: Allocation, spec: JobSpec) -> bool:
    """True when the allocation holds its index: desired run and not failed, lost or stopped (a
    failed batch allocation keeps its index: it is final, never replaced)."""
    if alloc.desired_status != DESIRED_RUN:
        return False
    return alloc.observed_status not in NOT_OCCUPYING or (spec.is_batch and alloc.observed_status == "failed")


def place_job(job: DesiredJob, allocs: list[Allocation], out: JobPass) -> None:
    """Fill the job's missing indices, stop extra copies, migrate drained work, roll out updates (the
    stops at once, the placements at `out.place_all()`)."""
    if job.spec.is_system:
        _system(job, allocs, out)
    elif out.snap.warming:  # placing now would pick among the nodes that happened to answer first
        out.pending[job.name] = f"waiting for the first probe of {_nodes(out.snap.warming)}"
    elif job.spec.is_periodic:
        _cron(job, allocs, out)
    else:
        _counted(job, allocs, out)


def _counted(job: DesiredJob, allocs: list[Allocation], out: JobPass) -> None:
    spec = job.spec
    moving = {a.id for a in out.migrating}
    by_index: dict[int, list[Allocation]] = {}
    for alloc in allocs:
        record = out.records[alloc.id]
        if occupies(record, spec):
            by_index.setdefault(record.index, []).append(record)
    missing: list[int] = []
    replaces: dict[int, str] = {}
    kept: list[Allocation] = []  # the one copy staying at each index, in index order
    for index in sorted(set(by_index) | set(range(spec.count))):
        copies = by_index.get(index, [])
        if index >= spec.count:
            for extra in copies:
                _stop(out, extra, f"count is {spec.count}: index {index} is not wanted")
            continue
        staying = _dedupe([c for c in copies if c.id not in moving], out)
        kept += staying[:1]
        if not staying:
            missing.append(index)
            predecessor = copies[0] if copies else _predecessor(index, allocs, out)
            if predecessor is not None:
                replaces[index] = predecessor.id
        elif copies and len(staying) < len(copies):
            _finish_migration(staying[0], [c for c in copies if c.id in moving], out)
    if spec.gang and missing and len(missing) < spec.count:
        missing, restarted = _restart_gang(spec, by_index, out)
        replaces.update(restarted)
    missing += _rolling_update(job, [r for r in kept if r.index not in missing], out, replaces)
    wanted = sorted(set(missing))
    missing = _after_reschedule_delay(spec, allocs, wanted, out)
    if spec.gang and len(missing) < len(wanted):
        missing = []  # a gang starts whole: every member waits for the longest reschedule delay
    out.place_later(lambda: _place(job, missing, replaces, out))


def _predecessor(index: int, allocs: list[Allocation], out: JobPass) -> Allocation | None:
    """The allocation a new one at index replaces: the index's newest record, when it was lost or failed."""
    records = [out.records[a.id] for a in allocs if a.index == index]
    newest = max(records, key=lambda a: (a.created_at, a.id), default=None)
    return newest if newest is not None and newest.observed_status in ("lost", "failed") else None


def _dedupe(copies: list[Allocation], out: JobPass) -> list[Allocation]:
    """Two copies of one index (a healed partition): keep the one seen alive, newest first (a copy with an
    operation in flight first of all: it cannot be stopped this pass, so no other copy stays beside it)."""
    if len(copies) <= 1:
        return copies
    alive = {a.id for a in out.alive}
    busy = out.snap.busy
    ranked = sorted(copies, key=lambda a: (a.id not in busy, a.id not in alive, -a.created_at, a.id))
    for extra in ranked[1:]:
        _stop(out, extra, f"duplicate of {ranked[0].id} (index {extra.index}): one copy stays")
    return ranked[:1]


def _finish_migration(replacement: Allocation, moving: list[Allocation], out: JobPass) -> None:
    """A drained allocation stops once its replacement runs, not before."""
    if replacement.id in {a.id for a in out.alive} and replacement.observed_status == "running":
        for old in moving:
            _stop(out, old, f"migrated: replacement {replacement.id} runs on {replacement.node}")
    else:
        for old in moving:
            out.item(IGNORE, old, f"migrating: waiting for replacement {replacement.id} to run", requeue=0.5)


def _restart_gang(spec: JobSpec, by_index: dict[int, list[Allocation]],
                  out: JobPass) -> tuple[list[int], dict[int, str]]:
    """A gang lost a member: every member stops and the whole gang is placed again together (once no
    member has an operation in flight: until then a new gang would run beside it)."""
    busy = [m for index, copies in by_index.items() for m in copies if m.id in out.snap.busy and index < spec.count]
    for member in busy:
        out.item(IGNORE, member, "a gang member was lost: the gang restarts after the operation in flight",
                 requeue=0.5)
    if busy:
        return [], {}
    replaces = {}
    for index, copies in by_index.items():
        if index >= spec.count:
            continue  # stopped already: past the count
        for member in copies:
            if out.records[member.id].desired_status == DESIRED_RUN:  # not stopped already (a duplicate)
                # a complete member too: its run counts only with the whole gang's
                _stop(out, member, "a gang member was lost: the gang restarts together")
                replaces[index] = member.id
    return list(range(spec.count)), replaces


def _rolling_update(job: DesiredJob, current: list[Allocation], out: JobPass, replaces: dict[int, str]) -> list[int]:
    """Indices whose allocation is replaced by the new version this pass (max_parallel at a time)."""
    spec, policy = job.spec, job.spec.update
    version = out.version(spec)
    old = [a for a in current if a.job_version != version and a.observed_status != "complete"]
    if not old:
        return []
    alive = {a.id for a in out.alive}
    if spec.gang:
        return _update_gang(spec, current, version, out, replaces)
    unsettled = sum(1 for a in current if a.job_version == version and not _settled(a, spec, alive, out))
    budget = max(0, policy.max_parallel - unsettled)
    idle = [a for a in old if a.id not in alive and out.snap.node(a.node).is_ready and a.id not in out.snap.busy]
    chosen = idle + [a for a in old if a.id in alive][:budget]
    for alloc in chosen:
        _stop(out, alloc, f"rolling update to version {version[:8]}")
        replaces[alloc.index] = alloc.id
    if len(chosen) < len(old):
        out.wake.append(1.0)
    return [a.index for a in chosen]


def _update_gang(spec: JobSpec, members: list[Allocation], version: str, out: JobPass,
                  replaces: dict[int, str]) -> list[int]:
    """A gang's members run one version: all are replaced together, once the gang is whole and each member
    is on a ready node with no operation in flight (never beside a member that may still run)."""
    if len(members) < spec.count or any(a.id in out.snap.busy or not out.snap.node(a.node).is_ready
                                        for a in members):
        out.wake.append(1.0)
        return []
    for alloc in members:  # a complete member too: its run counts only with the whole gang's
        _stop(out, alloc, f"rolling update to version {version[:8]}: the gang is replaced whole")
        replaces[alloc.index] = alloc.id
    return [a.index for a in members]


def _settled(alloc: Allocation, spec: JobSpec, alive: set[str], out: JobPass) -> bool:
    """Running, healthy, and for min_healthy_time: the update may move on."""
    if alloc.id not in alive:
        return False
    since = out.timers(alloc.id).running_since
    if since is None or out.now - since < spec.update.min_healthy_time:
        return False
    obs = out.snap.node(alloc.node).allocations.get(alloc.id)
    return spec.health is None or (obs is not None and obs.health is not None and obs.health.ok)


def _after_reschedule_delay(spec: JobSpec, allocs: list[Allocation], missing: list[int], out: JobPass) -> list[int]:
    """Indices whose failed predecessors' reschedule delay has passed (doubling per failure)."""
    ready = []
    for index in missing:
        failed = [a for a in allocs if a.index == index and out.records[a.id].observed_status == "failed"
                  and a.job_version == out.version(spec)]  # a new (or reverted) version starts afresh
        if not failed:
            ready.append(index)
            continue
        policy = spec.reschedule
        if policy.attempts is not None and len(failed) > policy.attempts:
            out.pending[spec.name] = f"index {index} failed {len(failed)} times: reschedule attempts spent"
            continue
        seen = [t for a in failed if (t := out.timers(a.id).exit_seen_at) is not None]
        delay = min(policy.delay * 2 ** (len(failed) - 1), policy.max_delay)
        wait = (max(seen) + delay - out.now) if seen else 0.0
        if wait > 0:
            out.item(IGNORE, failed[-1], f"failed; replacement in {wait:.0f}s (reschedule delay {delay:g}s)",
                     requeue=wait)
            # said where `flex status` shows why a job is not running (F3): its failed allocation is history
            out.pending[spec.name] = (f"index {index} crash-looping: restart budget spent ({len(failed)} failed); "
                                      f"replacement after the reschedule delay ({delay:g}s)")
        else:
            ready.append(index)
    return ready


def _place(job: DesiredJob, indices: list[int], replaces: Mapping[int, str], out: JobPass) -> None:
    if not indices:
        out.pending.setdefault(job.name, None)
        return
    # a service that spent its restart budget on a node is rescheduled elsewhere when another node fits
    failed_on = frozenset(r.node for i in indices if (r := out.records.get(replaces.get(i, ""))) is not None
                          and r.observed_status == "failed")
    result = place(job.spec, len(indices), out.cluster(), indices=indices, avoid=failed_on)
    for assignment in result.assignments:
        _add(job, assignment, out, replaces.get(assignment.index))
    if result.failure is None:
        out.pending[job.name] = None
        return
    unplaced = len(indices) - len(result.assignments)
    whole = job.spec.count
    out.pending[job.name] = (f"{unplaced} of {whole} allocations not placed: " if whole > 1 else "") + \
        result.failure.sentence()
    out.wake.append(5.0)


def _add(job: DesiredJob, assignment: Assignment, out: JobPass, replaces: str | None = None,
         created_at: float | None = None) -> None:
    spec = job.spec
    alloc = Allocation(
        id=out.new_id(spec.name, assignment.index), job=spec.name, node=assignment.node, index=assignment.index,
        job_version=out.version(spec), cpus=spec.resources.cpus, memory=spec.resources.memory,
        gpus=assignment.gpus, ports=frozen_mapping(assignment.ports), rank=assignment.rank,
        created_at=out.snap.wall if created_at is None else created_at)
    why = f"placed on {assignment.node}" + (f", replacing {replaces}" if replaces else "")
    if assignment.gpus:
        why += f" (GPUs {','.join(map(str, assignment.gpus))})"
    out.item(PLACE, alloc, why, target=job.restart_generation, replaces=replaces, env=assignment.env)


def _stop(out: JobPass, alloc: Allocation, reason: str) -> None:
    if alloc.id in out.snap.busy:  # never two operations on one allocation at once
        out.item(IGNORE, alloc, f"{reason} (after the operation in flight)", requeue=0.5)
        return
    out.item(STOP, replace(alloc, desired_status=DESIRED_STOP), reason)


def _system(job: DesiredJob, allocs: list[Allocation], out: JobPass) -> None:
    """One allocation on every eligible node; those on nodes that left the inventory stop."""
    moving = {a.id for a in out.migrating}
    by_node: dict[str, list[Allocation]] = {}
    for alloc in allocs:
        if alloc.id in moving and occupies(out.records[alloc.id], job.spec):
            _stop(out, alloc, f"node {alloc.node} left the inventory or is draining")
        elif out.records[alloc.id].holds_resources:  # as place_system counts it: a node runs it
            by_node.setdefault(alloc.node, []).append(out.records[alloc.id])
    for copies in by_node.values():
        _dedupe(copies, out)  # one per node, whatever happened before
    out.place_later(lambda: _place_system(job, out))


def _place_system(job: DesiredJob, out: JobPass) -> None:
    result = place_system(job.spec, out.cluster())
    order = {name: i for i, name in enumerate(sorted(out.snap.hosts))}
    for assignment in result.assignments:
        _add(job, replace(assignment, index=order.get(assignment.node, 0)), out)
    out.pending[job.name] = None if result.failure is None else result.failure.sentence()
    if out.snap.warming and result.failure is None:  # placed where nodes answered; not done before all did
        out.pending[job.name] = f"waiting for the first probe of {_nodes(out.snap.warming)}"


def _nodes(names: frozenset[str]) -> str:
    listed = ", ".join(sorted(names)[:3])
    return f"{len(names)} nodes ({listed}, ...)" if len(names) > 3 else listed


def _cron(job: DesiredJob, allocs: list[Allocation], out: JobPass) -> None:
    """Fire a run when the schedule says so, honouring the concurrency policy."""
    schedule = job.spec.schedule
    assert schedule is not None
    last = job.last_fire if job.last_fire is not None else job.submitted_at
    fire = next_fire(schedule.cron, datetime.fromtimestamp(last, UTC), schedule.timezone).timestamp()
    if fire > out.snap.wall:
        out.next_fire[job.name] = fire
        out.wake.append(fire - out.snap.wall)
        out.pending.setdefault(job.name, None)
        return
    out.fired[job.name] = fire
    following = next_fire(schedule.cron, datetime.fromtimestamp(max(fire, out.snap.wall), UTC), schedule.timezone)
    out.next_fire[job.name] = following.timestamp()
    live = [out.records[a.id] for a in allocs if occupies(out.records[a.id], job.spec)
            and out.records[a.id].observed_status not in ("complete", "failed")]
    if live and schedule.concurrency == "forbid":
        out.pending[job.name] = f"run at {_clock(fire)} skipped: the previous run is still going (concurrency forbid)"
        return
    if schedule.concurrency == "replace":
        for alloc in live:
            _stop(out, alloc, f"replaced by the run at {_clock(fire)} (concurrency replace)")
    out.place_later(lambda: _place_run(job, fire, out))


def _place_run(job: DesiredJob, fire: float, out: JobPass) -> None:
    result = place(job.spec, job.spec.count, out.cluster())
    for assignment in result.assignments:
        _add(job, assignment, out, created_at=fire)
    out.pending[job.name] = None if result.failure is None else result.failure.sentence()


def _clock(wall: float) -> str:
    return datetime.fromtimestamp(wall, UTC).strftime("%Y-%m-%d %H:%M UTC")


__all__ = ["JobPass", "allocation_version", "occupies", "place_job"]
