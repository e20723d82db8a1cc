"""Placement: feasibility checks and their reasons, GPU and port choice, ranking, gangs, failures."""

from __future__ import annotations

from typing import Any

import pytest

from deployer.models import (
    DESIRED_STOP,
    NODE_READY,
    NODE_UNREACHABLE,
    NODE_UNTRUSTED,
    Allocation,
    Constraint,
    GpuState,
    Host,
    JobSpec,
    NodeState,
    Placement,
    Port,
    Resources,
)
from deployer.scheduler import (
    Cluster,
    PlacementFailure,
    PlacementResult,
    place,
    place_system,
)
from deployer.scheduler_checks import phrase

GIB = 1024**3


def gpus(n: int, name: str = "NVIDIA H100 80GB HBM3", memory: int = 80 * GIB, unhealthy: tuple[int, ...] = ()
         ) -> tuple[GpuState, ...]:
    return tuple(GpuState(i, name=name, memory_total=memory, is_healthy=i not in unhealthy) for i in range(n))


def node(name: str, *, status: str = NODE_READY, cpus: int = 8, memory: int = 32 * GIB,
         gpu_list: tuple[GpuState, ...] = (), gpus_known: bool = True, gpu_reason: str | None = None) -> NodeState:
    return NodeState(name, status=status, cpus=cpus, memory_total=memory, gpus=gpu_list, gpus_known=gpus_known,
                     gpu_reason=gpu_reason)


def host(name: str, **kw: Any) -> Host:
    return Host(name, address=f"10.0.0.{int(name[-1]) if name[-1].isdigit() else 100 + ord(name[-1]) % 150}", **kw)


def cluster(*states: NodeState, hosts: dict[str, Host] | None = None, allocs: tuple[Allocation, ...] = (),
            cordoned: frozenset[str] = frozenset(), draining: frozenset[str] = frozenset()) -> Cluster:
    hosts = hosts if hosts is not None else {s.name: host(s.name) for s in states}
    return Cluster.build(hosts, {s.name: s for s in states}, allocs, cordoned, draining)


def job(name: str = "web", *, cpus: float = 1, memory: int = GIB, gpus_: int = 0, model: str | None = None,
        gpu_memory: int | None = None, ports: tuple[Port, ...] = (), **kw: Any) -> JobSpec:
    res = Resources(cpus=cpus, memory=memory, gpus=gpus_, gpu_model=model, gpu_memory=gpu_memory)
    return JobSpec(name, ("run",), resources=res, ports=ports, **kw)


def only_reason(result: Any) -> str:
    failure = result.failure
    assert failure is not None
    assert len(failure.node_reasons) == 1
    return str(next(iter(failure.node_reasons.values())))


# --- every check filters, with its reason ------------------------------------------------------------

