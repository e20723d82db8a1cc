"""The state verbs as an operator meets them: status, events and the intents (restart, stop, drain,
cordon, uncordon), against a real state database in tmp_path and the embedded inventory."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from deployer.cli import main
from deployer.commands import actor
from deployer.commands import events as events_verb
from deployer.commands.events import local_time, render_event
from deployer.commands.status import render_allocations, render_header, render_nodes
from deployer.models import Allocation, JobSpec, frozen_mapping
from deployer.store import Event, JobRecord, Lease, NodeRecord, Store

ROOT = Path(__file__).resolve().parents[2]
INVENTORY = str(ROOT / "inventory" / "local.yaml")  # hosts node1 and node2


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "s.db"


@pytest.fixture
def store(db: Path) -> Iterator[Store]:
    with Store.open(db) as opened:
        yield opened


def alloc(id: str, job: str = "web", observed: str = "running", **kw: Any) -> Allocation:
    return Allocation(id=id, job=job, node=kw.pop("node", "node1"), observed_status=observed, **kw)


def seed(store: Store, jobs: list[JobSpec], allocs: list[Allocation], pending: dict[str, str] | None = None,
         stopped: tuple[str, ...] = ()) -> None:
    """Jobs (desired run unless named in stopped), allocations and pending reasons, in one transaction."""
    with store.transaction() as tx:
        for spec in jobs:
            tx.put_job(spec, raw_yaml="", source=f"{spec.name}.yaml")
        for name in stopped:
            tx.set_job_desired(name, "stop")
        tx.save_allocations(allocs)
        for job, reason in (pending or {}).items():
            tx.set_job_status(job, reason)


def web_fleet(store: Store) -> None:
    """web (count 2): web-0 running on node1, web-1 crash-looping on node2; the store also knows node2 and
    `retired` (drained by ops@h, no longer in the inventory)."""
    seed(store, [JobSpec(name="web", command=("sleep", "1"), count=2)],
         [alloc("web-0"), alloc("web-1", observed="exited", node="node2", index=1, restarts=3, exit_code=3)])
    with store.transaction() as tx:
        tx.append_event("crash_loop", "crash-looping: restart 3 in 8s", job="web", alloc="web-1", node="node2")
        tx.save_node("node2", {"status": "unreachable", "error": "connection refused"})
        tx.save_node("retired", {"status": "ready"})  # left the inventory, still in the store
        tx.request_drain("retired", "ops@h")


def flex(db: Path, *argv: str) -> int:
    """main() with --state db (and the embedded inventory for verbs taking -i)."""
    inventory = ["-i", INVENTORY] if argv[0] in ("restart", "stop", "drain", "cordon", "uncordon") else [INVENTORY]
    return main([*argv, *inventory, "--state", str(db)])


# --- intents ---------------------------------------------------------------------------------------------

def job(s: Store, name: str = "web") -> JobRecord:
    found = s.get_job(name)
    assert found is not None
    return found


def node(s: Store, name: str) -> NodeRecord:
    found = s.get_node(name)
    assert found is not None
    return found


INTENTS: list[tuple[list[str], str, Callable[[Store], bool]]] = [
    (["restart", "web"], "job web", lambda s: job(s).restart_generation == 1),
    (["restart", "web-1"], "allocation web-1", lambda s: [a.generation for a in s.allocations()] == [0, 1]),
    (["stop", "web"], "job web", lambda s: job(s).desired == "stop"),
    (["drain", "node1"], "node node1", lambda s: node(s, "node1").draining),
    (["cordon", "node2"], "node node2", lambda s: node(s, "node2").cordoned),
    (["cordon", "node1/1"], "GPU 1 of node node1", lambda s: node(s, "node1").cordoned_gpus == (1,)),
    (["uncordon", "retired"], "node retired",
     lambda s: (node(s, "retired").cordoned, node(s, "retired").draining) == (False, False)),
]


@pytest.mark.parametrize("argv, what, took_effect", INTENTS, ids=[
    "restart of a job bumps its generation", "restart of an allocation bumps only its own",
    "stop sets the job desired stop", "drain flags an inventory node", "cordon flags a node the store knows",
    "cordon of NODE/GPU cordons that GPU", "uncordon accepts a node only the store still knows"])
def test_an_intent_is_written_once_with_the_actor_and_says_who_applies_it(
        db: Path, store: Store, capsys: pytest.CaptureFixture[str], argv: list[str], what: str,
        took_effect: Callable[[Store], bool]) -> None:
    web_fleet(store)
    before = len(store.intents())
    assert flex(db, *argv) == 0
    [intent] = store.intents()[before:]
    assert (intent.kind, intent.target, intent.actor, intent.applied_at) == (argv[0], argv[1], actor(), None)
    assert took_effect(store)
    out = capsys.readouterr().out
    assert out.count("\n") == 1 and f"{argv[0]} of {what} requested" in out
    assert "no controller is running: the next `flex push` or `flex controller` applies it" in out


@pytest.mark.parametrize("argv, named", [
    (["restart", "nope"], "'nope'"), (["stop", "nope"], "'nope'"), (["stop", "web-0"], "'web-0'"),
    (["drain", "node9"], "'node9'"), (["drain", "node1/0"], "'node1/0'"), (["cordon", "node9/0"], "'node9'"),
    (["cordon", "node1/x"], "'node1/x'"), (["uncordon", "ghost"], "'ghost'"),
], ids=["restart of an unknown job", "stop of an unknown job", "stop of an allocation (stop takes a job)",
        "drain of an unknown node", "drain of a GPU", "cordon of a GPU on an unknown node",
        "cordon of a GPU that is not an index", "uncordon of an unknown node"])
def test_an_unknown_target_is_refused_with_exit_2_naming_it_and_nothing_is_written(
        db: Path, store: Store, capsys: pytest.CaptureFixture[str], argv: list[str], named: str) -> None:
    web_fleet(store)
    before = (store.intents(), store.jobs(), store.allocations(), store.nodes())
    assert flex(db, *argv) == 2
    err = capsys.readouterr().err
    assert named in err and "fix:" in err and "Traceback" not in err
    assert (store.intents(), store.jobs(), store.allocations(), store.nodes()) == before


def test_an_intent_names_the_controller_holding_the_lease(db: Path, store: Store,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    web_fleet(store)
    with store.transaction() as tx:
        tx.acquire_lease("ctl-1", ttl=3600, now=time.time(), pid=42, hostname="box")
    assert flex(db, "restart", "web") == 0
    out = capsys.readouterr().out
    assert "the controller ctl-1 (pid 42 on box) applies it on its next pass" in out and "no controller" not in out


def test_an_intent_with_json_prints_the_intent(db: Path, store: Store, capsys: pytest.CaptureFixture[str]) -> None:
    web_fleet(store)
    assert flex(db, "cordon", "node1/0", "--json") == 0
    doc = json.loads(capsys.readouterr().out)
    assert {k: doc[k] for k in ("id", "kind", "target", "actor")} == \
        {"id": store.intents()[-1].id, "kind": "cordon", "target": "node1/0", "actor": actor()}


# --- status ----------------------------------------------------------------------------------------------

WEB2 = JobSpec(name="web", command=("sleep", "1"), count=2)
ETL = JobSpec(name="etl", command=("true",), kind="batch")
AGENT = JobSpec(name="agent", command=("true",), kind="system")

STATUS_CASES: list[tuple[list[JobSpec], list[Allocation], tuple[str, ...], int, str]] = [
    ([WEB2], [alloc("web-0"), alloc("web-1", index=1)], (), 0, "healthy"),
    ([WEB2], [alloc("web-0"), alloc("web-1", observed="exited")], (), 1, "degraded"),
    ([WEB2], [alloc("web-0")], (), 1, "degraded"),
    ([WEB2], [alloc("web-0", observed="failed"), alloc("web-1", observed="failed")], (), 1, "down"),
    ([WEB2], [alloc("web-0", observed="pending"), alloc("web-1", observed="starting")], (), 1, "starting"),
    ([ETL], [alloc("etl-0", job="etl", observed="complete")], (), 0, "complete"),
    ([WEB2], [alloc("web-0", observed="complete"), alloc("web-1")], (), 1, "degraded"),
    ([WEB2], [alloc("web-0", desired_status="stop", observed="stopped")], ("web",), 0, "stopped"),
    ([AGENT], [alloc("agent-0", job="agent"), alloc("agent-1", job="agent", node="node2")], (), 0, "healthy"),
]


@pytest.mark.parametrize("jobs, allocs, stopped, code, health", STATUS_CASES, ids=[
    "every allocation running exits 0", "an exited allocation exits 1", "fewer allocations than count exits 1",
    "every allocation failed is down", "allocations still starting exit 1", "a complete batch job exits 0",
    "a complete service allocation is not running", "a job desired stopped exits 0",
    "a system job wants what it placed"])
def test_status_exit_code_and_health(db: Path, store: Store, capsys: pytest.CaptureFixture[str],
                                     jobs: list[JobSpec], allocs: list[Allocation], stopped: tuple[str, ...],
                                     code: int, health: str) -> None:
    seed(store, jobs, allocs, stopped=stopped)
    assert flex(db, "status") == code
    job_line = next(ln for ln in capsys.readouterr().out.splitlines() if ln.startswith(jobs[0].name + " "))
    assert job_line.split()[-1] == health


def test_status_shows_the_pending_sentence_under_its_job(db: Path, store: Store,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    reason = "no node has 4 free GPUs: 2 nodes filtered by gpus"
    seed(store, [JobSpec(name="train", command=("true",))], [], pending={"train": reason})
    assert flex(db, "status") == 1
    lines = capsys.readouterr().out.splitlines()
    at = next(i for i, ln in enumerate(lines) if ln.startswith("train "))
    assert lines[at].split()[-1] == "pending" and lines[at + 1] == f"  pending: {reason}"


def test_status_shows_the_controllers_reason_under_an_allocation_not_running(
        db: Path, store: Store, capsys: pytest.CaptureFixture[str]) -> None:
    web_fleet(store)
    with store.transaction() as tx:
        tx.append_event("started", "started web-0", job="web", alloc="web-0", node="node1")
    assert flex(db, "status") == 1
    lines = capsys.readouterr().out.splitlines()
    at = next(i for i, ln in enumerate(lines) if ln.startswith("web-1 "))
    assert lines[at + 1] == "  crash_loop: crash-looping: restart 3 in 8s"
    assert not any("started web-0" in ln for ln in lines), "a running allocation needs no reason"
    assert lines[:2] == [f"state:      {db}", "controller: no controller running"]


def test_status_json_is_plain_json_with_every_section(db: Path, store: Store,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    web_fleet(store)
    assert flex(db, "status", "--json") == 1
    doc = json.loads(capsys.readouterr().out)
    assert set(doc) == {"state", "controller", "jobs", "allocations", "nodes"}
    assert doc["controller"] is None and doc["state"] == str(db)
    [web] = doc["jobs"]
    assert (web["running"], web["wanted"], web["restarts"], web["is_ok"]) == (1, 2, 3, False)
    assert [a["id"] for a in doc["allocations"]] == ["web-0", "web-1"]
    assert doc["allocations"][1]["last_event"] == "crash_loop: crash-looping: restart 3 in 8s"
    assert {n["name"]: (n["status"], n["allocations"]) for n in doc["nodes"]} == \
        {"node2": ("unreachable", 1), "retired": ("ready", 0)}


def test_status_of_an_empty_database_says_how_to_start(db: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert flex(db, "status") == 0
    assert f"no jobs yet: `flex push {INVENTORY}`" in capsys.readouterr().out


def test_status_help_documents_the_exit_status() -> None:
    out = subprocess.run([sys.executable, "-m", "deployer.cli", "status", "--help"], capture_output=True,
                         text=True, cwd=ROOT)
    assert out.returncode == 0 and "Exit status: 0 when every job" in out.stdout


def test_render_header_names_the_controller_and_since_when() -> None:
    lease = Lease(owner="ctl", pid=7, hostname="h", acquired_at=1000.0, renewed_at=1001.0, expires_at=1010.0)
    assert render_header("s.db", lease)[1] == f"controller: ctl (pid 7 on h) since {local_time(1000.0)}"


def test_render_allocations_hides_history_unless_asked() -> None:
    allocs = [alloc("web-0"), alloc("web-old", desired_status="stop", observed="stopped"),
              alloc("web-going", desired_status="stop", observed="running", gpus=(0, 1),
                    ports=frozen_mapping({"http": 8080}))]
    lines = render_allocations(allocs, {})
    assert [ln.split()[0] for ln in lines[1:-1]] == ["web-0", "web-going"]
    assert lines[-1] == "(1 stopped or finished allocation hidden: --all lists them)"
    assert lines[2].split()[-2:] == ["0,1", "http=8080"]
    assert len(render_allocations(allocs, {}, show_all=True)) == 4


@pytest.mark.parametrize("node, row, below", [
    (NodeRecord("n1"), "n1 unknown 2 -", None),
    (NodeRecord("n1", cordoned=True, draining=True, last_state={"status": "ready", "error": "old"}),
     "n1 ready 2 cordoned, draining", None),
    (NodeRecord("n1", cordoned_gpus=(0, 3), last_state={"status": "untrusted", "error": "key changed\n fix"}),
     "n1 untrusted 2 gpus 0,3 cordoned", "  key changed"),
], ids=["a node never probed is unknown", "operator flags are listed", "an untrusted node shows why"])
def test_render_nodes(node: NodeRecord, row: str, below: str | None) -> None:
    allocs = [alloc("a", node="n1"), alloc("b", node="n1"), alloc("c", node="n1", observed="complete"),
              alloc("d", node="n2")]
    lines = render_nodes([node], allocs)
    assert " ".join(lines[1].split()) == row
    assert (lines[2] if len(lines) > 2 else None) == below


# --- events ----------------------------------------------------------------------------------------------

def log(store: Store, count: int, job: str = "web", every: int = 1) -> None:
    """count events; every `every`-th belongs to job, the others to 'noise'."""
    with store.transaction() as tx:
        for i in range(count):
            tx.append_event("placed", f"event {i}", job=job if i % every == 0 else "noise", alloc=f"a{i}",
                            node="node1", actor="al@h" if i == 0 else None, time=1000.0 + i)


@pytest.mark.parametrize("argv, messages", [
    ([], [f"event {i}" for i in range(10, 60)]),
    (["-n", "3"], ["event 57", "event 58", "event 59"]),
    (["-n", "2", "--job", "web"], ["event 40", "event 50"]),
    (["--job", "web"], [f"event {i}" for i in range(0, 60, 10)]),
    (["-n", "0"], []),
], ids=["the last 50 by default", "the last N, oldest first", "the last N of a job found far back",
        "every event of a job when fewer than N", "none with -n 0"])
def test_events_shows_the_last_n_oldest_first(db: Path, store: Store, capsys: pytest.CaptureFixture[str],
                                              argv: list[str], messages: list[str]) -> None:
    log(store, 60, every=10)
    assert flex(db, "events", *argv) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [ln.split(maxsplit=5)[-1].removesuffix(" [by al@h]") for ln in lines] == messages


def test_an_event_line_has_local_time_kind_job_alloc_node_message_and_actor() -> None:
    event = Event(seq=1, time=1000.0, kind="intent", message="restart web", job="web", actor="al@h")
    assert render_event(event).split() == [local_time(1000.0), "intent", "web", "-", "-", "restart", "web",
                                           "[by", "al@h]"]


def test_events_json_is_one_object_per_line(db: Path, store: Store, capsys: pytest.CaptureFixture[str]) -> None:
    log(store, 3)
    assert flex(db, "events", "--json") == 0
    docs = [json.loads(ln) for ln in capsys.readouterr().out.splitlines()]
    assert [(d["seq"], d["message"], d["actor"]) for d in docs] == \
        [(1, "event 0", "al@h"), (2, "event 1", None), (3, "event 2", None)]


def test_events_follow_prints_new_events_until_ctrl_c_then_exits_0(
        db: Path, store: Store, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    log(store, 2)
    polls: list[float] = []

    def sleep(seconds: float) -> None:
        polls.append(seconds)
        if len(polls) == 1:
            store.append_event("restarted", "late arrival", job="web")
        elif len(polls) == 1 + 1:
            store.append_event("restarted", "other job", job="etl")
        else:
            raise KeyboardInterrupt

    monkeypatch.setattr(events_verb.time, "sleep", sleep)
    assert flex(db, "events", "-f", "-n", "1", "--job", "web") == 0
    out, err = capsys.readouterr()
    assert [ln.split()[-1] for ln in out.splitlines()] == ["1", "arrival"] and err == ""
    assert polls == [events_verb.FOLLOW_INTERVAL] * 3


def test_a_negative_limit_is_refused(db: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert flex(db, "events", "-n", "-1") == 2
    assert "--limit -1" in capsys.readouterr().err
