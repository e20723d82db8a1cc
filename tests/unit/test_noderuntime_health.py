"""Health checks on the node, run for real under the node's python: the plain-socket HTTP check against
a real HTTP server, the re-check of an allocation until its first success, and the runtime's import
budget (no http.client, pynvml or typing on a probe)."""

from __future__ import annotations

import contextlib
import http.server
import json
import socket
import socketserver
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from tests.unit._noderuntime import Node, node, wait_for

__all__ = ["node"]  # the fixture, imported for pytest


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # its status line says HTTP/1.1 even to the check's HTTP/1.0 request

    def do_GET(self) -> None:
        code = {"/ok": 200, "/moved": 302, "/broken": 500}.get(self.path.split("?")[0], 404)
        self.server.seen.append((self.path, self.headers.get("Host")))  # type: ignore[attr-defined]
        self.send_response(code)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


class _Server(http.server.ThreadingHTTPServer):
    def server_bind(self) -> None:
        socketserver.TCPServer.server_bind(self)  # without HTTPServer's getfqdn(), which may wait for DNS


def serve(port: int = 0) -> _Server:
    """A real HTTP server on 127.0.0.1 in a daemon thread; seen lists (path, Host header) of requests."""
    server = _Server(("127.0.0.1", port), _Handler)
    server.seen = []  # type: ignore[attr-defined]
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


@pytest.fixture
def http_server() -> Iterator[_Server]:
    server = serve()
    yield server
    server.shutdown()
    server.server_close()


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A port that accepts connections (the kernel's backlog) and never answers."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(8)
        yield sock.getsockname()[1]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def in_runtime(node: Node, code: str, *args: Any) -> Any:
    """Run code with the node runtime importable, under the node's python; returns what it prints
    (JSON). args reach it as the JSON list ARGS."""
    script = (f"import json, sys\nsys.path.insert(0, {str(node.runtime)!r})\nARGS = json.loads(sys.argv[1])\n"
              + code)
    proc = subprocess.run([node.python, "-E", "-S", "-c", script, json.dumps(list(args))], check=False,
                          capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout)


RUN_CHECKS = """
import nodehealth
print(json.dumps([nodehealth.run_check(check, {}, "/") for check in ARGS]))
"""


def http_check(port: int, path: str = "/ok", timeout: float = 2.0, host: str = "127.0.0.1") -> dict:
    return {"type": "http", "host": host, "port": port, "path": path, "timeout": timeout, "interval": 0.0}


# -- the HTTP check ---------------------------------------------------------------------------------
def test_the_http_check_reads_the_status_of_a_real_server(node: Node, http_server: _Server, silent_port: int) -> None:
    port = http_server.server_address[1]
    checks = [http_check(port), http_check(port, "/moved"), http_check(port, "/broken"), http_check(port, "/nope"),
              http_check(free_port()), http_check(silent_port, timeout=0.3), http_check(port, "/ok?q=ü")]
    started = time.monotonic()
    results = [(r["ok"], r["detail"]) for r in in_runtime(node, RUN_CHECKS, *checks)]
    assert results[:4] == [(True, "HTTP 200 OK"), (True, "HTTP 302 Found"), (False, "HTTP 500 Internal Server Error"),
                           (False, "HTTP 404 Not Found")]
    assert results[4][0] is False and results[4][1].startswith("ConnectionRefusedError"), results[4]
    assert results[5] == (False, "timed out after 0.3 s")
    assert results[6] == (True, "HTTP 200 OK")
    assert time.monotonic() - started < 5
    host = f"127.0.0.1:{port}"
    assert (http_server.seen[0], http_server.seen[-1]) == (("/ok", host), ("/ok?q=%C3%BC", host))


def test_the_http_check_fails_on_an_answer_that_is_not_http(node: Node) -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)

        def answer() -> None:
            for reply in (b"SSH-2.0-OpenSSH_9.2\r\n", b""):
                conn, _ = listener.accept()
                conn.recv(4096)
                conn.sendall(reply)
                conn.close()
        threading.Thread(target=answer, daemon=True).start()
        port = listener.getsockname()[1]
        results = in_runtime(node, RUN_CHECKS, http_check(port), http_check(port))
    assert [(r["ok"], r["detail"]) for r in results] == [
        (False, "not an HTTP response: 'SSH-2.0-OpenSSH_9.2'"), (False, "connection closed without a response")]