CHECK_CASES = [
    ("an unreachable node is skipped", cluster(node("a", status=NODE_UNREACHABLE)), job(), "ready: unreachable"),
    ("an untrusted node is skipped", cluster(node("a", status=NODE_UNTRUSTED)), job(), "ready: untrusted"),
    ("a node never probed is skipped", cluster(hosts={"a": host("a")}), job(), "ready: not probed yet"),
    ("a node missing from the inventory is skipped", cluster(node("a"), hosts={}), job(),
     "ready: not in the inventory"),
    ("a cordoned node is skipped", cluster(node("a"), cordoned=frozenset({"a"})), job(), "schedulable: cordoned"),
    ("a draining node is skipped", cluster(node("a"), draining=frozenset({"a"})), job(), "schedulable: draining"),
    ("a node in another datacenter is skipped", cluster(node("a"), hosts={"a": host("a", datacenter="us")}),
     job(placement=Placement(datacenters=("eu",))), "datacenter: outside datacenters [eu]"),
    ("a node failing a label constraint is skipped",
     cluster(node("a"), hosts={"a": host("a", labels={"zone": "b"})}),
     job(placement=Placement(constraints=(Constraint("label", "in", ("a",), label="zone"),))),
     "constraints: failing constraint label zone in [a]"),
    ("a node failing a rack constraint is skipped", cluster(node("a"), hosts={"a": host("a", rack="r1")}),
     job(placement=Placement(constraints=(Constraint("rack", "not_in", ("r1",)),))),
     "constraints: failing constraint rack not in [r1]"),
    ("a node failing a host constraint is skipped", cluster(node("a")),
     job(placement=Placement(constraints=(Constraint("host", "in", ("b",)),))),
     "constraints: failing constraint host in [b]"),
    ("a node without enough cpus is skipped", cluster(node("a", cpus=2)), job(cpus=4),
     "cpus: short of cpus (need 4)"),
    ("a node without enough memory is skipped", cluster(node("a", memory=GIB)), job(memory=2 * GIB),
     "memory: short of memory (need 2GiB)"),
    ("a node without enough GPUs is skipped", cluster(node("a", gpu_list=gpus(1))), job(gpus_=2),
     "gpus: short of GPUs (need 2)"),
    ("a node whose GPUs are unknown takes no GPU job",
     cluster(node("a", gpus_known=False, gpu_reason="NVIDIA driver not loaded")), job(gpus_=1),
     "gpus_known: GPUs unknown: NVIDIA driver not loaded"),
    ("a node with the wrong GPU model is skipped", cluster(node("a", gpu_list=gpus(4, name="NVIDIA A100"))),
     job(gpus_=1, model="*H100*"), "gpu_model: fewer than 1 GPUs matching *H100*"),
    ("a node with too little GPU memory is skipped", cluster(node("a", gpu_list=gpus(4, memory=40 * GIB))),
     job(gpus_=1, gpu_memory=80 * GIB), "gpu_memory: fewer than 1 GPUs with 80GiB memory"),
    ("a node whose fitting GPUs are unhealthy is skipped", cluster(node("a", gpu_list=gpus(2, unhealthy=(0, 1)))),
     job(gpus_=1), "gpu_health: fewer than 1 healthy GPUs"),
    ("a node whose static port is taken is skipped",
     cluster(node("a"), allocs=(Allocation("x", "other", "a", ports={"http": 8080}),)),
     job(ports=(Port("http", 8080),)), "ports: port 8080 in use"),
    ("a node already running a distinct job is skipped",
     cluster(node("a"), allocs=(Allocation("x", "web", "a"),)),
     job(placement=Placement(distinct_hosts=True)), "distinct_hosts: already running web"),
]


@pytest.mark.parametrize("state, spec, reason", [c[1:] for c in CHECK_CASES], ids=[c[0] for c in CHECK_CASES])
def test_each_check_filters_a_node_with_its_reason(state: Cluster, spec: JobSpec, reason: str) -> None:
    result = place(spec, 1, state)
    assert result.assignments == ()
    assert only_reason(result) == reason


@pytest.mark.parametrize("spec", [job(), job(gpus_=1, model="*H100*", gpu_memory=80 * GIB, ports=(Port("p", 9),))],
                         ids=["a plain job fits a plain node", "a GPU job fits a node with the right GPUs"])
def test_a_node_passing_every_check_takes_the_job(spec: JobSpec) -> None:
    result = place(spec, 1, cluster(node("a", gpu_list=gpus(1))))
    assert result.failure is None and [a.node for a in result.assignments] == ["a"]


def test_stopped_allocations_hold_nothing() -> None:
    held = Allocation("x", "old", "a", cpus=8, desired_status=DESIRED_STOP)
    assert place(job(cpus=8), 1, cluster(node("a"), allocs=(held,))).failure is None


# --- GPUs ---------------------------------------------------------------------------------------------


def test_gpu_indices_are_never_assigned_twice_across_placements() -> None:
    state = cluster(node("a", gpu_list=gpus(4)))
    first = place(job("one", gpus_=2), 1, state).assignments
    assert [a.gpus for a in first] == [(0, 1)]
    allocs = tuple(Allocation(f"one-{i}", "one", a.node, gpus=a.gpus) for i, a in enumerate(first))
    second = place(job("two", gpus_=2), 1, cluster(node("a", gpu_list=gpus(4)), allocs=allocs)).assignments
    assert [a.gpus for a in second] == [(2, 3)]
    within = place(job("three", gpus_=1), 4, state).assignments
    assert sorted(g for a in within for g in a.gpus) == [0, 1, 2, 3]


def test_unhealthy_and_cordoned_gpus_are_never_assigned() -> None:
    state = cluster(node("a", gpu_list=gpus(4, unhealthy=(1,))), cordoned=frozenset({"a/2"}))
    result = place(job(gpus_=1), 3, state)
    assert [a.gpus for a in result.assignments] == [(0,), (3,)]
    assert result.failure is not None and result.failure.exhausted == {"gpus": 1}


