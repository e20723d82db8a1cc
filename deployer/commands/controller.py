"""`flex controller [INVENTORY]`: the reconcile loop as a long-running daemon (systemd Type=simple).

Takes the state database's controller lease (one controller per database; a second one exits 4),
watches every node, and applies what `flex push`, `flex restart`, `flex stop`, `flex drain` and the
console write, until SIGTERM or SIGINT. Each pass that changes something is one INFO log line on
stderr. A clean stop lets operations in flight finish and gives the lease back (exit 0); the
workloads keep running on their nodes, and the next controller or `flex push` picks them up.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING

from deployer.commands import add_inventory_arguments, emit, open_store, state_path

if TYPE_CHECKING:
    import asyncio

    from deployer.controller import ControllerSettings
    from deployer.models import Inventory
    from deployer.plan import ClusterSnapshot, Plan
    from deployer.store import Store

log = logging.getLogger(__name__)

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
DETAILS = 5  # items named on a pass's log line; the rest are counted


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of `flex controller`."""
    add_inventory_arguments(parser, json_output=False)
    parser.add_argument("--lease-ttl", type=float, default=0.0, metavar="S",
                        help="workloads stop themselves when their lease is not renewed for S seconds "
                        "(fencing for partitioned nodes; default 0: off)")
    parser.add_argument("--probe-interval", type=float, default=1.0, metavar="S",
                        help="seconds between a node's probe documents (exits are seen at once; default 1)")
    parser.epilog = ("Exit status: 0 after SIGTERM or SIGINT (the lease is given back), 2 bad input, "
                     "4 another controller holds the state database's lease.")


def run(args: argparse.Namespace) -> int:
    """Run the loop until SIGTERM or SIGINT; exit 0 on a clean stop.

    Raises:
        ControllerBusy: another controller holds the lease (exit 4).
    """
    import asyncio

    from deployer.controller import ControllerSettings
    from deployer.inventory import load_inventory

    inventory = load_inventory(args.inventory)
    settings = ControllerSettings(lease_ttl=args.lease_ttl, probe_interval=args.probe_interval)
    if log.getEffectiveLevel() > logging.INFO:
        log.setLevel(logging.INFO)  # a daemon's pass lines are its journal, shown without -v
    started = f"controller for {args.inventory} on {state_path(args.inventory, args.state)}"
    with open_store(args) as store:
        passes = asyncio.run(serve(inventory, store, settings, started))
    log.info("stopped after %d passes; the lease is released", passes)
    return 0


async def serve(inventory: Inventory, store: Store, settings: ControllerSettings, started: str) -> int:
    """Hold the lease and run passes until a stop signal; returns how many passes ran."""
    import asyncio

    from deployer.controller import Controller

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in STOP_SIGNALS:
        loop.add_signal_handler(signum, _stopper(stop, signum))
    try:
        async with Controller(inventory, store, settings) as controller:
            emit(f"{started}: {len(controller.hosts)} nodes")
            sys.stdout.flush()
            controller.subscribers.append(lambda snapshot, plan: _log_pass(controller.passes, snapshot, plan))
            await controller.run(stop=stop)
            return controller.passes
    finally:
        for signum in STOP_SIGNALS:
            loop.remove_signal_handler(signum)


def _stopper(stop: asyncio.Event, signum: int) -> Callable[[], None]:
    def handler() -> None:
        if not stop.is_set():
            log.info("%s: stopping (operations in flight finish first)", signal.Signals(signum).name)
        stop.set()
    return handler


def _log_pass(number: int, snapshot: ClusterSnapshot, plan: Plan) -> None:
    if not plan.is_empty:
        log.info("%s", pass_line(number, plan))


def pass_line(number: int, plan: Plan) -> str:
    """One log line for a pass that changed something: the bucket counts, then each action and why."""
    from deployer.plan import IGNORE

    counts = [plan.summary()] if plan.summary() != "no changes" else []
    head = ", ".join(counts + ([f"{len(plan.marks)} observed"] if plan.marks else [])) or "no changes"
    details = [f"{i.action} {i.alloc.id}: {i.reason}" for i in plan.items if i.action != IGNORE]
    details += [f"{alloc.id} {alloc.observed_status}: {reason}" for alloc, reason in plan.marks]
    details += [f"orphan {alloc_id} on {node}: {reason}" for node, alloc_id, reason, _ in plan.orphans]
    more = f"; {len(details) - DETAILS} more" if len(details) > DETAILS else ""
    return f"pass {number}: {head} ({'; '.join(details[:DETAILS])}{more})" if details else f"pass {number}: {head}"
