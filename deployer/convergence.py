"""Is a job where it should be? Read from the state database alone, so `flex push` answers the same
whether it runs the loop itself or waits for a running controller, and `flex status` agrees."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

from deployer.models import DESIRED_RUN, Allocation

DONE = ("running", "complete")


@dataclass(frozen=True)
class JobConvergence:
    """One job's standing: converged or not, in words, and whether waiting longer can help."""

    job: str
    is_converged: bool
    detail: str
    is_final: bool = False  # a failure no wait will fix (a batch job failed for good)


def job_convergence(name: str, spec: Mapping[str, Any], desired: str, allocs: list[Allocation],
                    pending: str | None) -> JobConvergence:
    """Where one job stands, from its normalized spec, its allocation records and its pending reason."""
    if desired != DESIRED_RUN:
        alive = [a for a in allocs if a.observed_status not in ("stopped", "complete", "failed", "lost")]
        return JobConvergence(name, not alive, f"stopping: {len(alive)} still running" if alive else "stopped")
    kind = spec.get("kind", "service")
    current = [a for a in allocs if a.desired_status == DESIRED_RUN]
    failed = [a for a in current if a.observed_status == "failed"]
    if kind == "batch" and failed:
        return JobConvergence(name, False, f"{len(failed)} allocation(s) failed for good "
                              f"(exit {failed[0].exit_code})", is_final=True)
    if pending:
        return JobConvergence(name, False, pending)
    if spec.get("schedule"):
        return JobConvergence(name, True, "scheduled" + (f", {_counts(current)}" if current else ""))
    wanted = len(current) if kind == "system" else int(spec.get("count", 1))
    done = [a for a in current if a.observed_status in DONE]
    if len(done) >= wanted and wanted > 0:
        return JobConvergence(name, True, _counts(current))
    return JobConvergence(name, False, f"{len(done)}/{wanted} running; {_counts(current)}")


def _counts(allocs: list[Allocation]) -> str:
    counts: dict[str, int] = {}
    for alloc in allocs:
        counts[alloc.observed_status] = counts.get(alloc.observed_status, 0) + 1
    return ", ".join(f"{n} {status}" for status, n in sorted(counts.items())) or "no allocations"


def convergence(store: Any, jobs: list[str] | None = None) -> dict[str, JobConvergence]:
    """Every (or the named) job's standing, read from the store."""
    pending = store.job_statuses()
    allocs = store.allocations()
    due = {alloc.job for alloc, _ in store.due_restarts()}
    out = {}
    for record in store.jobs():
        if jobs is not None and record.name not in jobs:
            continue
        mine = [a for a in allocs if a.job == record.name]
        standing = job_convergence(record.name, record.spec, record.desired, mine, pending.get(record.name))
        if record.name in due:
            standing = JobConvergence(record.name, False, "restart requested, not applied yet")
        out[record.name] = standing
    return out


__all__ = ["JobConvergence", "convergence", "job_convergence"]