def test_the_gpu_model_glob_picks_matching_gpus_only() -> None:
    mixed = (GpuState(0, name="NVIDIA A100"), GpuState(1, name="NVIDIA H100"))
    assert place(job(gpus_=1, model="*H100*"), 1, cluster(node("a", gpu_list=mixed))).assignments[0].gpus == (1,)


def test_bin_packing_prefers_a_node_whose_gpus_are_partly_used() -> None:
    used = (Allocation("x", "other", "b", gpus=(0,)),)
    state = cluster(node("a", gpu_list=gpus(8)), node("b", gpu_list=gpus(8)), node("c", gpu_list=gpus(8)),
                    allocs=used)
    result = place(job(gpus_=2), 3, state)
    assert [(a.node, a.gpus) for a in result.assignments] == [("b", (1, 2)), ("b", (3, 4)), ("b", (5, 6))]


def test_plain_jobs_keep_off_gpu_nodes_when_they_can() -> None:
    state = cluster(node("a", gpu_list=gpus(8)), node("b"))
    assert [a.node for a in place(job(), 1, state).assignments] == ["b"]


# --- spread, distinct hosts, ties -------------------------------------------------------------------


def test_spread_over_racks_balances_allocations() -> None:
    hosts = {n: host(n, rack=r) for n, r in [("a1", "r1"), ("a2", "r1"), ("b1", "r2"), ("c1", "r3")]}
    state = cluster(*(node(n) for n in hosts), hosts=hosts)
    result = place(job(placement=Placement(spread="rack")), 6, state)
    racks = [hosts[a.node].rack for a in result.assignments]
    assert sorted(racks.count(r) for r in ("r1", "r2", "r3")) == [2, 2, 2]


def test_spread_counts_allocations_already_running() -> None:
    hosts = {n: host(n, datacenter=d) for n, d in [("a1", "eu"), ("b1", "us")]}
    state = cluster(node("a1"), node("b1"), hosts=hosts, allocs=(Allocation("x", "web", "a1"),))
    assert [a.node for a in place(job(placement=Placement(spread="datacenter")), 1, state).assignments] == ["b1"]


def test_distinct_hosts_puts_one_allocation_per_node() -> None:
    state = cluster(node("a"), node("b"), node("c"))
    result = place(job(placement=Placement(distinct_hosts=True)), 3, state)
    assert sorted(a.node for a in result.assignments) == ["a", "b", "c"]
    short = place(job(placement=Placement(distinct_hosts=True)), 4, state)
    assert len(short.assignments) == 3 and short.failure is not None
    assert short.failure.sentence() == "3/3 nodes fit web (placed 3 of 4): no nodes"


def test_the_same_input_gives_the_same_output() -> None:
    def state() -> Cluster:
        return cluster(*(node(n, gpu_list=gpus(4)) for n in "dcba"))
    runs = [place(job(gpus_=1, ports=(Port("http"),)), 7, state()) for _ in range(3)]
    assert runs[0] == runs[1] == runs[2]
    assert runs[0].assignments[0].node == "a"  # ties go by node name


# --- ports ------------------------------------------------------------------------------------------


def test_dynamic_ports_are_unique_per_node_and_skip_used_ones() -> None:
    state = cluster(node("a", cpus=64), allocs=(Allocation("x", "other", "a", ports={"p": 20000}),))
    result = place(job(cpus=1, ports=(Port("http"), Port("admin"))), 3, state)
    chosen = [p for a in result.assignments for p in a.ports.values()]
    assert sorted(chosen) == list(range(20001, 20007))


def test_dynamic_ports_run_out_with_a_reason() -> None:
    result = place(job(ports=(Port("http"),)), 3, cluster(node("a")), port_range=(30000, 30002))
    assert len(result.assignments) == 2
    assert only_reason(result) == "ports: no free port in 30000-30001"


def test_a_static_port_fits_once_per_node() -> None:
    result = place(job(ports=(Port("http", 8080),)), 2, cluster(node("a"), node("b")))
    assert sorted(a.node for a in result.assignments) == ["a", "b"]
    assert all(a.ports == {"http": 8080} for a in result.assignments)


def test_hosts_on_one_machine_share_its_ports() -> None:
    local = cluster(node("a"), node("b"), hosts={n: host(n, connection="local") for n in "ab"})
    result = place(job(ports=(Port("http"),)), 2, local)
    assert sorted(a.node for a in result.assignments) == ["a", "b"]
    assert len({a.ports["http"] for a in result.assignments}) == 2, "two local nodes are one machine"
    static = place(job(ports=(Port("http", 8080),)), 2, local)
    assert len(static.assignments) == 1 and static.failure is not None


