"""The state database's schema, its records, its read queries and how a connection to it is opened.

Used by store.py (the API to import is there).

One SQLite file holds everything the controller, the CLI and the console share. `PRAGMA user_version`
is the schema version: 0 on a new file (the schema is created), SCHEMA_VERSION on a current one, anything
else is refused with a StoreError that names the file and the fix.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from deployer.errors import StoreError
from deployer.models import DESIRED_RUN, Allocation, frozen_mapping

SCHEMA_VERSION = 2
BUSY_TIMEOUT_MS = 10_000

INTENT_KINDS = ("restart", "stop", "drain", "cordon", "uncordon")

SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    name TEXT PRIMARY KEY,
    version TEXT NOT NULL,                 -- JobSpec fingerprint
    spec TEXT NOT NULL,                    -- normalized spec, JSON (for display)
    source TEXT NOT NULL,                  -- the spec file path
    raw_yaml TEXT NOT NULL,                -- the spec text, so the controller can parse it again
    desired TEXT NOT NULL CHECK (desired IN ('run', 'stop')),
    restart_generation INTEGER NOT NULL DEFAULT 0,
    submitted_at REAL NOT NULL,
    updated_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS job_versions (
    job TEXT NOT NULL REFERENCES jobs(name) ON DELETE CASCADE,
    version TEXT NOT NULL,
    spec TEXT NOT NULL,
    source TEXT NOT NULL,
    raw_yaml TEXT NOT NULL,
    submitted_at REAL NOT NULL,
    PRIMARY KEY (job, version, submitted_at)
);
CREATE TABLE IF NOT EXISTS allocations (
    id TEXT PRIMARY KEY,
    job TEXT NOT NULL,
    node TEXT NOT NULL,
    idx INTEGER NOT NULL,
    job_version TEXT NOT NULL,
    cpus REAL NOT NULL,
    memory INTEGER NOT NULL,
    gpus TEXT NOT NULL,                    -- JSON list of GPU indices
    ports TEXT NOT NULL,                   -- JSON object name -> port
    rank INTEGER,
    desired_status TEXT NOT NULL,
    observed_status TEXT NOT NULL,
    generation INTEGER NOT NULL,           -- bumped by `flex restart ALLOC`
    launched_generation INTEGER NOT NULL DEFAULT 0,
    restarts INTEGER NOT NULL,
    exit_code INTEGER,
    created_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS allocations_job ON allocations(job);
CREATE INDEX IF NOT EXISTS allocations_node ON allocations(node);
CREATE TABLE IF NOT EXISTS nodes (
    name TEXT PRIMARY KEY,
    cordoned INTEGER NOT NULL DEFAULT 0,
    cordoned_gpus TEXT NOT NULL DEFAULT '[]',
    draining INTEGER NOT NULL DEFAULT 0,
    last_state TEXT,                       -- JSON
    last_seen REAL,
    boot_id TEXT,
    host TEXT                              -- JSON: how to reach it, kept after it leaves the inventory
);
CREATE TABLE IF NOT EXISTS events (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    time REAL NOT NULL,
    kind TEXT NOT NULL,
    job TEXT,
    alloc TEXT,
    node TEXT,
    message TEXT NOT NULL,
    actor TEXT
);
CREATE TABLE IF NOT EXISTS intents (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    kind TEXT NOT NULL CHECK (kind IN ('restart', 'stop', 'drain', 'cordon', 'uncordon')),
    target TEXT NOT NULL,
    actor TEXT NOT NULL,
    created_at REAL NOT NULL,
    applied_at REAL,
    result TEXT
);
CREATE INDEX IF NOT EXISTS intents_pending ON intents(applied_at);
CREATE TABLE IF NOT EXISTS job_status (
    job TEXT PRIMARY KEY,
    pending TEXT,                          -- why allocations are missing (one sentence), NULL when placed
    last_fire REAL,                        -- cron: wall time of the last fire (skipped runs included)
    next_fire REAL,                        -- cron: wall time of the next fire
    updated_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS controller_lease (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    owner TEXT NOT NULL,
    pid INTEGER,
    hostname TEXT,
    acquired_at REAL NOT NULL,
    renewed_at REAL NOT NULL,
    expires_at REAL NOT NULL
);
"""
TABLES = ("jobs", "job_versions", "allocations", "nodes", "events", "intents", "job_status", "controller_lease")
# Upgrades from an older schema version, in order: version -> statements that bring it to version + 1.
MIGRATIONS: dict[int, tuple[str, ...]] = {
    1: ("ALTER TABLE nodes ADD COLUMN host TEXT",
        "CREATE TABLE IF NOT EXISTS job_status (job TEXT PRIMARY KEY, pending TEXT, last_fire REAL, next_fire REAL, "
        "updated_at REAL NOT NULL)"),
}


