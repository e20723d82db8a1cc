"""`flex probe [INVENTORY] [--host H]`: install the node runtime where needed and probe every host once.

Read-only on the workloads: it shows what the controller would see (facts, GPUs, allocations), and an
unreachable or untrusted host is a row with the reason and the fix, never a traceback.
"""

from __future__ import annotations

import argparse
from typing import Any

from deployer.commands import DEFAULT_INVENTORY, default_inventory, emit, emit_json


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of `flex probe`."""
    parser.add_argument("inventory", nargs="?", default=default_inventory(),
                        help=f"inventory file (default: $FLEX_INVENTORY or {DEFAULT_INVENTORY})")
    parser.add_argument("--host", action="append", default=[], metavar="HOST", help="only these hosts (repeatable)")
    parser.add_argument("--timeout", type=float, default=20.0, help="seconds per host (default 20)")
    parser.add_argument("--json", action="store_true", help="machine-readable result")


def run(args: argparse.Namespace) -> int:
    """Probe the hosts concurrently; exit 0 when all answered, 3 when any could not be probed."""
    import asyncio

    from deployer.inventory import load_inventory

    inventory = load_inventory(args.inventory)
    hosts = [h for h in inventory.hosts if not args.host or h.name in args.host]
    results = asyncio.run(_probe_all(inventory, hosts, args.timeout))
    if args.json:
        emit_json({name: _as_json(value) for name, value in results.items()})
    else:
        for line in render_probe_table(results):
            emit(line)
    return 3 if any(isinstance(v, Exception) for v in results.values()) else 0


async def _probe_all(inventory: Any, hosts: list[Any], timeout: float) -> dict[str, Any]:
    from deployer.nodeclient import NodeClient, gather_probes
    from deployer.transport import Pool

    async with Pool.from_inventory(inventory) as pool:
        return await gather_probes([NodeClient(pool, h) for h in hosts], timeout=timeout)


def failure_status(error: Exception) -> str:
    """'untrusted' for a host key problem (it needs a person), 'unreachable' for anything else."""
    from deployer.transport import UntrustedHost

    return "untrusted" if isinstance(error, UntrustedHost) else "unreachable"


def _as_json(value: Any) -> dict[str, Any]:
    if isinstance(value, Exception):
        return {"status": failure_status(value), "error": str(value)}
    from deployer.models import normalized

    doc: dict[str, Any] = normalized(value)
    return doc


def render_probe_table(results: dict[str, Any]) -> list[str]:
    """The human table: one row per host, one indented row per GPU, the error for failed hosts."""
    lines = [f"{'HOST':<20} {'STATE':<12} {'CPUS':>4} {'LOAD':>5} {'MEMORY used/total':>19} "
             f"{'DISK free':>10} {'ALLOCS':>6} {'RTT':>6}  GPUS"]
    for name, state in results.items():
        if isinstance(state, Exception):
            lines.append(f"{name:<20} {failure_status(state):<12} {str(state).splitlines()[0]}")
            lines.extend(f"{'':<20} {ln.strip()}" for ln in str(state).splitlines()[1:])
            continue
        lines.append(_host_row(name, state))
        lines.extend(_gpu_row(g) for g in state.gpus)
    return lines


def _host_row(name: str, state: Any) -> str:
    from deployer.units import format_size

    def size(v: int | None) -> str:
        return "n/a" if v is None else format_size(v)

    used = None if state.memory_total is None or state.memory_available is None else \
        state.memory_total - state.memory_available
    memory = f"{size(used)}/{size(state.memory_total)}"
    load = "n/a" if state.load is None else f"{state.load[0]:.2f}"
    gpus = f"{len(state.gpus)} ({sum(not g.is_healthy for g in state.gpus)} unhealthy)" if state.gpus_known \
        else f"unknown: {state.gpu_reason}"
    rtt = "n/a" if state.rtt is None else f"{state.rtt * 1000:.0f}ms"
    return (f"{name:<20} {state.status:<12} {state.cpus or 'n/a':>4} {load:>5} {memory:>19} "
            f"{size(state.disk_free):>10} {len(state.allocations):>6} {rtt:>6}  {gpus}")


def _gpu_row(gpu: Any) -> str:
    from deployer.units import format_size

    def pct(v: float | None) -> str:
        return "n/a" if v is None else f"{v:.0f}%"

    mem = "n/a" if gpu.memory_used is None or gpu.memory_total is None else \
        f"{format_size(gpu.memory_used)}/{format_size(gpu.memory_total)}"
    temp = "n/a" if gpu.temperature is None else f"{gpu.temperature:.0f}C"
    power = "n/a" if gpu.power_draw is None else f"{gpu.power_draw:.0f}/{gpu.power_limit or 0:.0f}W"
    health = "healthy" if gpu.is_healthy else f"UNHEALTHY: {gpu.error}"
    return f"  gpu{gpu.index:<3} {gpu.name or '?':<28} util {pct(gpu.utilization):>4}  mem {mem:<20} {temp:>5} {power:>10}  {health}"
