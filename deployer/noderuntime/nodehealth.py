"""Health checks of running allocations, run on the node by the probe (python3 3.8+, stdlib only).

http: GET http://HOST:PORT/PATH (HTTP/1.0 on a plain socket), 2xx/3xx is ok (redirects are not
followed); tcp: connect; command: exit 0 (its own session, killed with its whole group on timeout).
Every check is bounded by its timeout and the checks of one probe run in parallel threads. A result is
{ok, detail, checked_at, failures, last_ok_at}; failures counts consecutive failures and last_ok_at is
the time of the last success. The last result lives in health.json next to the allocation (the
supervisor removes it at each launch) and is reused while younger than the check's interval, except a
failure of an allocation that has not passed its check since it started: that one is checked again
after FIRST_SUCCESS_RECHECK_S, so a server that starts listening is seen at the next document. The
probe stream checks a young allocation's http/tcp check more often still, without a document, until
it passes (quick_pass, nodeprobe.quick_checks).
"""

from __future__ import annotations

import os
import sys
import time

from nodecommon import AllocPaths, Worker, read_json, write_json
from nodeproc import SIGNALS, signal_group

DETAIL_MAX = 200
STATUS_LINE_MAX = 4096
FIRST_SUCCESS_RECHECK_S = 0.2


def check_http(check: dict) -> tuple:
    """(ok, detail) of one HTTP GET: the status line only. A plain socket rather than http.client,
    whose import (email, ssl: 25-35 ms) every probe of the node would pay."""
    deadline = time.monotonic() + check["timeout"]
    request = (f"GET {request_target(check['path'])} HTTP/1.0\r\nHost: {host_header(check['host'], check['port'])}\r\n"
               "User-Agent: flex-health\r\nConnection: close\r\n\r\n")
    sock = connect(check["host"], check["port"], check["timeout"])
    try:
        sock.sendall(request.encode("ascii"))
        head = b""
        while b"\n" not in head and len(head) < STATUS_LINE_MAX:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError("no status line in time")
            sock.settimeout(remaining)
            chunk = sock.recv(STATUS_LINE_MAX)
            if not chunk:
                break
            head += chunk
    finally:
        sock.close()
    return parse_status_line(head)


def connect(host: str, port: int, timeout: float):
    """socket.create_connection((host, port), timeout) on the _socket module: the socket module's
    import (enum, selectors: ~10 ms) would be paid by every probe that runs a check."""
    import _socket
    error = None
    try:  # an ASCII name as bytes: a str goes through the idna codec, whose import (re) costs ~10 ms
        name = host.encode("ascii")
    except UnicodeEncodeError:
        name = host
    for family, kind, proto, _, address in _socket.getaddrinfo(name, port, 0, _socket.SOCK_STREAM):
        sock = _socket.socket(family, kind, proto)
        try:
            sock.settimeout(timeout)
            sock.connect(address)
            return sock
        except OSError as exc:
            sock.close()
            error = exc
    raise error or OSError(f"{host}: no address")


def request_target(path: str) -> str:
    """The path as it goes on the request line: bytes outside printable ASCII percent-encoded (UTF-8)."""
    return "".join(c if " " < c < "\x7f" else "".join(f"%{b:02X}" for b in c.encode("utf-8")) for c in path)


def host_header(host: str, port: int) -> str:
    """The Host header's value: host:port, an IPv6 address in brackets."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def parse_status_line(head: bytes) -> tuple:
    """(ok, detail) from the first bytes of an HTTP response: 2xx and 3xx are ok, "HTTP 200 OK"."""
    if not head:
        return False, "connection closed without a response"
    line = head.split(b"\n", 1)[0].rstrip(b"\r").decode("latin-1")
    version, _, rest = line.partition(" ")
    code, _, reason = rest.partition(" ")
    if not version.startswith("HTTP/") or len(code) != 3 or not (code.isascii() and code.isdigit()):
        return False, f"not an HTTP response: {line[:80]!r}"
    status = int(code)
    return 200 <= status < 400, f"HTTP {status} {reason.strip()}".rstrip()


def check_tcp(check: dict) -> tuple:
    """(ok, detail) of one TCP connect."""
    connect(check["host"], check["port"], check["timeout"]).close()
    return True, f"connected to {check['host']}:{check['port']}"


def check_command(check: dict, env: dict, cwd: str) -> tuple:
    """(ok, detail) of one command run; exit 0 is ok."""
    import subprocess  # only where a command check runs
    proc = subprocess.Popen(check["argv"], cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, start_new_session=True, close_fds=True)
    try:
        out, _ = proc.communicate(timeout=check["timeout"])
    except subprocess.TimeoutExpired:
        signal_group(proc.pid, SIGNALS["SIGKILL"])
        proc.communicate()
        return False, f"timed out after {check['timeout']:g} s"
    signal_group(proc.pid, SIGNALS["SIGKILL"])  # nothing the check started outlives it
    last = out.decode("utf-8", "replace").strip().splitlines()[-1:] if out else []
    text = f"exit {proc.returncode}" + (": " + last[0] if last else "")
    return proc.returncode == 0, text


def run_check(check: dict, env: dict, cwd: str) -> dict:
    """One check's result {ok, detail, checked_at}; exceptions become failures with their message."""
    try:
        if check["type"] == "http":
            ok, detail = check_http(check)
        elif check["type"] == "tcp":
            ok, detail = check_tcp(check)
        else:
            ok, detail = check_command(check, env, cwd)
    except Exception as exc:  # noqa: BLE001 - OSError, ValueError...
        ok, detail = False, error_detail(exc, check["timeout"])
    return {"ok": bool(ok), "detail": str(detail)[:DETAIL_MAX], "checked_at": time.time()}