@dataclass(frozen=True)
class Event:
    """One entry of the append-only event log; `seq` grows strictly with every append."""

    seq: int
    time: float
    kind: str
    message: str
    job: str | None = None
    alloc: str | None = None
    node: str | None = None
    actor: str | None = None


@dataclass(frozen=True)
class Intent:
    """A request written by the CLI or the console for the controller's next pass to apply."""

    id: int
    kind: str  # restart | stop | drain | cordon | uncordon
    target: str  # a job name, an allocation id, a node (or node/gpu for cordon)
    actor: str  # who asked: user@host
    created_at: float
    applied_at: float | None = None
    result: str | None = None


@dataclass(frozen=True)
class JobRecord:
    """A submitted job: its current version (fingerprint), spec, source text and desired state."""

    name: str
    version: str
    spec: Mapping[str, Any]  # the normalized spec (models.normalized), for display
    source: str
    raw_yaml: str
    desired: str  # run | stop
    restart_generation: int
    submitted_at: float
    updated_at: float


@dataclass(frozen=True)
class NodeRecord:
    """What the store keeps about a node: operator flags and the last observed state."""

    name: str
    cordoned: bool = False
    cordoned_gpus: tuple[int, ...] = ()
    draining: bool = False
    last_state: Mapping[str, Any] | None = None
    last_seen: float | None = None
    boot_id: str | None = None
    host: Mapping[str, Any] | None = None  # connection facts (name, address, port, user, ...) last used


@dataclass(frozen=True)
class Lease:
    """The controller lease row: who runs the loop on this database, until when (wall-clock seconds)."""

    owner: str
    pid: int | None
    hostname: str | None
    acquired_at: float
    renewed_at: float
    expires_at: float


def allocation_row(alloc: Allocation, launched_generation: int | None) -> tuple[Any, ...]:
    """The column values of an allocation, in ALLOCATION_COLUMNS order."""
    return (alloc.id, alloc.job, alloc.node, alloc.index, alloc.job_version, alloc.cpus, alloc.memory,
            json.dumps(list(alloc.gpus)), json.dumps(dict(alloc.ports), sort_keys=True), alloc.rank,
            alloc.desired_status, alloc.observed_status, alloc.generation,
            0 if launched_generation is None else launched_generation, alloc.restarts, alloc.exit_code,
            alloc.created_at)


ALLOCATION_COLUMNS = ("id, job, node, idx, job_version, cpus, memory, gpus, ports, rank, desired_status, "
                      "observed_status, generation, launched_generation, restarts, exit_code, created_at")


def row_allocation(row: sqlite3.Row) -> Allocation:
    """An Allocation from an allocations row."""
    return Allocation(
        id=row["id"], job=row["job"], node=row["node"], index=row["idx"], job_version=row["job_version"],
        cpus=row["cpus"], memory=row["memory"], gpus=tuple(json.loads(row["gpus"])),
        ports=frozen_mapping(json.loads(row["ports"])), rank=row["rank"],
        desired_status=row["desired_status"], observed_status=row["observed_status"],
        generation=row["generation"], restarts=row["restarts"], exit_code=row["exit_code"],
        created_at=row["created_at"])