# -- the first success ------------------------------------------------------------------------------
def health_of(node: Node, alloc_id: str) -> dict:
    return dict(node.run("probe")["allocations"][alloc_id]["health"])


def test_a_failure_before_the_first_success_is_checked_again_then_the_interval_holds(node: Node) -> None:
    port = free_port()
    node.start("web-1", argv=["sleep", "30"], health={"type": "http", "port": port, "path": "/ok", "interval": 30})
    node.wait_status("web-1", "running")
    first = health_of(node, "web-1")
    assert first["ok"] is False and first["failures"] == 1 and first["last_ok_at"] is None
    server = serve(port)  # the server starts listening after the first check
    try:
        time.sleep(0.25)
        second = health_of(node, "web-1")  # not the failure again for the check's 30 s interval
        assert second["ok"] is True and second["detail"] == "HTTP 200 OK" and second["failures"] == 0
        assert second["last_ok_at"] == second["checked_at"] > first["checked_at"]
    finally:
        server.shutdown()
        server.server_close()
    third = health_of(node, "web-1")  # once it passed, a result stands for the check's interval
    assert third == second


def test_a_change_document_runs_no_check_and_marks_what_awaits_its_first_success(
        node: Node, http_server: _Server) -> None:
    """A change document reports an exit at once: it never waits for a check. It marks the allocations
    whose check has not passed since they started (health_pending), which the stream checks again soon."""
    port = http_server.server_address[1]
    node.start("new-1", argv=["sleep", "30"], health={"type": "http", "port": port, "path": "/ok", "interval": 30})
    node.start("ok-1", argv=["sleep", "30"], health={"type": "http", "port": port, "path": "/ok"})
    wait_for(lambda: all(node.state(a).get("status") == "running" for a in ("new-1", "ok-1")))
    ok_before = health_of(node, "ok-1")
    (node.alloc_dir("new-1") / "health.json").unlink()  # never checked in this run
    requests = len(http_server.seen)  # type: ignore[attr-defined]
    code = ("import nodeprobe\ndoc = nodeprobe.probe_document(ARGS[0], nodeprobe.GpuCollector(), fresh=False)\n"
            "print(json.dumps({k: [v['health'], v.get('health_pending')] for k, v in doc['allocations'].items()}))")
    views = in_runtime(node, code, str(node.root))
    assert views["new-1"] == [None, True] and views["ok-1"] == [ok_before, False]
    assert len(http_server.seen) == requests  # type: ignore[attr-defined]


