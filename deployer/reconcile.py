"""The reconciler: desired jobs + one cluster snapshot + now -> a Plan. Pure: no clock, no I/O.

    probes ──> ClusterSnapshot ──┐
    store  ──> DesiredJob... ────┼──> reconcile(desired, snapshot, now) ──> Plan ──> executor ──> nodes
    clock  ──> now (monotonic) ──┘        (buckets: place start restart stop update lost ignore)
                     ^                                                           │
                     └──────────── the next pass sees what this one did ─────────┘

Level-triggered: a pass looks only at what is desired and what is observed now, so it is correct
whatever happened before (a crashed controller, a lost event). Every item carries its reason in words.

Per allocation (see `_decide`): a node unreachable for less than the grace leaves it alone ("unknown");
past the grace it is lost and replaced (policy reschedule) or waited for (policy wait). On a ready
node an exited workload is restarted in place: the first restart in a window at once, then after
jittered exponential backoff, `restart.attempts` times per `restart.interval`; then a service fails and
is replaced, a batch job fails for good. Batch exit 0 is complete forever. Per job (`_reconcile_job`):
missing indices are placed, extra copies stopped, spec changes rolled out max_parallel at a time, gated
on health. Cron jobs fire on schedule; system jobs run once on every eligible node.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import replace

from deployer.models import (
    DESIRED_RUN,
    DESIRED_STOP,
    NODE_READY,
    NODE_UNKNOWN,
    Allocation,
    AllocationObservation,
    JobSpec,
    NodeState,
    RestartPolicy,
)
from deployer.plan import (
    IGNORE,
    LOST,
    RESTART,
    START,
    STOP,
    AllocTimers,
    ClusterSnapshot,
    DesiredJob,
    Item,
    Plan,
)
from deployer.reconcile_jobs import JobPass, occupies, place_job

FINAL = ("complete", "failed", "lost", "stopped")  # observed states that need nothing more
SETTLE = 1.0  # seconds a run without a health check must be up before it counts as running (a crash at
# start is no success); a run with a health check counts as running at its first passing check, which a
# process that crashes at start cannot give (Kubernetes' readiness, minReadySeconds 0)
LEASE_MARGIN = 2.0  # seconds past the lease TTL before a replacement may start (F7: no overlap)


def reconcile(desired: Mapping[str, DesiredJob], snapshot: ClusterSnapshot, now: float) -> Plan:
    """The plan that moves the fleet from `snapshot` toward `desired` at monotonic time `now`."""
    out = JobPass(snapshot, now)
    by_job: dict[str, list[Allocation]] = {}
    for alloc in snapshot.allocations:
        by_job.setdefault(alloc.job, []).append(alloc)
    for name in sorted(set(desired) | set(by_job)):
        job = desired.get(name)
        for alloc in by_job.get(name, []):
            _decide(alloc, job, snapshot, now, out)
        if job is not None and job.desired == DESIRED_RUN:
            place_job(job, by_job.get(name, []), out)
    out.place_all()  # after every job's stops, so what they free this pass is free for every job
    _orphans(snapshot, out)
    return out.plan()


def _decide(alloc: Allocation, job: DesiredJob | None, snap: ClusterSnapshot, now: float, out: JobPass) -> None:
    """One allocation: stop it, leave it, restart it, mark it, or declare it lost."""
    # a record that no longer holds its index (lost, stopped, a failed service) is never launched again:
    # its index is placed anew, and a second launch would run beside that replacement
    stopping = job is None or job.desired != DESIRED_RUN or not occupies(alloc, job.spec)
    if alloc.id in snap.busy:  # no mark either: the operation saves its own result over the record
        out.item(IGNORE, alloc, "an operation on it is in flight", requeue=0.5)
        return
    if stopping or job is None:
        _decide_stopping(alloc, job, snap, out)
        return
    if alloc.observed_status in ("complete", "failed") and (job.spec.is_batch or alloc.observed_status == "complete"):
        _decide_final(alloc, job, snap, out)  # a batch run that ended: final, unless a restart was asked for
        return
    node = snap.node(alloc.node)
    if alloc.node not in snap.hosts or alloc.node in snap.draining:
        out.migrating.append(alloc)  # replaced first, stopped once the replacement runs (place_job)
    if not node.is_ready:
        _decide_unreachable(alloc, job.spec, node, snap, now, out)
        return
    _decide_on_ready_node(alloc, job, node.allocations.get(alloc.id), snap, now, out)


def _decide_final(alloc: Allocation, job: DesiredJob, snap: ClusterSnapshot, out: JobPass) -> None:
    """A run that ended (exit 0, or failed for good) is never restarted by itself. A restart asked for
    after it (`flex restart`, the console: on-call rerunning a failed batch job) runs it again in place,
    once; a cron job's past runs are history instead (its next fire runs it anew), so the restart leaves
    them and is done."""
    target = job.restart_generation + alloc.generation
    if snap.launched.get(alloc.id, 0) >= target or not job.spec.is_batch:
        return  # (a service's or system job's ended record holds no index: its replacement is placed)
    if job.spec.is_periodic:
        out.mark(replace(alloc, desired_status=DESIRED_STOP), f"past run of a cron job: restart {target} applies "
                 "to its next runs")
        return
    node = snap.node(alloc.node)
    if not node.is_ready or alloc.node not in snap.hosts or alloc.node in snap.draining:
        out.item(IGNORE, alloc, f"restart requested: {alloc.node} is {node.status}", requeue=1.0)
        return
    out.restart(alloc, f"restart requested (generation {target}) of a run that {alloc.observed_status}"
                + (f" (exit {alloc.exit_code})" if alloc.exit_code is not None else ""), target, counts=False)


def _decide_stopping(alloc: Allocation, job: DesiredJob | None, snap: ClusterSnapshot, out: JobPass) -> None:
    """Allocations that must not run (stopped job, replaced copy, lost): stop what still runs."""
    obs = snap.node(alloc.node).allocations.get(alloc.id)
    wanted = alloc if alloc.desired_status == DESIRED_STOP else replace(alloc, desired_status=DESIRED_STOP)
    why = "job stopped" if job is None or job.desired != DESIRED_RUN else "replaced copy still running"
    if obs is not None and obs.is_alive and snap.node(alloc.node).is_ready:
        if alloc.observed_status == "lost":
            why = _overlap(alloc, snap)
        out.item(STOP, wanted, why)
        return
    if snap.node(alloc.node).is_ready and alloc.observed_status not in FINAL:
        out.mark(replace(wanted, observed_status="stopped"), "stopped")
    elif wanted is not alloc:  # recorded now; an unreachable node's copy is stopped when it answers again
        out.mark(wanted, why)


def _overlap(alloc: Allocation, snap: ClusterSnapshot) -> str:
    """Why a lost copy seen alive again is stopped, with the overlap window (F5): which replacement it ran
    beside, and for how long at most (since the replacement was placed) until this stop."""
    twins = [a for a in snap.allocations if a.job == alloc.job and a.index == alloc.index and a.id != alloc.id
             and a.desired_status == DESIRED_RUN and a.created_at > 0]
    if not twins:
        return "lost copy came back after its replacement started: one copy stays"
    twin = max(twins, key=lambda a: a.created_at)
    return (f"lost copy came back after its replacement started: one copy stays (overlap with {twin.id} on "
            f"{twin.node}: at most {max(0.0, snap.wall - twin.created_at):.0f}s, since its placement)")


def _decide_unreachable(alloc: Allocation, spec: JobSpec, node: NodeState, snap: ClusterSnapshot, now: float,
                        out: JobPass) -> None:
    """Unknown within the grace; lost (replaced) or waited for after it, per the reschedule policy."""
    if node.status == NODE_UNKNOWN or node.unreachable_since is None:
        out.item(IGNORE, alloc, f"waiting for the first probe of {alloc.node}", requeue=1.0)
        return
    down = now - node.unreachable_since
    grace = spec.reschedule.grace
    if snap.lease_ttl > 0:
        grace = max(grace, snap.lease_ttl + LEASE_MARGIN)
    if down < grace or spec.reschedule.policy == "wait":
        if down < grace:
            out.item(IGNORE, alloc, f"node {alloc.node} {node.status} for {down:.0f}s (grace {grace:g}s)",
                     requeue=grace - down)
        else:
            out.item(IGNORE, alloc, f"node {alloc.node} {node.status} for {down:.0f}s; policy wait keeps it there")
        # whatever the policy: nobody knows whether it still runs; a launch never confirmed stays pending, so
        # that the node is asked by allocation id (START) once it answers, not restarted as if it had run (F12)
        if alloc.observed_status not in ("unknown", "pending"):
            out.mark(replace(alloc, observed_status="unknown"), f"node {alloc.node} {node.status}")
        return
    out.item(LOST, replace(alloc, desired_status=DESIRED_STOP, observed_status="lost"),
             f"node {alloc.node} {node.status} for {down:.0f}s (grace {grace:g}s): replaced elsewhere")


def _decide_on_ready_node(alloc: Allocation, job: DesiredJob, obs: AllocationObservation | None,
                          snap: ClusterSnapshot, now: float, out: JobPass) -> None:
    """A reachable node: launch, adopt, restart, complete or fail the allocation."""
    target = job.restart_generation + alloc.generation
    launched = snap.launched.get(alloc.id, 0)
    if (obs is None or not obs.is_alive) and _has_stray_processes(snap.node(alloc.node), alloc.id):
        out.item(IGNORE, alloc, "some of its processes live on outside its supervisor: stopping them first",
                 requeue=0.5)
        return
    if obs is None or obs.status in ("absent", "pending"):  # pending there: files pushed, `start` never ran (F12)
        if alloc.observed_status == "pending":
            out.item(START, alloc, "placed; launch not confirmed yet", target=target)
        else:
            out.restart(alloc, "gone from its node (rebooted or wiped): started again", target, counts=False)
        return
    if obs.is_alive:
        _decide_alive(alloc, job, obs, snap, now, out, target, launched)
        return
    if obs.status in ("starting", "running"):  # its supervisor is up: starting, or recording an exit
        out.item(IGNORE, alloc, f"{obs.status} on its node (supervisor busy)", requeue=0.2)
        return
    _decide_exited(alloc, job, obs, snap, now, out, target, launched)


def _decide_alive(alloc: Allocation, job: DesiredJob, obs: AllocationObservation, snap: ClusterSnapshot,
                  now: float, out: JobPass, target: int, launched: int) -> None:
    if launched < target:
        out.restart(alloc, f"restart requested (generation {target})", target, counts=False)
        return
    health = job.spec.health
    timers = snap.timers.get(alloc.id) or AllocTimers()
    since = timers.running_since if timers.running_since is not None else now
    if health is not None and obs.health is not None and not obs.health.ok \
            and obs.health.failures >= health.failures and now - since >= health.grace:
        _may_restart(alloc, job.spec, snap, now, out, f"health check failed {obs.health.failures} times "
                     f"({obs.health.detail or 'no detail'})", target)
        return
    healthy = health is None or (obs.health is not None and obs.health.ok)
    settle = 0.0 if health is not None else min(job.spec.update.min_healthy_time, SETTLE)
    settled = alloc.observed_status == "running" or (  # adopted as running: no demotion on a controller restart
        timers.running_since is not None and now - timers.running_since >= settle)
    observed = "running" if obs.status == "running" and healthy and settled else "starting"
    if observed == "starting" and obs.status == "running" and healthy:
        up = 0.0 if timers.running_since is None else now - timers.running_since
        out.item(IGNORE, alloc, f"up for less than {settle:g}s", requeue=max(0.05, settle - up))
    if alloc.observed_status != observed:
        out.mark(replace(alloc, observed_status=observed, exit_code=None), f"{observed} (pid {obs.pid})")
    out.alive.append(alloc)


def _decide_exited(alloc: Allocation, job: DesiredJob, obs: AllocationObservation, snap: ClusterSnapshot,
                   now: float, out: JobPass, target: int, launched: int) -> None:
    how = _how_it_ended(obs)
    if launched < target:  # asked for before or while it ended: applies to this run (a batch runs again too)
        out.restart(alloc, f"restart requested (generation {target})", target, counts=False)
        return
    if job.spec.is_batch and obs.exit_code == 0 and obs.status == "exited":
        out.mark(replace(alloc, observed_status="complete", exit_code=0), "exit 0")
        return
    if alloc.observed_status not in ("exited", "failed") or alloc.exit_code != obs.exit_code:
        alloc = replace(alloc, observed_status="exited", exit_code=obs.exit_code)  # kept by a `failed` mark too
        out.mark(alloc, how)
    _may_restart(alloc, job.spec, snap, now, out, how, target)


def _may_restart(alloc: Allocation, spec: JobSpec, snap: ClusterSnapshot, now: float, out: JobPass,
                 why: str, target: int) -> bool:
    """Restart within the budget after its backoff (True: restarting or waiting); else fail it."""
    policy = spec.restart
    timers = snap.timers.get(alloc.id) or AllocTimers()
    recent = [t for t in timers.restart_times if now - t < policy.interval]
    if len(recent) >= policy.attempts and policy.mode == "delay":
        wait = recent[0] + policy.interval - now
        out.item(IGNORE, alloc, f"{why}; {len(recent)} restarts in {policy.interval:g}s: next in {wait:.0f}s",
                 requeue=wait)
        return True
    if len(recent) >= policy.attempts:
        verdict = "rescheduled" if not spec.is_batch else "failed for good"
        out.fail(alloc, f"{why}; restart budget spent ({len(recent)}/{policy.attempts} in "
                 f"{policy.interval:g}s): {verdict}", reschedule=not spec.is_batch)
        return False
    delay = backoff(policy, len(recent), alloc.id)
    seen = timers.exit_seen_at if timers.exit_seen_at is not None else now
    label = f"restart {len(recent) + 1}/{policy.attempts}"
    if len(recent) >= 2:
        label = f"crash-looping: {label}"
    if now - seen < delay:
        out.item(IGNORE, alloc, f"{why}; {label} in {delay - (now - seen):.1f}s (backoff {delay:.1f}s)",
                 requeue=delay - (now - seen))
        return True
    out.restart(alloc, f"{why}; {label}" + (f" after {delay:.1f}s backoff" if delay else ""), target)
    return True


def backoff(policy: RestartPolicy, done: int, key: str) -> float:
    """Seconds before restart number done+1: 0 for the first, then delay x backoff^(n-1), capped, with
    a deterministic jitter of +-20% (hashed from key and n, so a pass stays pure and replayable)."""
    if done == 0:
        return 0.0
    base = min(policy.delay * policy.backoff ** (done - 1), policy.max_delay)
    digest = hashlib.sha256(f"{key}:{done}".encode()).digest()
    jitter = 0.8 + 0.4 * (digest[0] / 255)
    return min(base * jitter, policy.max_delay)


def _how_it_ended(obs: AllocationObservation) -> str:
    if obs.status == "fenced":
        return "fenced: its lease was not renewed in time"
    if obs.status == "lost":
        return "lost: its process is gone (node rebooted?)"
    if obs.status == "stopped":
        return "stopped on the node"
    if obs.signal:
        return f"killed by signal {obs.signal}"
    return f"exit {obs.exit_code}"


def _orphans(snap: ClusterSnapshot, out: JobPass) -> None:
    """Allocation directories with a live workload that no record owns: stopped (never adopted twice)."""
    known = {a.id for a in snap.allocations}
    for node in snap.nodes.values():
        if not node.is_ready:
            continue
        for alloc_id, obs in node.allocations.items():
            if alloc_id not in known and obs.is_alive:
                out.orphans.append((node.name, alloc_id, "runs on the node but no allocation record owns it", None))
        for group in node.orphans:
            pgid = group.get("pgid")
            if isinstance(pgid, int) and group.get("alloc_id"):
                out.orphans.append((node.name, str(group["alloc_id"]), f"process group {pgid} "
                                    f"({group.get('reason') or 'outside its supervisor'})", pgid))


def _has_stray_processes(node: NodeState, alloc_id: str) -> bool:
    """True when processes of the allocation run outside its supervisor (a previous run's leftovers)."""
    return any(group.get("alloc_id") == alloc_id for group in node.orphans)


__all__ = ["backoff", "reconcile"]