def row_job(row: sqlite3.Row) -> JobRecord:
    """A JobRecord from a jobs row."""
    return JobRecord(name=row["name"], version=row["version"], spec=frozen_mapping(json.loads(row["spec"])),
                     source=row["source"], raw_yaml=row["raw_yaml"], desired=row["desired"],
                     restart_generation=row["restart_generation"], submitted_at=row["submitted_at"],
                     updated_at=row["updated_at"])


def row_node(row: sqlite3.Row) -> NodeRecord:
    """A NodeRecord from a nodes row."""
    state = row["last_state"]
    return NodeRecord(name=row["name"], cordoned=bool(row["cordoned"]),
                      cordoned_gpus=tuple(json.loads(row["cordoned_gpus"])), draining=bool(row["draining"]),
                      last_state=None if state is None else frozen_mapping(json.loads(state)),
                      last_seen=row["last_seen"], boot_id=row["boot_id"],
                      host=None if row["host"] is None else frozen_mapping(json.loads(row["host"])))


def row_event(row: sqlite3.Row) -> Event:
    """An Event from an events row."""
    return Event(seq=row["seq"], time=row["time"], kind=row["kind"], message=row["message"], job=row["job"],
                 alloc=row["alloc"], node=row["node"], actor=row["actor"])


def row_intent(row: sqlite3.Row) -> Intent:
    """An Intent from an intents row."""
    return Intent(id=row["id"], kind=row["kind"], target=row["target"], actor=row["actor"],
                  created_at=row["created_at"], applied_at=row["applied_at"], result=row["result"])


def row_lease(row: sqlite3.Row) -> Lease:
    """A Lease from the controller_lease row."""
    return Lease(owner=row["owner"], pid=row["pid"], hostname=row["hostname"], acquired_at=row["acquired_at"],
                 renewed_at=row["renewed_at"], expires_at=row["expires_at"])


def target_generation(job_restart_generation: int, alloc_generation: int) -> int:
    """The generation an allocation must run at; restart it while its launched_generation is lower."""
    return job_restart_generation + alloc_generation