def error_detail(exc: Exception, timeout: float) -> str:
    """The detail of a check that raised: "timed out after N s", else the exception's type and text."""
    sockets = sys.modules.get("_socket")  # its timeout is not TimeoutError in every version
    if isinstance(exc, TimeoutError) or (sockets is not None and isinstance(exc, sockets.timeout)):
        return f"timed out after {timeout:g} s"
    return f"{type(exc).__name__}: {exc}"


def check_env(paths: AllocPaths, spec: dict) -> dict:
    """Environment of a command check: the probe's own, the spec's env, FLEX_ALLOC_ID and the marker
    FLEX_HEALTH_CHECK=1 (so orphan detection skips it). Secrets are not given to checks."""
    env = dict(os.environ)
    env.update(spec.get("env") or {})
    env.update({"FLEX_ALLOC_ID": paths.alloc_id, "FLEX_ALLOC_DIR": paths.dir, "FLEX_HEALTH_CHECK": "1"})
    return env


def record(paths: AllocPaths, result: dict) -> dict:
    """Store a result in health.json with the consecutive failure count and the time of the last
    success; returns the stored result."""
    previous = _stored(paths)
    failures = 0 if result["ok"] else int(previous.get("failures") or 0) + 1
    last_ok_at = result["checked_at"] if result["ok"] else previous.get("last_ok_at")
    stored = dict(result, failures=failures, last_ok_at=last_ok_at)
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


def awaits_first_success(result, started_at=None) -> bool:
    """Whether an allocation that started at started_at (node wall clock) has not passed its check
    since, judged by its last stored result (None: never checked)."""
    if not isinstance(result, dict):
        return True
    passed = result.get("last_ok_at")
    if not isinstance(passed, (int, float)) and result.get("ok"):
        passed = result.get("checked_at")  # stored by a runtime without last_ok_at
    if not isinstance(passed, (int, float)):
        return True
    return isinstance(started_at, (int, float)) and passed < started_at


def fresh_result(paths: AllocPaths, check: dict, started_at=None):
    """The stored result when it may stand for a check now, else None: a result younger than the check's
    interval, but a failure before the first success only for FIRST_SUCCESS_RECHECK_S."""
    stored = _stored(paths)
    checked_at = stored.get("checked_at")
    if not isinstance(checked_at, (int, float)):
        return None
    reuse = check["interval"]
    if awaits_first_success(stored, started_at):
        reuse = min(reuse, FIRST_SUCCESS_RECHECK_S)
    return stored if reuse > 0 and time.time() - checked_at < reuse else None


def run_checks(jobs: list) -> dict:
    """Run [(paths, spec, started_at), ...] checks in parallel; {alloc_id: stored result}. Bounded by the
    largest timeout plus a second; a check still hanging then is reported as timed out."""
    results = {}
    threads = []
    for paths, spec, started_at in jobs:
        cached = fresh_result(paths, spec["health"], started_at)
        if cached is not None:
            results[paths.alloc_id] = cached
            continue
        thread = Worker(_run_one, paths, spec, results)
        threads.append((paths, spec, thread))
    deadline = time.monotonic() + max([s["health"]["timeout"] for _, s, _ in threads] or [0]) + 1.0
    for paths, spec, thread in threads:
        thread.join(max(0.0, deadline - time.monotonic()))
        if paths.alloc_id not in results:
            results[paths.alloc_id] = record(paths, {"ok": False, "checked_at": time.time(),
                                                     "detail": "check did not finish in time"})
    return dict(results)


def quick_pass(jobs: list, timeout: float) -> bool:
    """Run [(paths, spec, started_at), ...] http/tcp checks one after the other, each within timeout
    (at most its own), and store the ones that pass; True when any passed. A failure is not stored:
    these checks run more often than the documents' (see nodeprobe.quick_checks), and the failure
    count that decides a restart counts the checks at the documents' pace."""
    passed = False
    for paths, spec, _started_at in jobs:
        check = dict(spec["health"], timeout=min(float(spec["health"]["timeout"]), timeout))
        result = run_check(check, {}, spec.get("cwd") or paths.dir)
        if result["ok"]:
            record(paths, result)
            passed = True
    return passed


def _run_one(paths: AllocPaths, spec: dict, results: dict) -> None:
    result = run_check(spec["health"], check_env(paths, spec), spec["cwd"])
    if paths.alloc_id not in results:
        results[paths.alloc_id] = record(paths, result)
