"""The node probe: one JSON document of node facts, GPUs, allocations and orphans, once or streamed.

Document keys: ok, version, runtime {dir, python}, time, boot_id, hostname, cpus, load [1, 5, 15],
memory {total, available} (bytes), disk {path, total, free} (the flex root, bytes), uptime (s),
gpus (nvml.collect_gpus(): {status ok|unknown, reason, driver, gpus}, each GPU process annotated with
the alloc_id found in its environment), allocations {id: view + gpus + job + health + log_tail},
orphans [{alloc_id, pgid, pids, cmdline, reason}]; streamed documents add trigger
(start|interval|change|request) and seq.

Streaming (`probe --stream --interval S`): a document at once, then every S seconds, and at once when
an allocation changes state (every supervisor and start/stop/gc rewrite <root>/wakeup; the stream polls
that file's identity every 50 ms, one stat call). A line on stdin asks for a document at once. The
stream ends when stdin closes, the parent changes (sshd is gone) or stdout breaks (EPIPE).
"""

from __future__ import annotations

import os
import sys
import time

from nodecommon import (
    LIVE_STATUSES,
    VERSION,
    AllocPaths,
    ChannelWatch,
    NodeError,
    Worker,
    list_alloc_ids,
    print_json,
    read_json,
    wakeup_token,
)
from nodectl import alloc_view
from nodehealth import FIRST_SUCCESS_RECHECK_S, awaits_first_success, quick_pass, run_checks
from nodelogs import failure_tail
from nodeproc import boot_id, list_pids, read_cmdline, read_environ, read_stat
from nodespec import load_spec

NVML_TIMEOUT_S = 5.0
LOG_TAIL_LINES = 20
POLL_MS = 50
QUICK_CHECK_S = 0.05  # a young allocation's pending http/tcp check runs this often (see quick_checks)
QUICK_FOR_S = 5.0  # ... for this long after its start; then at the documents' pace
QUICK_CHECK_TIMEOUT_S = 0.25  # each, at most (a slower answer is seen by the documents' own check)


# -- node facts -------------------------------------------------------------------------------------
def node_facts(root: str) -> dict:
    """cpus, load, memory, disk of the flex root, uptime, boot_id, hostname."""
    try:
        load = [round(v, 2) for v in os.getloadavg()]
    except OSError:
        load = None
    return {"ok": True, "version": VERSION, "time": time.time(), "boot_id": boot_id() or None,
            "hostname": os.uname().nodename, "cpus": os.cpu_count(), "load": load,
            "memory": _meminfo(), "disk": _disk(root), "uptime": _uptime(),
            "runtime": {"dir": os.path.dirname(os.path.abspath(__file__)),
                        "python": ".".join(map(str, sys.version_info[:3]))}}


def _meminfo() -> dict:
    values = {}
    try:
        with open("/proc/meminfo") as handle:
            for line in handle:
                name, _, rest = line.partition(":")
                parts = rest.split()
                if parts and parts[0].isdigit():
                    values[name] = int(parts[0]) * (1024 if parts[1:2] == ["kB"] else 1)
    except OSError:
        pass
    return {"total": values.get("MemTotal"), "available": values.get("MemAvailable")}


def _disk(root: str) -> dict:
    try:
        st = os.statvfs(root)  # as shutil.disk_usage, without importing shutil (bz2, lzma, fnmatch)
        return {"path": root, "total": st.f_blocks * st.f_frsize, "free": st.f_bavail * st.f_frsize}
    except OSError:
        return {"path": root, "total": None, "free": None}


def _uptime():
    try:
        with open("/proc/uptime") as handle:
            return float(handle.read().split()[0])
    except (OSError, ValueError, IndexError):
        return None


# -- GPUs -------------------------------------------------------------------------------------------
class GpuCollector:
    """nvml.collect_gpus() in a thread, bounded by a timeout; a hung NVML call is reported, not waited on."""

    def __init__(self, timeout: float = NVML_TIMEOUT_S) -> None:
        self.timeout = timeout
        self.pending = None
        self.last = None

    def collect(self) -> dict:
        """The GPU section; "unknown" with the reason when NVML is missing, fails or hangs."""
        if self.pending is not None and self.pending.is_alive():
            return _unknown(f"NVML has not answered for more than {self.timeout:g} s (driver hung?)")
        box = {}
        thread = Worker(lambda: box.update(doc=_collect_gpus()))
        thread.join(self.timeout)
        if thread.is_alive():
            self.pending = thread
            return _unknown(f"NVML did not answer within {self.timeout:g} s")
        self.pending = None
        self.last = _annotate(box.get("doc") or _unknown("NVML probe returned nothing"))
        return self.last


def _unknown(reason: str) -> dict:
    return {"status": "unknown", "reason": reason, "driver": None, "nvml_version": None, "gpus": None}