class Reader:
    """Read methods, on the store outside a transaction or on a transaction handle inside one."""

    def __init__(self, conn: sqlite3.Connection, path: Path, lock: threading.RLock) -> None:
        self._conn = conn
        self.path = path
        self._lock = lock

    def _rows(self, sql: str, args: Iterable[Any] = ()) -> list[sqlite3.Row]:
        with self._lock:
            try:
                return self._conn.execute(sql, tuple(args)).fetchall()
            except sqlite3.Error as exc:
                raise StoreError(f"state database {self.path}: {exc}") from exc

    def get_job(self, name: str) -> JobRecord | None:
        """The job called name, or None."""
        rows = self._rows("SELECT * FROM jobs WHERE name = ?", (name,))
        return row_job(rows[0]) if rows else None

    def jobs(self) -> list[JobRecord]:
        """Every submitted job, by name."""
        return [row_job(r) for r in self._rows("SELECT * FROM jobs ORDER BY name")]

    def allocations(self, job: str | None = None, node: str | None = None) -> list[Allocation]:
        """Allocations, optionally of one job and/or on one node, by job, index and id."""
        sql, args = _filtered(f"SELECT {ALLOCATION_COLUMNS} FROM allocations", job=job, node=node)
        return [row_allocation(r) for r in self._rows(sql + " ORDER BY job, idx, id", args)]

    def launched_generations(self, job: str | None = None) -> dict[str, int]:
        """Allocation id -> the generation it was last launched at."""
        sql, args = _filtered("SELECT id, launched_generation FROM allocations", job=job)
        return {r["id"]: r["launched_generation"] for r in self._rows(sql, args)}

    def due_restarts(self) -> list[tuple[Allocation, int]]:
        """Allocations desired running (of jobs desired running) whose launched_generation is below
        their target generation, with that target: restart each once, then save it with
        launched_generation=target."""
        rows = self._rows(
            f"SELECT {', '.join('a.' + c.strip() for c in ALLOCATION_COLUMNS.split(','))}, "
            "COALESCE(j.restart_generation, 0) AS job_generation FROM allocations a "
            "LEFT JOIN jobs j ON j.name = a.job WHERE a.desired_status = ? AND COALESCE(j.desired, ?) = ? "
            "AND a.launched_generation < COALESCE(j.restart_generation, 0) + a.generation "
            "ORDER BY a.job, a.idx, a.id", (DESIRED_RUN, DESIRED_RUN, DESIRED_RUN))
        return [(row_allocation(r), target_generation(r["job_generation"], r["generation"])) for r in rows]

    def nodes(self, with_state: bool = True) -> list[NodeRecord]:
        """Every node the store knows, by name; with_state False leaves last_state out (cheap: flags)."""
        columns = "*" if with_state else ("name, cordoned, cordoned_gpus, draining, NULL AS last_state, last_seen, "
                                          "boot_id, host")
        return [row_node(r) for r in self._rows(f"SELECT {columns} FROM nodes ORDER BY name")]

    def flagged_nodes(self) -> list[NodeRecord]:
        """The nodes an operator cordoned (or a GPU of) or drained, by name, flags only: what every
        controller pass reads (nodes() decodes each node's host, ~12 ms a pass at 1,000 nodes)."""
        return [row_node(r) for r in self._rows(
            "SELECT name, cordoned, cordoned_gpus, draining, NULL AS last_state, NULL AS last_seen, "
            "NULL AS boot_id, NULL AS host FROM nodes WHERE cordoned != 0 OR draining != 0 "
            "OR cordoned_gpus != '[]' ORDER BY name")]

    def get_node(self, name: str) -> NodeRecord | None:
        """The node called name, or None."""
        rows = self._rows("SELECT * FROM nodes WHERE name = ?", (name,))
        return row_node(rows[0]) if rows else None

    def events(self, after_seq: int = 0, limit: int = 1000, job: str | None = None) -> list[Event]:
        """Events with seq > after_seq, oldest first, at most limit (follow with the last seq seen)."""
        sql, args = _filtered("SELECT * FROM events WHERE seq > ?", job=job, first=(after_seq,))
        return [row_event(r) for r in self._rows(sql + " ORDER BY seq LIMIT ?", [*args, limit])]

    def job_versions(self, name: str) -> list[tuple[str, float]]:
        """(version, submitted_at) of every version of a job ever submitted, oldest first."""
        rows = self._rows("SELECT version, submitted_at FROM job_versions WHERE job = ? ORDER BY submitted_at",
                          (name,))
        return [(r["version"], r["submitted_at"]) for r in rows]

    def job_version_text(self, name: str, version: str) -> tuple[str, str] | None:
        """(raw_yaml, source) of a version of a job submitted before, or None."""
        rows = self._rows("SELECT raw_yaml, source FROM job_versions WHERE job = ? AND version = ? "
                          "ORDER BY submitted_at DESC LIMIT 1", (name, version))
        return (rows[0]["raw_yaml"], rows[0]["source"]) if rows else None

    def pending_intents(self) -> list[Intent]:
        """Intents not yet applied, oldest first."""
        return [row_intent(r) for r in self._rows("SELECT * FROM intents WHERE applied_at IS NULL ORDER BY id")]

    def intents(self) -> list[Intent]:
        """Every intent ever written, oldest first (the audit trail)."""
        return [row_intent(r) for r in self._rows("SELECT * FROM intents ORDER BY id")]

    def job_statuses(self) -> dict[str, str | None]:
        """Job name -> why some of its allocations cannot be placed (None: nothing pending)."""
        return {r["job"]: r["pending"] for r in self._rows("SELECT job, pending FROM job_status")}

    def cron_times(self) -> dict[str, tuple[float | None, float | None]]:
        """Cron job name -> (last fire, next fire), wall-clock seconds."""
        return {r["job"]: (r["last_fire"], r["next_fire"]) for r in self._rows(
            "SELECT job, last_fire, next_fire FROM job_status WHERE last_fire IS NOT NULL OR next_fire IS NOT NULL")}

    def last_event_seq(self) -> int:
        """The seq of the newest event (0 when there is none): follow the log from here."""
        rows = self._rows("SELECT MAX(seq) AS seq FROM events")
        return int(rows[0]["seq"] or 0)

    def lease_holder(self, now: float) -> Lease | None:
        """The controller holding the lease at wall-clock time now, or None when none (or it expired)."""
        rows = self._rows("SELECT * FROM controller_lease WHERE expires_at > ?", (now,))
        return row_lease(rows[0]) if rows else None


