"""`flex plan [INVENTORY] [SPEC...]`: what `flex push` would change, changing nothing (`nomad job plan`).

Each job is compared with the state database: new, changed (which top-level spec keys differ),
unchanged, or stopped and started again by a push. For the jobs a push would (re)place, a placement
preview runs the real scheduler against the node states the controller last recorded; it asks no node
and writes nothing, not even a new state database. Exit 0 no change, 1 changes, 2 bad input.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

from deployer.commands import add_inventory_arguments, emit, emit_json, state_path

if TYPE_CHECKING:
    from deployer.models import Allocation, Inventory, JobSpec, NodeState
    from deployer.scheduler import Assignment, Cluster
    from deployer.store import JobRecord, NodeRecord

NEW, CHANGED, UNCHANGED, STARTED_AGAIN = "new", "changed", "unchanged", "started again"  # as `flex push` says
MARKS = {NEW: "+", CHANGED: "~", UNCHANGED: "=", STARTED_AGAIN: "+"}
VALUE_WIDTH = 60  # a diff value longer than this is cut in the human output


@dataclass(frozen=True)
class KeyDiff:
    """One top-level spec key whose value differs between the stored version and the file."""

    key: str
    before: Any
    after: Any


@dataclass(frozen=True)
class Preview:
    """Where a push would place a job's allocations now, or why it cannot (or cannot say)."""

    assignments: tuple[Assignment, ...] = ()
    failure: str | None = None
    note: str | None = None


@dataclass(frozen=True)
class JobPlan:
    """One job's line of the plan: its change, the spec keys that differ, and the placement preview."""

    name: str
    kind: str
    change: str
    version: str
    previous_version: str | None = None
    diff: tuple[KeyDiff, ...] = ()
    preview: Preview | None = None

    @property
    def is_change(self) -> bool:
        """True when `flex push` would write this job."""
        return self.change != UNCHANGED


@dataclass(frozen=True)
class StoredState:
    """What the plan reads from the state database: jobs by name, node records, allocations."""

    jobs: Mapping[str, JobRecord]
    nodes: tuple[NodeRecord, ...] = ()
    allocations: tuple[Allocation, ...] = ()
    exists: bool = True


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of `flex plan`."""
    add_inventory_arguments(parser)
    parser.add_argument("specs", nargs="*", metavar="SPEC", help="job spec files (default: the inventory's "
                        "flex_playbooks)")
    parser.epilog = ("Exit status (like `nomad job plan`): 0 no change, 1 changes, 2 bad input, 4 state database. "
                     "Writes nothing; the placement preview uses the node states the controller last recorded.")


def run(args: argparse.Namespace) -> int:
    """Print what a push would change; exit 0 when nothing, 1 when something would change."""
    from deployer.commands.push import _load
    from deployer.inventory import load_inventory

    inventory = load_inventory(args.inventory)
    jobs, _ = _load(inventory, args.specs)
    path = state_path(args.inventory, args.state)
    state = read_state(path)
    plans = [plan_job(job, state.jobs.get(job.name), inventory, state) for job in jobs]
    if args.json:
        emit_json(plan_json(path, state, plans))
    else:
        for line in render_plan(path, state, plans, args.inventory, args.specs):
            emit(line)
    return 1 if any(p.is_change for p in plans) else 0


def read_state(path: str) -> StoredState:
    """The jobs, nodes and allocations of the state database at path; empty when there is none yet
    (the file is not created: a plan writes nothing)."""
    from deployer.store import Store

    if not Path(path).exists():
        return StoredState(jobs={}, exists=False)
    with Store.open(path) as store:
        return StoredState({r.name: r for r in store.jobs()}, tuple(store.nodes()), tuple(store.allocations()))


# --- the pure part: compare, diff, preview ---------------------------------------------------------------


def classify(job: JobSpec, record: JobRecord | None) -> str:
    """What `flex push` would call the job: new, changed, unchanged or started again."""
    if record is None:
        return NEW
    if record.version != job.fingerprint:
        return CHANGED
    return UNCHANGED if record.desired == "run" else STARTED_AGAIN


def spec_diff(before: Mapping[str, Any], after: Mapping[str, Any]) -> tuple[KeyDiff, ...]:
    """The top-level keys whose values differ between two normalized specs, in key order."""
    keys = sorted(set(before) | set(after))
    return tuple(KeyDiff(k, before.get(k), after.get(k)) for k in keys if before.get(k) != after.get(k))


def plan_job(job: JobSpec, record: JobRecord | None, inventory: Inventory, state: StoredState) -> JobPlan:
    """One job's plan: its change against the stored record, the key diff, and a placement preview."""
    from deployer.models import normalized

    change = classify(job, record)
    diff = spec_diff(record.spec, normalized(job)) if record is not None and change == CHANGED else ()
    preview = None if change == UNCHANGED else preview_placement(job, inventory, state)
    return JobPlan(job.name, job.kind, change, job.fingerprint, record.version if record else None, diff, preview)


