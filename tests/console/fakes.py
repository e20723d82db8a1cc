"""A fixed fleet for the console's tests: models built by hand, and a FakeSource that serves them.

Three nodes (node1 with two GPUs, one of them unsupported metrics and an unowned process; node2
unreachable and stale; node3 with GPUs unknown because NVML is missing), four jobs (a healthy service,
a crash-looping one, a pending GPU job that says why, a cron job) and a few events. The clock is
fixed: NOW, and every time is relative to it.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

from console.model import AllocRow, ConsoleModel, EventRow, GpuRow, JobRow, NodeRow
from deployer.errors import ConfigError

NOW = 1_700_000_000.0
GIB = 2**30
NVML_MISSING = "NVML library not found (libnvidia-ml.so.1): is the NVIDIA driver installed?"
PENDING = "1 of 1 allocations not placed: 0/3 nodes fit gpu: 1 has GPUs unknown, 2 are short of GPUs"


def node(key: str, state: str = "ready", **kw: Any) -> NodeRow:
    base = dict(key=key, state=state, error=None, datacenter="dc1", rack="r1", load=0.29, cpus=8, cpus_used=1.5,
                memory_total=64 * GIB, memory_used=12 * GIB, gpus_total=2, gpus_busy=1, gpu_reason=None,
                allocations=2, rtt=0.012, last_seen=NOW - 1)
    base.update(kw)
    return NodeRow(**base)  # type: ignore[arg-type]


def gpu(node_name: str, index: int, utilization: float | None, **kw: Any) -> GpuRow:
    base = dict(key=f"{node_name}/{index}", node=node_name, index=index, model="NVIDIA H100 80GB HBM3",
                utilization=utilization, history=(utilization,) * 10, memory_used=40 * GIB, memory_total=80 * GIB,
                temperature=61.0, power_draw=350.0, power_limit=700.0, ecc_uncorrected=0, is_healthy=True,
                error=None, job=None, alloc=None)
    base.update(kw)
    return GpuRow(**base)  # type: ignore[arg-type]


def alloc(key: str, job: str, node_name: str, observed: str = "running", **kw: Any) -> AllocRow:
    base = dict(key=key, job=job, node=node_name, index=int(key.split("-")[-2]), desired="run", observed=observed,
                restarts=0, exit_code=None, gpus=(), ports=(), last_event=None, created_at=NOW - 600)
    base.update(kw)
    return AllocRow(**base)  # type: ignore[arg-type]


def job(key: str, kind: str = "service", health: str = "healthy", **kw: Any) -> JobRow:
    base = dict(key=key, kind=kind, desired="run", wanted=1, running=1, failed=0, restarts=0, health=health,
                pending=None, next_run=None, schedule=None)
    base.update(kw)
    return JobRow(**base)  # type: ignore[arg-type]


def event(seq: int, kind: str, message: str, ago: float, **kw: Any) -> EventRow:
    base = dict(key=str(seq), time=NOW - ago, kind=kind, job=None, alloc=None, node=None, message=message, actor=None)
    base.update(kw)
    return EventRow(**base)  # type: ignore[arg-type]


def fleet_model(**kw: Any) -> ConsoleModel:
    """The fixed fleet of the console tests (keyword arguments replace fields)."""
    model = ConsoleModel(
        now=NOW, inventory="inventory/lab.yaml", state="/var/lib/flex/state.db", source="running the loop here",
        data_age=1.0,
        nodes=(
            node("node1", gpus_total=2, gpus_busy=1),
            node("node2", "unreachable", error="no answer for 31s (keepalive timeout): check the host and its sshd",
                 last_seen=NOW - 31, load=None, rtt=None, allocations=1),
            node("node3", gpus_total=None, gpus_busy=0, gpu_reason=NVML_MISSING, rack="r2", allocations=1,
                 load=3.5, memory_used=None, memory_total=None),
        ),
        gpus=(
            gpu("node1", 0, 97.0, job="train", alloc="train-0-a1b2c3", pids=(4242,),
                history=(10.0, 40.0, 80.0, 95.0, 97.0, 99.0, 97.0, 96.0, 97.0, 97.0), temperature=78.0,
                power_draw=650.0),
            gpu("node1", 1, None, history=(None,) * 4, memory_used=None, memory_total=None, temperature=None,
                power_draw=None, power_limit=None, ecc_uncorrected=None, pids=(999,), unowned_pids=(999,)),
            gpu("node2", 0, 2.0, history=(2.0,) * 10, memory_used=1 * GIB, temperature=35.0, power_draw=60.0),
        ),
        jobs=(
            job("web", wanted=2, running=2),
            job("crashy", health="degraded", running=0, failed=1, restarts=7),
            job("train", kind="batch", health="pending", running=0, pending=PENDING),
            job("report", kind="batch", health="complete", running=0, schedule="0 2 * * *", next_run=NOW + 3600),
        ),
        allocations=(
            alloc("web-0-aaaaaa", "web", "node1", ports=(("http", 8080),)),
            alloc("web-1-bbbbbb", "web", "node3", ports=(("http", 8081),)),
            alloc("crashy-0-cccccc", "crashy", "node1", observed="failed", restarts=7, exit_code=3,
                  last_event="restart: exit 3, restart 3/3 after 8s backoff (crash loop)"),
            alloc("train-0-a1b2c3", "train", "node1", gpus=(0,), observed="running"),
        ),
        events=(
            event(1, "placed", "placed on node1", 600, job="web", alloc="web-0-aaaaaa", node="node1"),
            event(2, "exited", "exit 3", 30, job="crashy", alloc="crashy-0-cccccc", node="node1"),
            event(3, "lost", "node2 unreachable for 31s", 20, node="node2"),
            event(4, "intent", "restart requested", 5, job="web", actor="alice@ops"),
        ),
        stale_nodes=frozenset({"node2"}),
    )
    return replace(model, **kw)


class FakeSource:
    """Serves models from a list (the last one forever); records every request; logs from a dict."""

    source_label = "running the loop here"

    def __init__(self, *models: ConsoleModel, logs: dict[str, list[str]] | None = None,
                 follow_docs: list[dict[str, Any]] | None = None) -> None:
        self.models = list(models) or [fleet_model()]
        self.requests: list[tuple[str, str]] = []
        self.polls = 0
        self.started = self.stopped = False
        self.log_lines = logs or {}
        self.follow_docs = follow_docs if follow_docs is not None else [
            {"lines": ["hello", "warming up", "ERROR: disk full", "retrying"]}]
        self.release = threading.Event()  # follow() returns after its documents once this is set
        self._lock = threading.Lock()

    def start(self) -> None:
        self.started = True

    def poll(self) -> ConsoleModel:
        with self._lock:
            self.polls += 1
            return self.models[0] if len(self.models) == 1 else self.models.pop(0)

    def serve(self, *models: ConsoleModel) -> None:
        """From now on, poll() returns these (the last one forever)."""
        with self._lock:
            self.models = list(models)

    def request(self, kind: str, target: str) -> str:
        if target == "nosuch":
            raise ConfigError(f"no job or allocation named {target!r}", fix="`flex status` lists them")
        self.requests.append((kind, target))
        return f"{kind} of {target} requested (intent {len(self.requests)} by test@host)"

    def logs(self, alloc_id: str, *, stream: str = "stdout", previous: bool = False, tail: int = 500) -> list[str]:
        return self.log_lines.get(f"{alloc_id}:{stream}:{'previous' if previous else 'current'}", [])

    def follow(self, alloc_id: str) -> Iterator[dict[str, Any]]:
        yield from self.follow_docs
        while not self.release.wait(0.1):
            yield {"lines": []}  # idle, like the real source: the reader may stop here

    def stop(self) -> None:
        self.stopped = True
        self.release.set()


def screen_text(app: Any) -> str:
    """What the terminal shows now, as plain text lines (the compositor's full frame, without styles)."""
    import io

    from rich.console import Console

    width, height = app.size
    console = Console(width=width, height=height, file=io.StringIO(), force_terminal=True, color_system=None,
                      record=True, legacy_windows=False, safe_box=False)
    console.print(app.screen._compositor.render_update(full=True, screen_stack=app._background_screens))
    return "\n".join(line.rstrip() for line in console.export_text(styles=False).splitlines())