def _filtered(sql: str, first: tuple[Any, ...] = (), **where: str | None) -> tuple[str, list[Any]]:
    args = list(first)
    clauses = []
    for column, value in where.items():
        if value is not None:
            clauses.append(f"{column} = ?")
            args.append(value)
    if clauses:
        sql += (" AND " if " WHERE " in sql else " WHERE ") + " AND ".join(clauses)
    return sql, args


def connect(path: Path, busy_timeout: float = BUSY_TIMEOUT_MS / 1000) -> sqlite3.Connection:
    """Open (creating when new) the state database at path with flex's settings and a current schema.

    Raises:
        StoreError: the file cannot be created or opened, is not a flex state database, or has a
            schema version this flex does not know (a newer flex wrote it).
    """
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False,
                               timeout=busy_timeout)
    except (OSError, sqlite3.Error) as exc:
        raise StoreError(f"state database {path}: cannot open it ({exc})\n"
                         f"  fix: make {path.parent} a writable directory, or choose another state file") from exc
    try:
        conn.row_factory = sqlite3.Row
        conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout * 1000)}")
        mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        if str(mode).lower() != "wal":
            raise StoreError(f"state database {path}: cannot switch it to WAL mode (got {mode})\n"
                             "  fix: put the state file on a local file system")
        conn.execute("PRAGMA synchronous = FULL")
        conn.execute("PRAGMA foreign_keys = ON")
        _check_version(conn, path)
        _migrate(conn)
        if conn.execute("PRAGMA user_version").fetchone()[0] == 0:
            conn.execute("BEGIN IMMEDIATE")
            try:
                if conn.execute("PRAGMA user_version").fetchone()[0] == 0:  # not created meanwhile
                    for statement in SCHEMA.split(";"):
                        if statement.strip():
                            conn.execute(statement)
                    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
    except StoreError:
        conn.close()
        raise
    except sqlite3.Error as exc:
        conn.close()
        raise StoreError(f"state database {path}: {exc}\n"
                         f"  fix: check that {path} is a flex state database on a writable, local file "
                         "system (move a damaged file away to start afresh)") from exc
    return conn


def _migrate(conn: sqlite3.Connection) -> None:
    """Bring a database of an older schema version up to SCHEMA_VERSION, one version per transaction."""
    while 0 < (version := conn.execute("PRAGMA user_version").fetchone()[0]) < SCHEMA_VERSION:
        conn.execute("BEGIN IMMEDIATE")
        try:
            if conn.execute("PRAGMA user_version").fetchone()[0] == version:  # not migrated meanwhile
                for statement in MIGRATIONS[version]:
                    conn.execute(statement)
                conn.execute(f"PRAGMA user_version = {version + 1}")
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise


def _check_version(conn: sqlite3.Connection, path: Path) -> None:
    version = conn.execute("PRAGMA user_version").fetchone()[0]
    if version == SCHEMA_VERSION or 0 < version < SCHEMA_VERSION:
        return
    if version > SCHEMA_VERSION:
        raise StoreError(f"state database {path} has schema version {version}, newer than this flex knows "
                         f"({SCHEMA_VERSION})\n  fix: upgrade flex (pip install -U flex-fleet), or use "
                         "another state file")
    if version != 0:
        raise StoreError(f"state database {path} has unknown schema version {version}\n"
                         "  fix: move the file away to start afresh, or use another state file")
    names = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    foreign = names - set(TABLES) - {"sqlite_sequence"}
    if foreign:
        raise StoreError(f"state database {path} is not a flex state database (it has tables "
                         f"{', '.join(sorted(foreign))})\n  fix: choose another state file")