def preview_placement(job: JobSpec, inventory: Inventory, state: StoredState) -> Preview:
    """Where the scheduler would put the job's allocations now (its current ones count as replaced)."""
    from deployer.scheduler import place, place_system

    cluster = build_cluster(inventory, state.nodes, [a for a in state.allocations if a.job != job.name])
    if cluster is None:
        return Preview(note="no node state recorded yet: the controller records them (`flex probe` shows "
                            "the nodes now); the placement is decided on the first pass")
    result = place_system(job, cluster) if job.is_system else place(job, job.count, cluster)
    return Preview(result.assignments, result.failure.sentence() if result.failure else None,
                   _placement_note(job, [a for a in state.allocations if a.job == job.name and a.holds_resources]))


def _placement_note(job: JobSpec, current: Sequence[Allocation]) -> str | None:
    if job.schedule is not None:
        return f"placed when the schedule fires ({job.schedule.cron})"
    if current:
        return (f"replaces its {len(current)} current allocation{'s' if len(current) > 1 else ''}, "
                f"{job.update.max_parallel} at a time (update.max_parallel)")
    return None


def build_cluster(inventory: Inventory, records: Sequence[NodeRecord], allocations: Iterable[Allocation]) -> Cluster | None:
    """The scheduler's view from the nodes' last recorded states; None when no node was ever observed."""
    from deployer.scheduler import Cluster

    states = {r.name: node_from_record(r.last_state) for r in records if r.last_state}
    if not states:
        return None
    cordoned = {r.name for r in records if r.cordoned} | {f"{r.name}/{g}" for r in records for g in r.cordoned_gpus}
    return Cluster.build({h.name: h for h in inventory.hosts}, states, allocations, frozenset(cordoned),
                         frozenset(r.name for r in records if r.draining))


def node_from_record(record: Mapping[str, Any]) -> NodeState:
    """The NodeState of a stored observation (`controller.node_record`: models.normalized of a NodeState)."""
    from deployer.models import NodeState, frozen_mapping

    values = _known(NodeState, record)
    values["load"] = tuple(record["load"]) if record.get("load") is not None else None
    values["gpus"] = tuple(_gpu(g) for g in record.get("gpus") or ())
    values["allocations"] = frozen_mapping({str(k): _observation(v)
                                            for k, v in (record.get("allocations") or {}).items()})
    values["orphans"] = tuple(frozen_mapping(o) for o in record.get("orphans") or ())
    return NodeState(**values)


def _known(cls: type, record: Mapping[str, Any]) -> dict[str, Any]:
    """The entries of record that are fields of the dataclass cls (a newer flex may store more)."""
    return {f.name: record[f.name] for f in fields(cls) if f.name in record}


def _gpu(record: Mapping[str, Any]) -> Any:
    from deployer.models import GpuProcess, GpuState

    processes = tuple(GpuProcess(**_known(GpuProcess, p)) for p in record.get("processes") or ())
    return GpuState(**{**_known(GpuState, record), "processes": processes})


