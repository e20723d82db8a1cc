"""The state database (SQLite, stdlib): jobs, allocations, nodes, events, intents, the controller lease.

The imperative shell for state. Every write runs in `BEGIN IMMEDIATE`, so concurrent writers (the
controller, `flex restart`, the console) queue on the busy timeout instead of failing mid-transaction.
Use `Store.transaction()` to commit several writes at once (allocation changes + intents applied).

Restart semantics (a generation bump, like `kubectl rollout restart`): `request_restart(JOB)` adds 1 to
the job's restart_generation, `request_restart(ALLOC)` adds 1 to that allocation's generation, each with
an intent row, in one transaction. An allocation is due for a restart when its launched_generation is
below `target_generation(job.restart_generation, alloc.generation)` (see `due_restarts`). Several
requests before a pass therefore coalesce into one restart, and a request written while no controller
runs is applied once by the next one. Generations only grow: `save_allocation` never lowers them.
A pass reads `pending_intents()` BEFORE `due_restarts()` (a target read later covers every bump whose
intent it read), restarts each due allocation once, then in one transaction saves it with
`launched_generation=target` and marks exactly the intents it read applied.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Self

from deployer.errors import ConfigError, StoreError
from deployer.models import DESIRED_RUN, DESIRED_STOP, Allocation, JobSpec, normalized
from deployer.store_schema import (
    ALLOCATION_COLUMNS,
    BUSY_TIMEOUT_MS,
    Event,
    Intent,
    JobRecord,
    Lease,
    NodeRecord,
    Reader,
    allocation_row,
    connect,
    row_allocation,
    target_generation,
)

__all__ = ["Event", "Intent", "JobRecord", "Lease", "NodeRecord", "Store", "Transaction", "target_generation"]

BEGIN_RETRIES = (0.05, 0.2, 0.5)  # extra BEGIN attempts (seconds to wait first) past the busy timeout


class Transaction(Reader):
    """The handle `Store.transaction()` yields: reads and writes inside one BEGIN IMMEDIATE ... COMMIT.

    Nothing is visible to others, and nothing is kept on a crash, until the `with` block ends normally.
    """

    closed = False

    def __init__(self, conn: sqlite3.Connection, path: Path, lock: threading.RLock, begin: Callable[[], None]) -> None:
        super().__init__(conn, path, lock)
        self._begin = begin
        self.begun = False  # BEGIN IMMEDIATE is sent with the first statement: a block that reads and
        # writes nothing costs no lock and no COMMIT (with synchronous=FULL, an fsync of the WAL)
        # ids of the allocation rows written, for the store's cache of them (None: rows it cannot name)
        self.allocations_written: set[str] | None = set()

    def _start(self) -> None:
        if self.closed:
            raise StoreError(f"state database {self.path}: write outside its transaction (a bug in flex)")
        if not self.begun:
            self._begin()
            self.begun = True

    def _rows(self, sql: str, args: Iterable[Any] = ()) -> list[sqlite3.Row]:
        self._start()
        return super()._rows(sql, args)

    def _exec(self, sql: str, args: Iterable[Any] = (), alloc_id: str | None = None) -> sqlite3.Cursor:
        """Run sql in the transaction; a write to the allocations table is noted for the store's cache of
        them: by alloc_id when the statement writes that one row, else as rows it cannot name (None)."""
        self._start()
        if "allocations" in sql and not sql.startswith("SELECT") and self.allocations_written is not None:
            if alloc_id is None:
                self.allocations_written = None  # the store reads them all again
            else:
                self.allocations_written.add(alloc_id)
        return self._conn.execute(sql, tuple(args))

    def put_job(self, spec: JobSpec, raw_yaml: str, source: str, now: float | None = None) -> bool:
        """Submit a job (desired run). False, and nothing written, when the same version already runs."""
        now = time.time() if now is None else now
        row = self._exec("SELECT version, desired FROM jobs WHERE name = ?", (spec.name,)).fetchone()
        version = spec.fingerprint
        if row is not None and row["version"] == version and row["desired"] == DESIRED_RUN:
            return False
        spec_json = json.dumps(normalized(spec), sort_keys=True)
        self._exec("INSERT INTO jobs (name, version, spec, source, raw_yaml, desired, submitted_at, updated_at) "
                   "VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT(name) DO UPDATE SET version = excluded.version, "
                   "spec = excluded.spec, source = excluded.source, raw_yaml = excluded.raw_yaml, "
                   "desired = excluded.desired, updated_at = excluded.updated_at",
                   (spec.name, version, spec_json, source, raw_yaml, DESIRED_RUN, now, now))
        if row is None or row["version"] != version:
            self._exec("INSERT OR REPLACE INTO job_versions VALUES (?, ?, ?, ?, ?, ?)",
                       (spec.name, version, spec_json, source, raw_yaml, now))
        return True

    def set_job_desired(self, name: str, desired: str, now: float | None = None) -> bool:
        """Set a job's desired state (run | stop); True when it changed."""
        if desired not in (DESIRED_RUN, DESIRED_STOP):
            raise ValueError(f"desired must be run or stop, not {desired!r}")
        self._job_exists(name)
        cur = self._exec("UPDATE jobs SET desired = ?, updated_at = ? WHERE name = ? AND desired != ?",
                         (desired, time.time() if now is None else now, name, desired))
        return cur.rowcount > 0

    def save_allocation(self, alloc: Allocation, launched_generation: int | None = None) -> None:
        """Insert or update an allocation. Commit this BEFORE sending its launch.

        generation and launched_generation never go down (a restart requested meanwhile is kept);
        launched_generation None keeps the stored value (0 for a new allocation).
        """
        self._exec(f"INSERT INTO allocations ({ALLOCATION_COLUMNS}) VALUES ({', '.join('?' * 17)}) "
                   "ON CONFLICT(id) DO UPDATE SET job = excluded.job, node = excluded.node, idx = excluded.idx, "
                   "job_version = excluded.job_version, cpus = excluded.cpus, memory = excluded.memory, "
                   "gpus = excluded.gpus, ports = excluded.ports, rank = excluded.rank, "
                   "desired_status = excluded.desired_status, observed_status = excluded.observed_status, "
                   "generation = MAX(allocations.generation, excluded.generation), "
                   "launched_generation = MAX(allocations.launched_generation, excluded.launched_generation), "
                   "restarts = excluded.restarts, exit_code = excluded.exit_code, "
                   "created_at = excluded.created_at", allocation_row(alloc, launched_generation), alloc.id)

    def save_allocations(self, allocs: Iterable[Allocation]) -> None:
        """save_allocation for each, in this transaction."""
        for alloc in allocs:
            self.save_allocation(alloc)

    def save_node(self, name: str, last_state: Mapping[str, Any] | None = None, last_seen: float | None = None,
                  boot_id: str | None = None) -> None:
        """Record a node's last observed state (JSON-ready mapping); its operator flags are kept."""
        self._exec("INSERT INTO nodes (name, last_state, last_seen, boot_id) VALUES (?, ?, ?, ?) "
                   "ON CONFLICT(name) DO UPDATE SET last_state = excluded.last_state, "
                   "last_seen = excluded.last_seen, boot_id = excluded.boot_id",
                   (name, None if last_state is None else json.dumps(last_state, sort_keys=True), last_seen,
                    boot_id))

    def save_node_host(self, name: str, host: Mapping[str, Any]) -> None:
        """Remember how a node is reached, so its work can still be stopped after it leaves the inventory."""
        self._exec("INSERT INTO nodes (name, host) VALUES (?, ?) ON CONFLICT(name) DO UPDATE SET host = excluded.host",
                   (name, json.dumps(dict(host), sort_keys=True)))

    def set_job_status(self, job: str, pending: str | None, now: float | None = None, *,
                       last_fire: float | None = None, next_fire: float | None = None) -> None:
        """Record why a job's allocations cannot be placed (None: all placed), and a cron job's last and
        next fire (None keeps the stored value)."""
        self._exec("INSERT INTO job_status (job, pending, last_fire, next_fire, updated_at) VALUES (?, ?, ?, ?, ?) "
                   "ON CONFLICT(job) DO UPDATE SET pending = excluded.pending, "
                   "last_fire = COALESCE(excluded.last_fire, job_status.last_fire), "
                   "next_fire = COALESCE(excluded.next_fire, job_status.next_fire), updated_at = excluded.updated_at",
                   (job, pending, last_fire, next_fire, time.time() if now is None else now))

    def append_event(self, kind: str, message: str, *, job: str | None = None, alloc: str | None = None,
                     node: str | None = None, actor: str | None = None, time: float | None = None) -> int:
        """Append to the event log (there is no update or delete); returns the new seq."""
        when = _now() if time is None else time
        cur = self._exec("INSERT INTO events (time, kind, job, alloc, node, message, actor) "
                         "VALUES (?, ?, ?, ?, ?, ?, ?)", (when, kind, job, alloc, node, message, actor))
        return int(cur.lastrowid or 0)

    def _intent(self, kind: str, target: str, actor: str, now: float | None) -> Intent:
        created = time.time() if now is None else now
        cur = self._exec("INSERT INTO intents (kind, target, actor, created_at) VALUES (?, ?, ?, ?)",
                         (kind, target, actor, created))
        return Intent(id=int(cur.lastrowid or 0), kind=kind, target=target, actor=actor, created_at=created)

    def _job_exists(self, name: str) -> None:
        if self._exec("SELECT 1 FROM jobs WHERE name = ?", (name,)).fetchone() is None:
            raise ConfigError(f"no job named {name!r}", fix="`flex status` lists the jobs")

    def request_restart(self, target: str, actor: str, now: float | None = None) -> Intent:
        """Restart a job (all its allocations) or one allocation: a generation bump plus an intent."""
        if self._exec("UPDATE jobs SET restart_generation = restart_generation + 1 WHERE name = ?",
                      (target,)).rowcount == 0 and \
                self._exec("UPDATE allocations SET generation = generation + 1 WHERE id = ?",
                           (target,)).rowcount == 0:
            raise ConfigError(f"no job or allocation named {target!r}",
                              fix="`flex status` lists jobs and allocation ids")
        return self._intent("restart", target, actor, now)

    def request_stop(self, job: str, actor: str, now: float | None = None) -> Intent:
        """Stop a job: desired stop plus an intent."""
        self.set_job_desired(job, DESIRED_STOP, now)
        return self._intent("stop", job, actor, now)

    def _node_flags(self, node: str, cordoned: int | None = None, draining: int | None = None,
                    gpu: int | None = None, gpu_on: bool = True) -> None:
        self._exec("INSERT OR IGNORE INTO nodes (name) VALUES (?)", (node,))
        if cordoned is not None:
            self._exec("UPDATE nodes SET cordoned = ? WHERE name = ?", (cordoned, node))
        if draining is not None:
            self._exec("UPDATE nodes SET draining = ? WHERE name = ?", (draining, node))
        if gpu is not None:
            row = self._exec("SELECT cordoned_gpus FROM nodes WHERE name = ?", (node,)).fetchone()
            gpus = set(json.loads(row["cordoned_gpus"])) | {gpu} if gpu_on else \
                set(json.loads(row["cordoned_gpus"])) - {gpu}
            self._exec("UPDATE nodes SET cordoned_gpus = ? WHERE name = ?", (json.dumps(sorted(gpus)), node))

    def request_drain(self, node: str, actor: str, now: float | None = None) -> Intent:
        """Drain a node: cordoned and draining (its allocations move away) plus an intent."""
        self._node_flags(node, cordoned=1, draining=1)
        return self._intent("drain", node, actor, now)

    def cordon(self, target: str, actor: str, now: float | None = None) -> Intent:
        """Cordon NODE (no new placements) or NODE/GPU (that GPU index only), plus an intent."""
        node, gpu = _node_gpu(target)
        self._node_flags(node, cordoned=1 if gpu is None else None, gpu=gpu)
        return self._intent("cordon", target, actor, now)

    def uncordon(self, target: str, actor: str, now: float | None = None) -> Intent:
        """Undo cordon (and drain) of NODE, or the cordon of NODE/GPU, plus an intent."""
        node, gpu = _node_gpu(target)
        if gpu is None:
            self._node_flags(node, cordoned=0, draining=0)
        else:
            self._node_flags(node, gpu=gpu, gpu_on=False)
        return self._intent("uncordon", target, actor, now)

    def mark_applied(self, intent_ids: Iterable[int], result: str, now: float | None = None) -> int:
        """Mark intents applied with a result (once: applied ones are left alone); returns how many."""
        when = time.time() if now is None else now
        return sum(self._exec("UPDATE intents SET applied_at = ?, result = ? WHERE id = ? AND applied_at IS NULL",
                              (when, result, i)).rowcount for i in intent_ids)

    def acquire_lease(self, owner: str, ttl: float, now: float, pid: int | None = None,
                      hostname: str | None = None) -> bool:
        """Take the controller lease until now + ttl: granted when free, expired, or already owner's."""
        row = self._exec("SELECT owner, expires_at, acquired_at FROM controller_lease WHERE id = 1").fetchone()
        if row is not None and row["owner"] != owner and row["expires_at"] > now:
            return False
        acquired = row["acquired_at"] if row is not None and row["owner"] == owner else now
        self._exec("INSERT OR REPLACE INTO controller_lease VALUES (1, ?, ?, ?, ?, ?, ?)",
                   (owner, os.getpid() if pid is None else pid, os.uname().nodename if hostname is None else hostname,
                    acquired, now, now + ttl))
        return True

    def renew_lease(self, owner: str, ttl: float, now: float) -> bool:
        """Extend owner's lease to now + ttl; False when another controller holds it (stop the loop)."""
        cur = self._exec("UPDATE controller_lease SET renewed_at = ?, expires_at = ? WHERE owner = ?",
                         (now, now + ttl, owner))
        return cur.rowcount > 0

    def release_lease(self, owner: str) -> bool:
        """Give the lease up (on a clean exit); False when owner did not hold it."""
        return self._exec("DELETE FROM controller_lease WHERE owner = ?", (owner,)).rowcount > 0