def _collect_gpus() -> dict:
    try:
        import nvml  # written alongside; imports the shipped pynvml lazily
    except ImportError as exc:
        return _unknown(f"the node runtime cannot import its NVML module: {exc}")
    try:
        doc = nvml.collect_gpus()
    except Exception as exc:  # noqa: BLE001 - any NVML failure means "GPUs unknown", never a crash
        return _unknown(f"NVML probe failed: {type(exc).__name__}: {exc}")
    if not isinstance(doc, dict):
        return _unknown(f"NVML probe returned {type(doc).__name__}, not an object")
    return doc


def _annotate(doc: dict) -> dict:
    """Name the allocation of each GPU process (FLEX_ALLOC_ID in its environment) where NVML lists pids."""
    for gpu in doc.get("gpus") or ():
        for proc in (gpu.get("processes") or ()) if isinstance(gpu, dict) else ():
            if isinstance(proc, dict) and proc.get("alloc_id") is None and isinstance(proc.get("pid"), int):
                env = read_environ(proc["pid"]) or {}
                proc["alloc_id"] = env.get("FLEX_ALLOC_ID")
    return doc


# -- allocations and orphans ------------------------------------------------------------------------
def allocations(root: str, health: bool = True) -> dict:
    """Every allocation's view with job, gpus, health (checks run now when health is true) and log_tail;
    health_pending: true for a running allocation with a check that has not passed since it started
    (the stream then checks again soon: see health_recheck_in)."""
    boot = boot_id()
    views, checks, checked = {}, [], []
    for alloc_id in list_alloc_ids(root):
        paths = AllocPaths(root, alloc_id)
        try:
            view = alloc_view(paths, boot=boot)
        except NodeError as exc:
            views[alloc_id] = {"alloc_id": alloc_id, "status": "unknown", "alive": False, "error": exc.message}
            continue
        spec = _spec(paths, view)
        view["job"], view["gpus"] = spec.get("job"), spec.get("gpus")
        view["health"] = _stored_health(paths, view.get("started_at")) if spec.get("health") else None
        if spec.get("health") and view["alive"] and view["status"] == "running":
            checked.append(alloc_id)
            if health:
                checks.append((paths, spec, view.get("started_at")))
        view["log_tail"] = _log_tail(paths, view)
        views[alloc_id] = view
    for alloc_id, result in run_checks(checks).items():
        views[alloc_id]["health"] = result
    for alloc_id in checked:
        views[alloc_id]["health_pending"] = awaits_first_success(views[alloc_id]["health"],
                                                                 views[alloc_id].get("started_at"))
    return views


def _spec(paths: AllocPaths, view: dict) -> dict:
    try:
        return load_spec(paths)
    except NodeError as exc:
        view["error"] = view.get("error") or exc.message
        return {}


def _stored_health(paths: AllocPaths, started_at=None):
    """The last stored health result of the current run (one from before it started is None)."""
    try:
        result = read_json(paths.health, None)
    except NodeError:
        return None
    checked = result.get("checked_at") if isinstance(result, dict) else None
    if isinstance(checked, (int, float)) and isinstance(started_at, (int, float)) and checked < started_at:
        return None
    return result


def _log_tail(paths: AllocPaths, view: dict) -> list:
    failed = view["status"] in ("exited", "fenced", "lost") and view.get("exit_code") != 0
    return failure_tail(paths, LOG_TAIL_LINES) if failed else []


def orphans(root: str, views: dict) -> list:
    """Processes carrying FLEX_ALLOC_ID whose allocation has no directory, does not run, or whose
    process group is not the allocation's. Grouped by (alloc_id, pgid). Processes whose FLEX_ALLOC_DIR
    names another flex root (another user's, a test's) are that root's business and skipped."""
    me = os.getpid()
    ours = os.path.join(root, "allocs") + os.sep
    groups = {}
    for pid in list_pids():
        if pid == me:
            continue
        env = read_environ(pid)
        alloc_id = (env or {}).get("FLEX_ALLOC_ID")
        if not alloc_id or env.get("FLEX_HEALTH_CHECK") or not env.get("FLEX_ALLOC_DIR", ours).startswith(ours):
            continue
        stat = read_stat(pid)
        if stat is None or stat["state"] in ("Z", "X"):
            continue
        reason = _orphan_reason(views.get(alloc_id), stat["pgrp"])
        if reason:
            groups.setdefault((alloc_id, stat["pgrp"]), {"reason": reason, "pids": []})["pids"].append(pid)
    out = []
    for (alloc_id, pgid), entry in sorted(groups.items()):
        pids = sorted(entry["pids"])
        leader = pgid if pgid in pids else pids[0]
        out.append({"alloc_id": alloc_id, "pgid": pgid, "pids": pids, "cmdline": read_cmdline(leader),
                    "reason": entry["reason"]})
    return out


