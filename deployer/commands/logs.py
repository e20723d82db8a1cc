"""`flex logs JOB|ALLOC [-f] [--previous] [--stderr] [-n N]`: an allocation's output, read on its node.

The node keeps each allocation's size-capped stdout and stderr (and the previous run's, `--previous`)
after the workload stopped, so logs stay readable until the allocation directory is collected. A job
name picks the job's newest allocation desired running (the newest of any when none is), and says
which one it picked on stderr. The node is found in the inventory, or, when it has left it, from how
the controller last reached it. `-f` follows the output through the node runtime's `logs --follow`
until the workload ends (exit 0, after `-- ended: exit N`) or Ctrl-C.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from deployer.commands import add_inventory_arguments, emit, emit_json, open_store

if TYPE_CHECKING:
    from deployer.models import Allocation, Host
    from deployer.nodeclient import NodeClient
    from deployer.store import NodeRecord

DEFAULT_TAIL = 200


@dataclass(frozen=True)
class Pick:
    """The allocation whose logs are shown, and the others of its job one could pick instead."""

    alloc: Allocation
    others: tuple[Allocation, ...] = ()
    by_job: bool = False


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of `flex logs`."""
    parser.add_argument("target", metavar="JOB|ALLOC", help="an allocation id, or a job (its newest allocation)")
    add_inventory_arguments(parser, positional=False)
    parser.add_argument("-f", "--follow", action="store_true", help="keep printing until the workload ends")
    parser.add_argument("--previous", action="store_true", help="the previous run's logs (before the last restart)")
    parser.add_argument("--stderr", action="store_true", help="stderr instead of stdout")
    parser.add_argument("-n", "--tail", type=int, default=DEFAULT_TAIL, metavar="N",
                        help=f"the last N lines (default {DEFAULT_TAIL}; 0: all the node keeps)")


def run(args: argparse.Namespace) -> int:
    """Print the logs (and follow them with -f); exit 0, 2 unknown target, 3 node unreachable."""
    import asyncio

    from deployer.errors import ConfigError
    from deployer.inventory import load_inventory

    if args.tail < 0:
        raise ConfigError(f"--tail {args.tail}: must be 0 or more", fix="pass -n 200, for example")
    if args.follow and args.previous:
        raise ConfigError("--follow and --previous: the previous run has ended, there is nothing to follow",
                          fix="drop one of them")
    inventory = load_inventory(args.inventory)
    with open_store(args) as store:
        pick = pick_allocation(args.target, store.allocations())
        host = node_host(pick.alloc.node, inventory.hosts, store.get_node(pick.alloc.node), args.inventory)
    if pick.by_job:
        print(describe_pick(pick), file=sys.stderr)
    stream = "stderr" if args.stderr else "stdout"
    return asyncio.run(_show(inventory, host, pick.alloc, stream, args))


def pick_allocation(target: str, allocs: Sequence[Allocation]) -> Pick:
    """The allocation named target, or target job's newest allocation desired running (else newest).

    Raises:
        ConfigError: no allocation has that id and no allocation belongs to a job of that name.
    """
    from deployer.errors import ConfigError

    exact = [a for a in allocs if a.id == target]
    if exact:
        return Pick(exact[0])
    mine = sorted((a for a in allocs if a.job == target), key=lambda a: (a.created_at, a.id), reverse=True)
    if not mine:
        known = sorted({a.job for a in allocs})
        raise ConfigError(f"no job or allocation named {target!r} has allocations in the state database",
                          fix="`flex status --all` lists jobs and allocation ids" +
                          (f" (jobs with allocations: {', '.join(known)})" if known else ""))
    running = [a for a in mine if a.desired_status == "run"]
    chosen = (running or mine)[0]
    return Pick(chosen, tuple(a for a in (running or mine) if a.id != chosen.id), by_job=True)


def describe_pick(pick: Pick) -> str:
    """The stderr line that says which allocation of a job is shown, and how to choose another."""
    alloc = pick.alloc
    what = "desired running" if alloc.desired_status == "run" else "(none is desired running)"
    line = f"{alloc.job}: showing {alloc.id} on {alloc.node}, its newest allocation {what}"
    if pick.others:
        line += f"; others: {', '.join(a.id for a in pick.others)} (`flex logs ALLOC` picks one)"
    return line


