"""One probe round as the controller does it: over the probe streams it keeps open (a benchmark).

    python3 -m bench.probe_round INVENTORY [--rounds 10] [--json]

`flex probe` is a one-shot CLI: it pays its imports, an SSH handshake and an interpreter start on every
host, every time. The controller pays those once: it keeps one `flexnode.py probe --stream` open per
node, and a line written to a stream's stdin makes that node answer with a fresh document at once
(the stream's "request" trigger). This times that: open a stream to every host of the inventory
(untimed; the runtime is installed where missing), then `--rounds` times: poke every stream, wait until
every host's fresh document arrived and parsed. Prints each round's wall time and the controller's CPU
time for it; `--json` prints one JSON object instead ({"hosts", "rounds_s", "cpu_s", "median_s"}).
bench/compare.py runs it as the `streams` scenario (flex only: the peers keep nothing open).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from typing import Any

from deployer.inventory import load_inventory
from deployer.nodeclient import NodeClient
from deployer.probe import parse_probe
from deployer.transport import Pool


async def _fresh(host: str, lines: Any) -> None:
    """Read the stream until the answer to the poke (trigger "request") arrives; parse it."""
    while True:
        line = await lines.__anext__()
        doc = json.loads(line)
        if doc.get("trigger") == "request":
            state = parse_probe(host, doc, observed_at=time.monotonic())
            if state.status != "ready" or state.load is None:
                raise RuntimeError(f"{host}: not ready: {state.error}")
            return


async def measure(inventory_path: str, rounds: int) -> dict[str, Any]:
    inventory = load_inventory(inventory_path)
    async with Pool.from_inventory(inventory) as pool:
        clients = [NodeClient(pool, h) for h in inventory.hosts]
        await asyncio.gather(*(c.probe() for c in clients))  # connected, runtime in place
        streams = [(c.host.name, pool.stream(c.host, await c._argv("probe", "--stream", "--interval", "3600"),
                                              watches_stdin=True)) for c in clients]
        try:
            await asyncio.gather(*(lines.open() for _, lines in streams))
            await asyncio.gather(*(lines.__anext__() for _, lines in streams))  # the first documents
            walls, cpus = [], []
            for _ in range(rounds):
                wall, cpu = time.perf_counter(), time.process_time()
                await asyncio.gather(*(lines.send(b"\n") for _, lines in streams))
                await asyncio.wait_for(asyncio.gather(*(_fresh(name, lines) for name, lines in streams)), 30)
                walls.append(time.perf_counter() - wall)
                cpus.append(time.process_time() - cpu)
        finally:
            await asyncio.gather(*(lines.close() for _, lines in streams), return_exceptions=True)
    return {"hosts": len(clients), "rounds_s": walls, "cpu_s": cpus, "median_s": statistics.median(walls)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python3 -m bench.probe_round", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("inventory")
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    result = asyncio.run(measure(args.inventory, args.rounds))
    if args.json:
        print(json.dumps(result))
    else:
        for wall, cpu in zip(result["rounds_s"], result["cpu_s"]):
            print(f"{result['hosts']} hosts: {wall * 1000:.0f} ms (controller CPU {cpu * 1000:.0f} ms)")
        print(f"median {result['median_s'] * 1000:.0f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
