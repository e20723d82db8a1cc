"""Allocation verbs of flexnode.py: start, stop, status, renew, gc. Each returns one JSON document.

An allocation's view (the `status` and `probe` entry, also merged into start/stop answers):
  alloc_id, status (observed: pending|starting|running|exited|stopped|fenced|lost|absent),
  stored_status, alive (workload pid + start_time still match in this boot), supervisor_alive, pid,
  pgid, start_time, boot_id, started_at, finished_at, exit_code, signal, restarts, generation (the
  controller's restart generation of the current run, from its spec.json), stop_requested, supervisor_pid,
  error.
"lost" means state.json says starting/running but neither the workload nor its supervisor is alive
(node rebooted, supervisor killed); "pending" means spec.json was pushed but never started.
"""

from __future__ import annotations

import os
import sys
import time

try:  # without the signal module's enums (see nodeproc)
    import _signal as signal
except ImportError:  # pragma: no cover
    import signal

from nodecommon import (
    FINAL_STATUSES,
    LIVE_STATUSES,
    AllocPaths,
    NodeError,
    alloc_lock,
    append_event,
    atomic_write,
    list_alloc_ids,
    read_json,
    read_state,
    touch_wakeup,
    write_json,
)
from nodeproc import (
    boot_id,
    exec_detached,
    group_is_ours,
    group_members,
    is_alive,
    read_environ_var,
    read_stat,
    read_to_end,
    signal_group,
    signal_name,
    signal_number,
    wait_group_empty,
)
from nodespec import DEFAULT_STOP_TIMEOUT, load_secrets, load_spec

HERE = os.path.dirname(os.path.abspath(__file__))
VIEW_KEYS = ("pid", "pgid", "start_time", "boot_id", "started_at", "finished_at", "exit_code", "signal",
             "supervisor_pid", "error")


def alloc_view(paths: AllocPaths, state=None, boot=None) -> dict:
    """The observed state of one allocation (see the module docstring)."""
    if not paths.exists():
        return {"alloc_id": paths.alloc_id, "status": "absent", "stored_status": None, "alive": False,
                "supervisor_alive": False, "restarts": 0, "stop_requested": False}
    state = read_state(paths) if state is None else state
    boot = boot_id() if boot is None else boot
    view = {"alloc_id": paths.alloc_id}
    for key in VIEW_KEYS:
        view[key] = state.get(key)
    same_boot = state.get("boot_id") == boot
    view["alive"] = same_boot and is_alive(state.get("pid"), state.get("start_time"))
    view["supervisor_alive"] = same_boot and is_alive(state.get("supervisor_pid"),
                                                      state.get("supervisor_start_time"))
    stored = state.get("status")
    view["stored_status"] = stored
    view["status"] = stored or "pending"
    if stored in LIVE_STATUSES and not view["alive"] and not view["supervisor_alive"]:
        view["status"] = "lost"
    view["restarts"] = int(state.get("restarts") or 0)
    view["generation"] = int(state.get("generation") or 0)
    view["stop_requested"] = bool(state.get("stop_requested"))
    return view


# -- start ------------------------------------------------------------------------------------------
def start(root: str, alloc_id: str, wait_s: float = 2.0) -> dict:
    """Start the allocation's supervisor unless that allocation already runs (idempotent by id)."""
    paths = AllocPaths(root, alloc_id)
    generation = int(load_spec(paths)["generation"])
    warning = load_secrets(paths)[1]  # validated here so a bad file is an error now, not a dead launch
    if warning:
        append_event(paths, "warning", detail=warning)
    deadline = time.monotonic() + wait_s
    while True:
        with alloc_lock(paths):
            view = alloc_view(paths)
            if view["alive"] or (view["supervisor_alive"] and view["stored_status"] == "starting"):
                view.update(ok=True, already_running=True, confirmed=view["alive"])
                return view
            if not view["supervisor_alive"]:
                state = _launch(paths, generation)
                break
        if time.monotonic() >= deadline:  # the previous run's supervisor is still cleaning up
            raise NodeError(f"allocation {alloc_id}: the previous run's supervisor (pid {view['supervisor_pid']}) is "
                            "still stopping its processes; try again", code="busy")
        time.sleep(0.05)
    touch_wakeup(root)
    confirmed = _wait_for(paths, lambda s: s.get("pid") or s.get("status") in FINAL_STATUSES, deadline)
    view = alloc_view(paths)
    view.update(ok=True, already_running=False, confirmed=confirmed, restarts=state["restarts"])
    return view


