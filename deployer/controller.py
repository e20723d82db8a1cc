"""The controller: the level-triggered loop that keeps the fleet in its desired state.

    probe streams (one task per node) ──> nodes ──┐
    store: jobs, allocations, flags, intents ─────┼─> snapshot ─> reconcile ─> persist ─> dispatch
    monotonic clock ──────────────────────────────┘                          (executor tasks, bounded)

A pass never waits for a node: operations run as executor tasks and their allocations stay `busy`
until they finish, so one slow host delays only its own work. Passes run when a probe reports a
change (an exit reaches the loop at once through the node's stream), when the plan asks for a re-check
(a backoff ending), and at least every `max_pass_interval`. One controller per state database: the
lease row is taken on start, renewed each pass, and given back on a clean exit.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any, Self

from deployer.errors import FlexError, StoreError
from deployer.executor import Executor
from deployer.models import (
    NODE_READY,
    NODE_UNREACHABLE,
    NODE_UNTRUSTED,
    Allocation,
    AllocationObservation,
    Host,
    Inventory,
    JobSpec,
    NodeState,
    normalized,
)
from deployer.nodeclient import NodeClient
from deployer.plan import RESTART, AllocTimers, ClusterSnapshot, DesiredJob, Item, Plan
from deployer.reconcile import reconcile
from deployer.reconcile_jobs import allocation_version
from deployer.store import Store, Transaction
from deployer.transport import Pool, TransportSettings, UntrustedHost

log = logging.getLogger(__name__)

HOST_FIELDS = ("name", "address", "port", "user", "key_file", "connection", "flex_root")
WARMING_S = 10.0  # a starting controller's window for every node's first answer (see ClusterSnapshot.warming)
LEASE_RENEW_EVERY = 1.0  # seconds between renewals of the controller lease (at most a fifth of its TTL)
NODE_SAVE_INTERVAL = 5.0  # seconds between saves of a node's last state (an attached console reads these)
KEPT_VARS = ("flex_known_hosts", "flex_proxy_jump", "ansible_ssh_common_args")


@dataclass(frozen=True)
class ControllerSettings:
    """The loop's timings; tests shrink them."""

    probe_interval: float = 1.0  # seconds between a node's probe documents (exits arrive at once)
    max_pass_interval: float = 1.0  # a pass at least this often
    min_pass_interval: float = 0.05  # changes arriving together are handled by one pass
    lease_ttl: float = 0.0  # workloads fence themselves after this long without renewal (0: off)
    controller_lease_ttl: float = 15.0  # the state database's controller lease
    stale_after: float = 4.0  # a node whose stream is silent this long is unreachable (4 missed probes)
    concurrency: int = 64


class ControllerBusy(StoreError):
    """Another controller holds the state database's lease."""


