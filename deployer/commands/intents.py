"""What the intent verbs share (restart, stop, drain, cordon, uncordon): check the target, write one
intent in one transaction, and say who will apply it.

The CLI never acts on a node itself: it writes an intent into the state database and the controller's
next pass applies it (DESIGN.md, State). A target the store and the inventory do not know is refused
with exit 2 before anything is written.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import asdict
from typing import TYPE_CHECKING

from deployer.commands import actor, add_inventory_arguments, emit, emit_json, open_store

if TYPE_CHECKING:
    from deployer.store import Intent, Lease, Store, Transaction

NODE_KINDS = ("drain", "cordon", "uncordon")
NO_CONTROLLER = "no controller is running: the next `flex push` or `flex controller` applies it"


def add_target_arguments(parser: argparse.ArgumentParser, metavar: str, help_text: str) -> None:
    """The target positional plus -i/--inventory, --state and --json."""
    parser.add_argument("target", metavar=metavar, help=help_text)
    add_inventory_arguments(parser, positional=False)
    parser.add_argument("--wait", action="store_true",
                        help="wait until it is applied: by the running controller, or by running the loop "
                        "here when none runs")
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds --wait waits at most (default 120)")


def submit(args: argparse.Namespace, kind: str) -> int:
    """Write a `kind` intent for args.target (exit 0), after checking that the target exists.

    Raises:
        ConfigError: unknown job, allocation or node (nothing is written).
    """
    store: Store
    with open_store(args) as store:
        if kind in NODE_KINDS:
            check_node(kind, args.target, args.inventory, [n.name for n in store.nodes()])
        what = describe(kind, args.target, is_job=store.get_job(args.target) is not None)
        with store.transaction() as tx:
            intent = write_intent(tx, kind, args.target, actor())
        lease = store.lease_holder(time.time())
    if args.json:
        emit_json(asdict(intent))
    else:
        emit(render_request(intent, what, lease))
    return wait_applied(args, intent) if args.wait else 0


def wait_applied(args: argparse.Namespace, intent: Intent) -> int:
    """--wait: drive the loop until the intent is applied (and a job it targets settled); exit 0, or 1
    when time ran out first."""
    import asyncio

    from deployer.commands.loop import EventPrinter, drive
    from deployer.controller import ControllerSettings
    from deployer.convergence import convergence
    from deployer.inventory import load_inventory

    inventory = load_inventory(args.inventory)
    with open_store(args) as store:
        def goal(controller: object) -> bool:
            if getattr(getattr(controller, "executor", None), "busy", None):
                return False
            done = next((i for i in store.intents() if i.id == intent.id), intent).applied_at is not None
            job = convergence(store, [args.target]).get(args.target)
            return done and (job is None or job.is_converged or job.is_final)

        printer = EventPrinter(store, store.last_event_seq(), quiet=args.json)
        mode = asyncio.run(drive(inventory, store, goal, timeout=args.timeout, settings=ControllerSettings(),
                                 progress=printer))
        ok = goal(None)
    if not args.json:
        emit(f"{intent.kind} {args.target}: {'applied' if ok else 'not applied in time'} ({mode})")
    return 0 if ok else 1


def write_intent(tx: Transaction, kind: str, target: str, who: str) -> Intent:
    """The store write of one intent kind (restart, stop, drain, cordon, uncordon)."""
    writers = {"restart": tx.request_restart, "stop": tx.request_stop, "drain": tx.request_drain,
               "cordon": tx.cordon, "uncordon": tx.uncordon}
    return writers[kind](target, who)


def check_node(kind: str, target: str, inventory: str, stored: list[str]) -> None:
    """Refuse a node that neither the inventory nor the state database knows (and a GPU for drain).

    Raises:
        ConfigError: the node is unknown, or drain was given NODE/GPU.
    """
    from deployer.document import did_you_mean
    from deployer.errors import ConfigError
    from deployer.inventory import load_inventory

    node, has_gpu, _ = target.partition("/")
    if kind == "drain" and has_gpu:
        raise ConfigError(f"{target!r}: drain takes a whole node, not a GPU",
                          fix=f"`flex drain {node}` moves its work away; `flex cordon {target}` keeps new "
                          "work off that GPU only")
    known = set(load_inventory(inventory).host_names) | set(stored)
    if node not in known:
        hint = f" ({did_you_mean(node, known)})" if known else ""
        raise ConfigError(f"no node named {node!r} in {inventory} or the state database",
                          fix=f"`flex status` lists the nodes, `flex inventory {inventory}` the hosts{hint}")


def describe(kind: str, target: str, *, is_job: bool) -> str:
    """What the intent acts on, in words: 'job web', 'allocation web-0-1a2b', 'GPU 1 of node n1'."""
    if kind in NODE_KINDS:
        node, has_gpu, gpu = target.partition("/")
        return f"GPU {gpu} of node {node}" if has_gpu else f"node {node}"
    return f"job {target}" if is_job or kind == "stop" else f"allocation {target}"


def render_request(intent: Intent, what: str, lease: Lease | None) -> str:
    """The one line an intent verb prints: what was requested, by whom, and who applies it."""
    applier = NO_CONTROLLER if lease is None else \
        f"the controller {lease.owner} (pid {lease.pid} on {lease.hostname}) applies it on its next pass"
    return f"{intent.kind} of {what} requested (intent {intent.id} by {intent.actor}); {applier}"
