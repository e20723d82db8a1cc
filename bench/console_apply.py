"""What one model update costs the console's UI thread (a benchmark, not a test; no fleet needed).

    python3 -m bench.console_apply --nodes 1000 --gpus 8 --updates 20

The console app is mounted headless (`run_test`, 160x50 by default) on the GPUs view over a fixed
source. Each update is a new ConsoleModel of N nodes x G GPUs in which every GpuRow changed
(utilization, its history, memory, temperature, power), as a busy fleet's refresh does. Timed:

- ``prepare``  `console.tables.prepare(model)`: the cell texts, built in the poll worker's thread
               (not on the UI thread; shown for the whole picture).
- ``apply``    `FlexConsole.apply_model(model, tables)`: what the UI thread does with an update: every
               row compared by key, the visible rows' changed cells updated in place. Wall clock, and
               the thread's CPU time (`time.thread_time`: what it costs when the machine is loaded).
- ``frame``    apply plus the repaint that follows (until the app is idle again).
- peer ``rebuild``: the same rows through a DataTable cleared and refilled (what "in place" avoids),
               measured in the same run, a few rounds; the ratio rebuild/apply is printed.

Nothing is asserted; the issue's target is apply under 50 ms for 1,000 x 8.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

from console.app import FlexConsole
from console.model import ConsoleModel, GpuRow, NodeRow
from console.tables import prepare
from console.widgets.table import KeyedTable

GIB = 2**30
NOW = 1_700_000_000.0


def fleet(nodes: int, gpus: int, tick: int) -> ConsoleModel:
    """N nodes x G GPUs at refresh number tick: every GPU's metrics differ from the tick before."""
    node_rows = tuple(NodeRow(key=f"gpu{n:04d}", state="ready", error=None, datacenter="dc1", rack=f"r{n % 40}",
                              load=1.0 + (n + tick) % 7, cpus=96, cpus_used=48.0, memory_total=1024 * GIB,
                              memory_used=(300 + (n + tick) % 200) * GIB, gpus_total=gpus, gpus_busy=gpus,
                              gpu_reason=None, allocations=gpus, rtt=0.002, last_seen=NOW + tick - 1)
                      for n in range(nodes))
    gpu_rows = tuple(gpu(n, i, tick, gpus) for n in range(nodes) for i in range(gpus))
    return ConsoleModel(now=NOW + tick, inventory="inventory/big.yaml", state="state.db",
                        source="running the loop here", data_age=1.0, nodes=node_rows, gpus=gpu_rows)


def gpu(n: int, i: int, tick: int, per_node: int) -> GpuRow:
    """One GPU's row at tick: utilization moves every tick, and everything with it."""
    def util(t: int) -> float:
        return float((n * 7 + i * 13 + t * 17) % 101)

    u = util(tick)
    return GpuRow(key=f"gpu{n:04d}/{i}", node=f"gpu{n:04d}", index=i, model="NVIDIA H100 80GB HBM3", utilization=u,
                  history=tuple(util(t) for t in range(tick - 29, tick + 1)), memory_used=int(u / 100 * 80 * GIB),
                  memory_total=80 * GIB, temperature=35 + u / 2, power_draw=70 + u * 6, power_limit=700.0,
                  ecc_uncorrected=0, is_healthy=True, error=None, job=f"train{n % 50}",
                  alloc=f"train{n % 50}-{n * per_node + i}-abcdef", pids=(10000 + n * per_node + i,))


class FixedSource:
    """Serves one model; the benchmark applies the others itself."""

    source_label = "running the loop here"

    def __init__(self, model: ConsoleModel) -> None:
        self.model = model

    def start(self) -> None:
        """Nothing to start."""

    def poll(self) -> ConsoleModel:
        return self.model

    def request(self, kind: str, target: str) -> str:
        return "not here"

    def logs(self, alloc_id: str, **_: Any) -> list[str]:
        return []

    def follow(self, alloc_id: str) -> Iterator[dict[str, Any]]:
        yield {"end": True, "exit_code": 0}

    def stop(self) -> None:
        """Nothing to stop."""