# --- gangs ------------------------------------------------------------------------------------------


def gang(count: int = 3) -> JobSpec:
    return job("trainer", gpus_=1, count=count, gang=True, placement=Placement(distinct_hosts=True))


def test_a_gang_is_placed_all_or_nothing_and_the_failure_says_why() -> None:
    state = cluster(node("a1", gpu_list=gpus(1)), node("a2", gpu_list=gpus(1)), node("a3", status=NODE_UNREACHABLE))
    result = place(gang(), 3, state)
    assert result.assignments == ()
    assert result.failure is not None and result.failure.placed == 0
    assert result.failure.sentence() == "2/3 nodes fit trainer (gang of 3, nothing placed): 1 is unreachable"


def test_gang_members_get_rank_world_size_and_the_master_address_and_port() -> None:
    state = cluster(*(node(f"n{i}", gpu_list=gpus(2)) for i in range(1, 4)))
    result = place(gang(), 3, state)
    assert [a.node for a in result.assignments] == ["n1", "n2", "n3"]
    master_port = result.assignments[0].ports["master"]
    for rank, a in enumerate(result.assignments):
        assert a.rank == rank
        assert a.env == {"RANK": str(rank), "WORLD_SIZE": "3", "MASTER_ADDR": "10.0.0.1",
                         "MASTER_PORT": str(master_port)}


# --- failures in one sentence ------------------------------------------------------------------------


def test_the_failure_sentence_counts_nodes_per_reason_most_first() -> None:
    states = [node(f"g{i}") for i in range(7)] + [node(f"u{i}", status=NODE_UNREACHABLE) for i in range(3)]
    states += [node("c1"), node("c2")]
    result = place(job("webapp", gpus_=2, model="*H100*"), 1,
                   cluster(*states, cordoned=frozenset({"c1", "c2"})))
    failure = result.failure
    assert isinstance(failure, PlacementFailure)
    assert failure.sentence() == ("0/12 nodes fit webapp: 7 are short of GPUs (need 2 x *H100*), "
                                  "3 are unreachable, 2 are cordoned")
    assert failure.by_check == {"gpus": 7, "ready": 3, "schedulable": 2}
    assert failure.exhausted == {"gpus": 7}
    assert failure.nodes_evaluated == 12 and failure.node_reasons["u0"] == "ready: unreachable"


@pytest.mark.parametrize("check, reason, nodes, text", [
    ("ready", "unreachable", 1, "1 is unreachable"),
    ("gpus_known", "GPUs unknown: driver not loaded", 2, "2 have GPUs unknown: driver not loaded"),
    ("cpus", "short of cpus (need 2)", 3, "3 are short of cpus (need 2)"),
], ids=["one node reads singular", "GPU reasons take have", "resources read as shortages"])
def test_reasons_read_after_a_count(check: str, reason: str, nodes: int, text: str) -> None:
    assert phrase(check, reason, nodes) == text


# --- system jobs and arguments -------------------------------------------------------------------------


def test_a_system_job_goes_once_on_every_feasible_node_not_running_it() -> None:
    state = cluster(node("a"), node("b"), node("c", status=NODE_UNREACHABLE), node("d", cpus=0),
                    allocs=(Allocation("x", "agent", "a"),))
    result = place_system(job("agent", kind="system"), state)
    assert [(a.node, a.index) for a in result.assignments] == [("b", 0)]
    assert result.failure is None


def test_a_system_job_nowhere_to_go_says_why() -> None:
    result = place_system(job("agent", kind="system"), cluster(node("a", status=NODE_UNREACHABLE)))
    assert result.failure is not None and result.failure.sentence() == "0/1 nodes fit agent: 1 is unreachable"


def test_indices_are_given_to_assignments_in_order() -> None:
    result = place(job(), 2, cluster(node("a")), indices=[3, 5])
    assert [a.index for a in result.assignments] == [3, 5]
    with pytest.raises(ValueError, match="1 indices for 2 allocations"):
        place(job(), 2, cluster(node("a")), indices=[1])


def test_placing_nothing_succeeds() -> None:
    assert place(job(), 0, cluster(node("a"))) == PlacementResult()
