"""Where the console's data comes from: the state database, and the reconcile loop when none runs.

    UI worker thread ── poll() ──> Store reads ──> build_model ──> ConsoleModel
                     ── request(kind, target) ──> one intent (the controller applies it)
                     ── logs() / follow() ──> NodeClient on the allocation's node (own event loop)
    loop thread (only when no controller holds the lease): Controller.run on its own event loop

`Source.start()` attaches to the controller holding the lease, or runs the loop here when there is
none (never in read-only mode); when an attached controller goes away, the next poll takes the loop
over. Every method blocks: call them from a worker thread, never from the UI's event loop. Nothing
here imports asyncssh or textual at import time.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Any, Self

from console.build import GpuHistory, build_model
from console.model import ConsoleModel
from deployer.commands import actor
from deployer.commands import state_path as default_state_path
from deployer.commands.intents import NODE_KINDS, check_node, describe, render_request, write_intent
from deployer.commands.logs import node_host, parse_document, pick_allocation, read_lines
from deployer.commands.status import REASON_WINDOW
from deployer.errors import ConfigError, FlexError, TransportError
from deployer.store import Store
from deployer.store_schema import INTENT_KINDS, NodeRecord

if TYPE_CHECKING:
    from deployer.controller import Controller, ControllerSettings
    from deployer.models import Allocation, Host, Inventory, NodeState
    from deployer.store import Event, Lease

log = logging.getLogger(__name__)

EVENT_BATCH = 1000  # events read per query while catching up
START_TIMEOUT = 10.0  # seconds start() waits for the loop to take the lease
STOP_TIMEOUT = 20.0  # seconds stop() waits for the loop to finish (operations in flight, then the lease)
RETRY_AFTER = 5.0  # seconds between attempts to take the loop over after a failed one
LOG_TIMEOUT = 30.0  # seconds a logs() read may take
LOG_TAIL = 500
FOLLOW_IDLE = 1.0  # follow() yields {"lines": []} after this long without output, so a caller can stop
FOLLOW_CLOSE = 5.0  # seconds follow() lets the node's log stream close after its end document
RUNNING_HERE = "running the loop here"
READ_ONLY = "read-only"


class Source:
    """The console's data source: polls the state database, writes intents, reads logs from nodes."""

    def __init__(self, inventory_path: str, state_path: str, inventory: Inventory, store: Store, *,
                 read_only: bool, settings: ControllerSettings | None = None) -> None:
        self.inventory_path = inventory_path
        self.state_path = state_path
        self.inventory = inventory
        self.store = store
        self.read_only = read_only
        self.settings = settings
        self.history = GpuHistory()
        self.source_label = f"{READ_ONLY}: no controller" if read_only else "no controller"
        self._hosts: Mapping[str, Host] = {h.name: h for h in inventory.hosts}
        self._events: deque[Event] = deque(maxlen=REASON_WINDOW)
        self._last_seq: int | None = None
        self._last: ConsoleModel | None = None
        self._loop: LoopThread | None = None
        self._loop_error: str | None = None
        self._failed_at = float("-inf")
        self._stopped = False
        self._lock = threading.RLock()  # poll, start and stop may come from different threads

    @classmethod
    def open(cls, inventory_path: str, state_path: str | None, *, read_only: bool,
             settings: ControllerSettings | None = None) -> Source:
        """Load the inventory and open the state database (None: the inventory's default one).

        Raises:
            ConfigError: the inventory is unreadable or invalid.
            StoreError: the state database cannot be opened.
        """
        from deployer.inventory import load_inventory

        inventory = load_inventory(inventory_path)
        path = default_state_path(inventory_path, state_path)
        return cls(inventory_path, path, inventory, Store.open(path), read_only=read_only, settings=settings)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- the loop ------------------------------------------------------------------------------------

    @property
    def is_running_loop(self) -> bool:
        """True while the reconcile loop runs in this process."""
        return self._loop is not None and self._loop.is_running

    def start(self) -> None:
        """Run the loop here when no live controller holds the lease (and not read-only), else attach.

        Never raises: a loop that cannot start is reported in the next model's `error`.
        """
        with self._lock:
            self._stopped = False
            if not self.read_only:
                self._take_over()
            self.source_label = self._label(self._lease())

    def _take_over(self) -> None:
        """Start the loop here when nobody runs it (a failure is remembered and retried later)."""
        from deployer.controller import ControllerBusy, live_lease_holder

        try:
            if self.is_running_loop or live_lease_holder(self.store) is not None:
                return
            loop = LoopThread(self.inventory, self.state_path, self.settings)
            loop.start(START_TIMEOUT)
        except ControllerBusy:
            return  # another controller took the lease meanwhile: attach to it
        except Exception as exc:  # any failure is shown in the console, and retried after RETRY_AFTER
            log.warning("cannot run the loop here: %s", exc)
            self._loop_error = f"cannot run the loop here: {exc}"
            self._failed_at = time.monotonic()
            return
        self._loop, self._loop_error = loop, None

    def stop(self, timeout: float = STOP_TIMEOUT) -> None:
        """Stop the loop running here (operations in flight finish, the lease is given back); the
        workloads keep running. Polling goes on, attached or read-only."""
        with self._lock:
            self._stopped = True
            loop, self._loop = self._loop, None
        if loop is not None:
            loop.stop(timeout)

    def close(self) -> None:
        """stop(), then close the state database."""
        self.stop()
        self.store.close()

    # --- polling -------------------------------------------------------------------------------------

    def poll(self) -> ConsoleModel:
        """Read the state database and build the model. Never raises: when reading fails, the last good
        model comes back with `error` set (and every node dimmed)."""
        now = time.time()
        with self._lock:
            try:
                self._check_loop()
                model = self._build(now)
            except Exception as exc:  # the console shows any failure as a banner, never a traceback
                log.debug("poll failed", exc_info=True)
                return self._failed(now, str(exc) if isinstance(exc, FlexError) else f"{type(exc).__name__}: {exc}")
            self._last = model
            return model

    def _check_loop(self) -> None:
        """Notice a loop that ended on its own, and take the loop over when nobody runs it any more."""
        if self._loop is not None and not self._loop.is_running:
            failure, self._loop = self._loop.failure, None
            self._loop_error = f"the loop stopped: {failure}" if failure else "the loop stopped"
            self._failed_at = time.monotonic()
        if not self.read_only and not self._stopped and time.monotonic() - self._failed_at > RETRY_AFTER:
            self._take_over()

    def _build(self, now: float) -> ConsoleModel:
        store = self.store
        jobs, allocations, nodes = store.jobs(), store.allocations(), store.nodes()
        pending, cron = store.job_statuses(), store.cron_times()
        self._read_events()
        lease = store.lease_holder(now)
        self.source_label = self._label(lease)
        error = self._loop_error if lease is None or self.is_running_loop else None
        return build_model(now=now, inventory=self.inventory_path, state=self.state_path, source=self.source_label,
                           jobs=jobs, allocations=allocations, nodes=self._fresher(nodes, now), pending=pending,
                           cron=cron, events=list(self._events), hosts=self._hosts, history=self.history,
                           lease_age=None if lease is None else now - lease.renewed_at, error=error)

    def _read_events(self) -> None:
        """Catch up with the event log: the last REASON_WINDOW events at first, then only new ones."""
        if self._last_seq is None:
            self._last_seq = max(0, self.store.last_event_seq() - REASON_WINDOW)
        while True:
            batch = self.store.events(after_seq=self._last_seq, limit=EVENT_BATCH)
            self._events.extend(batch)
            if batch:
                self._last_seq = batch[-1].seq
            if len(batch) < EVENT_BATCH:
                return

    def _fresher(self, nodes: Sequence[NodeRecord], now: float) -> list[NodeRecord]:
        """The stored nodes, with the loop's own observations instead when it runs here: the store
        keeps a node's state only every NODE_SAVE_INTERVAL while its status holds."""
        states = self._loop.observations() if self._loop is not None else {}
        if not states:
            return list(nodes)
        from deployer.controller import node_record

        mono = time.monotonic()
        records = {r.name: r for r in nodes}
        for name, state in states.items():
            record = records.get(name) or NodeRecord(name)
            seen = record.last_seen if state.observed_at is None else now - (mono - state.observed_at)
            records[name] = replace(record, last_state=node_record(state), last_seen=seen)
        return [records[name] for name in sorted(records)]

    def _failed(self, now: float, message: str) -> ConsoleModel:
        """The last good model, aged to now, with the failure as its error."""
        last = self._last
        if last is None:
            return ConsoleModel(now=now, inventory=self.inventory_path, state=self.state_path,
                                source=self.source_label, data_age=None, error=message)
        age = None if last.data_age is None else last.data_age + (now - last.now)
        return replace(last, now=now, data_age=age, error=message, stale_nodes=frozenset(n.key for n in last.nodes))

    def _lease(self) -> Lease | None:
        try:
            return self.store.lease_holder(time.time())
        except FlexError:
            return None

    def _label(self, lease: Lease | None) -> str:
        if self.is_running_loop:
            return RUNNING_HERE
        who = "no controller" if lease is None else f"attached to controller {lease.hostname} pid {lease.pid}"
        return f"{READ_ONLY}: {who}" if self.read_only else who

    # --- intents -------------------------------------------------------------------------------------

    def request(self, kind: str, target: str) -> str:
        """Write one intent (restart, stop, drain, cordon, uncordon) for the controller to apply; returns
        the one line that says what was requested and who applies it.

        Raises:
            ConfigError: read-only console, unknown kind, or a job, allocation or node nobody knows.
            StoreError: the state database refused the write.
        """
        if self.read_only:
            raise ConfigError(f"{kind} {target}: the console is read-only",
                              fix="start `flex console` without --read-only, or use the CLI")
        if kind not in INTENT_KINDS:
            raise ConfigError(f"unknown action {kind!r}", fix=f"one of: {', '.join(INTENT_KINDS)}")
        if kind in NODE_KINDS:
            check_node(kind, target, self.inventory_path, [n.name for n in self.store.nodes(with_state=False)])
        what = describe(kind, target, is_job=self.store.get_job(target) is not None)
        with self.store.transaction() as tx:
            intent = write_intent(tx, kind, target, f"{actor()} (console)")
        return render_request(intent, what, self._lease())

    # --- logs ----------------------------------------------------------------------------------------

    def logs(self, alloc_id: str, *, stream: str = "stdout", previous: bool = False, tail: int = LOG_TAIL) -> list[str]:
        """The last lines of an allocation's stdout or stderr (or of its previous run), read on its node.

        Raises:
            ConfigError: no such allocation, or its node cannot be found.
            TransportError: the node did not answer (in LOG_TIMEOUT seconds).
            ProbeError: the node answered with an error (the allocation directory is gone).
        """
        alloc, host = self._locate(alloc_id)
        return asyncio.run(self._read_logs(host, alloc, stream, previous, tail))

    async def _read_logs(self, host: Host, alloc: Allocation, stream: str, previous: bool, tail: int) -> list[str]:
        from deployer.nodeclient import NodeClient
        from deployer.transport import Pool

        async with Pool.from_inventory(self.inventory) as pool:
            pool.add(host)
            client = NodeClient(pool, host)
            try:  # the verb installs the runtime when the node lacks it
                return await asyncio.wait_for(read_lines(client, alloc, stream, previous, tail), LOG_TIMEOUT)
            except TimeoutError:
                raise TransportError(host.name, f"no logs of {alloc.id} within {LOG_TIMEOUT:g}s",
                                     f"check the node: `flex probe {self.inventory_path}`") from None

    def follow(self, alloc_id: str, *, stream: str = "stdout", tail: int = LOG_TAIL,
               idle: float = FOLLOW_IDLE) -> Iterator[dict[str, Any]]:
        """The allocation's last lines, then new ones as they come: {"lines": [...]} documents (an empty
        one after `idle` seconds of silence, so the caller can stop by closing the iterator), then one
        {"end": True, "ended": "exit 0" | ..., "error": ...} when the workload or the stream ends.

        Raises:
            ConfigError: no such allocation, or its node cannot be found (before the first document).
        """
        alloc, host = self._locate(alloc_id)
        loop = asyncio.new_event_loop()
        queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        pump = loop.create_task(_pump(self._follow_docs(host, alloc, stream, tail), queue))
        getter: asyncio.Task[dict[str, Any]] | None = None
        try:
            while True:
                getter = getter or loop.create_task(queue.get())
                loop.run_until_complete(asyncio.wait({getter}, timeout=idle))
                if not getter.done():
                    yield {"lines": []}
                    continue
                doc, getter = getter.result(), None
                if doc.get("end"):  # let the stream close (its process reaped) before the caller lets go
                    loop.run_until_complete(asyncio.wait({pump}, timeout=FOLLOW_CLOSE))
                yield doc
                if doc.get("end"):
                    return
        finally:
            for task in (pump, getter):
                if task is not None:
                    task.cancel()
            loop.run_until_complete(asyncio.gather(*(t for t in (pump, getter) if t), return_exceptions=True))
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

    async def _follow_docs(self, host: Host, alloc: Allocation, stream: str, tail: int) -> AsyncIterator[dict[str, Any]]:
        """The documents of the node runtime's `logs --follow`, as deployer/commands/logs.py reads them."""
        from deployer.commands.logs import ending
        from deployer.nodeclient import NodeClient
        from deployer.transport import Pool

        async with Pool.from_inventory(self.inventory) as pool:
            pool.add(host)
            client = NodeClient(pool, host)
            await client.install()
            argv = await client._argv("logs", alloc.id, "--follow", "--stream", stream, "--tail", str(tail),
                                      "--ignore-stdin")
            async with client.transport.stream(client.host, argv) as lines:
                async for raw in lines:
                    if not raw.strip():
                        continue
                    doc = dict(parse_document(raw, alloc))
                    if doc.get("ok") is False:
                        yield {"end": True, "error": f"{alloc.node}: no logs for {alloc.id}: {doc.get('error')}"}
                        return
                    yield {**doc, "ended": ending(doc)} if doc.get("end") else doc
                    if doc.get("end"):
                        return
            yield {"end": True, "error": f"{alloc.node}: the log stream of {alloc.id} ended before the workload "
                   f"did (exit status {lines.exit_status})"}

    def _locate(self, alloc_id: str) -> tuple[Allocation, Host]:
        """The allocation (an id, or a job: its newest) and how to reach its node.

        Raises:
            ConfigError: unknown allocation, or a node that left the inventory without a stored record.
        """
        alloc = pick_allocation(alloc_id, self.store.allocations()).alloc
        host = node_host(alloc.node, self.inventory.hosts, self.store.get_node(alloc.node), self.inventory_path)
        return alloc, host


