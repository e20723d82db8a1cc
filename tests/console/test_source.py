"""console/source.py on the embedded local inventory (two nodes on this machine, no SSH): the console
runs the loop when no controller does, shows a job running, restarts an allocation through an intent,
reads its logs, and gives the lease back on stop. Flex roots and the state database live in tmp_path;
every workload is stopped before the test ends, and killed by its recorded identity if a step failed."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from console import protocol
from console.model import ConsoleModel, JobRow
from console.source import RUNNING_HERE, Source
from deployer.controller import ControllerSettings
from deployer.errors import ConfigError
from deployer.spec import load_job
from deployer.store import Store
from tests.integration.test_cli_local import kill_leftovers

ROOT = Path(__file__).resolve().parents[2]
FAST = ControllerSettings(probe_interval=0.3, max_pass_interval=0.3, stale_after=2.0)
SERVICE = """name: hello
kind: service
command: [python3, -c, "import time; print('hi', flush=True); time.sleep(600)"]
resources: {cpus: 0.1, memory: 32MiB}
"""


@pytest.fixture
def paths(tmp_path: Path) -> Iterator[tuple[str, str]]:
    """(inventory, state): inventory/local.yaml with its flex roots in tmp_path and no playbooks."""
    doc = yaml.safe_load((ROOT / "inventory" / "local.yaml").read_text())
    del doc["all"]["vars"]["flex_playbooks"]
    hosts = doc["all"]["children"]["local"]["hosts"]
    for name, host in hosts.items():
        host["flex_root"] = str(tmp_path / name)
    inventory = tmp_path / "inventory.yaml"
    inventory.write_text(yaml.safe_dump(doc))
    try:
        yield str(inventory), str(tmp_path / "state.db")
    finally:
        kill_leftovers(tuple(tmp_path / name for name in hosts))


def poll_until(source: Source, predicate: Callable[[ConsoleModel], Any], timeout: float, what: str) -> ConsoleModel:
    """Poll until predicate(model) is true; fail naming what was awaited, with the last model's error."""
    deadline = time.monotonic() + timeout
    while True:
        model = source.poll()
        if predicate(model):
            return model
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what} (error: {model.error}, "
                        f"jobs: {model.jobs}, allocations: {model.allocations})")
        time.sleep(0.2)


def job(model: ConsoleModel, name: str) -> JobRow | None:
    return next((j for j in model.jobs if j.key == name), None)


def submit(state: str, tmp: Path) -> None:
    """Put the job into the state database, as `flex push` does."""
    path = tmp / "hello.yaml"
    path.write_text(SERVICE)
    with Store.open(state) as store:
        store.put_job(load_job(path), SERVICE, str(path))


def test_the_console_runs_the_loop_restarts_reads_logs_and_gives_the_lease_back(
        paths: tuple[str, str], tmp_path: Path) -> None:
    inventory, state = paths
    source = Source.open(inventory, state, read_only=False, settings=FAST)
    seam: protocol.Source = source  # what the console's screens are written against (checked by mypy)
    try:
        seam.start()
        assert source.source_label == RUNNING_HERE
        with Store.open(state) as store:
            holder = store.lease_holder(time.time())
        assert holder is not None and holder.pid == os.getpid()
        with Source.open(inventory, state, read_only=False) as other:
            other.start()
            assert other.source_label == f"attached to controller {holder.hostname} pid {os.getpid()}"
            assert not other.is_running_loop

        submit(state, tmp_path)
        model = poll_until(source, lambda m: (j := job(m, "hello")) and (j.running, j.wanted) == (1, 1), 20,
                           "hello running 1/1")
        assert model.source == RUNNING_HERE and model.error is None
        assert {n.key for n in model.nodes} == {"node1", "node2"} and not model.stale_nodes
        alloc = model.allocations[0]
        assert (alloc.job, alloc.observed) == ("hello", "running")

        lines = poll_logs(source, alloc.key)
        assert "hi" in lines

        said = source.request("restart", alloc.key)
        assert said.startswith(f"restart of allocation {alloc.key} requested") and "(console)" in said
        model = poll_until(source, lambda m: any(a.key == alloc.key and a.restarts > alloc.restarts
                                                 and a.observed == "running" for a in m.allocations), 15,
                           f"{alloc.key} restarted")
        with Store.open(state) as store:
            saved = {n.name: n.last_seen or 0.0 for n in store.nodes()}
        # the loop's own observations are newer than the node states it saves (every 15 s while ready)
        assert all(n.last_seen is not None and n.last_seen > saved[n.key] for n in model.nodes)
        assert model.data_age is not None and model.data_age < 2.0
        with pytest.raises(ConfigError, match="no job or allocation named 'nope'"):
            source.request("restart", "nope")
        with pytest.raises(ConfigError, match="no node named 'node9'"):
            source.request("cordon", "node9")

        source.request("stop", "hello")
        model = poll_until(source, lambda m: (j := job(m, "hello")) and j.health == "stopped", 15, "hello stopped")
        docs = list(source.follow(alloc.key))
        assert docs[-1]["end"] is True and "hi" in [line for d in docs for line in d.get("lines", ())]

        started = time.monotonic()
        source.stop()
        assert time.monotonic() - started < 5.0
        with Store.open(state) as store:
            assert store.lease_holder(time.time()) is None
        assert source.poll().source == "no controller" and not source.is_running_loop
    finally:
        source.close()


def poll_logs(source: Source, alloc_id: str) -> list[str]:
    """The allocation's stdout, once it printed something (the workload may not have flushed yet)."""
    deadline = time.monotonic() + 10
    while not (lines := source.logs(alloc_id)) and time.monotonic() < deadline:
        time.sleep(0.2)
    return lines


def test_a_read_only_console_never_runs_the_loop_nor_writes(paths: tuple[str, str]) -> None:
    inventory, state = paths
    with Source.open(inventory, state, read_only=True) as source:
        source.start()
        model = source.poll()
        assert (model.source, model.error, source.is_running_loop) == ("read-only: no controller", None, False)
        assert [(n.key, n.state) for n in model.nodes] == [("node1", "unknown"), ("node2", "unknown")]
        with pytest.raises(ConfigError, match="read-only"):
            source.request("cordon", "node1")
        with Store.open(state) as store:
            assert store.lease_holder(time.time()) is None and store.intents() == []


def test_a_failing_store_read_keeps_the_last_model_with_the_error(paths: tuple[str, str]) -> None:
    inventory, state = paths
    source = Source.open(inventory, state, read_only=True)
    good = source.poll()
    source.store.close()
    failed = source.poll()
    assert failed.error is not None and "state database" in failed.error
    assert failed.nodes == good.nodes and failed.now >= good.now
    assert failed.stale_nodes == {"node1", "node2"}


def test_logs_of_an_unknown_allocation_name_the_fix(paths: tuple[str, str]) -> None:
    inventory, state = paths
    with Source.open(inventory, state, read_only=True) as source, \
            pytest.raises(ConfigError, match="flex status --all"):
        source.logs("nope-0")
