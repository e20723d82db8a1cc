"""`flex status [INVENTORY]`: jobs, allocations and nodes as the state database has them (no SSH).

What the controller last wrote, shown without asking any node: the controller holding the lease, each
job with running/wanted allocations and why some cannot be placed, each allocation with the latest
event of one that is not running (crash loops, exits), and each node with its operator flags.

The exit status is scriptable, like `nomad status`: 0 when every job desired running has all its
allocations running (batch jobs: running or complete), 1 otherwise.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from typing import TYPE_CHECKING, Any

from deployer.commands import add_inventory_arguments, emit, emit_json, open_store, state_path
from deployer.commands.events import local_time

if TYPE_CHECKING:
    from deployer.models import Allocation
    from deployer.store import JobRecord, Lease, NodeRecord, Store

FINISHED = ("stopped", "complete", "failed", "lost")  # an allocation in one of these runs nothing
REASON_WINDOW = 5000  # how many of the latest events are searched for an allocation's reason
EPILOG = ("Exit status: 0 when every job desired running has all its allocations running (batch jobs: "
          "running or complete), 1 otherwise, 2 bad input, 4 state database. Reads the state database "
          "only: what the controller last observed.")


@dataclass(frozen=True)
class JobSummary:
    """One row of the JOBS table: a job's allocations counted, and whether it is as desired."""

    name: str
    kind: str
    desired: str
    running: int
    wanted: int
    failed: int
    restarts: int
    health: str
    is_ok: bool
    pending: str | None = None
    next_run: str | None = None  # cron jobs: when the schedule fires next (local time)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of `flex status`."""
    add_inventory_arguments(parser)
    parser.add_argument("--all", action="store_true", help="also list stopped and finished allocations")
    parser.epilog = EPILOG


def run(args: argparse.Namespace) -> int:
    """Show the state; exit 0 when every job desired running is fully running, 1 otherwise."""
    store: Store
    with open_store(args) as store:
        jobs, allocs, nodes = store.jobs(), store.allocations(), store.nodes()
        pending = store.job_statuses()
        cron = store.cron_times()
        reasons = latest_messages(store.events(after_seq=max(0, store.last_event_seq() - REASON_WINDOW),
                                               limit=REASON_WINDOW))
        lease = store.lease_holder(time.time())
    path = state_path(args.inventory, args.state)
    summaries = [summarize(job, [a for a in allocs if a.job == job.name], pending.get(job.name)) for job in jobs]
    summaries = [replace(s, next_run=local_time(nxt)) if (nxt := cron.get(s.name, (None, None))[1]) else s
                 for s in summaries]
    if args.json:
        emit_json(status_json(path, lease, summaries, allocs, reasons, nodes))
    else:
        lines = render_header(path, lease)
        if not jobs:
            lines += ["", f"no jobs yet: `flex push {args.inventory}`"]
        else:
            lines += ["", *render_jobs(summaries), "", *render_allocations(allocs, reasons, show_all=args.all)]
        if nodes:
            lines += ["", *render_nodes(nodes, allocs)]
        for line in lines:
            emit(line)
    return 0 if all(s.is_ok for s in summaries) else 1


def latest_messages(events: Sequence[Any]) -> dict[str, str]:
    """Allocation id -> 'kind: message' of its latest event (events oldest first)."""
    return {e.alloc: f"{e.kind}: {e.message}" for e in events if e.alloc}


def summarize(job: JobRecord, allocs: Sequence[Allocation], pending: str | None) -> JobSummary:
    """A job's row: allocations desired running counted by what was observed, and its health."""
    kind = str(job.spec.get("kind") or "service")
    is_batch = kind == "batch"
    live = [a for a in allocs if a.desired_status == "run"]
    running = sum(a.observed_status == "running" for a in live)
    done = running + sum(is_batch and a.observed_status == "complete" for a in live)
    # system jobs run one per eligible node and cron jobs only when due: what is placed is what is wanted
    wanted = len(live) if kind == "system" or job.spec.get("schedule") else int(job.spec.get("count") or 1)
    is_ok = job.desired != "run" or (done == len(live) and done >= wanted)
    return JobSummary(name=job.name, kind=kind, desired=job.desired, running=running, wanted=wanted,
                      failed=sum(a.observed_status == "failed" for a in allocs),
                      restarts=sum(a.restarts for a in allocs), is_ok=is_ok, pending=pending,
                      health=job_health(job.desired, is_ok, running, live, pending, is_batch))


def job_health(desired: str, is_ok: bool, running: int, live: Sequence[Allocation], pending: str | None,
               is_batch: bool) -> str:
    """One word for a job: stopped, stopping, healthy, complete, starting, pending, degraded or down."""
    if desired != "run":
        return "stopping" if running else "stopped"
    if is_ok:
        return "complete" if is_batch and live and not running else "healthy"
    if any(a.observed_status == "failed" for a in live):
        return "degraded" if running else "down"
    if any(a.observed_status in ("pending", "starting") for a in live):
        return "starting"
    if pending and not running:
        return "pending"
    return "degraded" if running else "down"


