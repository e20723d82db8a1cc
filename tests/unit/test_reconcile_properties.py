"""Reconcile invariants over random fleets and random histories: never more copies than asked for, never a
placement where it must not go, items only about allocations that exist, and a pass after the plan is
applied has nothing left to do."""

from __future__ import annotations

from collections import Counter
from dataclasses import replace

from hypothesis import example, given, settings
from hypothesis import strategies as st

from deployer.models import (
    DESIRED_RUN,
    DESIRED_STOP,
    NODE_READY,
    NODE_UNREACHABLE,
    NODE_UNTRUSTED,
    Allocation,
    AllocationObservation,
    GpuState,
    Host,
    JobSpec,
    NodeState,
    Placement,
    ReschedulePolicy,
    Resources,
    RestartPolicy,
)
from deployer.plan import IGNORE, LOST, PLACE, RESTART, START, STOP, AllocTimers, ClusterSnapshot, DesiredJob, Plan
from deployer.reconcile import reconcile
from deployer.reconcile_jobs import allocation_version, occupies

GIB = 1024**3
NOW = 5000.0
WALL = 1_700_000_000.0


# --- random fleets, jobs and histories ---------------------------------------------------------------

@st.composite
def nodes(draw: st.DrawFn, name: str) -> NodeState | None:
    """One node as last observed (None: never probed); GPUs of random health."""
    status = draw(st.sampled_from([NODE_READY, NODE_READY, NODE_READY, NODE_UNREACHABLE, NODE_UNTRUSTED, None]))
    if status is None:
        return None
    health = draw(st.lists(st.booleans(), max_size=3))
    since = None if status == NODE_READY else NOW - draw(st.sampled_from([1.0, 10.0, 20.0, 600.0]))
    return NodeState(name, status=status, unreachable_since=since, cpus=draw(st.sampled_from([2, 4, 16])),
                     memory_total=16 * GIB, gpus_known=draw(st.booleans()) or bool(health),
                     gpus=tuple(GpuState(i, name="NVIDIA H100", is_healthy=ok) for i, ok in enumerate(health)))


@st.composite
def specs(draw: st.DrawFn, name: str) -> JobSpec:
    kind = draw(st.sampled_from(["service", "service", "batch", "system"]))
    gang = kind == "service" and draw(st.integers(0, 3)) == 0
    return JobSpec(
        name, ("run",), kind=kind, count=draw(st.integers(2 if gang else 0, 3)), gang=gang,
        env={"V": str(draw(st.integers(0, 1)))},
        resources=Resources(cpus=1, memory=GIB, gpus=draw(st.sampled_from([0, 0, 1]))),
        placement=Placement(distinct_hosts=gang),
        restart=RestartPolicy(attempts=draw(st.integers(1, 2))),
        reschedule=ReschedulePolicy(policy=draw(st.sampled_from(["reschedule", "reschedule", "wait"]))))


OBSERVATIONS = st.sampled_from(["none", "running", "running", "starting", "exit0", "exit1", "lost", "absent",
                                "stopped"])


def observation(alloc_id: str, kind: str) -> AllocationObservation | None:
    if kind == "none":
        return None
    if kind in ("running", "starting"):
        return AllocationObservation(alloc_id, kind, is_alive=True, pid=7, launches=1)
    if kind.startswith("exit"):
        return AllocationObservation(alloc_id, "exited", exit_code=int(kind[4:]), launches=1)
    return AllocationObservation(alloc_id, kind, launches=1)


