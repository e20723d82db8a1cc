"""deployer/store.py: the SQLite state database (settings, schema, jobs, allocations, events, intents,
restart generations, the controller lease, and errors that name the file and the fix)."""

from __future__ import annotations

import sqlite3
import tempfile
from dataclasses import replace
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from deployer import store as store_module
from deployer.errors import ConfigError, StoreError
from deployer.models import Allocation, JobSpec
from deployer.store import Store, Transaction
from deployer.store_schema import SCHEMA_VERSION, TABLES


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "state" / "flex.db"


@pytest.fixture
def store(db: Path):
    with Store.open(db) as s:
        yield s


def job(name: str = "web", count: int = 1) -> JobSpec:
    return JobSpec(name=name, command=("sleep", "60"), count=count)


def alloc(id: str = "web-0", job: str = "web", **kw) -> Allocation:
    return Allocation(id=id, job=job, node=kw.pop("node", "n1"), **kw)


def controller_pass(store: Store) -> list[str]:
    """The controller-side rule: restart each allocation whose launched_generation is below its target,
    once, then record the target and mark the intents it read applied, all in one transaction."""
    intents = [i.id for i in store.pending_intents() if i.kind == "restart"]  # intents first, then targets:
    due = store.due_restarts()  # a target read later covers every bump whose intent was read
    with store.transaction() as tx:
        for a, target in due:
            tx.save_allocation(replace(a, restarts=a.restarts + 1), launched_generation=target)
        tx.mark_applied(intents, "restarted", now=1.0)
    return [a.id for a, _ in due]


# --- settings and schema -----------------------------------------------------------------------------


def test_the_database_uses_wal_synchronous_full_foreign_keys_and_a_busy_timeout(store: Store) -> None:
    conn = store._conn
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    assert conn.execute("PRAGMA foreign_keys").fetchone()[0] == 1
    assert conn.execute("PRAGMA busy_timeout").fetchone()[0] == 10_000
    assert conn.isolation_level is None  # explicit BEGIN IMMEDIATE, no implicit transactions


def test_the_schema_is_created_once_and_reopening_keeps_the_data(db: Path) -> None:
    with Store.open(db) as s:
        s.put_job(job(), "name: web\n", "web.yaml", now=1.0)
        s.save_allocation(alloc())
        s.append_event("placed", "web-0 on n1", time=2.0)
    with Store.open(db) as s:
        assert s._conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        names = {r[0] for r in s._conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        assert set(TABLES) <= names
        assert [j.name for j in s.jobs()] == ["web"]
        assert [a.id for a in s.allocations()] == ["web-0"]
        assert [e.message for e in s.events()] == ["web-0 on n1"]


# --- jobs --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("first_desired", "second", "changed"), [
    (None, job(), False),
    (None, job(count=3), True),
    ("stop", job(), True),
], ids=["the same spec again is no change",
        "a changed spec is a change and a new version",
        "the same spec of a stopped job runs it again"])
def test_put_job_reports_whether_anything_changed(store: Store, first_desired: str | None, second: JobSpec,
                                                  changed: bool) -> None:
    assert store.put_job(job(), "raw: 1\n", "web.yaml", now=1.0) is True
    if first_desired:
        store.set_job_desired("web", first_desired)
    assert store.put_job(second, "raw: 2\n", "web.yaml", now=2.0) is changed
    record = store.get_job("web")
    assert record is not None
    assert record.version == second.fingerprint and record.desired == "run"
    assert record.raw_yaml == ("raw: 2\n" if changed else "raw: 1\n")
    assert record.spec["count"] == second.count and record.source == "web.yaml"
    assert [v for v, _ in store.job_versions("web")] == list(dict.fromkeys([job().fingerprint,
                                                                            second.fingerprint]))


def test_an_unknown_job_is_a_config_error_with_a_fix(store: Store) -> None:
    with pytest.raises(ConfigError, match="no job named 'nope'"):
        store.request_stop("nope", "me@here")


# --- allocations -------------------------------------------------------------------------------------


def test_an_allocation_round_trips_with_desired_and_observed_apart(store: Store) -> None:
    a = Allocation(id="train-1", job="train", node="gpu7", index=1, job_version="abc", cpus=2.5,
                   memory=1 << 30, gpus=(0, 3), ports={"http": 8080, "master": 29500}, rank=1,
                   desired_status="stop", observed_status="running", generation=2, restarts=4, exit_code=137,
                   created_at=12.5)
    store.save_allocations([a, alloc("web-0")])
    [back] = store.allocations(job="train")
    assert back == a
    assert (back.desired_status, back.observed_status) == ("stop", "running")
    assert store.allocations(node="gpu7") == [a] and len(store.allocations()) == 2
    assert store.allocations(job="train", node="n1") == []


