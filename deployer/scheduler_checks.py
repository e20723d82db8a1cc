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

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from fnmatch import fnmatchcase
from functools import lru_cache

from deployer.models import (
    EMPTY,
    GANG_PORT,
    NODE_UNKNOWN,
    NODE_UNREACHABLE,
    NODE_UNTRUSTED,
    Allocation,
    Constraint,
    GpuState,
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
        # "node/index" entries match f"{name}/{index}" only for name == the part before the last "/"
        gpu_cordons = {entry.rsplit("/", 1)[0] for entry in cordoned if "/" in entry}
        views = [_view(name, hosts.get(name), nodes.get(name) or NodeState(name), held.get(name, ()),
                       cordoned, draining, name in gpu_cordons) for name in names]
        return cls(tuple(_share_ports(views)))

    @property
    def names(self) -> tuple[str, ...]:
        """Node names in order."""
        return tuple(v.name for v in self.views)


def machine(host: Host | None) -> str | None:
    """What a host's ports belong to: hosts with one address (or every local host) are one machine."""
    if host is None:
        return None
    return "local" if host.is_local else host.address


def _share_ports(views: list[NodeView]) -> list[NodeView]:
    """Inventory names that reach the same machine share its port space (inventory/local.yaml's two
    nodes are one machine: a port taken on one is taken on the other)."""
    by_machine: dict[str, list[int]] = {}
    for i, view in enumerate(views):
        key = machine(view.host)
        if key is not None:
            by_machine.setdefault(key, []).append(i)
    for members in by_machine.values():
        if len(members) > 1:
            used = frozenset().union(*(views[i].ports_used for i in members))
            for i in members:
                views[i] = replace(views[i], ports_used=used)
    return views


def _view(name: str, host: Host | None, state: NodeState, allocs: Sequence[Allocation],
          cordoned: frozenset[str], draining: frozenset[str], has_gpu_cordons: bool) -> NodeView:
    # one pass over the node's allocations; Cluster.build runs once per pass over every node
    held_gpus: set[int] = set()
    jobs: dict[str, int] = {}
    ports: list[int] = []
    for a in allocs:
        if a.gpus:
            held_gpus.update(a.gpus)
        jobs[a.job] = jobs.get(a.job, 0) + 1
        if a.ports:
            ports.extend(a.ports.values())
    free_gpus: list[int] = []
    if state.gpus_known:
        free_gpus = [g.index for g in state.gpus if g.is_healthy and g.index not in held_gpus
                     and not (has_gpu_cordons and f"{name}/{g.index}" in cordoned)]
        free_gpus.sort()
    return NodeView(
        name=name, host=host, state=state, is_cordoned=name in cordoned, is_draining=name in draining,
        cpus_free=(state.cpus or 0) - sum([a.cpus for a in allocs]),
        memory_free=(state.memory_total or 0) - sum([a.memory for a in allocs]),
        gpus_free=tuple(free_gpus), gpus_held=len(held_gpus), ports_used=frozenset(ports), jobs=jobs)


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

    def fitting_gpus(self, view: NodeView) -> list[int]:
        """The node's free GPU indices that fit (`gpu_fits`) the job, ascending."""
        if self.gpu_model is None and self.gpu_memory is None:
            return list(view.gpus_free)
        first = {g.index: g for g in reversed(view.state.gpus)}  # the first GPU with an index, as gpu_fits
        return [g.index for g in _fitting(self, [first[i] for i in view.gpus_free if i in first])]


@lru_cache(maxsize=4096)
def _matches(name: str, pattern: str) -> bool:
    # a fleet has few GPU names and jobs few globs, while checks ask once per GPU, node and job
    return fnmatchcase(name, pattern)


def _model_ok(need: Need, name: str | None) -> bool:
    return need.gpu_model is None or (name is not None and _matches(name, need.gpu_model))


def _memory_ok(need: Need, total: int | None) -> bool:
    return need.gpu_memory is None or (total is not None and total >= need.gpu_memory)


# The node checks run once per node and job, so these filter a node's GPUs in one comprehension each.
def _matching(need: Need, gpus: Iterable[GpuState]) -> list[GpuState]:
    """The GPUs whose name matches the job's model glob (all of them when it names none), in order."""
    pattern = need.gpu_model
    if pattern is None:
        return list(gpus)
    return [g for g in gpus if g.name is not None and _matches(g.name, pattern)]


def _fitting(need: Need, gpus: Iterable[GpuState]) -> list[GpuState]:
    """The GPUs of the model and memory the job asks for, in order."""
    matching = _matching(need, gpus)
    return matching if need.gpu_memory is None else [g for g in matching if _memory_ok(need, g.memory_total)]


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
    if need.gpus and need.gpu_model and len(gpus) >= need.gpus > len(_matching(need, gpus)):
        return f"fewer than {need.gpus} GPUs matching {need.gpu_model}"
    return None


def check_gpu_memory(need: Need, view: NodeView) -> str | None:
    """Enough GPUs of the model have the memory the job asks for."""
    if not need.gpus or need.gpu_memory is None:
        return None
    matching = _matching(need, view.state.gpus)
    if len(matching) >= need.gpus > sum(_memory_ok(need, g.memory_total) for g in matching):
        return f"fewer than {need.gpus} GPUs with {format_size(need.gpu_memory)} memory"
    return None


def check_gpu_health(need: Need, view: NodeView) -> str | None:
    """Enough fitting GPUs are healthy (an unhealthy GPU is never assigned)."""
    if not need.gpus:
        return None
    fitting = _fitting(need, view.state.gpus)
    if len(fitting) >= need.gpus > sum([g.is_healthy for g in fitting]):
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
    res = job.resources
    if res.gpus:
        checks.append(("gpus_known", check_gpus_known))
        if res.gpu_model:
            checks.append(("gpu_model", check_gpu_model))
        if res.gpu_memory is not None:
            checks.append(("gpu_memory", check_gpu_memory))
        checks.append(("gpu_health", check_gpu_health))
    return tuple(checks)


# --- capacity checks: what is still free while a job is placed ---------------------------------------


class Free:
    """A node's free capacity while one job is placed; shrinks as allocations land on it."""

    __slots__ = ("cpus", "cursor", "gpus", "has_other_gpus", "jobs_here", "memory", "name", "ports", "touched")

    def __init__(self, view: NodeView, need: Need, port_start: int,
                 machines: dict[str, set[int]] | None = None) -> None:
        self.name = view.name
        self.cpus = view.cpus_free
        self.memory = view.memory_free
        self.gpus = need.fitting_gpus(view)
        self.has_other_gpus = bool(view.gpus_free)
        self.touched = view.gpus_held > 0
        self.ports = set(view.ports_used)
        key = machine(view.host)
        if machines is not None and key is not None:  # one port space per machine, within one placement
            self.ports = machines.setdefault(key, self.ports)
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