@st.composite
def worlds(draw: st.DrawFn) -> tuple[dict[str, DesiredJob], ClusterSnapshot]:
    """Desired jobs and a snapshot: nodes of any status, cordons, drains, a node gone from the inventory,
    records in any state, what the nodes say about them, timers, launches, busy allocations, orphans."""
    names = [f"n{i}" for i in range(draw(st.integers(1, 5)))]
    states = {n: s for n in names if (s := draw(nodes(n))) is not None}
    hosts = [n for n in names if draw(st.integers(0, 7)) > 0]  # now and then one left the inventory
    jobs: dict[str, DesiredJob] = {}
    for job_name in ("a", "b", "c")[:draw(st.integers(1, 3))]:
        spec = draw(specs(job_name))
        jobs[job_name] = DesiredJob(spec, desired=draw(st.sampled_from([DESIRED_RUN] * 4 + [DESIRED_STOP])),
                                    restart_generation=draw(st.integers(0, 1)))
    seen: dict[str, dict[str, AllocationObservation]] = {n: {} for n in states}
    allocs: list[Allocation] = []
    timers: dict[str, AllocTimers] = {}
    launched: dict[str, int] = {}
    for k in range(draw(st.integers(0, 8))):
        job = jobs[draw(st.sampled_from(sorted(jobs)))].spec
        where = draw(st.sampled_from(names))
        state = states.get(where)
        gpus = (draw(st.integers(0, len(state.gpus) - 1)),) if state and state.gpus and job.resources.gpus else ()
        old = replace(job, env={"V": "old"})
        alloc = Allocation(
            f"{job.name}-{k}", job.name, where, index=draw(st.integers(0, 3)),
            job_version=allocation_version(draw(st.sampled_from([job, job, old]))), cpus=1, memory=GIB, gpus=gpus,
            desired_status=draw(st.sampled_from([DESIRED_RUN] * 3 + [DESIRED_STOP])),
            observed_status=draw(st.sampled_from(["pending", "starting", "running", "running", "exited", "complete",
                                                  "failed", "lost", "unknown", "stopped"])),
            generation=draw(st.integers(0, 1)), created_at=WALL - draw(st.integers(0, 100)))
        allocs.append(alloc)
        obs = observation(alloc.id, draw(OBSERVATIONS))
        if obs is not None and where in seen:
            seen[where][alloc.id] = obs
        timers[alloc.id] = AllocTimers(
            exit_seen_at=draw(st.sampled_from([None, NOW, NOW - 50])),
            restart_times=draw(st.sampled_from([(), (NOW - 5,), (NOW - 20, NOW - 10)])),
            running_since=draw(st.sampled_from([None, NOW - 1, NOW - 60])))
        launched[alloc.id] = draw(st.integers(0, 2))
    if draw(st.booleans()) and seen:  # a live directory no record owns
        seen[draw(st.sampled_from(sorted(seen)))]["x-9-orphan"] = AllocationObservation("x-9-orphan", "running",
                                                                                          is_alive=True)
    gpu_cordons = [f"{n}/{g.index}" for n, s in states.items() for g in s.gpus]
    snap = ClusterSnapshot(
        hosts={n: Host(n, address=n) for n in hosts},
        nodes={n: replace(s, allocations=seen[n]) for n, s in states.items()},
        allocations=tuple(allocs), launched=launched,
        cordoned=frozenset(draw(st.lists(st.sampled_from(names + gpu_cordons), max_size=2))),
        draining=frozenset(draw(st.lists(st.sampled_from(names), max_size=1))),
        timers=timers, busy=frozenset(draw(st.lists(st.sampled_from([a.id for a in allocs] or ["-"]), max_size=2))),
        wall=WALL)
    return jobs, snap


# --- applying a plan the way the executor and the nodes would ----------------------------------------


def apply(plan: Plan, snap: ClusterSnapshot, now: float) -> ClusterSnapshot:
    """The snapshot after every operation of the plan succeeded: launches run, stops stopped, marks kept."""
    records = {a.id: a for a in snap.allocations}
    seen = {n: dict(s.allocations) for n, s in snap.nodes.items()}
    launched, timers = dict(snap.launched), dict(snap.timers)

    def runs(alloc: Allocation, target: int) -> None:
        records[alloc.id] = replace(alloc, observed_status="running", exit_code=None)
        seen[alloc.node][alloc.id] = AllocationObservation(alloc.id, "running", is_alive=True, pid=8, launches=2)
        launched[alloc.id] = target
        timers[alloc.id] = replace(timers.get(alloc.id) or AllocTimers(), exit_seen_at=None, running_since=now)

    for alloc, _ in plan.marks:
        records[alloc.id] = alloc
    for item in plan.items:
        alloc, is_ready = item.alloc, snap.node(item.alloc.node).is_ready
        if item.action in (PLACE, START, RESTART) and is_ready:
            runs(alloc, item.target_generation)
            if item.action == RESTART and item.is_budgeted:
                before = timers[alloc.id]
                timers[alloc.id] = replace(before, restart_times=(*before.restart_times, now))
        elif item.action == STOP and is_ready:  # a failed record stays failed: its reschedule delay still counts
            records[alloc.id] = replace(alloc, observed_status="failed" if alloc.observed_status == "failed"
                                        else "stopped")
            seen[alloc.node][alloc.id] = AllocationObservation(alloc.id, "stopped", launches=1)
        elif item.action in (PLACE, STOP, LOST):  # committed before the node hears of it
            records[alloc.id] = alloc
    for node, alloc_id, *_ in plan.orphans:
        seen[node][alloc_id] = AllocationObservation(alloc_id, "stopped")
    return replace(snap, allocations=tuple(records.values()), launched=launched, timers=timers,
                   nodes={n: replace(s, allocations=seen[n]) for n, s in snap.nodes.items()})


