"""Placement: which nodes take a job's new allocations, with which GPUs and ports, or why none can.

Pure, like Nomad's scheduler: a read-only `Cluster` in, a `PlacementResult` out, nothing read from a
clock or the network.

    nodes --node checks (once per job)--> candidates --rank (heap)--> best node
          --capacity checks--> assign GPUs, ports --> node re-ranked with what is left

A node that fails a check is counted under that check's name and reason; when allocations are missing
the counts become a `PlacementFailure` whose `sentence()` says why ("0/12 nodes fit webapp: ...").

Ranking, best first: least loaded spread domain (rack or datacenter) when the job asks for spread;
then for GPU jobs bin-packing (nodes whose GPUs are partly used before untouched ones, then fewest free
fitting GPUs), for other jobs fewest allocations of the same job, nodes without free GPUs, fewest free
cpus; ties by node name. Before all of that (within a spread domain), nodes in `avoid` rank last: where
the allocations being replaced failed, like Nomad's node reschedule penalty (a service that spent its
restart budget on a node moves elsewhere when another node fits). Capacity only shrinks while a job is
placed, so a node that fails a capacity check is dropped for the rest of the call, and each placement
costs O(log nodes).
"""

from __future__ import annotations

import heapq
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from deployer.models import (
    EMPTY,
    ENV_MASTER_ADDR,
    ENV_MASTER_PORT,
    ENV_RANK,
    ENV_WORLD_SIZE,
    GANG_PORT,
    JobSpec,
)
from deployer.scheduler_checks import (
    CAPACITY_CHECKS,
    CHECK_ORDER,
    RESOURCES,
    Cluster,
    Free,
    Need,
    NodeView,
    node_checks,
    phrase,
)

PORT_RANGE = (20000, 32000)  # dynamic ports, low inclusive, high exclusive


@dataclass(frozen=True)
class Assignment:
    """One new allocation: its node, index, the GPU indices and ports chosen, and gang env extras."""

    node: str
    index: int
    gpus: tuple[int, ...] = ()
    ports: Mapping[str, int] = field(default_factory=lambda: EMPTY)
    rank: int | None = None
    env: Mapping[str, str] = field(default_factory=lambda: EMPTY)


@dataclass(frozen=True)
class Filtered:
    """How many nodes one check filtered, for one reason."""

    check: str
    reason: str
    nodes: int


@dataclass(frozen=True)
class PlacementFailure:
    """Why allocations of a job are missing: what each check filtered, what ran out, node by node."""

    job: str
    wanted: int
    placed: int
    nodes_evaluated: int
    nodes_fit: int  # nodes that took at least one allocation in this attempt
    filtered: tuple[Filtered, ...] = ()  # most nodes first
    node_reasons: Mapping[str, str] = field(default_factory=lambda: EMPTY)  # node -> "check: reason"
    is_gang: bool = False

    @property
    def by_check(self) -> dict[str, int]:
        """Nodes filtered per check name ("Constraint X filtered N nodes")."""
        out: dict[str, int] = {}
        for f in self.filtered:
            out[f.check] = out.get(f.check, 0) + f.nodes
        return out

    @property
    def exhausted(self) -> dict[str, int]:
        """Nodes per resource that ran out (cpus, memory, gpus, ports)."""
        return {check: n for check, n in self.by_check.items() if check in RESOURCES}

    def sentence(self) -> str:
        """One line for `flex status`: "0/12 nodes fit webapp: 7 are short of GPUs (need 2 x *H100*), ..."."""
        head = f"{self.nodes_fit}/{self.nodes_evaluated} nodes fit {self.job}"
        if self.is_gang:
            head += f" (gang of {self.wanted}, nothing placed)"
        elif self.placed:
            head += f" (placed {self.placed} of {self.wanted})"
        reasons = ", ".join(phrase(f.check, f.reason, f.nodes) for f in self.filtered)
        return f"{head}: {reasons}" if reasons else f"{head}: no nodes"


@dataclass(frozen=True)
class PlacementResult:
    """The assignments made, and the failure when fewer than asked for were placed."""

    assignments: tuple[Assignment, ...] = ()
    failure: PlacementFailure | None = None

    @property
    def is_complete(self) -> bool:
        """True when every allocation asked for was placed."""
        return self.failure is None


class _Tally:
    """Counts filtered nodes per (check, reason) and remembers each node's reason."""

    def __init__(self) -> None:
        self.counts: dict[tuple[str, str], int] = {}
        self.nodes: dict[str, str] = {}

    def add(self, check: str, reason: str, node: str) -> None:
        self.counts[(check, reason)] = self.counts.get((check, reason), 0) + 1
        self.nodes[node] = f"{check}: {reason}"

    def filtered(self) -> tuple[Filtered, ...]:
        rows = sorted(self.counts.items(), key=lambda kv: (-kv[1], CHECK_ORDER.index(kv[0][0]), kv[0][1]))
        return tuple(Filtered(check, reason, n) for (check, reason), n in rows)