def _now() -> float:
    return time.time()


def _node_gpu(target: str) -> tuple[str, int | None]:
    node, sep, gpu = target.partition("/")
    if not sep:
        return node, None
    if not gpu.isdigit():
        raise ConfigError(f"{target!r}: the GPU after / must be an index", fix="write NODE/0, NODE/1, ...")
    return node, int(gpu)


class Store(Reader):
    """The state database. `Store.open(path)`; reads directly, writes each in their own transaction,
    or several at once in `with store.transaction() as tx:`. Safe to share between threads."""

    def __init__(self, conn: sqlite3.Connection, path: Path) -> None:
        super().__init__(conn, path, threading.RLock())
        self._in_transaction = False
        # Every allocation row as last read: id -> (record, launched generation). The controller reads
        # them all on every pass (125 ms for 8,000 rows); they are read again only where they may
        # have changed: the rows this connection wrote (by id), or all of them when another connection
        # committed anything (PRAGMA data_version) or a write named no rows.
        self._allocs: dict[str, tuple[Allocation, int]] | None = None
        self._allocs_sorted: list[Allocation] | None = None
        self._allocs_version = -1
        self._allocs_stale: set[str] = set()

    @classmethod
    def open(cls, path: str | os.PathLike[str], busy_timeout: float = BUSY_TIMEOUT_MS / 1000) -> Store:
        """Open (creating when new) the state database at path.

        Raises:
            StoreError: cannot create or open it, not a flex database, or a newer schema version.
        """
        return cls(connect(Path(path), busy_timeout), Path(path))

    def close(self) -> None:
        """Close the connection (a transaction in progress is rolled back)."""
        with self._lock:
            self._conn.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _begin(self) -> None:
        for delay in (*BEGIN_RETRIES, None):
            try:
                self._conn.execute("BEGIN IMMEDIATE")
                return
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) and "busy" not in str(exc):
                    raise StoreError(f"state database {self.path}: {exc}") from exc
                if delay is None:
                    raise StoreError(
                        f"state database {self.path} is locked: another process kept writing to it past "
                        f"the busy timeout, {len(BEGIN_RETRIES) + 1} times\n  fix: find the process that "
                        f"holds it (fuser {self.path}) and stop it, or retry") from exc
                time.sleep(delay)

    @contextmanager
    def transaction(self) -> Iterator[Transaction]:
        """One write transaction (BEGIN IMMEDIATE): commits when the block ends, rolls back on an
        exception (which propagates; an sqlite3 error becomes a StoreError naming the file)."""
        with self._lock:
            if self._in_transaction:
                raise StoreError(f"state database {self.path}: nested transaction (a bug in flex)")
            self._in_transaction = True
            tx = Transaction(self._conn, self.path, self._lock, self._begin)
            try:
                yield tx
                if tx.begun:
                    self._conn.execute("COMMIT")
                    self._wrote_allocations(tx.allocations_written)
            except BaseException as exc:
                if self._conn.in_transaction:
                    self._conn.execute("ROLLBACK")
                if isinstance(exc, sqlite3.Error):
                    raise StoreError(f"state database {self.path}: {exc}") from exc
                raise
            finally:
                tx.closed = True
                self._in_transaction = False

    def _wrote_allocations(self, ids: set[str] | None) -> None:
        if ids is None:
            self._allocs = None
        elif ids:
            self._allocs_stale |= ids

    def _allocation_rows(self) -> dict[str, tuple[Allocation, int]]:
        """Every allocation row (see _allocs): read again where it may have changed."""
        with self._lock:
            version = self._conn.execute("PRAGMA data_version").fetchone()[0]
            if self._allocs is None or version != self._allocs_version:
                rows = self._rows(f"SELECT {ALLOCATION_COLUMNS} FROM allocations")
                self._allocs = {r["id"]: (row_allocation(r), r["launched_generation"]) for r in rows}
                self._allocs_sorted, self._allocs_stale, self._allocs_version = None, set(), version
            elif self._allocs_stale:
                stale, self._allocs_stale, self._allocs_sorted = sorted(self._allocs_stale), set(), None
                cache, self._allocs = self._allocs, None  # half-read (an error below): read all next time
                for start in range(0, len(stale), 500):
                    chunk = stale[start:start + 500]
                    for alloc_id in chunk:
                        cache.pop(alloc_id, None)
                    rows = self._rows(f"SELECT {ALLOCATION_COLUMNS} FROM allocations WHERE id IN "
                                      f"({', '.join('?' * len(chunk))})", chunk)
                    cache.update((r["id"], (row_allocation(r), r["launched_generation"])) for r in rows)
                self._allocs = cache
            return self._allocs

    def allocations(self, job: str | None = None, node: str | None = None) -> list[Allocation]:
        """Allocations, optionally of one job and/or on one node, by job, index and id (all of them:
        from the cache of rows, read again only where they may have changed)."""
        if job is not None or node is not None:
            return super().allocations(job, node)
        with self._lock:
            rows = self._allocation_rows()
            if self._allocs_sorted is None:
                self._allocs_sorted = sorted((a for a, _ in rows.values()), key=lambda a: (a.job, a.index, a.id))
            return list(self._allocs_sorted)

    def launched_generations(self, job: str | None = None) -> dict[str, int]:
        """Allocation id -> the generation it was last launched at (all of them: from the cache)."""
        if job is not None:
            return super().launched_generations(job)
        with self._lock:
            return {alloc_id: launched for alloc_id, (_, launched) in self._allocation_rows().items()}

    # One-transaction shortcuts for the writes of Transaction (see there).

    def put_job(self, spec: JobSpec, raw_yaml: str, source: str, now: float | None = None) -> bool:
        """Submit a job; False when unchanged. See Transaction.put_job."""
        with self.transaction() as tx:
            return tx.put_job(spec, raw_yaml, source, now)

    def set_job_desired(self, name: str, desired: str, now: float | None = None) -> bool:
        """Set a job's desired state; True when it changed."""
        with self.transaction() as tx:
            return tx.set_job_desired(name, desired, now)

    def save_allocation(self, alloc: Allocation, launched_generation: int | None = None) -> None:
        """Insert or update one allocation (commit before its launch is sent)."""
        with self.transaction() as tx:
            tx.save_allocation(alloc, launched_generation)

    def save_allocations(self, allocs: Iterable[Allocation]) -> None:
        """Insert or update several allocations in one transaction."""
        with self.transaction() as tx:
            tx.save_allocations(allocs)

    def save_node(self, name: str, last_state: Mapping[str, Any] | None = None, last_seen: float | None = None,
                  boot_id: str | None = None) -> None:
        """Record a node's last observed state."""
        with self.transaction() as tx:
            tx.save_node(name, last_state, last_seen, boot_id)

    def append_event(self, kind: str, message: str, *, job: str | None = None, alloc: str | None = None,
                     node: str | None = None, actor: str | None = None, time: float | None = None) -> int:
        """Append one event; returns its seq."""
        with self.transaction() as tx:
            return tx.append_event(kind, message, job=job, alloc=alloc, node=node, actor=actor, time=time)

    def request_restart(self, target: str, actor: str, now: float | None = None) -> Intent:
        """Restart a job or an allocation (a generation bump)."""
        with self.transaction() as tx:
            return tx.request_restart(target, actor, now)

    def request_stop(self, job: str, actor: str, now: float | None = None) -> Intent:
        """Stop a job."""
        with self.transaction() as tx:
            return tx.request_stop(job, actor, now)

    def request_drain(self, node: str, actor: str, now: float | None = None) -> Intent:
        """Drain a node."""
        with self.transaction() as tx:
            return tx.request_drain(node, actor, now)

    def cordon(self, target: str, actor: str, now: float | None = None) -> Intent:
        """Cordon NODE or NODE/GPU."""
        with self.transaction() as tx:
            return tx.cordon(target, actor, now)

    def uncordon(self, target: str, actor: str, now: float | None = None) -> Intent:
        """Uncordon NODE or NODE/GPU."""
        with self.transaction() as tx:
            return tx.uncordon(target, actor, now)

    def mark_applied(self, intent_ids: Iterable[int], result: str, now: float | None = None) -> int:
        """Mark intents applied (prefer doing it in the transaction that applies them)."""
        with self.transaction() as tx:
            return tx.mark_applied(intent_ids, result, now)

    def acquire_lease(self, owner: str, ttl: float, now: float, pid: int | None = None,
                      hostname: str | None = None) -> bool:
        """Take the controller lease; False while another owner holds a fresh one."""
        with self.transaction() as tx:
            return tx.acquire_lease(owner, ttl, now, pid, hostname)

    def renew_lease(self, owner: str, ttl: float, now: float) -> bool:
        """Extend owner's lease; False when owner no longer holds it."""
        with self.transaction() as tx:
            return tx.renew_lease(owner, ttl, now)

    def release_lease(self, owner: str) -> bool:
        """Give owner's lease up."""
        with self.transaction() as tx:
            return tx.release_lease(owner)
