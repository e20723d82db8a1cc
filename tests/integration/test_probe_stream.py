"""The streaming probe over real SSH: one long-lived channel per node, a document every interval AND
at once when an allocation exits, so detection latency is the node's local poll, not the interval."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any, Callable

from deployer.inventory import load_inventory
from deployer.models import JobSpec
from deployer.nodeclient import Launch, NodeClient
from deployer.transport import Pool
from tests.integration.test_node_fleet import settings

INTERVAL = 10.0  # long on purpose: an exit must not wait for it


async def first_exit(client: NodeClient, alloc_id: str, launched: asyncio.Event) -> tuple[float, Any]:
    """Read the stream until alloc_id is seen exited; returns (monotonic time seen, observation)."""
    async for state in client.probe_stream(interval=INTERVAL):
        launched.set()
        observed = state.allocations.get(alloc_id)
        if observed is not None and observed.status == "exited":
            return time.monotonic(), observed
    raise AssertionError("the probe stream ended before the exit was seen")


async def stream_sees_exit(fleet: Any, tmp_path: Path) -> tuple[float, Any, int]:
    inventory = load_inventory(fleet.inventory_path)
    host = inventory.hosts[0]
    async with Pool([host], settings(tmp_path)) as pool:
        client = NodeClient(pool, host)
        await client.install()
        launched = asyncio.Event()
        watcher = asyncio.create_task(first_exit(client, "quick.0.s1", launched))
        await asyncio.wait_for(launched.wait(), 20)  # the stream's first document arrived
        # one process on the node: flexnode reads the channel itself, no watchdog interpreter beside it
        ps = fleet.hosts[0].exec(["ps", "-eo", "args="], check=True).stdout.splitlines()
        assert len([p for p in ps if "probe --stream" in p]) == 1 and not any("-I -S -c" in p for p in ps), ps
        job = JobSpec(name="quick", command=("/bin/sh", "-c", "sleep 0.5; exit 3"))
        await client.launch(Launch("quick.0.s1", job))
        started = time.monotonic()
        seen_at, observed = await asyncio.wait_for(watcher, INTERVAL)
        return seen_at - started, observed, pool.handshakes(host)


def test_an_exit_reaches_the_controller_at_once_not_at_the_next_interval(
        make_fleet: Callable[..., Any], tmp_path: Path) -> None:
    fleet = make_fleet(1)
    latency, observed, handshakes = asyncio.run(stream_sees_exit(fleet, tmp_path))
    assert observed.exit_code == 3 and not observed.is_alive
    # the workload itself lives 0.5 s; everything above that is detection, far below the interval
    assert latency < INTERVAL / 2, f"exit seen after {latency:.2f}s"
    assert handshakes == 1, "stream, install and launch must share one SSH connection"
    # closing the stream (and the connection) must end the node-side stream too: nothing left running
    deadline = time.monotonic() + 10
    while fleet.hosts[0].exec(["pgrep", "-f", "probe --stream"]).returncode == 0:
        assert time.monotonic() < deadline, "the node-side probe stream outlived its channel"
        time.sleep(0.1)


async def close_without_waiting(fleet: Any, tmp_path: Path) -> None:
    """What a CLI verb does before it exits (Controller.close with wait_on_close False): the connection
    closes under the open stream, without waiting for it."""
    inventory = load_inventory(fleet.inventory_path)
    host = inventory.hosts[0]
    pool = Pool([host], settings(tmp_path))
    client = NodeClient(pool, host)
    stream = client.probe_stream(interval=INTERVAL)
    assert (await asyncio.wait_for(stream.__anext__(), 30)).is_ready
    reader = asyncio.ensure_future(stream.__anext__())
    await pool.close(wait=False)
    await asyncio.gather(reader, return_exceptions=True)  # the stream ended with its connection
    await stream.aclose()


def test_a_connection_closed_without_waiting_still_ends_the_node_s_stream(
        make_fleet: Callable[..., Any], tmp_path: Path) -> None:
    fleet = make_fleet(1)
    asyncio.run(close_without_waiting(fleet, tmp_path))
    deadline = time.monotonic() + 10
    while fleet.hosts[0].exec(["pgrep", "-f", "probe --stream"]).returncode == 0:
        assert time.monotonic() < deadline, "the node-side probe stream outlived its connection"
        time.sleep(0.1)
