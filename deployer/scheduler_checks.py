"""The scheduler's read-only cluster view and its feasibility checks, each returning None or a reason.

Checks come in two kinds. Node checks look at facts that do not change while one job is placed
(readiness, cordons, datacenter, constraints, GPU models); they run once per node per job, cheapest
first. Capacity checks look at what is still free (cpus, memory, GPUs, ports, the job's own
allocations) and run against a node's working `Free` state, which shrinks as allocations land on it.
A GPU node check names the model, memory or health only when that is what stands in the way; a node
with too few GPUs at all is "short of GPUs". Every reason is phrased to follow "N nodes are ..." or
"N nodes have ..." (see VERBS).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from fnmatch import fnmatchcase

from deployer.models import (
    EMPTY,
    GANG_PORT,
    NODE_UNKNOWN,
    NODE_UNREACHABLE,
    NODE_UNTRUSTED,
    Allocation,
    Constraint,
    Host,
    JobSpec,
    NodeState,
    Port,
)
from deployer.units import format_size

GIB = 1024**3


@dataclass(frozen=True)
class NodeView:
    """One node as the scheduler sees it: its host, last observation and what allocations leave free."""

    name: str
    host: Host | None
    state: NodeState
    is_cordoned: bool = False
    is_draining: bool = False
    cpus_free: float = 0.0
    memory_free: int = 0
    gpus_free: tuple[int, ...] = ()  # healthy, not cordoned, not held by an allocation; ascending
    gpus_held: int = 0  # GPU indices held by allocations
    ports_used: frozenset[int] = frozenset()
    jobs: Mapping[str, int] = field(default_factory=lambda: EMPTY)  # job name -> allocations here


@dataclass(frozen=True)
class Cluster:
    """A read-only view of the fleet for placement: one NodeView per node, in name order."""

    views: tuple[NodeView, ...] = ()

    @classmethod
    def build(cls, hosts: Mapping[str, Host], nodes: Mapping[str, NodeState],
              allocations: Iterable[Allocation], cordoned: frozenset[str] = frozenset(),
              draining: frozenset[str] = frozenset()) -> Cluster:
        """Count what allocations holding resources leave free on every node.

        `cordoned` holds node names, or "node/index" for a single cordoned GPU.
        """
        held: dict[str, list[Allocation]] = {}
        for alloc in allocations:
            if alloc.holds_resources:
                held.setdefault(alloc.node, []).append(alloc)
        names = sorted(set(hosts) | set(nodes))
        return cls(tuple(_view(name, hosts.get(name), nodes.get(name) or NodeState(name),
                               held.get(name, []), cordoned, draining) for name in names))

    @property
    def names(self) -> tuple[str, ...]:
        """Node names in order."""
        return tuple(v.name for v in self.views)


def _view(name: str, host: Host | None, state: NodeState, allocs: list[Allocation],
          cordoned: frozenset[str], draining: frozenset[str]) -> NodeView:
    held_gpus = {g for a in allocs for g in a.gpus}
    jobs: dict[str, int] = {}
    for a in allocs:
        jobs[a.job] = jobs.get(a.job, 0) + 1
    free_gpus = tuple(sorted(g.index for g in state.gpus if g.is_healthy and g.index not in held_gpus
                             and f"{name}/{g.index}" not in cordoned))
    return NodeView(
        name=name, host=host, state=state, is_cordoned=name in cordoned, is_draining=name in draining,
        cpus_free=(state.cpus or 0) - sum(a.cpus for a in allocs),
        memory_free=(state.memory_total or 0) - sum(a.memory for a in allocs),
        gpus_free=free_gpus if state.gpus_known else (), gpus_held=len(held_gpus),
        ports_used=frozenset(p for a in allocs for p in a.ports.values()), jobs=jobs)


# --- what one job needs ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Need:
    """One allocation's demand, derived from a job spec once per placement call."""

    job: str
    cpus: float
    memory: int
    gpus: int
    gpu_model: str | None
    gpu_memory: int | None
    ports: tuple[Port, ...]
    is_distinct: bool

    @classmethod
    def of(cls, job: JobSpec) -> Need:
        """The demand of one allocation of job (a gang always gets its master port)."""
        ports = job.ports
        if job.gang and GANG_PORT not in {p.name for p in ports}:
            ports = (*ports, Port(GANG_PORT))
        r = job.resources
        return cls(job.name, r.cpus, r.memory, r.gpus, r.gpu_model, r.gpu_memory, ports,
                   job.placement.distinct_hosts)

    @property
    def static_ports(self) -> tuple[int, ...]:
        """The fixed port numbers the job asks for."""
        return tuple(p.port for p in self.ports if p.port is not None)

    def gpu_words(self) -> str:
        """"2 x *H100*" or "2"."""
        return f"{self.gpus} x {self.gpu_model}" if self.gpu_model else str(self.gpus)

    def gpu_fits(self, index: int, view: NodeView) -> bool:
        """True when GPU index of the node has the model and memory the job asks for."""
        gpu = next((g for g in view.state.gpus if g.index == index), None)
        return gpu is not None and _model_ok(self, gpu.name) and _memory_ok(self, gpu.memory_total)