def _orphan_reason(view, pgrp: int) -> str:
    if view is None:
        return "no allocation directory"
    active = view.get("alive") or view.get("supervisor_alive")
    if not active or view.get("status") not in LIVE_STATUSES:
        return f"allocation is {view.get('status')}"
    if view.get("pgid") and pgrp != view["pgid"]:
        return f"outside the allocation's process group {view['pgid']}"
    return ""


# -- documents --------------------------------------------------------------------------------------
def probe_document(root: str, gpus: GpuCollector, fresh: bool = True, health: bool = True) -> dict:
    """One probe document; fresh=False reuses the last GPU section and stored health results (the fast
    path for change-triggered documents: an exit is reported without waiting for any check);
    health=False never runs health checks."""
    doc = node_facts(root)
    doc["gpus"] = gpus.collect() if fresh or gpus.last is None else gpus.last
    doc["allocations"] = allocations(root, health=fresh and health)
    doc["orphans"] = orphans(root, doc["allocations"])
    return doc


def health_recheck_in(doc: dict, now=None):
    """Seconds after which the stream should check again the allocations of doc that have not passed
    their check since they started (health_pending); None when there are none. A tenth of the
    allocation's age, at least FIRST_SUCCESS_RECHECK_S: a server that starts listening is seen within
    about 10 % of its start-up time, and one that never passes costs fewer documents the longer it runs."""
    now = time.time() if now is None else now
    waits = []
    for view in (doc.get("allocations") or {}).values():
        started_at = view.get("started_at")
        if view.get("health_pending"):
            age = now - started_at if isinstance(started_at, (int, float)) else 0.0
            waits.append(max(FIRST_SUCCESS_RECHECK_S, age / 10.0))
    return min(waits) if waits else None


def quick_checks(root: str, doc: dict, now=None) -> list:
    """[(paths, spec, started_at), ...] of the allocations of doc that await their first passing http
    or tcp check and started less than QUICK_FOR_S ago: the stream runs those checks every
    QUICK_CHECK_S without a document, and sends one as soon as one passes (nodehealth.quick_pass; a
    command check starts a process each time: those keep the documents' pace, see health_recheck_in)."""
    now = time.time() if now is None else now
    out = []
    for alloc_id, view in (doc.get("allocations") or {}).items():
        started_at = view.get("started_at")
        if not view.get("health_pending") or not isinstance(started_at, (int, float)) or now - started_at > QUICK_FOR_S:
            continue
        paths = AllocPaths(root, alloc_id)
        try:
            spec = load_spec(paths)
        except NodeError:
            continue
        if (spec.get("health") or {}).get("type") in ("http", "tcp"):
            out.append((paths, spec, started_at))
    return out


def stream(root: str, interval: float, watch: ChannelWatch, count: int = 0, health: bool = True,
           serve=None) -> int:
    """Print a document now, every interval and at once on an allocation change; returns 0 when the
    channel ends (stdin closed, parent gone, EPIPE) or after count documents. Requests arriving on
    stdin (ChannelWatch.requests) are answered in order by serve(head, input), one reply line each,
    before the next document."""
    gpus = GpuCollector()
    token, due, recheck, seq, trigger = wakeup_token(root), 0.0, None, 0, "start"
    quick = []  # see quick_checks
    while True:
        now = time.monotonic()
        if not trigger and recheck is not None and now >= recheck:
            # an allocation awaits its first passing check: check again before the interval, and while it
            # is young only its check, until it passes
            wall = time.time()
            quick = [q for q in quick if wall - q[2] <= QUICK_FOR_S]
            if quick and not quick_pass(quick, QUICK_CHECK_TIMEOUT_S):
                recheck = time.monotonic() + QUICK_CHECK_S
            else:
                trigger = "health"
        if trigger or now >= due:
            seq += 1
            doc = probe_document(root, gpus, fresh=trigger != "change", health=health)
            doc.update(trigger=trigger or "interval", seq=seq)
            print_json(doc)  # EPIPE (the reader is gone) ends the stream in flexnode.main
            if count and seq >= count:
                return 0
            if trigger != "change":
                due = time.monotonic() + interval
            wait = health_recheck_in(doc) if health else None
            quick = quick_checks(root, doc) if wait is not None else []
            recheck = None if wait is None else time.monotonic() + (QUICK_CHECK_S if quick else wait)
        trigger = ""
        if watch.reason(POLL_MS):
            return 0
        while serve is not None and watch.requests:
            head, data = watch.requests.pop(0)
            print_json(serve(head, data))
        latest = wakeup_token(root)
        if latest != token:
            token, trigger = latest, "change"
        elif watch.poked():
            trigger = "request"