def _observation(record: Mapping[str, Any]) -> Any:
    from deployer.models import AllocationObservation, HealthResult

    health = record.get("health")
    return AllocationObservation(**{**_known(AllocationObservation, record),
                                    "health": HealthResult(**_known(HealthResult, health)) if health else None,
                                    "log_tail": tuple(record.get("log_tail") or ())})


# --- output ------------------------------------------------------------------------------------------------


def render_plan(path: str, state: StoredState, plans: Sequence[JobPlan], inventory: str,
                specs: Sequence[str]) -> list[str]:
    """The human plan: one block per job, then what to run to apply it."""
    lines = [f"state: {path}" + ("" if state.exists else " (none yet: every job is new)")]
    for plan in plans:
        lines += ["", *render_job(plan)]
    changes = sum(p.is_change for p in plans)
    lines.append("")
    if not changes:
        lines.append("no changes: every job already runs as written")
    else:
        command = " ".join(["flex push", inventory, *specs])
        lines.append(f"{changes} job{'s' if changes > 1 else ''} to change, {len(plans) - changes} unchanged: "
                     f"`{command}` applies it")
    return lines


def render_job(plan: JobPlan) -> list[str]:
    """A job's block: mark, name, change and version; the differing keys; the placement preview."""
    version = plan.version[:8] if plan.previous_version in (None, plan.version) else \
        f"{plan.previous_version[:8]} -> {plan.version[:8]}"
    lines = [f"{MARKS[plan.change]} {plan.name} ({plan.kind}): {plan.change}, version {version}"]
    lines += [f"    ~ {path}: {_short(before)} => {_short(after)}" for d in plan.diff
              for path, before, after in leaf_changes(d.key, d.before, d.after)]
    if plan.preview is not None:
        lines += [f"    {line}" for line in render_preview(plan.preview)]
    return lines


def leaf_changes(path: str, before: Any, after: Any) -> list[tuple[str, Any, Any]]:
    """(dotted path, before, after) of each differing value, descending into mappings on both sides."""
    if not (isinstance(before, Mapping) and isinstance(after, Mapping)):
        return [] if before == after else [(path, before, after)]
    keys = sorted(set(before) | set(after))
    return [change for k in keys for change in leaf_changes(f"{path}.{k}", before.get(k), after.get(k))]


def render_preview(preview: Preview) -> list[str]:
    """Placement lines: each allocation's node (GPUs, ports), the failure sentence, the note."""
    lines = [f"place index {a.index} on {a.node}{_extras(a)}" for a in preview.assignments]
    if preview.failure:
        lines.append(f"! {preview.failure}")
    if preview.note:
        lines.append(f"placement: {preview.note}")
    return lines


def _extras(assignment: Assignment) -> str:
    parts = []
    if assignment.gpus:
        parts.append("GPUs " + ",".join(str(g) for g in assignment.gpus))
    if assignment.ports:
        parts.append("ports " + " ".join(f"{n}={p}" for n, p in sorted(assignment.ports.items())))
    return f" ({'; '.join(parts)})" if parts else ""


def _short(value: Any) -> str:
    text = "(absent)" if value is None else json.dumps(value, sort_keys=True, separators=(",", ":"))
    return text if len(text) <= VALUE_WIDTH else text[:VALUE_WIDTH - 3] + "..."


def plan_json(path: str, state: StoredState, plans: Sequence[JobPlan]) -> dict[str, Any]:
    """The --json document: whether anything changes, and per job its change, diff and placement."""
    return {"state": path, "state_exists": state.exists, "changes": any(p.is_change for p in plans),
            "jobs": {p.name: _job_json(p) for p in plans}}


def _job_json(plan: JobPlan) -> dict[str, Any]:
    from deployer.models import normalized

    preview = None if plan.preview is None else {
        "assignments": [normalized(a) for a in plan.preview.assignments],
        "failure": plan.preview.failure, "note": plan.preview.note}
    return {"kind": plan.kind, "change": plan.change, "version": plan.version,
            "previous_version": plan.previous_version, "placement": preview,
            "diff": {d.key: {"before": d.before, "after": d.after} for d in plan.diff}}