def _launch(paths: AllocPaths, generation: int = 0) -> dict:
    """Fork the detached supervisor, then record the launch in state.json in one write (call under
    the lock: the supervisor's own first state write waits for it).

    Forked twice, so the supervisor is nobody's child here: a long-lived caller (the probe stream)
    collects no zombies; then exec'd as `flexnode.py supervise` (see _become_supervisor)."""
    restarts = int(read_state(paths).get("restarts") or 0) + 1
    log = os.open(paths.supervisor_log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        sys.stdout.flush()  # nothing buffered may be written twice (the children exec or os._exit)
        pid = _fork_twice(lambda: _become_supervisor(paths, restarts, log))
    finally:
        os.close(log)
    stat = read_stat(pid)
    state = dict.fromkeys(VIEW_KEYS)
    state.update(alloc_id=paths.alloc_id, status="starting", restarts=restarts, generation=generation,
                 stop_requested=False, boot_id=boot_id(), requested_at=time.time(), supervisor_pid=pid,
                 supervisor_start_time=stat["start_ticks"] if stat else None)
    write_json(paths.state, state)
    return state


def _fork_twice(child) -> int:
    """Run child() (which must never return) in a grandchild of this process; its pid."""
    report_r, report_w = os.pipe()
    middle = os.fork()
    if middle == 0:
        try:
            os.close(report_r)
            pid = os.fork()
            if pid == 0:
                os.close(report_w)
                child()
            os.write(report_w, str(pid).encode())
        finally:
            os._exit(0)
    os.close(report_w)
    answer = read_to_end(report_r)
    os.waitpid(middle, 0)
    if not answer.isdigit():
        raise NodeError("could not fork the supervisor", code="internal")
    return int(answer)


def _become_supervisor(paths: AllocPaths, launch: int, log: int) -> None:
    """In the forked child: detach the way a fresh daemon would be (own session, stdin and stdout
    /dev/null, stderr supervisor.log, no other inherited descriptor: not the SSH channel, not the
    allocation's lock), then exec `flexnode.py supervise ID`: a process of its own whose command line
    says what it is (a forked one would show the verb or the probe stream it was forked from in `ps`,
    and an operator would take it for a leftover stream); its modules load from the shipped bytecode."""
    try:
        python = sys.executable or "python3"
        exec_detached([python, "-E", "-S", os.path.join(HERE, "flexnode.py"), "--root", paths.root,
                       "supervise", paths.alloc_id, "--launch", str(launch)], paths.dir, None, -1, log)
    except BaseException:  # noqa: BLE001 - the child must never return into the start verb
        try:
            import traceback
            traceback.print_exc()
            sys.stderr.flush()
        finally:
            os._exit(1)


def _wait_for(paths: AllocPaths, predicate, deadline: float) -> bool:
    """Poll state.json until predicate(state) holds or the deadline passes."""
    while True:
        if predicate(read_state(paths)):
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.02)


# -- stop -------------------------------------------------------------------------------------------
def stop(root: str, alloc_id: str, timeout=None, sig=None) -> dict:
    """Stop the workload's whole process group: signal, SIGKILL after timeout, wait until none is left."""
    paths = AllocPaths(root, alloc_id)
    if not paths.exists():
        view = alloc_view(paths)
        view.update(ok=True, was_running=False, stop_signal=None, escalated=False, left=[])
        return view
    spec = _spec_or_defaults(paths)
    try:
        sig = signal_number(sig) if sig is not None else spec["stop_signal"]
    except (TypeError, ValueError) as exc:
        raise NodeError(f"--signal: {exc}", code="usage", exit_status=2) from None
    timeout = float(timeout) if timeout is not None else spec["stop_timeout"]
    with alloc_lock(paths):
        state = read_state(paths)
        before = alloc_view(paths, state)
        was_live = before["alive"] or before["supervisor_alive"]
        if not state.get("stop_requested"):
            state.update(alloc_id=alloc_id, stop_requested=True, stop_requested_at=time.time())
            write_json(paths.state, state)
    if was_live:
        append_event(paths, "stop_requested", signal=signal_name(sig), timeout=timeout)
        _wait_for(paths, lambda s: s.get("pid") or s.get("status") in FINAL_STATUSES,
                  time.monotonic() + 2.0)
    escalated, left = _kill_group(paths, read_state(paths), sig, timeout)
    _wait_for_supervisor(paths, time.monotonic() + 3.0)
    view = _mark_stopped_if_lost(paths)
    view.update(ok=not left, was_running=was_live, stop_signal=signal_name(sig), escalated=escalated, left=left)
    if left:
        raise NodeError(f"allocation {alloc_id}: processes {left} still alive after SIGKILL",
                        code="stop_incomplete", **view)
    return view


def _spec_or_defaults(paths: AllocPaths) -> dict:
    try:
        return load_spec(paths)
    except NodeError:
        return {"stop_signal": int(signal.SIGTERM), "stop_timeout": DEFAULT_STOP_TIMEOUT}


def _kill_group(paths: AllocPaths, state: dict, sig: int, timeout: float) -> tuple:
    """(escalated, pids left): signal the group, then SIGKILL what survives the timeout."""
    pgid = state.get("pgid")
    if not pgid or not group_is_ours(state) or not group_members(pgid):
        return False, []
    signal_group(pgid, sig)
    if wait_group_empty(pgid, timeout):
        return False, []
    signal_group(pgid, signal.SIGKILL)
    append_event(paths, "killed", signal="SIGKILL", pgid=pgid,
                 reason=f"still running {timeout:g} s after {signal_name(sig)} (stop)")
    wait_group_empty(pgid, 5.0)
    return True, group_members(pgid)