def _model_ok(need: Need, name: str | None) -> bool:
    return need.gpu_model is None or (name is not None and fnmatchcase(name, need.gpu_model))


def _memory_ok(need: Need, total: int | None) -> bool:
    return need.gpu_memory is None or (total is not None and total >= need.gpu_memory)


# --- node checks: facts that do not change while a job is placed ----------------------------------


def check_ready(need: Need, view: NodeView) -> str | None:
    """The node is in the inventory, answered its last probe and its host key is trusted."""
    if view.host is None:
        return "not in the inventory"
    status = view.state.status
    if view.state.is_ready:
        return None
    return {NODE_UNREACHABLE: "unreachable", NODE_UNTRUSTED: "untrusted",
            NODE_UNKNOWN: "not probed yet"}.get(status, status)


def check_schedulable(need: Need, view: NodeView) -> str | None:
    """The node is neither cordoned nor draining."""
    return "cordoned" if view.is_cordoned else "draining" if view.is_draining else None


def check_datacenter(need: Need, view: NodeView, datacenters: tuple[str, ...] = ()) -> str | None:
    """The node's datacenter is one the job allows (bound per job in node_checks)."""
    assert view.host is not None
    if datacenters and view.host.datacenter not in datacenters:
        return f"outside datacenters [{', '.join(datacenters)}]"
    return None


def constraint_value(constraint: Constraint, host: Host) -> str | None:
    """The host attribute a constraint compares: rack, datacenter, host name or a label."""
    if constraint.attribute == "label":
        return host.labels.get(constraint.label)
    return {"rack": host.rack, "datacenter": host.datacenter, "host": host.name}.get(constraint.attribute)


def check_constraints(need: Need, view: NodeView, constraints: tuple[Constraint, ...] = ()) -> str | None:
    """Every placement constraint allows the node's host."""
    assert view.host is not None
    for c in constraints:
        if not c.allows(constraint_value(c, view.host)):
            return f"failing constraint {c.describe()}"
    return None


def check_gpus_known(need: Need, view: NodeView) -> str | None:
    """A GPU job needs a node whose GPUs were probed."""
    if need.gpus and not view.state.gpus_known:
        return f"GPUs unknown: {view.state.gpu_reason or 'not reported'}"
    return None


def check_gpu_model(need: Need, view: NodeView) -> str | None:
    """Enough GPUs match the model glob, when the node has enough GPUs at all."""
    gpus = view.state.gpus
    if need.gpus and need.gpu_model and len(gpus) >= need.gpus > sum(_model_ok(need, g.name) for g in gpus):
        return f"fewer than {need.gpus} GPUs matching {need.gpu_model}"
    return None


def check_gpu_memory(need: Need, view: NodeView) -> str | None:
    """Enough GPUs of the model have the memory the job asks for."""
    if not need.gpus or need.gpu_memory is None:
        return None
    matching = [g for g in view.state.gpus if _model_ok(need, g.name)]
    if len(matching) >= need.gpus > sum(_memory_ok(need, g.memory_total) for g in matching):
        return f"fewer than {need.gpus} GPUs with {format_size(need.gpu_memory)} memory"
    return None


def check_gpu_health(need: Need, view: NodeView) -> str | None:
    """Enough fitting GPUs are healthy (an unhealthy GPU is never assigned)."""
    if not need.gpus:
        return None
    fitting = [g for g in view.state.gpus if _model_ok(need, g.name) and _memory_ok(need, g.memory_total)]
    if len(fitting) >= need.gpus > sum(g.is_healthy for g in fitting):
        return f"fewer than {need.gpus} healthy GPUs"
    return None


NodeCheck = Callable[[Need, NodeView], "str | None"]