def calibration() -> float:
    """Seconds a plain 1M-step Python loop takes here (about 0.03-0.05 s on a quiet modern core), to read
    the numbers against: on a loaded machine every figure grows by the same factor."""
    started = time.perf_counter()
    total = 0
    for i in range(1_000_000):
        total += i
    return time.perf_counter() - started


def summary(name: str, samples: list[float]) -> str:
    ms = [s * 1000 for s in samples]
    return f"{name:<8} median {statistics.median(ms):8.1f} ms   max {max(ms):8.1f} ms   ({len(ms)} samples)"


async def measure(args: argparse.Namespace) -> None:
    width, height = (int(x) for x in args.size.split("x"))
    first = fleet(args.nodes, args.gpus, 0)
    app = FlexConsole(FixedSource(first), interval=3600.0)
    async with app.run_test(size=(width, height)) as pilot:
        while app.updates == 0:
            await pilot.pause(0.05)
        started = time.perf_counter()
        await pilot.press("2")
        await pilot.pause()
        table = app.screen.query_one(KeyedTable)
        while table.row_count < args.nodes * args.gpus:
            await pilot.pause(0.05)
        await pilot.pause()
        print(f"{args.nodes} nodes x {args.gpus} GPUs = {table.row_count} GPU rows, {width}x{height}; "
              f"first fill {time.perf_counter() - started:.2f} s")
        prepared, applied, applied_cpu, framed = [], [], [], []
        for tick in range(1, args.updates + 1):
            model = fleet(args.nodes, args.gpus, tick)
            t0 = time.perf_counter()
            tables = prepare(model)
            t1, c1 = time.perf_counter(), time.thread_time()
            app.apply_model(model, tables)
            t2, c2 = time.perf_counter(), time.thread_time()
            await pilot.pause()
            t3 = time.perf_counter()
            prepared.append(t1 - t0)
            applied.append(t2 - t1)
            applied_cpu.append(c2 - c1)
            framed.append(t3 - t1)
        rebuilt = []
        for tick in range(args.updates + 1, args.updates + 1 + args.rebuilds):
            rows = prepare(replace(fleet(args.nodes, args.gpus, tick), nodes=())).gpus
            t0 = time.perf_counter()
            table.clear()
            for row in rows:
                table.add_row(*row.cells, key=row.key)
            rebuilt.append(time.perf_counter() - t0)
            await pilot.pause()
    print(f"calibration: a 1M-step Python loop takes {calibration() * 1000:.0f} ms here "
          "(a quiet modern core: 30-50 ms)")
    print(summary("prepare", prepared) + "   (poll worker thread)")
    print(summary("apply", applied) + "   (UI thread, wall clock)")
    print(summary("apply", applied_cpu) + "   (UI thread, CPU time: without waiting for a busy machine)")
    print(summary("frame", framed) + "   (apply + repaint until idle)")
    print(summary("rebuild", rebuilt) + "   (peer: clear() + add_row for every row)")
    wall, cpu = statistics.median(applied), statistics.median(applied_cpu)
    print(f"rebuild / apply (medians): {statistics.median(rebuilt) / wall:.0f}x; target apply < 50 ms: "
          f"wall-clock median {'met' if wall < 0.05 else 'NOT met'}, CPU-time median {'met' if cpu < 0.05 else 'NOT met'}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=1000)
    parser.add_argument("--gpus", type=int, default=8)
    parser.add_argument("--updates", type=int, default=20)
    parser.add_argument("--rebuilds", type=int, default=3, help="rounds of the clear-and-refill peer")
    parser.add_argument("--size", default="160x50", help="terminal size, WIDTHxHEIGHT")
    asyncio.run(measure(parser.parse_args()))


if __name__ == "__main__":
    main()
