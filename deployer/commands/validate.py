"""`flex validate [INVENTORY] [SPEC...]`: check inputs without touching any host.

Files are told apart by content: an INI file, or YAML that does not read as a job spec (see
spec.looks_like_job: misspelled job keys still count as a job), is an inventory. With an inventory
and no spec, the inventory's `flex_playbooks` are validated too. Every problem of every file is
reported at once (exit 2).
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

from deployer.commands import DEFAULT_INVENTORY, emit, emit_json


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of `flex validate`."""
    parser.add_argument("files", nargs="*", metavar="FILE",
                        help=f"an inventory and/or job specs (default: {DEFAULT_INVENTORY} and its playbooks)")
    parser.add_argument("-i", "--inventory", help="treat this file as the inventory (skip detection)")
    parser.add_argument("--json", action="store_true", help="machine-readable result")


def is_inventory_file(path: Path) -> bool:
    """True when path looks like an inventory rather than a job spec (decided by content)."""
    import yaml

    from deployer.document import SAFE_LOADER
    from deployer.inventory_ini import looks_like_ini
    from deployer.spec import looks_like_job

    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return False  # let the job loader report the unreadable file
    if looks_like_ini(text):
        return True
    try:
        return not looks_like_job(yaml.load(text, Loader=SAFE_LOADER))  # noqa: S506 - a safe loader
    except yaml.YAMLError:
        return path.suffix in (".ini", ".cfg") or "inventor" in path.name


def playbook_paths(inventory: Any) -> list[Path]:
    """The job spec paths an inventory lists in `flex_playbooks`, relative to the inventory file."""
    listed = inventory.vars.get("flex_playbooks") or []
    base = Path(inventory.source).parent
    return [Path(os.path.normpath(p if Path(p).is_absolute() else base / p)) for p in listed]


def _split(args: argparse.Namespace) -> tuple[Path | None, list[Path]]:
    files = [Path(f) for f in args.files]
    if args.inventory:
        return Path(args.inventory), files
    if not files:
        return Path(DEFAULT_INVENTORY), []
    inventories = [f for f in files if is_inventory_file(f)]
    if len(inventories) > 1:
        from deployer.errors import ConfigError

        names = ", ".join(map(str, inventories))
        raise ConfigError(f"more than one inventory given: {names}",
                          "pass one inventory (or -i FILE) and any number of job specs")
    specs = [f for f in files if f not in inventories]
    return (inventories[0] if inventories else None), specs


def run(args: argparse.Namespace) -> int:
    """Validate everything, report all problems at once; exit 0 when all is valid."""
    from deployer.errors import ConfigError, Problem
    from deployer.inventory import load_inventory
    from deployer.spec import inventory_problems, load_jobs

    inventory_path, spec_paths = _split(args)
    problems: list[Problem] = []
    inventory = None
    if inventory_path is not None:
        try:
            inventory = load_inventory(inventory_path)
        except ConfigError as exc:
            problems.extend(exc.problems)
        if inventory is not None and not spec_paths:
            spec_paths = playbook_paths(inventory)
    jobs: tuple[Any, ...] = ()
    try:
        jobs = load_jobs(spec_paths)
    except ConfigError as exc:
        problems.extend(exc.problems)
    if inventory is not None:
        problems.extend(inventory_problems(jobs, inventory))
    if problems:
        raise ConfigError(problems)
    _report(args, inventory, spec_paths, jobs)
    return 0


def _report(args: argparse.Namespace, inventory: Any, spec_paths: list[Path], jobs: tuple[Any, ...]) -> None:
    if args.json:
        emit_json({
            "valid": True,
            "inventory": None if inventory is None else {
                "file": inventory.source, "hosts": list(inventory.host_names)},
            "jobs": [{"file": str(p), "name": j.name, "kind": j.kind} for p, j in zip(spec_paths, jobs)],
        })
        return
    if inventory is not None:
        names = ", ".join(inventory.host_names[:8]) + (" ..." if len(inventory.hosts) > 8 else "")
        emit(f"ok  {inventory.source}: inventory, {len(inventory.hosts)} hosts ({names})")
    for path, job in zip(spec_paths, jobs):
        emit(f"ok  {path}: {job.kind} job '{job.name}'")
    emit(f"valid: {'1 inventory, ' if inventory is not None else ''}{len(jobs)} job specs")