class Controller:
    """Observe, reconcile, execute, persist, publish; `async with Controller(...) as c: await c.run()`."""

    def __init__(self, inventory: Inventory, store: Store, settings: ControllerSettings | None = None,
                 transport: TransportSettings | None = None) -> None:
        self.inventory = inventory
        self.store = store
        self.settings = settings or ControllerSettings()
        self.owner = f"{os.uname().nodename}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.hosts: dict[str, Host] = {h.name: h for h in inventory.hosts}
        self.pool = Pool(inventory.hosts, transport)
        self.clients: dict[str, NodeClient] = {}
        self.nodes: dict[str, NodeState] = {}
        self.timers: dict[str, AllocTimers] = {}
        self.executor = Executor(store, self._client, lease_ttl=self.settings.lease_ttl,
                                 concurrency=self.settings.concurrency)
        self.subscribers: list[Callable[[ClusterSnapshot, Plan], None]] = []
        self.last_plan: Plan | None = None
        self.passes = 0
        self._wake = asyncio.Event()
        self._observers: dict[str, asyncio.Task[None]] = {}
        self._specs: dict[tuple[str, str], JobSpec] = {}
        self._bad_specs: set[tuple[str, str]] = set()
        self._reverted: set[tuple[str, str]] = set()  # (job, version) rolled back already
        self._runs: dict[str, int] = {}  # alloc id -> the node's launch count the timers belong to
        # alloc id -> the observation its timers were last updated from: the same object again (the node
        # sent no new document) changes nothing, so a steady pass skips it (~10 ms at 8,000 allocations)
        self._timers_seen: dict[str, Any] = {}
        self._saved_nodes: dict[str, tuple[str, float]] = {}
        self._last_renew = 0.0  # monotonic time of the last renewal of the workloads' leases (fencing)
        self._controller_lease_renewed = -1e9  # monotonic time of the last controller lease renewal
        self._closing = False  # close() began: observers whose stream ends stop
        # close() waits until every connection is closed; a CLI verb whose process exits right after
        # sets False: the disconnects go out while it reports (~0.1 s of a push to 30 nodes)
        self.wait_on_close = True
        self._salt = uuid.uuid4().hex[:8]
        self._warm_until = 0.0  # set by run(); reconcile_once() called directly sees no warming

    # --- lifecycle ---------------------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def start(self) -> None:
        """Take the lease and start observing every node.

        Raises:
            ControllerBusy: another controller holds the lease of this state database.
        """
        now = time.time()
        dead = live_lease_holder(self.store) is None and self.store.lease_holder(now)
        if dead:  # its process is gone (SIGKILL, OOM): no need to wait for its lease to run out
            self.store.release_lease(dead.owner)
            self.store.append_event("controller", f"took over the lease of dead controller {dead.owner}")
        with self.store.transaction() as tx:  # the lease and the hosts: one commit before any connection
            granted = tx.acquire_lease(self.owner, self.settings.controller_lease_ttl, now)
            if granted:
                for host in self.inventory.hosts:
                    tx.save_node_host(host.name, host_record(host))
        if not granted:
            holder = self.store.lease_holder(now)
            who = f"{holder.hostname} pid {holder.pid}" if holder else "another process"
            raise ControllerBusy(f"state database {self.store.path}: a controller already runs ({who})\n"
                                 "  fix: let it work (`flex push` and `flex console` use it), or stop it first")
        self._controller_lease_renewed = time.monotonic()
        for name in self._nodes_to_watch():
            self._watch(name)

    async def close(self) -> None:
        """Let operations in flight finish (briefly), close the connections, stop observing, give the
        lease back. The connections close before the probe streams: a node's stream ends when its
        connection does (stdin EOF), so there is no channel close to wait for, stream by stream
        (~0.1 s of every `flex push` to 30 nodes)."""
        self._closing = True
        await self.executor.drain(timeout=15.0)
        await self.pool.close(wait=self.wait_on_close)
        for task in self._observers.values():
            task.cancel()
        await asyncio.gather(*self._observers.values(), return_exceptions=True)
        try:
            self.store.release_lease(self.owner)
        except FlexError:
            log.exception("could not release the controller lease")

    def _nodes_to_watch(self) -> list[str]:
        """Inventory hosts, plus nodes that left it but still have work on record (F27)."""
        names = list(self.hosts)
        busy_nodes = {a.node for a in self.store.allocations() if a.desired_status == "run"
                      and a.observed_status not in ("complete", "failed", "lost", "stopped")}
        for record in self.store.nodes():
            if record.name not in self.hosts and record.name in busy_nodes and record.host:
                host = host_from_record(record.host)
                self.hosts.setdefault(host.name, host)
                self.pool.add(host)
                names.append(host.name)
        return names

    def _client(self, name: str) -> NodeClient | None:
        if name not in self.clients and name in self.hosts:
            self.clients[name] = NodeClient(self.pool, self.hosts[name])
        return self.clients.get(name)

    def _watch(self, name: str) -> None:
        if name not in self._observers:
            self._observers[name] = asyncio.ensure_future(self._observe(name))

    # --- observing ---------------------------------------------------------------------------------

    async def _observe(self, name: str) -> None:
        """Keep one probe stream open to the node; a failure makes it unreachable, then retry."""
        client = self._client(name)
        assert client is not None
        failures = 0
        while True:
            try:
                async for state in client.probe_stream(self.settings.probe_interval):  # installs when missing
                    self._observed(name, state)
                    failures = 0
                raise ConnectionError("the probe stream ended")
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # any failure is data about the node, never the loop's end
                if self._closing:
                    return  # its connection was closed: no new one
                self._unreachable(name, exc)
                failures += 1
            await asyncio.sleep(min(0.2 * 2 ** min(failures, 5), 5.0))

    def _observed(self, name: str, state: NodeState) -> None:
        before = self.nodes.get(name)
        self.nodes[name] = state
        if before is None or before.status != NODE_READY or _allocs_changed(before, state):
            self._wake.set()

    def _unreachable(self, name: str, exc: Exception) -> None:
        before = self.nodes.get(name) or NodeState(name)
        status = NODE_UNTRUSTED if isinstance(exc, UntrustedHost) else NODE_UNREACHABLE
        since = before.unreachable_since if before.status != NODE_READY and before.unreachable_since else \
            (before.observed_at or time.monotonic()) if before.status == NODE_READY else time.monotonic()
        self.nodes[name] = replace(before, status=status, error=str(exc), unreachable_since=since)
        self._wake.set()

    def _check_stale(self, now: float) -> None:
        for name, state in list(self.nodes.items()):
            if state.is_ready and state.observed_at is not None and now - state.observed_at > self.settings.stale_after:
                self.nodes[name] = replace(state, status=NODE_UNREACHABLE, unreachable_since=state.observed_at,
                                           error=f"no probe for {now - state.observed_at:.0f}s")

    async def wait_first_probes(self, timeout: float) -> None:
        """Wait until every watched node answered or failed once (at most timeout seconds)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and any(n not in self.nodes for n in self._observers):
            await asyncio.sleep(0.02)

    # --- one pass ----------------------------------------------------------------------------------

    def reconcile_once(self) -> Plan:
        """One pass: snapshot, reconcile, persist, dispatch; returns the plan."""
        now, wall = time.monotonic(), time.time()
        self._renew_lease(now, wall)
        self._check_stale(now)
        intents = self.store.pending_intents()
        desired = self._desired()
        if self._auto_revert(desired, wall):
            desired = self._desired()
        snapshot = self._snapshot(now, wall)
        plan = reconcile(desired, snapshot, now)
        self.executor.persist(plan, snapshot, wall, also=lambda tx: self._save_nodes(tx, wall))
        specs = {name: job.spec for name, job in desired.items()}
        self.executor.dispatch(plan, snapshot, specs, self._done)
        self.note_dispatch(plan, now)
        self._apply_intents(intents, wall)
        self._renew_leases(now, snapshot)
        self.last_plan = plan
        self.passes += 1
        for subscriber in list(self.subscribers):
            subscriber(snapshot, plan)
        return plan

    def _renew_lease(self, now: float, wall: float) -> None:
        """Renew the controller lease when a fifth of its TTL (at most LEASE_RENEW_EVERY) has passed
        since the last renewal, not on every pass: each renewal is a commit (an fsync). The lease can
        only pass to another controller once it expired, and any pass after a pause that long renews
        first, so a controller that lost its lease still learns it before it writes a plan."""
        ttl = self.settings.controller_lease_ttl
        if now - self._controller_lease_renewed < min(LEASE_RENEW_EVERY, ttl / 5):
            return
        if not self.store.renew_lease(self.owner, ttl, wall):
            raise ControllerBusy(f"state database {self.store.path}: another controller took the lease over")
        self._controller_lease_renewed = now

    def _desired(self) -> dict[str, DesiredJob]:
        cron = self.store.cron_times()
        out = {}
        for record in self.store.jobs():
            spec = self._spec(record.name, record.version, record.raw_yaml, record.source)
            if spec is not None:
                out[record.name] = DesiredJob(spec, record.desired, record.restart_generation, record.submitted_at,
                                              cron.get(record.name, (None, None))[0])
        return out

    def _auto_revert(self, desired: Mapping[str, DesiredJob], wall: float) -> bool:
        """Roll back a job whose new version fails (restart budget spent, or not healthy within
        update.healthy_deadline) to the version before it, when update.auto_revert asks; once per version."""
        reverted = False
        for name, job in desired.items():
            policy, version = job.spec.update, allocation_version(job.spec)
            if not policy.auto_revert or job.desired != "run" or (name, version) in self._reverted:
                continue
            mine = [a for a in self.store.allocations(job=name) if a.job_version == version]
            failing = [a for a in mine if a.observed_status == "failed" or (
                a.desired_status == "run" and a.observed_status != "running"
                and wall - a.created_at > policy.healthy_deadline)]
            older = [v for v, _ in self.store.job_versions(name) if v != job.spec.fingerprint]
            if not failing or not older:
                continue
            self._reverted.add((name, version))
            reverted |= self._revert(name, job.spec.fingerprint, older[-1],
                                     f"{failing[0].id} {failing[0].observed_status}")
        return reverted

    def _revert(self, name: str, bad: str, good: str, why: str) -> bool:
        text = self.store.job_version_text(name, good)
        spec = None if text is None else self._spec(name, good, text[0], text[1])
        if spec is None or text is None:
            return False
        with self.store.transaction() as tx:
            tx.put_job(spec, text[0], text[1])
            tx.append_event("auto_revert", f"version {bad[:8]} fails ({why}): reverted to {good[:8]}", job=name)
        return True

    def _spec(self, name: str, version: str, raw_yaml: str, source: str) -> JobSpec | None:
        """The JobSpec of a stored job version, parsed once; a spec that no longer parses is reported once."""
        from deployer.document import parse_document
        from deployer.spec import parse_job

        key = (name, version)
        if key in self._specs or key in self._bad_specs:
            return self._specs.get(key)
        try:
            self._specs[key] = parse_job(parse_document(raw_yaml, source))
        except FlexError as exc:
            self._bad_specs.add(key)
            self.store.append_event("error", f"stored spec cannot be read again: {exc}", job=name)
            return None
        return self._specs[key]

    def _snapshot(self, now: float, wall: float) -> ClusterSnapshot:
        confirmed = self.executor.confirmed()  # launches confirmed since the last pass, committed by this one
        allocations = tuple(a if a.id not in confirmed else _confirmed_over(a, confirmed[a.id][0])
                            for a in self.store.allocations())
        launched = self.store.launched_generations()
        for alloc_id, (_, generation) in confirmed.items():
            launched[alloc_id] = max(generation, launched.get(alloc_id, 0))
        launched = self._adopt_generations(allocations, launched)
        flags = self.store.flagged_nodes()
        cordoned = {r.name for r in flags if r.cordoned} | {f"{r.name}/{g}" for r in flags for g in r.cordoned_gpus}
        self._update_timers(allocations, now)
        return ClusterSnapshot(
            hosts={h.name: h for h in self.inventory.hosts}, nodes=dict(self.nodes), allocations=allocations,
            launched=launched, cordoned=frozenset(cordoned),
            draining=frozenset(r.name for r in flags if r.draining), timers=dict(self.timers),
            busy=frozenset(self.executor.busy) | self._stale_runs(allocations), wall=wall,
            lease_ttl=self.settings.lease_ttl, salt=self._salt, warming=self._warming(now))

    def _warming(self, now: float) -> frozenset[str]:
        """Watched nodes with no answer yet, while the start-up window lasts (then they are just unknown)."""
        if now >= self._warm_until:
            return frozenset()
        return frozenset(name for name in self._observers if name not in self.nodes)

    def _adopt_generations(self, allocations: tuple[Any, ...], launched: dict[str, int]) -> dict[str, int]:
        """Record the restart generation a node says the current run was launched at, when it is above the
        recorded one: a controller launched it and died before recording it (F10). Without this the next
        controller would apply that restart a second time. Returns launched, updated."""
        adopted = []
        for alloc in allocations:
            node = self.nodes.get(alloc.node)
            obs = None if node is None or not node.is_ready else node.allocations.get(alloc.id)
            if obs is not None and obs.generation > launched.get(alloc.id, 0) and alloc.id not in self.executor.busy:
                adopted.append((alloc, obs.generation))
        if adopted:
            with self.store.transaction() as tx:
                for alloc, generation in adopted:
                    tx.save_allocation(alloc, launched_generation=generation)
                    tx.append_event("adopted", f"{alloc.node} already runs it at restart generation {generation} "
                                    "(launched by a controller that stopped before recording it)", job=alloc.job,
                                    alloc=alloc.id, node=alloc.node)
                    launched[alloc.id] = generation
        return launched

    def _stale_runs(self, allocations: tuple[Any, ...]) -> frozenset[str]:
        """Allocations just launched whose node has not reported the new run yet (no double launch)."""
        stale = set()
        now = time.monotonic()
        for alloc in allocations:
            expected = self.executor.expected.get(alloc.id)
            if expected is None:
                continue
            obs = self.nodes.get(alloc.node, NodeState(alloc.node)).allocations.get(alloc.id)
            if (obs is None or obs.launches < expected[0]) and now - expected[1] < 10.0:
                stale.add(alloc.id)
            else:
                self.executor.expected.pop(alloc.id, None)
        return frozenset(stale)

    def _update_timers(self, allocations: tuple[Any, ...], now: float) -> None:
        """Exit and running times per run of each allocation, from what the nodes report."""
        seen = self._timers_seen
        for alloc in allocations:
            node = self.nodes.get(alloc.node)
            obs = None if node is None else node.allocations.get(alloc.id)
            if obs is None or seen.get(alloc.id) is obs:
                continue  # no observation, or the very one these timers were updated from
            seen[alloc.id] = obs
            timers = self.timers.get(alloc.id) or AllocTimers()
            if self._runs.get(alloc.id) != obs.launches:
                self._runs[alloc.id] = obs.launches
                timers = replace(timers, exit_seen_at=None, running_since=None)
            # backoff and reschedule delays count from the exit (or failing health) of this run: a run still
            # starting has not exited, and one seen up and healthy again has no exit pending any more
            exited = not obs.is_alive and obs.status not in ("pending", "starting")
            troubled = exited or (obs.is_alive and obs.health is not None and not obs.health.ok)
            if troubled and timers.exit_seen_at is None:
                timers = replace(timers, exit_seen_at=now)
            elif obs.is_alive and not troubled and timers.exit_seen_at is not None:
                timers = replace(timers, exit_seen_at=None)
            if obs.is_alive and obs.status == "running" and timers.running_since is None:
                timers = replace(timers, running_since=now - _up_for(node, obs))
            self.timers[alloc.id] = timers

    def _done(self, item: Item, ok: bool) -> None:
        self._wake.set()

    def note_dispatch(self, plan: Plan, now: float) -> None:
        """Count budgeted restarts against each allocation's restart window."""
        for item in plan.bucket(RESTART):
            if item.is_budgeted:
                timers = self.timers.get(item.alloc.id) or AllocTimers()
                self._timers_seen.pop(item.alloc.id, None)  # the next observation decides exit_seen_at again
                self.timers[item.alloc.id] = replace(timers, restart_times=(*timers.restart_times, now),
                                                     exit_seen_at=None)

    def _apply_intents(self, intents: list[Any], wall: float) -> None:
        """Mark intents applied once their effect is done (a restart: nothing due for its target)."""
        if not intents:
            return
        due = {a.id for a, _ in self.store.due_restarts()} | {a.job for a, _ in self.store.due_restarts()}
        with self.store.transaction() as tx:
            for intent in intents:
                if intent.kind == "restart" and intent.target in due:
                    continue
                result = {"restart": "restarted", "stop": "job stopping", "drain": "node draining",
                          "cordon": "cordoned", "uncordon": "uncordoned"}[intent.kind]
                tx.mark_applied([intent.id], result, wall)
                tx.append_event("intent", f"{intent.kind} {intent.target}: {result}", actor=intent.actor,
                                job=intent.target if intent.kind in ("restart", "stop") else None, time=wall)

    def _save_nodes(self, tx: Transaction, wall: float) -> None:
        """Each node's last state when its status changed, or when NODE_SAVE_INTERVAL passed since its
        last save, for at most a fifth of the nodes per pass, the oldest first (in the pass's
        transaction: what a pass writes is one commit). Saving 1,000 nodes at once made every fifth
        second's pass ~0.4 s longer; spread, the records stay a few seconds old and no pass pays for all."""
        changed, due = [], []
        for name, state in self.nodes.items():
            status, saved_at = self._saved_nodes.get(name, ("", 0.0))
            if status != state.status:
                changed.append((name, state))
            elif wall - saved_at > NODE_SAVE_INTERVAL:
                due.append((saved_at, name, state))
        due.sort(key=lambda entry: entry[0])
        changed += [(name, state) for _, name, state in due[:max(50, len(self.nodes) // 5)]]
        for name, state in changed:
            previous = self._saved_nodes.get(name, ("", 0.0))[0]
            tx.save_node(name, node_record(state), wall, state.boot_id)
            if previous != state.status:
                tx.append_event(f"node_{state.status}", state.error or f"{name} is {state.status}", node=name,
                                time=wall)
            self._saved_nodes[name] = (state.status, wall)

    def _renew_leases(self, now: float, snapshot: ClusterSnapshot) -> None:
        """Renew the workload leases of every reachable node (fencing), every third of the TTL."""
        ttl = self.settings.lease_ttl
        if ttl <= 0 or now - self._last_renew < ttl / 3:
            return
        self._last_renew = now
        by_node: dict[str, list[str]] = {}
        for alloc in snapshot.allocations:
            if alloc.desired_status == "run" and snapshot.node(alloc.node).is_ready:
                by_node.setdefault(alloc.node, []).append(alloc.id)
        for node, ids in by_node.items():
            client = self._client(node)
            if client is not None:
                asyncio.ensure_future(_quietly(client.renew(*ids)))

    # --- the loop ----------------------------------------------------------------------------------

    async def run(self, until: Callable[[], bool] | None = None, stop: asyncio.Event | None = None) -> None:
        """Passes until `until()` is true after a pass, or stop is set. Passes start at once: for the first
        WARMING_S seconds, nodes not heard from yet are `warming` in the snapshot (see ClusterSnapshot)."""
        self._warm_until = time.monotonic() + WARMING_S
        while stop is None or not stop.is_set():
            self._wake.clear()
            plan = self.reconcile_once()
            if until is not None and until():
                return
            delay = min(plan.requeue_after if plan.requeue_after is not None else 1e9,
                        self.settings.max_pass_interval)
            try:
                await asyncio.wait_for(self._wake.wait(), max(delay, self.settings.min_pass_interval))
            except TimeoutError:
                pass
            await asyncio.sleep(self.settings.min_pass_interval)


def live_lease_holder(store: Store) -> Any:
    """The controller holding the state database's lease, or None when none does or its holder is a
    process of this machine that is gone (a lease left by a SIGKILLed controller)."""
    holder = store.lease_holder(time.time())
    if holder is None or holder.hostname != os.uname().nodename or holder.pid is None:
        return holder
    try:
        os.kill(holder.pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        pass  # another user's live process
    return holder


async def _quietly(op: Any) -> None:
    try:
        await op
    except Exception:  # a renewal that fails is retried next time; fencing is the node's safety net
        log.debug("lease renewal failed", exc_info=True)


def _up_for(node: NodeState | None, obs: AllocationObservation) -> float:
    """How long the run has been up by the node's own clock (its document's time minus the run's
    start): the settle counts from the launch, not from when this controller first saw it up, which
    on a busy push is seconds later. 0 when the node did not say; never more than 1 minute, so a node
    clock stepped backwards or forwards cannot skip a settle by much."""
    if node is None or node.node_time is None or obs.started_at is None:
        return 0.0
    return min(60.0, max(0.0, node.node_time - obs.started_at))


def _confirmed_over(stored: Allocation, confirmed: Allocation) -> Allocation:
    """A confirmed launch's record over the stored one, as the pass's commit will leave it: the
    generation never goes down (a restart requested since the launch is kept, as save_allocation does)."""
    if stored.generation <= confirmed.generation:
        return confirmed
    return replace(confirmed, generation=stored.generation)


def _allocs_changed(before: NodeState, after: NodeState) -> bool:
    """True when any allocation's status, liveness or health differs between two observations."""
    if before.allocations.keys() != after.allocations.keys():
        return True
    for alloc_id, obs in after.allocations.items():
        old = before.allocations[alloc_id]
        if (old.status, old.is_alive, old.launches, old.health and old.health.ok) != \
                (obs.status, obs.is_alive, obs.launches, obs.health and obs.health.ok):
            return True
    return False


def node_record(state: NodeState) -> Mapping[str, Any]:
    """The JSON-ready form of a node observation the store keeps (log tails left out)."""
    doc: dict[str, Any] = normalized(state)
    for alloc in (doc.get("allocations") or {}).values():
        alloc.pop("log_tail", None)
    return doc


def host_record(host: Host) -> dict[str, Any]:
    """How to reach a host, for when it has left the inventory but still runs work."""
    record = {f: getattr(host, f) for f in HOST_FIELDS}
    record["vars"] = {k: v for k, v in host.vars.items() if k in KEPT_VARS}
    return record


def host_from_record(record: Mapping[str, Any]) -> Host:
    """The Host of a host_record."""
    from deployer.models import frozen_mapping

    fields: dict[str, Any] = {f: record[f] for f in HOST_FIELDS if record.get(f) is not None}
    return Host(**fields, vars=frozen_mapping(record.get("vars") or {}))


__all__ = ["Controller", "ControllerBusy", "ControllerSettings", "live_lease_holder", "host_from_record", "host_record", "node_record"]