def _candidates(job: JobSpec, need: Need, cluster: Cluster, tally: _Tally) -> list[NodeView]:
    """The nodes passing every node check; the others are tallied under their first failing check."""
    checks = node_checks(job)
    out = []
    for view in cluster.views:
        for name, check in checks:
            reason = check(need, view)
            if reason is not None:
                tally.add(name, reason, view.name)
                break
        else:
            out.append(view)
    return out


class _Ranker:
    """Ranking keys for one job (lower is better) and the load of each spread domain."""

    def __init__(self, job: JobSpec, need: Need, cluster: Cluster, avoid: frozenset[str] = frozenset()) -> None:
        self.need = need
        self.avoid = avoid
        self.spread = job.placement.spread
        self.load: dict[str, int] = {}
        if self.spread:
            for view in cluster.views:
                dom = self.domain(view)
                self.load[dom] = self.load.get(dom, 0) + view.jobs.get(job.name, 0)

    def domain(self, view: NodeView) -> str:
        """The rack or datacenter the job spreads over ("" without spread, or when unset)."""
        host = view.host
        if not self.spread or host is None:
            return ""
        return (host.rack if self.spread == "rack" else host.datacenter) or ""

    def key(self, free: Free) -> tuple[object, ...]:
        """Bin-pack GPUs; otherwise avoid the job's own nodes and GPU nodes, then pack cpus."""
        if self.need.gpus:
            return (free.name in self.avoid, not free.touched, len(free.gpus), free.name)
        return (free.name in self.avoid, free.jobs_here, free.has_other_gpus, free.cpus, free.name)

    def view_key(self, view: NodeView) -> tuple[object, ...]:
        """The same key as `key`, from a node nothing was placed on yet."""
        if self.need.gpus:
            return (view.name in self.avoid, view.gpus_held == 0, len(self.need.fitting_gpus(view)), view.name)
        return (view.name in self.avoid, view.jobs.get(self.need.job, 0), bool(view.gpus_free), view.cpus_free,
                view.name)


def _pick_ports(need: Need, free: Free, port_range: tuple[int, int]) -> dict[str, int] | None:
    """Static ports as given, dynamic ones the lowest free in port_range; None when it runs out."""
    chosen: dict[str, int] = {}
    taken = set(need.static_ports)
    cursor = free.cursor
    for port in need.ports:
        if port.port is not None:
            chosen[port.name] = port.port
            continue
        while cursor < port_range[1] and (cursor in free.ports or cursor in taken):
            cursor += 1
        if cursor >= port_range[1]:
            return None
        chosen[port.name] = cursor
        taken.add(cursor)
    free.cursor = cursor
    return chosen


def _take(need: Need, free: Free, ports: dict[str, int]) -> tuple[int, ...]:
    """Subtract one allocation from free; returns the GPU indices it gets (lowest first)."""
    gpus = tuple(free.gpus[:need.gpus])
    del free.gpus[:need.gpus]
    free.cpus -= need.cpus
    free.memory -= need.memory
    free.ports.update(ports.values())
    free.jobs_here += 1
    free.touched = free.touched or bool(gpus)
    return gpus


def _first_failing(need: Need, free: Free) -> tuple[str, str] | None:
    for name, check in CAPACITY_CHECKS:
        reason = check(need, free)
        if reason is not None:
            return name, reason
    return None


Pick = tuple[str, tuple[int, ...], dict[str, int]]  # node, GPU indices, ports


