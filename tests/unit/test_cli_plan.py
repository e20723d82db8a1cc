"""`flex plan` as an operator meets it: exit codes like `nomad job plan` (0 no change, 1 changes, 2 bad
input), the key diff, the placement preview from recorded node states, the --json shape, and that it
writes nothing, against a real state database in tmp_path and the embedded inventory."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from deployer.cli import main
from deployer.commands.plan import leaf_changes, node_from_record
from deployer.controller import node_record
from deployer.models import (
    NODE_READY,
    AllocationObservation,
    GpuProcess,
    GpuState,
    HealthResult,
    JobSpec,
    NodeState,
)
from deployer.spec import load_jobs
from deployer.store import Store

ROOT = Path(__file__).resolve().parents[2]
INVENTORY = str(ROOT / "inventory" / "local.yaml")  # hosts node1 and node2
WEBAPP = ROOT / "playbooks" / "webapp.yaml"  # service, count 2, one dynamic port "http"
GIB = 1024**3


def webapp() -> JobSpec:
    return load_jobs([WEBAPP])[0]


def submit(db: Path, spec: JobSpec, *, stopped: bool = False) -> None:
    """Put the job into the state database the way `flex push` does."""
    with Store.open(db) as store:
        store.put_job(spec, WEBAPP.read_text(), str(WEBAPP))
        if stopped:
            store.set_job_desired(spec.name, "stop")


def ready_nodes(db: Path, *names: str) -> None:
    """Record a ready observation (2 cpus, 4 GiB) of each node, as the controller saves it."""
    with Store.open(db) as store:
        for name in names:
            state = NodeState(name, status=NODE_READY, cpus=2, memory_total=4 * GIB, memory_available=3 * GIB)
            store.save_node(name, node_record(state), 1.0)


def plan(db: Path, capsys: pytest.CaptureFixture[str], *extra: str, spec: Path = WEBAPP) -> tuple[int, str]:
    """main(["plan", ...]) against db; (exit code, stdout)."""
    code = main(["plan", INVENTORY, str(spec), "--state", str(db), *extra])
    return code, capsys.readouterr().out


def dump(db: Path) -> list[str]:
    """Every row of every table, as SQL (what "nothing written" compares)."""
    with sqlite3.connect(db) as conn:
        return list(conn.iterdump())


# --- exit codes and what each job is called -----------------------------------------------------------

SEEDS: dict[str, Callable[[Path], None]] = {
    "stored as written": lambda db: submit(db, webapp()),
    "stored with another count": lambda db: submit(db, replace(webapp(), count=3)),
    "stored, then stopped": lambda db: submit(db, webapp(), stopped=True),
}


@pytest.mark.parametrize(("seed", "change", "code"), [
    ("stored as written", "unchanged", 0),
    ("stored with another count", "changed", 1),
    ("stored, then stopped", "started again", 1),
], ids=["an unchanged job exits 0", "a changed job exits 1", "a stopped job that a push starts again exits 1"])
def test_each_job_is_compared_with_the_state_database(seed: str, change: str, code: int, tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    db = tmp_path / "s.db"
    SEEDS[seed](db)
    exit_code, out = plan(db, capsys)
    assert exit_code == code
    assert f"webapp (service): {change}" in out
    assert ("no changes" in out) == (code == 0)


def test_a_changed_job_names_the_keys_that_differ(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    db = tmp_path / "s.db"
    stored = webapp()
    submit(db, replace(stored, count=3, resources=replace(stored.resources, cpus=1.0)))
    code, out = plan(db, capsys, "--json")
    assert code == 1
    doc = json.loads(out)["jobs"]["webapp"]
    assert sorted(doc["diff"]) == ["count", "resources"]
    assert doc["diff"]["count"] == {"before": 3, "after": 2}
    _, text = plan(db, capsys)
    assert "~ count: 3 => 2" in text and "~ resources.cpus: 1.0 => 0.2" in text


def test_no_state_database_yet_means_every_job_is_new_and_none_is_created(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    db = tmp_path / "never" / "s.db"
    code, out = plan(db, capsys)
    assert code == 1
    assert "+ webapp (service): new" in out and "no node state recorded yet" in out
    assert not db.parent.exists()


@pytest.mark.parametrize("spec_text", [None, "name: broken\nkind: nope\n"],
                         ids=["a missing spec file exits 2", "an invalid spec exits 2"])
def test_bad_input_exits_2_and_names_the_file(spec_text: str | None, tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    spec = tmp_path / "job.yaml"
    if spec_text is not None:
        spec.write_text(spec_text)
    code = main(["plan", INVENTORY, str(spec), "--state", str(tmp_path / "s.db")])
    assert code == 2
    assert str(spec) in capsys.readouterr().err


# --- the placement preview ---------------------------------------------------------------------------------

def test_the_preview_places_a_new_job_on_the_recorded_ready_nodes(tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    db = tmp_path / "s.db"
    ready_nodes(db, "node1", "node2")
    code, out = plan(db, capsys, "--json")
    assert code == 1
    placement = json.loads(out)["jobs"]["webapp"]["placement"]
    assert sorted(a["node"] for a in placement["assignments"]) == ["node1", "node2"]
    assert all("http" in a["ports"] for a in placement["assignments"]) and placement["failure"] is None


def test_the_preview_says_why_allocations_cannot_be_placed(tmp_path: Path,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    db = tmp_path / "s.db"
    ready_nodes(db, "node1")  # node2 never observed
    with Store.open(db) as store:
        store.cordon("node1", "ops@h")
    code, out = plan(db, capsys)
    assert code == 1
    assert "! 0/2 nodes fit webapp" in out and "cordoned" in out


# --- --json and writing nothing ---------------------------------------------------------------------------

def test_json_has_one_entry_per_job_with_change_diff_and_placement(tmp_path: Path,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    db = tmp_path / "s.db"
    submit(db, webapp())
    code, out = plan(db, capsys, "--json")
    doc: dict[str, Any] = json.loads(out)
    assert code == 0
    assert doc["changes"] is False and doc["state"] == str(db) and doc["state_exists"] is True
    assert doc["jobs"]["webapp"] == {"kind": "service", "change": "unchanged", "version": webapp().fingerprint,
                                     "previous_version": webapp().fingerprint, "placement": None, "diff": {}}


def test_plan_writes_nothing_to_the_state_database(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    db = tmp_path / "s.db"
    submit(db, replace(webapp(), count=1))
    ready_nodes(db, "node1", "node2")
    before = dump(db)
    for extra in ((), ("--json",)):
        assert plan(db, capsys, *extra)[0] == 1
    assert dump(db) == before


# --- pure helpers ----------------------------------------------------------------------------------------

def test_a_stored_node_observation_reads_back_as_the_same_node_state() -> None:
    state = NodeState(
        "n1", status=NODE_READY, observed_at=12.5, boot_id="b", cpus=8, load=(0.5, 0.25, 0.0),
        memory_total=64 * GIB, memory_available=60 * GIB, gpus_known=True,
        gpus=(GpuState(0, uuid="GPU-0", name="NVIDIA H100", memory_total=80 * GIB,
                       processes=(GpuProcess(42, 1024, "web-0-abc"),)),
              GpuState(1, is_healthy=False, error="lost")),
        allocations={"web-0-abc": AllocationObservation("web-0-abc", "running", is_alive=True, pid=42, launches=2,
                                                        health=HealthResult(True, "200", 3.0))},
        orphans=({"pgid": 7, "alloc_id": "old-0-x"},))
    stored = json.loads(json.dumps(node_record(state)))  # as the store keeps it
    assert node_from_record(stored) == state


@pytest.mark.parametrize(("before", "after", "expected"), [
    (1, 2, [("k", 1, 2)]),
    ({"a": 1, "b": 2}, {"a": 1, "b": 3}, [("k.b", 2, 3)]),
    ({"a": {"x": 1}}, {"a": {"x": 1}, "c": 4}, [("k.c", None, 4)]),
    ([1, 2], [1, 3], [("k", [1, 2], [1, 3])]),
], ids=["a scalar is one change", "a mapping names the inner key", "a new inner key is a change from absent",
        "a list is compared whole"])
def test_leaf_changes(before: Any, after: Any, expected: list[tuple[str, Any, Any]]) -> None:
    assert leaf_changes("k", before, after) == expected