def is_migrating(alloc: Allocation, snap: ClusterSnapshot) -> bool:
    """On a draining node or one gone from the inventory: kept until its replacement runs."""
    return alloc.node in snap.draining or alloc.node not in snap.hosts


def work(plan: Plan) -> list[str]:
    return [f"{i.action} {i.alloc.id}: {i.reason}" for i in plan.items if i.action != IGNORE]


# --- the properties -----------------------------------------------------------------------------------

PROPERTY = settings(max_examples=100, deadline=None)

# regressions found by these properties (see the table in test_reconcile.py for the readable forms)
GANG = JobSpec("a", ("run",), count=2, gang=True, resources=Resources(cpus=1, memory=GIB, gpus=1),
               placement=Placement(distinct_hosts=True), env={"V": "0"})
GPU_NODES = {n: NodeState(n, status=NODE_READY, cpus=4, memory_total=16 * GIB, gpus_known=True,
                          gpus=(GpuState(0, name="NVIDIA H100"),)) for n in ("n0", "n1", "n2", "n3")}
BUSY_GANG = (
    {"a": DesiredJob(GANG)},
    ClusterSnapshot(hosts={n: Host(n, address=n) for n in GPU_NODES},
                    nodes={**GPU_NODES, "n1": replace(GPU_NODES["n1"], status=NODE_UNREACHABLE,
                                                       unreachable_since=NOW - 600)},
                    allocations=(Allocation("a-0", "a", "n0", 0, allocation_version(GANG), 1, GIB, (0,),
                                            observed_status="running"),
                                 Allocation("a-1", "a", "n1", 1, allocation_version(GANG), 1, GIB, (0,),
                                            observed_status="running")),
                    busy=frozenset({"a-0"}), wall=WALL))
SICK_GPUS = (  # GPU 0 unhealthy, GPU 1 cordoned: only GPU 2 may be assigned
    {"a": DesiredJob(replace(GANG, gang=False, count=3))},
    ClusterSnapshot(hosts={"n0": Host("n0", address="n0")}, cordoned=frozenset({"n0/1"}), wall=WALL,
                    nodes={"n0": replace(GPU_NODES["n0"], gpus=(GpuState(0, is_healthy=False), GpuState(1),
                                                                GpuState(2)))}))
FAILED_GANG = (  # a member failed, its reschedule delay runs: no partial gang in the meantime
    BUSY_GANG[0],
    replace(BUSY_GANG[1], nodes=GPU_NODES, busy=frozenset(), timers={"a-1": AllocTimers(exit_seen_at=NOW - 5)},
            allocations=(BUSY_GANG[1].allocations[0],
                         replace(BUSY_GANG[1].allocations[1], observed_status="failed", desired_status=DESIRED_STOP))))


@PROPERTY
@given(world=worlds())
@example(world=BUSY_GANG)
def test_never_more_live_copies_than_the_count(world: tuple[dict[str, DesiredJob], ClusterSnapshot]) -> None:
    jobs, snap = world
    plan = reconcile(jobs, snap, NOW)
    after = apply(plan, snap, NOW)
    placed = {i.alloc.id for i in plan.bucket(PLACE)}
    for name, job in jobs.items():
        live = [a for a in after.allocations if a.job == name and occupies(a, job.spec) and not is_migrating(a, snap)
                and not (job.spec.is_system and a.observed_status == "complete")]  # a system job's slot is a node
        slots: dict[object, list[Allocation]] = {}
        for a in live:  # a slot is an index, or a node for a system job
            slots.setdefault(a.node if job.spec.is_system else a.index, []).append(a)
        for slot, copies in slots.items():
            # busy copies are left alone this pass; of the others at most one stays, and nothing new joins them
            assert len([a for a in copies if a.id not in snap.busy]) <= 1, f"{name} at {slot}: {work(plan)}"
            new = [a for a in copies if a.id in placed]
            assert not new or len(copies) == 1, f"{name} placed beside a live copy at {slot}: {work(plan)}"
        if not job.spec.is_system:
            extra = [a for a in live if a.index >= job.spec.count and a.id not in snap.busy]
            assert not extra, f"{name} keeps indices past its count {job.spec.count}: {extra}"
        if job.desired == DESIRED_STOP:
            assert not [i for i in plan.bucket(PLACE) if i.job == name], "a stopped job placed"