def node_host(node: str, hosts: Sequence[Host], record: NodeRecord | None, inventory: str) -> Host:
    """How to reach the allocation's node: its inventory host, else the connection last recorded.

    Raises:
        ConfigError: the node left the inventory and the state database has no way to reach it.
    """
    from deployer.controller import host_from_record
    from deployer.errors import ConfigError

    for host in hosts:
        if host.name == node:
            return host
    if record is not None and record.host:
        return host_from_record(record.host)
    raise ConfigError(f"node {node!r} is not in {inventory} and the state database does not say how to reach it",
                      fix=f"add {node} back to the inventory, or pass the inventory it was in (-i)")


async def _show(inventory: Any, host: Host, alloc: Allocation, stream: str, args: argparse.Namespace) -> int:
    from deployer.nodeclient import NodeClient
    from deployer.transport import Pool

    async with Pool.from_inventory(inventory) as pool:
        pool.add(host)
        client = NodeClient(pool, host)
        if args.follow:
            await client.install()  # a stream does not install the runtime by itself; the verbs do
            return await follow(client, alloc, stream, args.tail, as_json=args.json)
        lines = await read_lines(client, alloc, stream, args.previous, args.tail)
    if args.json:
        emit_json({"alloc_id": alloc.id, "job": alloc.job, "node": alloc.node, "stream": stream,
                   "previous": args.previous, "lines": lines})
    else:
        for line in lines:
            emit(line)
    return 0


async def read_lines(client: NodeClient, alloc: Allocation, stream: str, previous: bool, tail: int) -> list[str]:
    """The last lines of one stream of the allocation, as the node keeps them.

    Raises:
        ProbeError: the node answered with an error (the allocation directory is gone, for instance).
    """
    args = ["logs", alloc.id, "--stream", stream, "--tail", str(tail)] + (["--previous"] if previous else [])
    doc = await client.verb(*args)
    _check(doc, alloc)
    return [str(line) for line in doc.get("lines") or ()]


def _check(doc: Mapping[str, Any], alloc: Allocation) -> None:
    """Turn the node runtime's error document into a ProbeError naming the allocation and node."""
    from deployer.errors import ProbeError

    if doc.get("ok") is False:
        gone = " (its directory was removed from the node)" if doc.get("code") == "no_alloc" else ""
        raise ProbeError(f"{alloc.node}: no logs for {alloc.id}{gone}: {doc.get('error')}")


async def follow(client: NodeClient, alloc: Allocation, stream: str, tail: int, *, as_json: bool = False) -> int:
    """Print the last lines, then new ones as they come, until the workload ends; exit 0 then.

    Raises:
        ProbeError: the node answered with an error, or the stream ended before the workload did.
    """
    from deployer.errors import ProbeError

    argv = await client._argv("logs", alloc.id, "--follow", "--stream", stream, "--tail", str(tail),
                              "--ignore-stdin")
    async with client.transport.stream(client.host, argv) as lines:
        async for raw in lines:
            if raw.strip() and show_document(parse_document(raw, alloc), alloc, as_json):
                return 0
    raise ProbeError(f"{alloc.node}: the log stream of {alloc.id} ended before the workload did "
                     f"(exit status {lines.exit_status}): {' '.join(lines.stderr_tail)[-300:]}")


def parse_document(raw: str, alloc: Allocation) -> Mapping[str, Any]:
    """One JSON line of `logs --follow`.

    Raises:
        ProbeError: the line is not a JSON object.
    """
    from deployer.errors import ProbeError

    try:
        doc = json.loads(raw)
    except ValueError:
        doc = None
    if not isinstance(doc, dict):
        raise ProbeError(f"{alloc.node}: the log stream of {alloc.id} sent {raw[:200]!r}, not a JSON object")
    return doc


def show_document(doc: Mapping[str, Any], alloc: Allocation, as_json: bool) -> bool:
    """Print one document of `logs --follow`; True when it is the end document."""
    _check(doc, alloc)
    if as_json:
        print(json.dumps({"alloc_id": alloc.id, **doc}, sort_keys=True), flush=True)
    else:
        for line in doc.get("lines") or ():
            emit(str(line))
        if doc.get("end"):
            emit(f"-- ended: {ending(doc)}")
        sys.stdout.flush()
    return bool(doc.get("end"))


def ending(doc: Mapping[str, Any]) -> str:
    """How the workload ended, from the end document: 'exit 0', 'signal 9', or the reason."""
    if doc.get("exit_code") is not None:
        return f"exit {doc['exit_code']}"
    if doc.get("signal") is not None:
        return f"signal {doc['signal']}"
    return str(doc.get("reason") or doc.get("status") or "unknown")