def test_saving_an_allocation_updates_it_and_never_lowers_its_generations(store: Store) -> None:
    store.save_allocation(alloc(generation=2), launched_generation=2)
    store.save_allocation(alloc(generation=0, observed_status="running"))  # a stale copy in memory
    [back] = store.allocations()
    assert back.observed_status == "running" and back.generation == 2
    assert store.launched_generations() == {"web-0": 2}


# --- events ------------------------------------------------------------------------------------------


def test_events_are_append_only_and_ordered_by_seq(store: Store) -> None:
    seqs = [store.append_event("k", f"m{i}", job="web" if i % 2 else "db", time=float(i)) for i in range(5)]
    assert seqs == sorted(seqs) and len(set(seqs)) == 5
    assert [e.message for e in store.events()] == ["m0", "m1", "m2", "m3", "m4"]
    assert [e.message for e in store.events(after_seq=seqs[2])] == ["m3", "m4"]
    assert [e.message for e in store.events(limit=2)] == ["m0", "m1"]
    assert [e.message for e in store.events(job="web")] == ["m1", "m3"]
    for cls in (Store, Transaction):
        assert not [n for n in dir(cls) if "event" in n and n.startswith(("delete", "update", "remove"))]


# --- restart generations and intents -----------------------------------------------------------------


def test_three_restart_requests_before_a_pass_restart_each_allocation_exactly_once(store: Store) -> None:
    store.put_job(job(count=2), "", "web.yaml")
    store.save_allocations([alloc("web-0"), alloc("web-1", index=1)])
    for _ in range(3):
        store.request_restart("web", "alice@laptop")
    assert store.get_job("web").restart_generation == 3  # type: ignore[union-attr]
    assert controller_pass(store) == ["web-0", "web-1"]
    assert controller_pass(store) == []
    assert [a.restarts for a in store.allocations()] == [1, 1]
    assert store.pending_intents() == [] and len(store.intents()) == 3


def test_a_restart_written_while_no_controller_runs_is_applied_once_later(db: Path) -> None:
    with Store.open(db) as s:
        s.put_job(job(), "", "web.yaml")
        s.save_allocation(alloc())
    with Store.open(db) as cli:
        intent = cli.request_restart("web", "bob@ws")
    with Store.open(db) as controller:
        assert [i.id for i in controller.pending_intents()] == [intent.id]
        assert controller_pass(controller) == ["web-0"]
    with Store.open(db) as controller:
        assert controller_pass(controller) == []
        assert controller.launched_generations() == {"web-0": 1}


def test_restarting_one_allocation_bumps_only_its_own_generation(store: Store) -> None:
    store.put_job(job(count=2), "", "web.yaml")
    store.save_allocations([alloc("web-0"), alloc("web-1", index=1)])
    store.request_restart("web-1", "me@here")
    assert controller_pass(store) == ["web-1"]
    with pytest.raises(ConfigError, match="no job or allocation named 'ghost'"):
        store.request_restart("ghost", "me@here")


def test_a_restart_requested_during_a_pass_is_not_lost(store: Store) -> None:
    store.put_job(job(), "", "web.yaml")
    store.save_allocation(alloc())
    store.request_restart("web", "a@x")
    intents, due = store.pending_intents(), store.due_restarts()
    late = store.request_restart("web", "b@y")  # lands after the controller read the state
    with store.transaction() as tx:
        for a, target in due:
            tx.save_allocation(a, launched_generation=target)
        tx.mark_applied([i.id for i in intents], "restarted")
    assert [i.id for i in store.pending_intents()] == [late.id]
    assert controller_pass(store) == ["web-0"]


def test_a_crash_inside_a_transaction_applies_nothing_and_keeps_the_intent_pending(store: Store) -> None:
    store.put_job(job(), "", "web.yaml")
    store.save_allocation(alloc())
    intent = store.request_restart("web", "me@here")
    with pytest.raises(RuntimeError), store.transaction() as tx:
        tx.save_allocation(alloc(observed_status="starting"), launched_generation=1)
        tx.mark_applied([intent.id], "restarted")
        raise RuntimeError("controller died")
    assert [i.id for i in store.pending_intents()] == [intent.id]
    assert store.allocations()[0].observed_status == "pending"
    assert len(store.due_restarts()) == 1