@PROPERTY
@given(world=worlds())
@example(world=SICK_GPUS)
def test_placements_only_on_ready_schedulable_nodes_and_healthy_free_gpus(
        world: tuple[dict[str, DesiredJob], ClusterSnapshot]) -> None:
    jobs, snap = world
    plan = reconcile(jobs, snap, NOW)
    after = apply(plan, snap, NOW)
    for item in plan.bucket(PLACE):
        alloc, state = item.alloc, snap.node(item.alloc.node)
        assert alloc.node in snap.hosts and state.is_ready, f"placed on {alloc.node} ({state.status})"
        assert alloc.node not in snap.cordoned and alloc.node not in snap.draining
        healthy = {g.index for g in state.gpus if g.is_healthy} if state.gpus_known else set()
        assert set(alloc.gpus) <= healthy, f"GPUs {alloc.gpus} on {alloc.node}: healthy {healthy}"
        assert not {f"{alloc.node}/{g}" for g in alloc.gpus} & snap.cordoned
        held = [g for a in after.allocations if a.node == alloc.node and a.holds_resources and a.id != alloc.id
                for g in a.gpus]
        assert not set(alloc.gpus) & set(held), f"GPU of {alloc.id} also held by another allocation"
        assert len(alloc.gpus) == jobs[item.job].spec.resources.gpus


@PROPERTY
@given(world=worlds())
@example(world=FAILED_GANG)
def test_items_name_existing_allocations_and_places_new_ones(
        world: tuple[dict[str, DesiredJob], ClusterSnapshot]) -> None:
    jobs, snap = world
    plan = reconcile(jobs, snap, NOW)
    known = {a.id for a in snap.allocations}
    placed = [i.alloc.id for i in plan.bucket(PLACE)]
    assert len(placed) == len(set(placed)) and not set(placed) & known
    for item in plan.items:
        if item.action != PLACE:
            assert item.alloc.id in known, f"{item.action} names {item.alloc.id}, which has no record"
        assert item.job == item.alloc.job
    acting = Counter(i.alloc.id for i in plan.items if i.action != IGNORE)
    assert all(n == 1 for n in acting.values()), f"two operations on one allocation: {work(plan)}"
    assert not [i for i in plan.items if i.alloc.id in snap.busy and i.action != IGNORE], "a busy allocation acted on"
    for name, job in jobs.items():
        members = [i for i in plan.bucket(PLACE) if i.job == name]
        if job.spec.gang and members:
            assert sorted(i.alloc.index for i in members) == list(range(job.spec.count)), "a partial gang"
            assert {i.env["WORLD_SIZE"] for i in members} == {str(job.spec.count)}


@PROPERTY
@given(world=worlds())
@example(world=BUSY_GANG)
def test_after_the_plan_is_applied_nothing_is_left_to_do(world: tuple[dict[str, DesiredJob], ClusterSnapshot]) -> None:
    jobs, snap = world
    first = reconcile(jobs, snap, NOW)
    after = apply(first, snap, NOW)
    second = reconcile(jobs, after, NOW)
    if any(is_migrating(a, snap) for a in snap.allocations):
        # a drain takes two passes: the replacement runs, then the old copy stops
        second = reconcile(jobs, apply(second, after, NOW), NOW)
    assert not work(second), f"first: {work(first)}\nsecond: {work(second)}"
    assert not second.marks, [f"{a.id} {a.observed_status}: {r}" for a, r in second.marks]


@settings(max_examples=50, deadline=None)
@given(world=worlds())
def test_a_pass_is_deterministic(world: tuple[dict[str, DesiredJob], ClusterSnapshot]) -> None:
    jobs, snap = world
    assert reconcile(jobs, snap, NOW) == reconcile(jobs, snap, NOW)