async def _pump(docs: AsyncIterator[dict[str, Any]], queue: asyncio.Queue[dict[str, Any]]) -> None:
    """Move documents into queue; a failure becomes the end document that names it."""
    try:
        async for doc in docs:
            await queue.put(doc)
    except asyncio.CancelledError:
        raise
    except Exception as exc:  # the log view shows why following stopped, never a traceback
        await queue.put({"end": True, "error": str(exc)})


class LoopThread:
    """The reconcile loop (deployer.controller.Controller) on its own thread, event loop and Store."""

    def __init__(self, inventory: Inventory, state_path: str, settings: ControllerSettings | None) -> None:
        self.inventory = inventory
        self.state_path = state_path
        self.settings = settings
        self.failure: BaseException | None = None  # why the loop ended by itself
        self._controller: Controller | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._ready = threading.Event()  # the lease is taken, or starting failed
        self._stopping = threading.Event()
        self._stop = asyncio.Event()  # set on the loop's thread only (call_soon_threadsafe)
        self._thread = threading.Thread(target=self._main, name="flex-console-loop", daemon=True)

    @property
    def is_running(self) -> bool:
        """True while the controller holds the lease and runs passes."""
        return self._thread.is_alive() and self._controller is not None and self.failure is None

    def start(self, timeout: float) -> None:
        """Start the thread and wait until the controller took the lease.

        Raises:
            ControllerBusy: another controller holds the lease.
            FlexError: the state database or the inventory's nodes could not be set up.
        """
        self._thread.start()
        if not self._ready.wait(timeout):
            self.stop(STOP_TIMEOUT)
            raise TimeoutError(f"the loop did not take the lease within {timeout:g}s")
        if self.failure is not None:
            raise self.failure

    def observations(self) -> dict[str, NodeState]:
        """The controller's latest NodeState of each node (a copy; the dict itself is the loop's)."""
        controller = self._controller
        return dict(controller.nodes) if controller is not None and self.is_running else {}

    def stop(self, timeout: float) -> None:
        """Ask the loop to stop and wait for it (at most timeout seconds): the lease is given back."""
        self._stopping.set()
        loop = self._loop
        if loop is not None and not loop.is_closed():
            try:
                loop.call_soon_threadsafe(self._stop.set)
            except RuntimeError:  # closed meanwhile: the loop has ended
                pass
        if self._thread.is_alive():
            self._thread.join(timeout)
            if self._thread.is_alive():
                log.warning("the loop did not stop within %gs", timeout)

    def _main(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        try:
            loop.run_until_complete(self._serve())
        except BaseException as exc:  # kept for the console to show; the thread ends
            log.debug("the loop ended", exc_info=True)
            self.failure = exc
        finally:
            self._ready.set()
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

    async def _serve(self) -> None:
        from deployer.controller import Controller

        if self._stopping.is_set():
            return
        with Store.open(self.state_path) as store:
            async with Controller(self.inventory, store, self.settings) as controller:
                self._controller = controller
                self._ready.set()
                runner = asyncio.ensure_future(controller.run(stop=self._stop))
                stopper = asyncio.ensure_future(self._stop.wait())
                await asyncio.wait({runner, stopper}, return_when=asyncio.FIRST_COMPLETED)
                for task in (runner, stopper):
                    task.cancel()
                await asyncio.gather(runner, stopper, return_exceptions=True)
                failure = None if runner.cancelled() else runner.exception()
                if failure is not None:
                    raise failure


__all__ = ["RUNNING_HERE", "LoopThread", "Source"]
