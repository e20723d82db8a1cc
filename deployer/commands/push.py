"""`flex push [INVENTORY] [SPEC...]`: validate, show the plan, submit, converge, report.

With no SPEC, the jobs the inventory lists in `flex_playbooks`. When a controller already runs on the
state database, push hands it the new desired state and waits; when none runs, push runs the loop
itself until the jobs converge (the workloads keep running after it exits: their supervisors are
detached on the nodes). Exit 0 converged, 1 not converged (the failing jobs are named), 2 bad input.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

from deployer.commands import add_inventory_arguments, emit, emit_json, open_store


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of `flex push`."""
    add_inventory_arguments(parser)
    parser.add_argument("specs", nargs="*", metavar="SPEC", help="job spec files (default: the inventory's "
                        "flex_playbooks)")
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds to wait for convergence (default 120)")
    parser.add_argument("--lease-ttl", type=float, default=0.0,
                        help="fence workloads whose lease is not renewed for this long (default 0: off; "
                        "for `flex controller`)")
    parser.add_argument("--probe-interval", type=float, default=1.0, help=argparse.SUPPRESS)
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress lines, only the summary")


def run(args: argparse.Namespace) -> int:
    """Submit the jobs and converge; the exit code says whether they got there."""
    import asyncio

    from deployer.inventory import load_inventory

    inventory = load_inventory(args.inventory)
    jobs, texts = _load(inventory, args.specs)
    store = open_store(args)
    with store:
        changes = _submit(store, jobs, texts)
        if not args.json:
            emit("plan: " + ", ".join(f"{name} {change}" for name, change in changes.items()))
        start_seq = store.last_event_seq()
        result = asyncio.run(_converge(inventory, store, list(changes), args, start_seq))
        return _report(store, changes, result, args, start_seq)


def _load(inventory: Any, specs: list[str]) -> tuple[tuple[Any, ...], dict[str, str]]:
    """The jobs to push and their YAML text; secrets are checked now (every missing one at once)."""
    from deployer.commands.validate import playbook_paths
    from deployer.errors import ConfigError, Problem
    from deployer.spec import inventory_problems, load_jobs, resolve_secrets

    paths = [Path(p) for p in specs] or playbook_paths(inventory)
    if not paths:
        raise ConfigError(f"{inventory.source}: no job to push", fix="give job spec files (`flex push INVENTORY "
                          "SPEC...`) or list them in the inventory's flex_playbooks variable")
    jobs = load_jobs(paths)
    problems: list[Problem] = inventory_problems(jobs, inventory)
    for job in jobs:
        try:
            resolve_secrets(job, os.environ)
        except ConfigError as exc:
            problems.extend(exc.problems)
    if problems:
        raise ConfigError(problems)
    return jobs, {job.name: Path(job.source).read_text(encoding="utf-8") for job in jobs}


def _submit(store: Any, jobs: tuple[Any, ...], texts: dict[str, str]) -> dict[str, str]:
    """Write the jobs in one transaction; job name -> "new" | "changed" | "unchanged" | "started again"."""
    changes = {}
    with store.transaction() as tx:
        for job in jobs:
            before = tx.get_job(job.name)
            changed = tx.put_job(job, texts[job.name], job.source)
            changes[job.name] = "new" if before is None else "unchanged" if not changed else \
                "changed" if before.version != job.fingerprint else "started again"
            if changed:
                tx.append_event("submitted", f"version {job.fingerprint[:8]} ({changes[job.name]})", job=job.name,
                                actor=_actor())
    return changes


def _actor() -> str:
    from deployer.commands import actor

    return actor()


async def _converge(inventory: Any, store: Any, names: list[str], args: argparse.Namespace,
                    start_seq: int) -> dict[str, Any]:
    """Run the loop here (or wait for the running controller) until the jobs converge or time runs out."""
    from deployer.commands.loop import EventPrinter, drive
    from deployer.controller import ControllerSettings

    settings = ControllerSettings(lease_ttl=args.lease_ttl, probe_interval=args.probe_interval)
    printer = EventPrinter(store, start_seq, quiet=args.quiet or args.json)

    def goal(controller: Any) -> bool:
        return (controller is None or not controller.executor.busy) and _settled(store, names)

    mode = await drive(inventory, store, goal, timeout=args.timeout, settings=settings, progress=printer)
    printer()
    return {"mode": mode}


def _settled(store: Any, names: list[str]) -> bool:
    from deployer.convergence import convergence

    return all(s.is_converged or s.is_final for s in convergence(store, names).values())


def _report(store: Any, changes: dict[str, str], result: dict[str, Any], args: argparse.Namespace,
            start_seq: int) -> int:
    from deployer.convergence import JobConvergence, convergence

    standing = convergence(store, list(changes))
    for event in store.events(after_seq=start_seq, limit=10000):
        if event.kind == "auto_revert" and event.job in standing:
            standing[event.job] = JobConvergence(event.job, False, f"auto-reverted: {event.message}", True)
    restarted = [e for e in store.events(after_seq=start_seq, limit=10000)
                 if e.kind in ("placed", "restarting", "stopping", "lost")]
    ok = all(s.is_converged for s in standing.values())
    if args.json:
        emit_json({"converged": ok, "mode": result["mode"], "changes": changes, "actions": len(restarted),
                   "jobs": {n: {"converged": s.is_converged, "detail": s.detail} for n, s in standing.items()}})
        return 0 if ok else 1
    if not restarted and all(c == "unchanged" for c in changes.values()) and ok:
        emit("no changes: every job already runs as desired")
    for name, s in standing.items():
        emit(f"{'ok' if s.is_converged else 'FAILED':<7} {name:<24} {s.detail}")
    failing = [n for n, s in standing.items() if not s.is_converged]
    emit(f"converged ({result['mode']})" if ok else f"not converged: {', '.join(failing)} "
         f"(see `flex status` and `flex events --job JOB`)")
    return 0 if ok else 1
