"""Placement invariants over random fleets: only ready, schedulable nodes; never more than is free."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from deployer.models import (
    NODE_READY,
    NODE_UNKNOWN,
    NODE_UNREACHABLE,
    NODE_UNTRUSTED,
    Allocation,
    GpuState,
    Host,
    JobSpec,
    NodeState,
    Placement,
    Port,
    Resources,
)
from deployer.scheduler import Cluster, PlacementResult, place

GIB = 1024**3
STATUSES = st.sampled_from([NODE_READY, NODE_READY, NODE_READY, NODE_UNREACHABLE, NODE_UNTRUSTED, NODE_UNKNOWN])


@st.composite
def fleets(draw: st.DrawFn) -> tuple[Cluster, dict[str, NodeState], tuple[Allocation, ...], frozenset[str]]:
    """A random fleet: nodes of any status, some cordoned, GPUs some unhealthy, allocations holding things."""
    states: dict[str, NodeState] = {}
    allocs: list[Allocation] = []
    for i in range(draw(st.integers(1, 6))):
        name = f"n{i}"
        health = draw(st.lists(st.booleans(), max_size=4))
        states[name] = NodeState(name, status=draw(STATUSES), cpus=draw(st.integers(0, 8)),
                                 memory_total=draw(st.integers(0, 8)) * GIB, gpus_known=draw(st.booleans()),
                                 gpus=tuple(GpuState(j, name="H100", is_healthy=ok) for j, ok in enumerate(health)))
        for k in range(draw(st.integers(0, 2))):
            held = draw(st.lists(st.sampled_from(range(len(health))), unique=True, max_size=2)) if health else []
            allocs.append(Allocation(f"{name}-{k}", "other", name, cpus=draw(st.integers(0, 3)),
                                     memory=draw(st.integers(0, 3)) * GIB, gpus=tuple(held),
                                     ports={"p": 20000 + k}))
    cordoned = frozenset(draw(st.lists(st.sampled_from(sorted(states)), max_size=2)))
    hosts = {n: Host(n, address=n, rack=f"r{int(n[1:]) % 2}") for n in states}
    return Cluster.build(hosts, states, allocs, cordoned), states, tuple(allocs), cordoned


jobs = st.builds(
    lambda cpus, mem, gpus, distinct, spread, gang, ports: JobSpec(
        "web", ("run",), gang=gang, resources=Resources(cpus=cpus, memory=mem * GIB, gpus=gpus),
        placement=Placement(distinct_hosts=distinct, spread=spread), ports=tuple(Port(f"p{i}") for i in range(ports))),
    st.sampled_from([0.5, 1.0, 2.0]), st.integers(0, 2), st.integers(0, 2), st.booleans(),
    st.sampled_from([None, "rack"]), st.booleans(), st.integers(0, 2))


def new_use(result: PlacementResult, spec: JobSpec) -> dict[str, tuple[float, int, list[int]]]:
    """Per node: the cpus, memory and GPU indices the new assignments take."""
    out: dict[str, tuple[float, int, list[int]]] = {}
    for a in result.assignments:
        cpus, memory, gpus = out.get(a.node, (0.0, 0, []))
        out[a.node] = (cpus + spec.resources.cpus, memory + spec.resources.memory, gpus + list(a.gpus))
    return out


@settings(max_examples=150, deadline=None)
@given(fleet=fleets(), spec=jobs, count=st.integers(1, 6))
def test_placements_respect_readiness_cordons_and_capacity(
        fleet: tuple[Cluster, dict[str, NodeState], tuple[Allocation, ...], frozenset[str]], spec: JobSpec,
        count: int) -> None:
    cluster, states, allocs, cordoned = fleet
    result = place(spec, count, cluster)
    assert len(result.assignments) <= count
    if spec.gang:
        assert len(result.assignments) in (0, count)
    for name, (cpus, memory, new_gpus) in new_use(result, spec).items():
        state = states[name]
        assert state.is_ready and name not in cordoned, "never a placement on an unready or cordoned node"
        mine = [a for a in allocs if a.node == name]
        assert cpus <= (state.cpus or 0) - sum(a.cpus for a in mine) + 1e-9, "cpus over capacity"
        assert memory <= (state.memory_total or 0) - sum(a.memory for a in mine), "memory over capacity"
        held = {g for a in mine for g in a.gpus}
        healthy_free = {g.index for g in state.gpus if g.is_healthy} - held
        assert len(new_gpus) == len(set(new_gpus)), "a GPU index assigned twice"
        assert set(new_gpus) <= healthy_free, "a GPU assigned that is unhealthy or held"
        assert not new_gpus or state.gpus_known
    for a in result.assignments:
        ports = [p for b in result.assignments if b.node == a.node for p in b.ports.values()]
        assert len(ports) == len(set(ports)), "a port chosen twice on one node"
    if len(result.assignments) < count:
        assert result.failure is not None and result.failure.sentence()


@settings(max_examples=50, deadline=None)
@given(fleet=fleets(), spec=jobs, count=st.integers(0, 6))
def test_placement_is_deterministic(
        fleet: tuple[Cluster, dict[str, NodeState], tuple[Allocation, ...], frozenset[str]], spec: JobSpec,
        count: int) -> None:
    assert place(spec, count, fleet[0]) == place(spec, count, fleet[0])