def test_stop_drain_and_cordon_set_flags_and_record_intents(store: Store) -> None:
    store.put_job(job(), "", "web.yaml")
    store.save_allocation(alloc())
    store.request_restart("web", "me@here")
    store.request_stop("web", "me@here")
    assert store.due_restarts() == []  # a stopped job is stopped, not restarted
    store.request_drain("n1", "me@here")
    store.cordon("n2", "me@here")
    store.cordon("n3/1", "me@here")
    store.cordon("n3/0", "me@here")
    store.uncordon("n3/1", "me@here")
    assert store.get_job("web").desired == "stop"  # type: ignore[union-attr]
    nodes = {n.name: n for n in store.nodes()}
    assert (nodes["n1"].cordoned, nodes["n1"].draining) == (True, True)
    assert (nodes["n2"].cordoned, nodes["n2"].draining) == (True, False)
    assert (nodes["n3"].cordoned, nodes["n3"].cordoned_gpus) == (False, (0,))
    store.save_node("n4", {"status": "ready"})  # no flag: not among the flagged nodes
    flagged = {n.name: (n.cordoned, n.cordoned_gpus, n.draining) for n in store.flagged_nodes()}
    assert flagged == {"n1": (True, (), True), "n2": (True, (), False), "n3": (False, (0,), False)}
    store.uncordon("n1", "me@here")
    assert (store.get_node("n1").cordoned, store.get_node("n1").draining) == (False, False)  # type: ignore[union-attr]
    assert "n1" not in {n.name for n in store.flagged_nodes()}
    assert [i.kind for i in store.pending_intents()] == ["restart", "stop", "drain", "cordon", "cordon", "cordon",
                                                         "uncordon", "uncordon"]
    assert store.mark_applied([i.id for i in store.pending_intents()], "done") == 8
    assert store.mark_applied([1], "again") == 0  # applied once


def test_saving_a_node_keeps_its_operator_flags(store: Store) -> None:
    store.cordon("n1", "me@here")
    store.save_node("n1", {"status": "ready", "gpus": [0, 1]}, last_seen=5.0, boot_id="b1")
    node = store.get_node("n1")
    assert node is not None and node.cordoned and node.last_state == {"status": "ready", "gpus": [0, 1]}
    assert (node.last_seen, node.boot_id) == (5.0, "b1")


