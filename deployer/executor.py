"""The executor: applies a Plan to the fleet through NodeClients, and records every outcome.

Order matters for "no duplicate, nothing lost": every record a plan changes (new allocations, desired
stops, lost, failed) is committed in ONE transaction BEFORE any launch or stop is sent; each node
operation's outcome is committed after it. A launch whose outcome is unknown (the connection broke)
leaves the allocation `pending`: the next pass asks the node by allocation id (`start` is idempotent
there) before anything is launched again. Operations run as tasks with bounded concurrency; the
controller keeps their allocation ids `busy` so no pass plans a second operation on the same one.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import replace
from typing import Any

from deployer.errors import FlexError
from deployer.models import (
    ENV_MASTER_ADDR,
    ENV_MASTER_PORT,
    ENV_RANK,
    ENV_WORLD_SIZE,
    GANG_PORT,
    Allocation,
    Host,
    JobSpec,
)
from deployer.nodeclient import Launch, NodeClient
from deployer.plan import IGNORE, LOST, PLACE, RESTART, START, STOP, UPDATE, ClusterSnapshot, Item, Plan
from deployer.spec import resolve_secrets
from deployer.store import Store, Transaction

log = logging.getLogger(__name__)

# waits that last a moment on every launch: not worth an event
TRANSIENT = ("in flight", "supervisor busy", "up for less than", "first probe", "has not reported")
ORPHAN_RETRY = 10.0  # seconds before an orphan still reported after its stop is stopped again
MARK_EVENTS = {"running": "running", "starting": "starting", "exited": "exited", "complete": "complete",
               "failed": "failed", "stopped": "stopped", "unknown": "unknown", "lost": "lost"}


class Executor:
    """Applies plans: persists first, then runs node operations as bounded, tracked tasks."""

    def __init__(self, store: Store, client: Callable[[str], NodeClient | None], *, lease_ttl: float = 0.0,
                 concurrency: int = 64, environ: Mapping[str, str] | None = None) -> None:
        self.store = store
        self.client = client  # node name -> its NodeClient (None: no way to reach it)
        self.lease_ttl = lease_ttl
        self.environ = os.environ if environ is None else environ
        self.busy: dict[str, asyncio.Task[None]] = {}
        self._limit = asyncio.Semaphore(concurrency)
        self._waits: dict[str, str] = {}  # alloc id -> last wait reason shown (numbers left out)
        # alloc id -> (the node's launch count after our launch, when): until the node reports that
        # run, the controller treats the allocation as busy, so a stale probe never causes a relaunch
        self.expected: dict[str, tuple[int, float]] = {}
        self._orphans_stopped: dict[str, float] = {}  # orphan key -> when its stop was sent
        # confirmed launches not committed yet: (record, launched generation, event kind, message, time)
        self._confirmed: list[tuple[Allocation, int, str, str, float]] = []

    def persist(self, plan: Plan, snapshot: ClusterSnapshot, wall: float,
                also: Callable[[Transaction], None] | None = None) -> None:
        """Commit every record and event the plan implies, before any node hears of it, in one
        transaction with the launches confirmed since the last pass (see confirmed) and what also
        writes: one commit (with synchronous=FULL, one fsync) per pass."""
        with self.store.transaction() as tx:
            self._write_confirmed(tx)
            for alloc, reason in plan.marks:
                tx.save_allocation(alloc)
                tx.append_event(MARK_EVENTS.get(alloc.observed_status, "status"), reason, job=alloc.job,
                                alloc=alloc.id, node=alloc.node, time=wall)
            for item in plan.items:
                self._persist_item(tx, item, wall)
            for job, pending in plan.pending.items():
                tx.set_job_status(job, pending, wall, last_fire=plan.fired.get(job),
                                  next_fire=plan.next_fire.get(job))
            for job, fire in plan.fired.items():
                tx.append_event("cron", f"schedule fired ({_clock(fire)})", job=job, time=wall)
            if also is not None:
                also(tx)
        self._confirmed.clear()

    def _persist_item(self, tx: Transaction, item: Item, wall: float) -> None:
        alloc = item.alloc
        if item.action == IGNORE:
            self._maybe_wait_event(tx, item, wall)
            return
        if item.action == PLACE:
            tx.save_allocation(alloc, launched_generation=item.target_generation)
        elif item.action in (STOP, LOST, UPDATE):
            tx.save_allocation(alloc)
        if item.action != START:
            kind = {RESTART: "restarting", LOST: "lost", STOP: "stopping", PLACE: "placed"}.get(item.action, item.action)
            tx.append_event(kind, item.reason, job=alloc.job, alloc=alloc.id, node=alloc.node, time=wall)

    def _maybe_wait_event(self, tx: Transaction, item: Item, wall: float) -> None:
        """A wait (backoff, grace) is an event once per kind of wait, not once per pass."""
        shape = re.sub(r"[\d.]+", "#", item.reason)
        if self._waits.get(item.alloc.id) == shape or any(words in item.reason for words in TRANSIENT):
            return
        self._waits[item.alloc.id] = shape
        tx.append_event("waiting", item.reason, job=item.job, alloc=item.alloc.id, node=item.alloc.node, time=wall)

    def dispatch(self, plan: Plan, snapshot: ClusterSnapshot, specs: Mapping[str, JobSpec],
                 on_done: Callable[[Item, bool], None] | None = None) -> list[asyncio.Task[None]]:
        """Start one task per node operation of the plan; returns them (the controller may wait)."""
        tasks = []
        for item in plan.items:
            if item.action in (IGNORE, LOST) or item.alloc.id in self.busy:
                continue
            op = self._operation(item, snapshot, specs)
            tasks.append(self._spawn(item.alloc.id, op, item, on_done))
        for node, alloc_id, reason, pgid in plan.orphans:
            key = alloc_id if pgid is None else f"{alloc_id}/{pgid}"
            if key not in self.busy and time.monotonic() - self._orphans_stopped.get(key, -1e9) > ORPHAN_RETRY:
                self._orphans_stopped[key] = time.monotonic()
                tasks.append(self._spawn(key, self._stop_orphan(node, alloc_id, reason, pgid), None, None))
        return tasks

    def _spawn(self, key: str, op: Awaitable[bool], item: Item | None,
               on_done: Callable[[Item, bool], None] | None) -> asyncio.Task[None]:
        async def run() -> None:
            ok = False
            try:
                async with self._limit:
                    ok = await op
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # one failed operation never stops the loop
                log.exception("operation on %s failed", key)
                self._event("error", f"{type(exc).__name__}: {exc}", item)
            finally:
                self.busy.pop(key, None)
                if item is not None and on_done is not None:
                    on_done(item, ok)

        task = asyncio.ensure_future(run())
        self.busy[key] = task
        return task

    def _operation(self, item: Item, snap: ClusterSnapshot, specs: Mapping[str, JobSpec]) -> Awaitable[bool]:
        if item.action == STOP:
            return self._stop(item, specs.get(item.job))
        spec = specs[item.job]
        alive = _is_alive(snap, item.alloc)
        return self._launch(item, spec, snap, stop_first=item.action == RESTART and alive)

    async def _launch(self, item: Item, spec: JobSpec, snap: ClusterSnapshot, *, stop_first: bool) -> bool:
        alloc = item.alloc
        client = self.client(alloc.node)
        if client is None:
            return False
        try:
            secrets = resolve_secrets(spec, self.environ)
        except FlexError as exc:
            self._event("error", f"cannot launch: {exc}", item)
            return False
        if stop_first:
            await client.stop(alloc.id, timeout=spec.stop.timeout, signal=spec.stop.signal)
        env = item.env or gang_env(alloc, spec, snap)
        launch = Launch(alloc.id, spec, alloc.index, alloc.gpus, alloc.ports, env, self.lease_ttl,
                        item.target_generation, fresh=item.action in (PLACE, UPDATE), restart=item.action == RESTART)
        try:
            doc = await client.launch(launch, secrets)
        except FlexError as exc:
            self._event("error", f"launch on {alloc.node} not confirmed ({exc}); the node is asked again", item)
            return False
        return self._launched(item, doc)

    def _launched(self, item: Item, doc: Mapping[str, Any]) -> bool:
        alloc = item.alloc
        if not doc.get("ok"):
            self._event("error", f"launch refused by {alloc.node}: {doc.get('error')}", item)
            return False
        restarts = alloc.restarts + (1 if item.action == RESTART else 0)
        adopted = bool(doc.get("already_running"))
        self.expected[alloc.id] = (int(doc.get("restarts") or 0), time.monotonic())
        status = "running" if adopted and alloc.observed_status == "running" else "starting"
        record = replace(alloc, observed_status=status, restarts=restarts, exit_code=None)
        words = "already running (adopted)" if adopted else f"started, pid {doc.get('pid')}"
        kind = "restarted" if item.action == RESTART else "started"
        self._confirmed.append((record, item.target_generation, kind, f"{words} on {alloc.node}", time.time()))
        return True

    def confirmed(self) -> dict[str, tuple[Allocation, int]]:
        """The launches confirmed since the last pass, not committed yet: alloc id -> (its record, the
        generation it was launched at). The next pass's snapshot reads them over the store's records and
        its persist commits them with its own: the nodes of a fleet answering within a pass cost one
        fsync, not one each. A controller that dies first leaves those allocations pending; the next
        one asks the node by allocation id, which already runs it (F10)."""
        return {record.id: (record, generation) for record, generation, *_ in self._confirmed}

    def _write_confirmed(self, tx: Transaction) -> None:
        for record, generation, kind, message, wall in self._confirmed:
            tx.save_allocation(record, launched_generation=generation)
            tx.append_event(kind, message, job=record.job, alloc=record.id, node=record.node, time=wall)

    def flush(self) -> None:
        """Commit the confirmed launches now (on shutdown: no pass follows).

        Raises:
            StoreError: the state database could not be written (the records stay for the next try).
        """
        if self._confirmed:
            with self.store.transaction() as tx:
                self._write_confirmed(tx)
        self._confirmed.clear()

    async def _stop(self, item: Item, spec: JobSpec | None) -> bool:
        alloc = item.alloc
        client = self.client(alloc.node)
        if client is None:
            return False
        timeout = spec.stop.timeout if spec else None
        doc = await client.stop(alloc.id, timeout=timeout, signal=spec.stop.signal if spec else None)
        if not doc.get("ok"):
            self._event("error", f"stop on {alloc.node} failed: {doc.get('error')}", item)
            return False
        with self.store.transaction() as tx:
            # a failed record stays failed (its reschedule delay and attempts count on it)
            tx.save_allocation(alloc if alloc.observed_status == "failed" else replace(alloc, observed_status="stopped"))
            tx.append_event("stopped", f"stopped on {alloc.node}" + (" (SIGKILL after timeout)" if doc.get("escalated")
                                                                    else ""), job=alloc.job, alloc=alloc.id,
                            node=alloc.node)
        return True

    async def _stop_orphan(self, node: str, alloc_id: str, reason: str, pgid: int | None) -> bool:
        client = self.client(node)
        if client is None:
            return False
        self.store.append_event("orphan", f"{alloc_id} {reason}: stopping it", alloc=alloc_id, node=node)
        if pgid is None:
            doc = await client.stop(alloc_id)
        else:
            doc = await client.verb("kill-orphan", alloc_id, str(pgid))
        return bool(doc.get("ok"))

    def _event(self, kind: str, message: str, item: Item | None) -> None:
        alloc = item.alloc if item else None
        try:
            self.store.append_event(kind, message, job=alloc.job if alloc else None, alloc=alloc.id if alloc else None,
                                    node=alloc.node if alloc else None)
        except FlexError:
            log.exception("cannot record event %s: %s", kind, message)

    async def drain(self, timeout: float) -> None:
        """Wait up to timeout for the operations in flight (on shutdown)."""
        tasks = list(self.busy.values())
        if tasks:
            await asyncio.wait(tasks, timeout=timeout)
        self.flush()


def gang_env(alloc: Allocation, spec: JobSpec, snap: ClusterSnapshot) -> dict[str, str]:
    """RANK, WORLD_SIZE, MASTER_ADDR and MASTER_PORT of a gang member, from the current records."""
    if not spec.gang or alloc.rank is None:
        return {}
    members = [a for a in snap.allocations if a.job == alloc.job and a.desired_status == "run" and a.rank is not None]
    master = next((a for a in members if a.rank == 0), alloc)
    host: Host | None = snap.hosts.get(master.node)
    return {ENV_RANK: str(alloc.rank), ENV_WORLD_SIZE: str(spec.count),
            ENV_MASTER_ADDR: host.address if host else master.node,
            ENV_MASTER_PORT: str(master.ports.get(GANG_PORT, ""))}


def _is_alive(snap: ClusterSnapshot, alloc: Allocation) -> bool:
    obs = snap.node(alloc.node).allocations.get(alloc.id)
    return obs is not None and obs.is_alive


def _clock(wall: float) -> str:
    from datetime import UTC, datetime

    return datetime.fromtimestamp(wall, UTC).strftime("%Y-%m-%d %H:%M UTC")


__all__ = ["Executor", "gang_env"]