@contextlib.contextmanager
def stream_and_late_server(node: Node) -> Iterator[tuple[Any, int, Callable[[], None]]]:
    """A probe stream of node (its first document read), a free port, and listen(): starts a real HTTP
    server on that port (refused until then). Both are stopped at the end."""
    stream = subprocess.Popen(node.argv("probe", "--stream", "--interval", "30"), stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    servers: list[_Server] = []
    port = free_port()
    try:
        assert json.loads(stream.stdout.readline())["trigger"] == "start"
        yield stream, port, lambda: servers.append(serve(port))
    finally:
        stream.kill()
        stream.wait()
        for server in servers:
            server.shutdown()
            server.server_close()


def test_the_stream_checks_a_new_allocation_again_until_it_passes_not_at_its_interval(node: Node) -> None:
    """A server that listens 0.6 s after its start is seen healthy within about a second, although the
    stream's interval and the check's interval are 30 s."""
    with stream_and_late_server(node) as (stream, port, listen):
        node.start("web-1", argv=["sleep", "30"],
                   health={"type": "http", "port": port, "path": "/ok", "interval": 30})
        node.wait_status("web-1", "running")
        time.sleep(0.6)
        listen()
        listening = time.monotonic()
        while True:
            doc = json.loads(stream.stdout.readline())
            view = doc["allocations"].get("web-1") or {}
            if (view.get("health") or {}).get("ok"):
                break
            assert time.monotonic() - listening < 5, doc
        assert doc["trigger"] == "health" and view["health_pending"] is False
        assert time.monotonic() - listening < 2.0


def test_a_young_allocation_is_seen_healthy_within_a_tenth_of_a_second_without_a_document_per_check(
        node: Node) -> None:
    """While an allocation is young and its http check has not passed, the stream runs only that check,
    every QUICK_CHECK_S, and sends a document when it passes: no document per failed check, and those
    failures are not counted (the count that decides a restart counts the documents' checks)."""
    with stream_and_late_server(node) as (stream, port, listen):
        node.start("web-2", argv=["sleep", "30"], health={"type": "http", "port": port, "path": "/ok", "interval": 30})
        docs: list[dict[str, Any]] = []
        while not docs or (docs[-1]["allocations"].get("web-2") or {}).get("status") != "running":
            docs.append(json.loads(stream.stdout.readline()))  # the start's change documents
        time.sleep(1.0)  # 20 quick checks fail meanwhile
        failures = (health_of(node, "web-2") or {}).get("failures", 0)
        listen()
        listening = time.monotonic()
        doc = json.loads(stream.stdout.readline())
        seen = time.monotonic() - listening
        view = doc["allocations"]["web-2"]
        assert view["health"]["ok"] and doc["trigger"] == "health", doc
        assert seen < 0.5, seen  # QUICK_CHECK_S is 0.05: the next check, not the 0.2 s+ of a document's pace
        assert failures <= 2  # the documents' own checks, not one per quick check


RECHECK = """
import nodeprobe
def doc(*views):
    return {"allocations": {str(n): v for n, v in enumerate(views)}}
print(json.dumps([
    nodeprobe.health_recheck_in(doc({"health_pending": True, "started_at": 99.0}), now=100.0),
    nodeprobe.health_recheck_in(doc({"health_pending": True, "started_at": 40.0},
                                    {"health_pending": True, "started_at": 80.0}), now=100.0),
    nodeprobe.health_recheck_in(doc({"health_pending": False, "started_at": 99.0}), now=100.0),
    nodeprobe.health_recheck_in(doc({"started_at": 99.0}), now=100.0),
]))
"""


def test_the_recheck_delay_grows_with_the_age_of_an_allocation_that_has_not_passed(node: Node) -> None:
    assert in_runtime(node, RECHECK) == [
        0.2,  # just started: the floor
        2.0,  # the youngest waiting allocation decides: a tenth of its 20 s
        None, None,  # passed; no check (not running, or no health check)
    ]


# -- the import budget ------------------------------------------------------------------------------
IMPORTED = """
import io, flexnode
sys.stdout = io.StringIO()
flexnode.main(["--root", ARGS[0], "probe"])
doc = json.loads(sys.stdout.getvalue())
sys.stdout = sys.__stdout__
print(json.dumps({"health": {k: v["health"] for k, v in doc["allocations"].items()},
                  "modules": sorted(m for m in ARGS[1] if m in sys.modules)}))
"""
HEAVY = ("pynvml", "typing", "http.client", "email", "ssl", "traceback")


def test_a_probe_imports_none_of_the_heavy_modules(node: Node, http_server: _Server) -> None:
    """Every push and probe pays the runtime's start-up on every node: no http.client for an http check,
    no pynvml where NVML cannot load, no typing, no traceback unless something failed."""
    port = http_server.server_address[1]
    node.start("web-1", argv=["sleep", "30"], health={"type": "http", "port": port, "path": "/ok"})
    node.wait_status("web-1", "running")
    result = in_runtime(node, IMPORTED, str(node.root), list(HEAVY))
    assert result["health"]["web-1"]["detail"] == "HTTP 200 OK"
    allowed = ["pynvml"] if _nvml_can_load(node) else []
    assert [m for m in result["modules"] if m not in allowed] == [], result["modules"]


NVML_CAN_LOAD = """
import ctypes, os
try:
    ctypes.CDLL("libnvidia-ml.so.1")
    print("true")
except OSError:
    print(json.dumps(os.path.exists("/proc/driver/nvidia/version")))
"""


def _nvml_can_load(node: Node) -> bool:
    """Whether the node python finds an NVIDIA driver or NVML library here (then pynvml is imported)."""
    return bool(in_runtime(node, NVML_CAN_LOAD))