def _assign(job: JobSpec, need: Need, count: int, cluster: Cluster, port_range: tuple[int, int],
            tally: _Tally, avoid: frozenset[str] = frozenset()) -> list[Pick]:
    """Up to count picks: from the least loaded spread domain, its best ranked node."""
    ranker = _Ranker(job, need, cluster, avoid)
    pools: dict[str, list[tuple[tuple[object, ...], str, NodeView]]] = {}
    for view in _candidates(job, need, cluster, tally):
        pools.setdefault(ranker.domain(view), []).append((ranker.view_key(view), view.name, view))
    for pool in pools.values():
        heapq.heapify(pool)
    # domains by (load, key of their best node), ties to the first seen; only the domain picked from
    # changes, so it alone is re-queued: O(log domains) per pick instead of a scan of every domain
    domains = [(ranker.load.get(dom, 0), pool[0][0], seen, dom) for seen, (dom, pool) in enumerate(pools.items())]
    heapq.heapify(domains)
    frees: dict[str, Free] = {}
    machines: dict[str, set[int]] = {}
    picks: list[Pick] = []
    while domains and len(picks) < count:
        seen, dom = domains[0][2:]
        pool = pools[dom]
        _, name, view = heapq.heappop(pool)
        free = frees.get(name) or frees.setdefault(name, Free(view, need, port_range[0], machines))
        pick = _try(need, free, port_range, tally)
        if pick is not None:
            picks.append(pick)
            if ranker.spread:
                ranker.load[dom] = ranker.load.get(dom, 0) + 1
            if not need.is_distinct:
                heapq.heappush(pool, (ranker.key(free), name, view))
        if pool:
            heapq.heapreplace(domains, (ranker.load.get(dom, 0), pool[0][0], seen, dom))
        else:
            heapq.heappop(domains)
    return picks


def _try(need: Need, free: Free, port_range: tuple[int, int], tally: _Tally) -> Pick | None:
    """One allocation on the node when every capacity check passes, else tally why not."""
    failing = _first_failing(need, free)
    ports = None if failing else _pick_ports(need, free, port_range)
    if ports is None:
        check, reason = failing or ("ports", f"no free port in {port_range[0]}-{port_range[1] - 1}")
        tally.add(check, reason, free.name)
        return None
    return free.name, _take(need, free, ports), ports


def place(job: JobSpec, count: int, cluster: Cluster, *, indices: Sequence[int] | None = None,
          port_range: tuple[int, int] = PORT_RANGE, avoid: frozenset[str] = frozenset()) -> PlacementResult:
    """Place count new allocations of job (indices 0..count-1 unless given); a gang all or nothing.
    Nodes in avoid are ranked last (a reschedule away from where the replaced allocations failed).

    Raises:
        ValueError: indices given but not count of them.
    """
    wanted = list(range(count)) if indices is None else list(indices)
    if len(wanted) != count:
        raise ValueError(f"{len(wanted)} indices for {count} allocations")
    need, tally = Need.of(job), _Tally()
    picks = _assign(job, need, count, cluster, port_range, tally, avoid) if count else []
    assignments = _gang(job, picks, wanted, cluster) if job.gang else tuple(
        Assignment(node, index, gpus, ports) for (node, gpus, ports), index in zip(picks, wanted))
    if len(picks) == count:
        return PlacementResult(assignments)
    failure = PlacementFailure(
        job.name, count, 0 if job.gang else len(picks), len(cluster.views), len({p[0] for p in picks}),
        tally.filtered(), tally.nodes, job.gang)
    return PlacementResult(() if job.gang else assignments, failure)


def _gang(job: JobSpec, picks: list[Pick], indices: list[int],
          cluster: Cluster) -> tuple[Assignment, ...]:
    """Members with RANK, WORLD_SIZE and rank 0's address and master port."""
    if not picks:
        return ()
    hosts = {v.name: v.host for v in cluster.views}
    master_host = hosts[picks[0][0]]
    base = {ENV_WORLD_SIZE: str(len(picks)),
            ENV_MASTER_ADDR: master_host.address if master_host else picks[0][0],
            ENV_MASTER_PORT: str(picks[0][2][GANG_PORT])}
    return tuple(Assignment(node, index, gpus, ports, rank, {**base, ENV_RANK: str(rank)})
                 for rank, ((node, gpus, ports), index) in enumerate(zip(picks, indices)))


def place_system(job: JobSpec, cluster: Cluster, *, port_range: tuple[int, int] = PORT_RANGE) -> PlacementResult:
    """One allocation of a system job on every feasible node not running it yet (indices unused: 0).

    The failure is set only when no node runs the job and none can take it.
    """
    need, tally = Need.of(job), _Tally()
    candidates = _candidates(job, need, cluster, tally)
    assignments = []
    running = 0
    machines: dict[str, set[int]] = {}
    for view in candidates:
        free = Free(view, need, port_range[0], machines)
        if free.jobs_here:
            running += 1
            continue
        pick = _try(need, free, port_range, tally)
        if pick is not None:
            assignments.append(Assignment(pick[0], 0, pick[1], pick[2]))
    if assignments or running:
        return PlacementResult(tuple(assignments))
    return PlacementResult((), PlacementFailure(job.name, 1, 0, len(cluster.views), 0, tally.filtered(),
                                                tally.nodes))


__all__ = ["PORT_RANGE", "Assignment", "Cluster", "Filtered", "PlacementFailure", "PlacementResult", "place",
           "place_system"]
