"""Health checks of running allocations, run on the node by the probe (python3 3.8+, stdlib only).

http: GET http://HOST:PORT/PATH, 2xx/3xx is ok (redirects are not followed); tcp: connect; command:
exit 0 (its own session, killed with its whole group on timeout). Every check is bounded by its
timeout and the checks of one probe run in parallel threads. A result is
{ok, detail, checked_at, failures}; failures counts consecutive failures and lives in health.json
next to the allocation, with the last result (reused while younger than the check's interval).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import threading
import time

from nodecommon import AllocPaths, read_json, write_json

DETAIL_MAX = 200


def check_http(check: dict) -> tuple:
    """(ok, detail) of one HTTP GET."""
    import http.client  # only where an http check runs: it costs 25 ms of import
    conn = http.client.HTTPConnection(check["host"], check["port"], timeout=check["timeout"])
    try:
        conn.request("GET", check["path"], headers={"User-Agent": "flex-health", "Connection": "close"})
        response = conn.getresponse()
        response.read(4096)
        ok = 200 <= response.status < 400
        return ok, f"HTTP {response.status} {response.reason}"
    finally:
        conn.close()


def check_tcp(check: dict) -> tuple:
    """(ok, detail) of one TCP connect."""
    sock = socket.create_connection((check["host"], check["port"]), timeout=check["timeout"])
    sock.close()
    return True, f"connected to {check['host']}:{check['port']}"


def check_command(check: dict, env: dict, cwd: str) -> tuple:
    """(ok, detail) of one command run; exit 0 is ok."""
    proc = subprocess.Popen(check["argv"], cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, start_new_session=True, close_fds=True)
    try:
        out, _ = proc.communicate(timeout=check["timeout"])
    except subprocess.TimeoutExpired:
        _kill_group(proc.pid)
        proc.communicate()
        return False, f"timed out after {check['timeout']:g} s"
    _kill_group(proc.pid)  # nothing the check started outlives it
    last = out.decode("utf-8", "replace").strip().splitlines()[-1:] if out else []
    text = f"exit {proc.returncode}" + (": " + last[0] if last else "")
    return proc.returncode == 0, text


def _kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except OSError:
        pass


def run_check(check: dict, env: dict, cwd: str) -> dict:
    """One check's result {ok, detail, checked_at}; exceptions become failures with their message."""
    try:
        if check["type"] == "http":
            ok, detail = check_http(check)
        elif check["type"] == "tcp":
            ok, detail = check_tcp(check)
        else:
            ok, detail = check_command(check, env, cwd)
    except (socket.timeout, TimeoutError):  # noqa: UP041 - distinct classes before Python 3.10
        ok, detail = False, f"timed out after {check['timeout']:g} s"
    except Exception as exc:  # noqa: BLE001 - OSError, http.client.HTTPException, ValueError...
        ok, detail = False, f"{type(exc).__name__}: {exc}"
    return {"ok": bool(ok), "detail": str(detail)[:DETAIL_MAX], "checked_at": time.time()}


def check_env(paths: AllocPaths, spec: dict) -> dict:
    """Environment of a command check: the probe's own, the spec's env, FLEX_ALLOC_ID and the marker
    FLEX_HEALTH_CHECK=1 (so orphan detection skips it). Secrets are not given to checks."""
    env = dict(os.environ)
    env.update(spec.get("env") or {})
    env.update({"FLEX_ALLOC_ID": paths.alloc_id, "FLEX_ALLOC_DIR": paths.dir, "FLEX_HEALTH_CHECK": "1"})
    return env


def record(paths: AllocPaths, result: dict) -> dict:
    """Store a result in health.json with the consecutive failure count; returns the stored result."""
    previous = _stored(paths)
    failures = 0 if result["ok"] else int(previous.get("failures") or 0) + 1
    stored = dict(result, failures=failures)
    try:
        write_json(paths.health, stored, durable=False)
    except OSError:
        pass
    return stored


def _stored(paths: AllocPaths) -> dict:
    try:
        doc = read_json(paths.health, {})
    except Exception:  # noqa: BLE001 - a corrupt health file restarts the count
        doc = {}
    return doc if isinstance(doc, dict) else {}


def fresh_result(paths: AllocPaths, check: dict):
    """The stored result when it is younger than the check's interval, else None."""
    stored = _stored(paths)
    checked_at = stored.get("checked_at")
    if check["interval"] > 0 and isinstance(checked_at, (int, float)) and time.time() - checked_at < check["interval"]:
        return stored
    return None


def run_checks(jobs: list) -> dict:
    """Run [(paths, spec), ...] checks in parallel; {alloc_id: stored result}. Bounded by the largest
    timeout plus a second; a check still hanging then is reported as timed out."""
    results = {}
    threads = []
    for paths, spec in jobs:
        cached = fresh_result(paths, spec["health"])
        if cached is not None:
            results[paths.alloc_id] = cached
            continue
        thread = threading.Thread(target=_run_one, args=(paths, spec, results), daemon=True)
        thread.start()
        threads.append((paths, spec, thread))
    deadline = time.monotonic() + max([s["health"]["timeout"] for _, s, _ in threads] or [0]) + 1.0
    for paths, spec, thread in threads:
        thread.join(max(0.0, deadline - time.monotonic()))
        if paths.alloc_id not in results:
            results[paths.alloc_id] = record(paths, {"ok": False, "checked_at": time.time(),
                                                     "detail": "check did not finish in time"})
    return dict(results)


def _run_one(paths: AllocPaths, spec: dict, results: dict) -> None:
    result = run_check(spec["health"], check_env(paths, spec), spec["cwd"])
    if paths.alloc_id not in results:
        results[paths.alloc_id] = record(paths, result)