def render_header(path: str, lease: Lease | None) -> list[str]:
    """The state file and the controller holding the lease (or none)."""
    controller = "no controller running" if lease is None else \
        f"{lease.owner} (pid {lease.pid} on {lease.hostname}) since {local_time(lease.acquired_at)}"
    return [f"state:      {path}", f"controller: {controller}"]


def render_jobs(summaries: Sequence[JobSummary]) -> list[str]:
    """The JOBS table; a job's pending reason on the line below it, indented."""
    lines = [f"{'JOB':<24} {'KIND':<8} {'DESIRED':<7} {'RUNNING':>7} {'FAILED':>6} {'RESTARTS':>8}  HEALTH"]
    for s in summaries:
        lines.append(f"{s.name:<24} {s.kind:<8} {s.desired:<7} {f'{s.running}/{s.wanted}':>7} {s.failed:>6} "
                     f"{s.restarts:>8}  {s.health}")
        if s.pending:
            lines.append(f"  pending: {s.pending}")
        if s.next_run:
            lines.append(f"  next run: {s.next_run}")
    return lines


def render_allocations(allocs: Sequence[Allocation], reasons: Mapping[str, str], *,
                       show_all: bool = False) -> list[str]:
    """The ALLOCATIONS table; under one not running, its latest event (the controller's reason)."""
    shown = [a for a in allocs if show_all or is_current(a)]
    lines = [f"{'ALLOCATION':<24} {'JOB':<20} {'NODE':<12} {'IDX':>3} {'DESIRED':<7} {'OBSERVED':<9} "
             f"{'RESTARTS':>8} {'EXIT':>4}  {'GPUS':<7} PORTS"]
    for a in shown:
        lines.append(_allocation_row(a))
        if a.observed_status != "running" and a.id in reasons:
            lines.append(f"  {reasons[a.id]}")
    if not shown:
        lines.append("(none)")
    hidden = len(allocs) - len(shown)
    if hidden:
        lines.append(f"({hidden} stopped or finished allocation{'s' if hidden > 1 else ''} hidden: --all lists them)")
    return lines


def is_current(alloc: Allocation) -> bool:
    """True unless the allocation is desired stopped and runs nothing any more (history)."""
    return alloc.desired_status == "run" or alloc.observed_status not in FINISHED


def _allocation_row(a: Allocation) -> str:
    gpus = ",".join(str(g) for g in a.gpus) or "-"
    ports = " ".join(f"{name}={port}" for name, port in sorted(a.ports.items())) or "-"
    exit_code = "-" if a.exit_code is None else str(a.exit_code)
    return (f"{a.id:<24} {a.job:<20} {a.node:<12} {a.index:>3} {a.desired_status:<7} {a.observed_status:<9} "
            f"{a.restarts:>8} {exit_code:>4}  {gpus:<7} {ports}")


def render_nodes(nodes: Sequence[NodeRecord], allocs: Sequence[Allocation]) -> list[str]:
    """The NODES table: last observed state, operator flags, allocations holding resources there."""
    lines = [f"{'NODE':<20} {'STATE':<12} {'ALLOCS':>6}  FLAGS"]
    for node in nodes:
        count = sum(a.node == node.name and a.holds_resources for a in allocs)
        lines.append(f"{node.name:<20} {node_status(node):<12} {count:>6}  {', '.join(node_flags(node)) or '-'}")
        error = (node.last_state or {}).get("error")
        if error and node_status(node) != "ready":
            text = str(error).splitlines()
            lines.append(f"  {text[0]}")
            # an untrusted host key says how to fix it: keep that line (never auto-accepted, F18)
            lines += [f"  {line.strip()}" for line in text[1:] if line.strip().startswith("fix:")]
    return lines


def node_status(node: NodeRecord) -> str:
    """The node's last observed status (ready, unreachable, untrusted), 'unknown' before any probe."""
    return str((node.last_state or {}).get("status") or "unknown")


def node_flags(node: NodeRecord) -> list[str]:
    """The operator's flags on a node: cordoned, draining, GPUs cordoned."""
    flags = [name for name, on in (("cordoned", node.cordoned), ("draining", node.draining)) if on]
    if node.cordoned_gpus:
        flags.append("gpus " + ",".join(str(g) for g in node.cordoned_gpus) + " cordoned")
    return flags


def status_json(path: str, lease: Lease | None, summaries: Sequence[JobSummary], allocs: Sequence[Allocation],
                reasons: Mapping[str, str], nodes: Sequence[NodeRecord]) -> dict[str, Any]:
    """The --json document: state, controller, jobs, allocations, nodes, as plain JSON values."""
    from deployer.models import normalized

    return {
        "state": path,
        "controller": None if lease is None else asdict(lease),
        "jobs": [asdict(s) for s in summaries],
        "allocations": [{**normalized(a), "last_event": reasons.get(a.id)} for a in allocs],
        "nodes": [{**normalized(n), "status": node_status(n),
                   "allocations": sum(a.node == n.name and a.holds_resources for a in allocs)} for n in nodes],
    }