def _wait_for_supervisor(paths: AllocPaths, deadline: float) -> None:
    """Give the supervisor a moment to record the exit it just saw."""
    def done(state: dict) -> bool:
        return state.get("status") in FINAL_STATUSES or not is_alive(
            state.get("supervisor_pid"), state.get("supervisor_start_time"))
    _wait_for(paths, done, deadline)


def _mark_stopped_if_lost(paths: AllocPaths) -> dict:
    """When no supervisor is left to record it, write status stopped ourselves."""
    with alloc_lock(paths):
        state = read_state(paths)
        view = alloc_view(paths, state)
        if view["stored_status"] in LIVE_STATUSES and not view["supervisor_alive"]:
            state.update(status="stopped", finished_at=time.time())
            write_json(paths.state, state)
            append_event(paths, "exited", status="stopped", exit_code=None, signal=None, pid=state.get("pid"),
                         detail="recorded by stop: the supervisor was gone")
            touch_wakeup(paths.root)
            view = alloc_view(paths, state)
    return view


# -- status, renew, gc ------------------------------------------------------------------------------
def status(root: str, alloc_ids: list) -> dict:
    """Views of the given allocations (all when none is given), with their last health result."""
    ids = alloc_ids or list_alloc_ids(root)
    boot = boot_id()
    out = {}
    for alloc_id in ids:
        paths = AllocPaths(root, alloc_id)
        view = alloc_view(paths, boot=boot)
        if paths.exists():
            view["health"] = read_json(paths.health, None)
        out[alloc_id] = view
    return {"ok": True, "time": time.time(), "boot_id": boot, "allocations": out}


def renew(root: str, alloc_ids: list) -> dict:
    """Rewrite the lease of every given allocation (a fresh nonce); ids without a directory are listed."""
    all_paths = [AllocPaths(root, alloc_id) for alloc_id in alloc_ids]  # validates every id first
    renewed, missing = [], []
    for paths in all_paths:
        if not paths.exists():
            missing.append(paths.alloc_id)
            continue
        nonce = f"{time.time():.6f} {os.urandom(8).hex()}\n"
        atomic_write(paths.lease, nonce.encode("ascii"), durable=False)
        renewed.append(paths.alloc_id)
    return {"ok": True, "time": time.time(), "renewed": renewed, "missing": missing}


def kill_orphan(root: str, alloc_id: str, pgid: int, timeout: float = 10.0, sig=None) -> dict:
    """Stop an orphaned process group (see the probe's orphans): every live member must carry
    FLEX_ALLOC_ID=alloc_id, and the group must not be the allocation's own live group (use stop)."""
    paths = AllocPaths(root, alloc_id)
    try:
        sig = signal_number(sig) if sig is not None else int(signal.SIGTERM)
    except (TypeError, ValueError) as exc:
        raise NodeError(f"--signal: {exc}", code="usage", exit_status=2) from None
    members = group_members(pgid)
    if not members:
        return {"ok": True, "alloc_id": alloc_id, "pgid": pgid, "killed": [], "escalated": False, "left": []}
    state = read_state(paths) if paths.exists() else {}
    view = alloc_view(paths, state) if paths.exists() else {}
    if view.get("alive") and state.get("pgid") == pgid:
        raise NodeError(f"process group {pgid} is allocation {alloc_id}'s running workload; use stop",
                        code="not_orphan", exit_status=2)
    strangers = [pid for pid in members if read_environ_var(pid, "FLEX_ALLOC_ID") != alloc_id]
    if strangers:
        raise NodeError(f"process group {pgid} has processes {strangers} not labelled FLEX_ALLOC_ID={alloc_id};"
                        " refusing to signal it", code="not_flex", exit_status=2)
    signal_group(pgid, sig)
    escalated = not wait_group_empty(pgid, timeout)
    if escalated:
        signal_group(pgid, signal.SIGKILL)
        wait_group_empty(pgid, 5.0)
    left = group_members(pgid)
    if paths.exists():
        append_event(paths, "orphan_killed", pgid=pgid, pids=members, escalated=escalated, left=left)
    return {"ok": not left, "alloc_id": alloc_id, "pgid": pgid, "killed": members, "escalated": escalated,
            "left": left}


def gc(root: str, alloc_id: str) -> dict:
    """Remove an allocation directory that runs nothing; refuse (code running) while anything is alive."""
    paths = AllocPaths(root, alloc_id)
    if not paths.exists():
        return {"ok": True, "alloc_id": alloc_id, "removed": False, "status": "absent"}
    with alloc_lock(paths):
        state = read_state(paths)
        view = alloc_view(paths, state)
        pgid = state.get("pgid")
        busy = view["alive"] or view["supervisor_alive"] or (pgid and group_is_ours(state) and group_members(pgid))
        if busy:
            raise NodeError(f"allocation {alloc_id} is {view['status']}; stop it before gc", code="running")
        import shutil  # only gc removes a tree: 3 ms of import (bz2, lzma, fnmatch) kept off other verbs

        shutil.rmtree(paths.dir)
    touch_wakeup(root)
    return {"ok": True, "alloc_id": alloc_id, "removed": True, "status": view["status"]}