@settings(max_examples=25, deadline=None)
@given(st.lists(st.sampled_from(["restart", "pass", "reopen"]), max_size=12))
def test_every_request_is_applied_and_each_pass_restarts_at_most_once(ops: list[str]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        s = Store.open(Path(tmp) / "flex.db")
        s.put_job(job(), "", "web.yaml")
        s.save_allocation(alloc())
        pending = False
        restarts = 0
        for op in ops:
            if op == "restart":
                s.request_restart("web", "me@here")
                pending = True
            elif op == "pass":
                restarts += len(controller_pass(s))
                pending = False
            else:
                s.close()
                s = Store.open(Path(tmp) / "flex.db")
        restarts += len(controller_pass(s))
        assert restarts <= ops.count("restart") and (restarts > 0) == ("restart" in ops)
        assert pending or controller_pass(s) == []
        assert s.pending_intents() == [] and s.due_restarts() == []
        assert s.launched_generations()["web-0"] == ops.count("restart")
        s.close()


# --- the controller lease ----------------------------------------------------------------------------


@pytest.mark.parametrize(("holder", "expires", "owner", "granted"), [
    (None, 0.0, "b", True),
    ("a", 150.0, "a", True),
    ("a", 150.0, "b", False),
    ("a", 100.0, "b", True),
], ids=["a free lease is granted", "the owner gets its own lease again",
        "a second owner is refused while the lease is fresh", "a second owner is granted after expiry"])
def test_acquire_lease(store: Store, holder: str | None, expires: float, owner: str, granted: bool) -> None:
    if holder:
        assert store.acquire_lease(holder, ttl=expires - 90.0, now=90.0, pid=1, hostname="h")
    assert store.acquire_lease(owner, ttl=10.0, now=100.0) is granted
    lease = store.lease_holder(now=100.0)
    assert lease is not None and lease.owner == (owner if granted else holder)


def test_renew_and_release_belong_to_the_owner(store: Store) -> None:
    assert store.acquire_lease("a", ttl=10.0, now=0.0)
    assert store.renew_lease("a", ttl=10.0, now=8.0) and not store.renew_lease("b", ttl=10.0, now=8.0)
    assert store.lease_holder(now=17.0).expires_at == 18.0  # type: ignore[union-attr]
    assert store.lease_holder(now=18.5) is None
    assert not store.release_lease("b") and store.release_lease("a")
    assert store.lease_holder(now=0.0) is None


# --- errors ------------------------------------------------------------------------------------------


def test_a_newer_schema_version_is_refused_naming_the_file_and_the_fix(db: Path) -> None:
    Store.open(db).close()
    with sqlite3.connect(db) as conn:
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    with pytest.raises(StoreError, match="newer than this flex knows") as err:
        Store.open(db)
    assert str(db) in str(err.value) and "fix: upgrade flex" in str(err.value)


@pytest.mark.parametrize("content", [b"not a database at all, just text" * 100, "sqlite-other"],
                         ids=["a file that is not SQLite is refused", "another program's database is refused"])
def test_a_file_that_is_not_a_flex_database_is_refused(db: Path, content: bytes | str) -> None:
    db.parent.mkdir(parents=True)
    if isinstance(content, bytes):
        db.write_bytes(content)
    else:
        with sqlite3.connect(db) as conn:
            conn.execute("CREATE TABLE accounts (id INTEGER)")
    with pytest.raises(StoreError, match="fix:") as err:
        Store.open(db)
    assert str(db) in str(err.value)


def test_an_unwritable_path_is_a_store_error_naming_it(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    with pytest.raises(StoreError, match="cannot open it") as err:
        Store.open(tmp_path / "file" / "flex.db")
    assert str(tmp_path / "file" / "flex.db") in str(err.value)


def test_a_write_lock_held_past_the_timeout_is_a_store_error_naming_the_file(
        db: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(store_module, "BEGIN_RETRIES", (0.01, 0.01))
    s = Store.open(db, busy_timeout=0.05)
    other = sqlite3.connect(db, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")
    try:
        with pytest.raises(StoreError, match="is locked") as err:
            s.append_event("k", "m")
        assert str(db) in str(err.value)
    finally:
        other.execute("ROLLBACK")
        other.close()
    assert s.append_event("k", "m") > 0  # usable again once the lock is gone
    s.close()


def test_an_sqlite_error_inside_a_transaction_becomes_a_store_error_and_rolls_back(store: Store) -> None:
    with pytest.raises(StoreError, match=str(store.path)), store.transaction() as tx:
        tx.append_event("k", "kept?")
        tx._exec("INSERT INTO intents (kind, target, actor, created_at) VALUES ('bogus', 't', 'a', 0)")
    assert store.events() == []
    with pytest.raises(StoreError, match="nested"), store.transaction(), store.transaction():
        pass


def test_a_transaction_begins_at_its_first_statement_and_one_that_ran_none_commits_nothing(store: Store) -> None:
    """An empty `with store.transaction()` (a pass with nothing to record) takes no lock and writes no
    COMMIT, which with synchronous=FULL is an fsync; a read inside one is inside the transaction."""
    statements: list[str] = []
    store._conn.set_trace_callback(statements.append)
    with store.transaction():
        pass
    assert statements == []
    with store.transaction() as tx:
        assert tx.jobs() == []  # the read begins it: a write after it sees what it read
        assert statements[0] == "BEGIN IMMEDIATE"
        other = sqlite3.connect(store.path, isolation_level=None, timeout=0)
        with pytest.raises(sqlite3.OperationalError, match="locked"):
            other.execute("BEGIN IMMEDIATE")
        other.close()
        tx.append_event("k", "m")
    assert statements[0] == "BEGIN IMMEDIATE" and statements[-1] == "COMMIT"
    assert [e.message for e in store.events()] == ["m"]


def test_every_allocation_is_read_again_only_where_it_may_have_changed(store: Store, db: Path) -> None:
    """store.allocations() (all of them: the controller reads them every pass) serves its cache of rows:
    the rows this store wrote are read again by id, all of them when another connection committed or a
    write named no rows; what it returns always equals a fresh read."""
    store.put_job(job(count=3), "x", "web.yaml")
    store.save_allocations([alloc(f"web-{i}", index=i) for i in range(3)])
    statements: list[str] = []
    store._conn.set_trace_callback(statements.append)

    def fresh() -> tuple[list[Allocation], dict[str, int]]:
        with Store.open(db) as other:
            return other.allocations(), other.launched_generations()

    def reads() -> list[str]:
        seen = [s for s in statements if s.startswith("SELECT") and "FROM allocations" in s]
        statements.clear()
        return seen

    assert (store.allocations(), store.launched_generations()) == fresh()
    reads()
    assert store.allocations() == fresh()[0] and reads() == []  # nothing changed: no read
    store.save_allocation(replace(alloc("web-1", index=1), observed_status="running"), launched_generation=2)
    assert (store.allocations(), store.launched_generations()) == fresh()
    assert [s for s in reads() if "WHERE id IN" in s]  # the written row, by id
    with pytest.raises(RuntimeError), store.transaction() as tx:  # rolled back: nothing to read again
        tx.save_allocation(alloc("web-9", index=9))
        raise RuntimeError("no")
    assert store.allocations() == fresh()[0] and reads() == []
    store.request_restart("web-2", "alice")  # an UPDATE naming no row to the cache: all read again
    assert store.allocations() == fresh()[0] and store.allocations()[2].generation == 1
    with Store.open(db) as other:  # another process's commit
        other.save_allocation(alloc("web-3", index=3))
    assert [a.id for a in store.allocations()] == ["web-0", "web-1", "web-2", "web-3"]
    assert (store.allocations(), store.launched_generations()) == fresh()