def node_checks(job: JobSpec) -> tuple[tuple[str, NodeCheck], ...]:
    """The node checks that can fail for job, named, cheapest first."""
    dcs, constraints = job.placement.datacenters, job.placement.constraints
    checks: list[tuple[str, NodeCheck]] = [("ready", check_ready), ("schedulable", check_schedulable)]
    if dcs:
        checks.append(("datacenter", lambda n, v: check_datacenter(n, v, dcs)))
    if constraints:
        checks.append(("constraints", lambda n, v: check_constraints(n, v, constraints)))
    if job.resources.gpus:
        checks += [("gpus_known", check_gpus_known), ("gpu_model", check_gpu_model),
                   ("gpu_memory", check_gpu_memory), ("gpu_health", check_gpu_health)]
    return tuple(checks)


# --- capacity checks: what is still free while a job is placed ---------------------------------------


class Free:
    """A node's free capacity while one job is placed; shrinks as allocations land on it."""

    __slots__ = ("cpus", "cursor", "gpus", "has_other_gpus", "jobs_here", "memory", "name", "ports", "touched")

    def __init__(self, view: NodeView, need: Need, port_start: int) -> None:
        self.name = view.name
        self.cpus = view.cpus_free
        self.memory = view.memory_free
        plain = need.gpu_model is None and need.gpu_memory is None
        self.gpus = [i for i in view.gpus_free if plain or need.gpu_fits(i, view)]
        self.has_other_gpus = bool(view.gpus_free)
        self.touched = view.gpus_held > 0
        self.ports = set(view.ports_used)
        self.cursor = port_start
        self.jobs_here = view.jobs.get(need.job, 0)


def check_cpus(need: Need, free: Free) -> str | None:
    """Enough cpus are free."""
    return f"short of cpus (need {need.cpus:g})" if free.cpus + 1e-9 < need.cpus else None


def check_memory(need: Need, free: Free) -> str | None:
    """Enough memory is free."""
    return f"short of memory (need {format_size(need.memory)})" if free.memory < need.memory else None


def check_gpu_count(need: Need, free: Free) -> str | None:
    """Enough fitting GPUs are free."""
    return f"short of GPUs (need {need.gpu_words()})" if len(free.gpus) < need.gpus else None


def check_ports(need: Need, free: Free) -> str | None:
    """The job's static ports are free (dynamic ones are picked, or found lacking, at assignment)."""
    for port in need.static_ports:
        if port in free.ports:
            return f"port {port} in use"
    return None


def check_distinct(need: Need, free: Free) -> str | None:
    """With distinct hosts, the node runs no allocation of the job yet."""
    return f"already running {need.job}" if need.is_distinct and free.jobs_here else None


CapacityCheck = Callable[[Need, Free], "str | None"]
CAPACITY_CHECKS: tuple[tuple[str, CapacityCheck], ...] = (
    ("distinct_hosts", check_distinct), ("cpus", check_cpus), ("memory", check_memory),
    ("gpus", check_gpu_count), ("ports", check_ports))
RESOURCES = ("cpus", "memory", "gpus", "ports")
CHECK_ORDER = ("ready", "schedulable", "datacenter", "constraints", "gpus_known", "gpu_model", "gpu_memory",
               "gpu_health", *(name for name, _ in CAPACITY_CHECKS))  # the checks whose failure means a resource ran out

# How a reason follows a count in a sentence: "3 are unreachable", "1 has GPUs unknown: ...".
VERBS = {"gpus_known": ("has", "have"), "gpu_model": ("has", "have"), "gpu_memory": ("has", "have"),
         "gpu_health": ("has", "have")}


def phrase(check: str, reason: str, nodes: int) -> str:
    """ "3 are unreachable" for check "ready", reason "unreachable" and 3 nodes."""
    singular, plural = VERBS.get(check, ("is", "are"))
    return f"{nodes} {singular if nodes == 1 else plural} {reason}"


__all__ = [
    "CAPACITY_CHECKS", "CHECK_ORDER", "RESOURCES", "Cluster", "Free", "Need", "NodeView", "check_constraints", "check_cpus",
    "check_datacenter", "check_distinct", "check_gpu_count", "check_gpu_health", "check_gpu_memory",
    "check_gpu_model", "check_gpus_known", "check_memory", "check_ports", "check_ready", "check_schedulable",
    "constraint_value", "node_checks", "phrase",
]
