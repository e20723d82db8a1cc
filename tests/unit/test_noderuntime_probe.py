"""The node probe, run for real: document shape, health checks, orphans, the stream (wake-up latency and
every way it ends), plus the runtime's manifest and its Python 3.8 floor."""

from __future__ import annotations

import ast
import hashlib
import http.server
import json
import os
import queue
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

import pytest

from deployer.noderuntime import (
    ENTRY_POINT,
    VERSION,
    pynvml_path,
    runtime_files,
    runtime_id,
)
from tests.unit._noderuntime import (
    Node,
    is_running,
    node,
    node_python,
    proc_stat,
    started_process,
    wait_for,
)

__all__ = ["node"]  # the fixture, imported for pytest

ALLOC_KEYS = {"alloc_id", "status", "stored_status", "alive", "supervisor_alive", "pid", "pgid", "start_time",
              "boot_id", "started_at", "finished_at", "exit_code", "signal", "restarts", "stop_requested",
              "supervisor_pid", "error", "job", "gpus", "health", "log_tail"}


def test_the_probe_document_has_every_node_fact_and_allocation_field(node: Node) -> None:
    node.start("web-1", argv=["sleep", "30"], job="web", gpus=[1])
    node.start("batch-1", command="echo doomed >&2; exit 2")
    node.wait_status("batch-1", "exited")
    doc = node.run("probe")
    assert {"ok", "version", "runtime", "time", "boot_id", "hostname", "cpus", "load", "memory", "disk",
            "uptime", "gpus", "allocations", "orphans"} <= set(doc)
    assert doc["version"] == VERSION and doc["cpus"] >= 1 and len(doc["load"]) == 3 and doc["uptime"] > 0
    assert doc["memory"]["total"] >= doc["memory"]["available"] > 0
    assert doc["disk"]["total"] >= doc["disk"]["free"] > 0 and doc["disk"]["path"] == str(node.root)
    assert doc["gpus"]["status"] in ("ok", "unknown") and (doc["gpus"]["status"] == "ok" or doc["gpus"]["reason"])
    web, batch = doc["allocations"]["web-1"], doc["allocations"]["batch-1"]
    assert ALLOC_KEYS <= set(web) and ALLOC_KEYS <= set(batch)
    assert web["status"] == "running" and web["alive"] and web["job"] == "web" and web["gpus"] == ["1"]
    assert web["log_tail"] == [] and isinstance(web["start_time"], str)
    assert batch["status"] == "exited" and batch["exit_code"] == 2 and batch["log_tail"] == ["doomed"]
    assert not [o for o in doc["orphans"] if o["alloc_id"] in ("web-1", "batch-1")]  # strays of parallel runs may show


def test_the_controller_parser_reads_the_probe_document(node: Node) -> None:
    try:
        from deployer.probe import parse_probe
    except Exception as exc:  # noqa: BLE001 - the controller side is written in parallel
        pytest.skip(f"deployer.probe is not importable yet: {exc}")
    node.start("web-1", argv=["sleep", "30"])
    time.sleep(0.3)
    state = parse_probe("n1", json.dumps(node.run("probe")), observed_at=time.time())
    assert state.allocations["web-1"].pid == node.state("web-1")["pid"]
    from deployer.controller import _up_for

    # the settle counts from the run's start by the node's clock, not from when a controller saw it
    assert 0.3 <= _up_for(state, state.allocations["web-1"]) < 5
    assert _up_for(replace(state, node_time=None), state.allocations["web-1"]) == 0.0
    assert _up_for(replace(state, node_time=state.allocations["web-1"].started_at - 30), state.allocations["web-1"]) == 0
    assert _up_for(replace(state, node_time=state.allocations["web-1"].started_at + 3600), state.allocations["web-1"]) == 60


def test_a_workload_whose_supervisor_and_process_vanished_is_reported_lost(node: Node) -> None:
    state = node.start("web-1", argv=["sleep", "30"])
    os.kill(state["supervisor_pid"], 9)
    wait_for(lambda: not is_running(state["supervisor_pid"]), what="the supervisor to die")
    os.kill(state["pid"], 9)
    wait_for(lambda: not is_running(state["pid"]), what="the workload to die")
    view = node.run("status", "web-1")["allocations"]["web-1"]
    assert view["status"] == "lost" and view["stored_status"] == "running" and not view["alive"]
    assert node.run("stop", "web-1")["status"] == "stopped"


# -- health checks ----------------------------------------------------------------------------------
class _Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        code = {"/ok": 200, "/moved": 302, "/broken": 500}.get(self.path, 404)
        self.send_response(code)
        if code == 302:
            self.send_header("Location", "/ok")
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


HEALTH_CASES = {
    "an http 200 is healthy": ({"type": "http", "path": "/ok"}, True, "HTTP 200"),
    "an http redirect is healthy": ({"type": "http", "path": "/moved"}, True, "HTTP 302"),
    "an http 500 is unhealthy": ({"type": "http", "path": "/broken"}, False, "HTTP 500"),
    "a listening tcp port is healthy": ({"type": "tcp"}, True, "connected"),
    "a closed tcp port is unhealthy": ({"type": "tcp", "port": "closed"}, False, "ConnectionRefused"),
    "a command exiting 0 is healthy": ({"type": "command", "command": "test -n \"$FLEX_ALLOC_ID\""}, True, "exit 0"),
    "a command exiting 1 is unhealthy": ({"type": "command", "command": "echo sick; exit 1"}, False, "exit 1: sick"),
    "a command past its timeout is unhealthy": ({"type": "command", "argv": ["sleep", "5"], "timeout": 0.3},
                                                False, "timed out"),
}


@pytest.fixture(scope="module")
def health_results(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[dict, dict]]:
    """Allocations with one health check each, probed twice: ({id: first result}, {id: second result})."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    root = Node(tmp_path_factory.mktemp("health") / "flex")
    ports = {"http": server.server_address[1], "tcp": server.server_address[1], "closed": _free_port()}
    try:
        for number, (check, _, _) in enumerate(HEALTH_CASES.values()):
            check = dict(check)
            if check["type"] in ("http", "tcp"):
                check["port"] = ports[check.get("port", check["type"])]
            root.spec(f"check-{number}", argv=["sleep", "30"], health=check)
        with ThreadPoolExecutor(4) as pool:
            list(pool.map(lambda n: root.run("start", f"check-{n}"), range(len(HEALTH_CASES))))
        first = root.run("probe")["allocations"]
        second = root.run("probe")["allocations"]
        yield ({k: v["health"] for k, v in first.items()}, {k: v["health"] for k, v in second.items()})
    finally:
        server.shutdown()
        root.kill_everything()


@pytest.mark.parametrize("name", list(HEALTH_CASES))
def test_health_checks_run_on_the_node(health_results: tuple[dict, dict], name: str) -> None:
    _, expected_ok, detail = HEALTH_CASES[name]
    alloc_id = f"check-{list(HEALTH_CASES).index(name)}"
    first, second = health_results[0][alloc_id], health_results[1][alloc_id]
    assert first["ok"] is expected_ok and detail in first["detail"], first
    assert first["checked_at"] <= second["checked_at"] <= time.time()
    assert (first["failures"], second["failures"]) == ((0, 0) if expected_ok else (1, 2))


# -- orphans ----------------------------------------------------------------------------------------
def test_flex_labelled_processes_without_a_running_allocation_are_orphans(node: Node) -> None:
    tag = os.urandom(3).hex()  # other tests' allocations on this machine are orphans of this root too
    done, web, ghost = "done-" + tag, "web-" + tag, "ghost-" + tag
    node.start(done, argv=["true"])
    node.wait_status(done, "exited")
    node.start(web, command="setsid sleep 30 & exec sleep 30")
    strays = [started_process(["sleep", "30"], dict(os.environ, FLEX_ALLOC_ID=alloc_id)) for alloc_id in (ghost, done)]
    try:
        def ours() -> dict:
            orphans = node.run("probe", "--no-health")["orphans"]
            found = {o["alloc_id"]: o for o in orphans if o["alloc_id"].endswith(tag)}
            return found if len(found) == 3 else {}
        orphans = wait_for(ours, what="three orphans")
        assert orphans[ghost]["reason"] == "no allocation directory" and orphans[ghost]["pids"] == [strays[0].pid]
        assert orphans[done]["reason"] == "allocation is exited" and orphans[done]["cmdline"] == "sleep 30"
        assert orphans[web]["reason"].startswith("outside the allocation's process group")
        assert node.state(web)["pid"] not in orphans[web]["pids"]
        killed = node.run("kill-orphan", ghost, str(orphans[ghost]["pgid"]), "--timeout", "2")
        assert killed["killed"] == [strays[0].pid] and killed["left"] == [] and strays[0].wait(timeout=2) == -15
        refused = node.run("kill-orphan", web, str(node.state(web)["pgid"]), check=False)
        assert refused["_rc"] == 2 and refused["code"] == "not_orphan"
        stranger = started_process(["sleep", "30"], {k: v for k, v in os.environ.items() if k != "FLEX_ALLOC_ID"})
        strays.append(stranger)
        refused = node.run("kill-orphan", ghost, str(stranger.pid), check=False)
        assert refused["code"] == "not_flex" and is_running(stranger.pid)
    finally:
        for proc in strays:
            proc.kill()
            proc.wait()


# -- streaming --------------------------------------------------------------------------------------
class Stream:
    """A running `probe --stream` with its lines read into a queue by a thread."""

    def __init__(self, node: Node, *args: str, argv: list[str] | None = None) -> None:
        self.proc = subprocess.Popen(argv or node.argv("probe", "--stream", *args), stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self.lines: queue.Queue = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for raw in self.proc.stdout:
            self.lines.put((time.time(), raw))
        self.lines.put((time.time(), None))

    def next(self, timeout: float = 5.0) -> tuple[float, dict]:
        """(arrival time, document) of the next line."""
        arrived, raw = self.lines.get(timeout=timeout)
        assert raw is not None, f"stream ended: {self.proc.stderr.read().decode()[-2000:]}"
        return arrived, json.loads(raw)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()


@pytest.fixture
def stream_factory(node: Node) -> Iterator:
    streams: list[Stream] = []

    def make(*args: str, argv: list[str] | None = None) -> Stream:
        streams.append(Stream(node, *args, argv=argv))
        return streams[-1]
    yield make
    for item in streams:
        item.close()


def test_the_stream_reports_an_exit_at_once_not_at_the_next_interval(node: Node, stream_factory) -> None:
    stream = stream_factory("--interval", "5")
    _, first = stream.next()
    assert first["trigger"] == "start" and first["seq"] == 1
    node.start("batch-1", command="sleep 0.3; exit 5")
    while True:
        arrived, doc = stream.next(timeout=3)
        batch = doc["allocations"].get("batch-1", {})
        if batch.get("status") == "exited":
            break
    latency = arrived - node.state("batch-1")["finished_at"]
    assert doc["trigger"] == "change" and batch["exit_code"] == 5 and 0 <= latency < 1.0, latency


def _request(call: int, argv: list[str], files: dict[str, bytes]) -> bytes:
    from deployer.connection import FileSpec
    from deployer.filesync import payload, prepare

    data = payload(prepare([FileSpec.from_bytes(content, path) for path, content in files.items()])) if files else b""
    return json.dumps({"call": call, "argv": argv, "input": len(data)}).encode() + b"\n" + data


def _reply(stream, call: int) -> dict:
    while True:
        _, doc = stream.next(timeout=5)
        if "reply" in doc:
            assert doc["reply"] == call, doc
            return doc["doc"]


def test_the_stream_starts_a_new_allocation_sent_on_its_stdin(node: Node, stream_factory) -> None:
    stream = stream_factory("--interval", "5")
    stream.next()
    alloc = node.alloc_dir("web-1")
    spec = json.dumps({"argv": ["sh", "-c", "cat data.txt; exec sleep 30"]}).encode()
    request = _request(1, ["start", "web-1", "--files"], {f"{alloc}/spec.json": spec, f"{alloc}/data.txt": b"hello\n"})
    stream.proc.stdin.write(request[:7])  # a request may arrive in pieces
    stream.proc.stdin.flush()
    time.sleep(0.1)
    stream.proc.stdin.write(request[7:])
    stream.proc.stdin.flush()
    doc = _reply(stream, 1)
    assert doc["ok"] and doc["alive"] and not doc["already_running"], doc
    supervisor = doc["supervisor_pid"]
    assert int(proc_stat(supervisor)[1]) != stream.proc.pid, "the supervisor must not be the stream's child"
    argv = Path(f"/proc/{supervisor}/cmdline").read_bytes().split(b"\0")
    assert b"supervise" in argv and b"--stream" not in argv, argv  # not mistaken for a leftover stream in `ps`
    wait_for(lambda: node.run("logs", "web-1")["lines"] == ["hello"], what="the workload's output")
    while True:  # the launch is reported by a change document
        _, seen = stream.next(timeout=3)
        if seen.get("allocations", {}).get("web-1", {}).get("status") == "running":
            break
    stream.proc.stdin.write(_request(2, ["start", "web-1", "--files"], {f"{alloc}/spec.json": spec}))
    stream.proc.stdin.flush()
    assert _reply(stream, 2)["already_running"] is True  # idempotent, as the verb
    os.kill(doc["pid"], 9)
    node.wait_status("web-1", "exited")
    children = subprocess.run(["ps", "-o", "pid=,stat=", "--ppid", str(stream.proc.pid)], capture_output=True,
                              text=True, check=False).stdout.split()
    assert "Z" not in "".join(children[1::2]), f"zombies under the stream: {children}"


def test_a_request_the_stream_does_not_serve_gets_an_error_and_the_stream_goes_on(node: Node, stream_factory) -> None:
    stream = stream_factory("--interval", "5")
    stream.next()
    stream.proc.stdin.write(_request(1, ["stop", "web-1"], {}))
    stream.proc.stdin.write(b'{"call": 2, "argv": ["start", "web-1"], "input": -3}\n')
    stream.proc.stdin.write(b'{"call": 3, "argv": ["start", "../x", "--files"], "input": 0}\n')
    stream.proc.stdin.flush()
    assert _reply(stream, 1)["code"] == "usage"
    assert _reply(stream, 2)["code"] == "usage"
    assert _reply(stream, 3)["code"] == "bad_alloc_id"
    stream.proc.stdin.write(b"\n")  # still a stream: a poke gives a document
    stream.proc.stdin.flush()
    _, doc = stream.next(timeout=3)
    assert doc["trigger"] in ("request", "change") and "allocations" in doc


def test_the_stream_answers_a_line_on_stdin_and_ends_when_stdin_closes(node: Node, stream_factory) -> None:
    stream = stream_factory("--interval", "5")
    stream.next()
    stream.proc.stdin.write(b"\n")
    stream.proc.stdin.flush()
    assert stream.next(timeout=2)[1]["trigger"] == "request"
    stream.proc.stdin.close()
    assert stream.proc.wait(timeout=2) == 0


def test_a_stream_stuck_in_a_call_still_exits_when_its_channel_closes(node: Node) -> None:
    """The stream runs without a watchdog process: when stdin closes while the main thread hangs (a hung
    NVML call), the reader thread ends the process after exit_after seconds."""
    stuck = (f"import sys, time; sys.path.insert(0, {str(node.runtime)!r}); from nodecommon import ChannelWatch; "
             "w = ChannelWatch(exit_after=0.3); print('hung', flush=True); time.sleep(60)")
    proc = subprocess.Popen([node.python, "-c", stuck], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    try:
        assert proc.stdout.readline() == b"hung\n"
        proc.stdin.close()
        assert proc.wait(timeout=5) == 0, proc.stderr.read()
    finally:
        proc.kill()
        proc.wait()


def test_the_stream_ends_when_its_reader_goes_away(node: Node) -> None:
    proc = subprocess.Popen(node.argv("probe", "--stream", "--interval", "0.2"), stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert json.loads(proc.stdout.readline())["seq"] == 1
        proc.stdout.close()  # the next line hits EPIPE
        assert proc.wait(timeout=3) == 0 and b"Traceback" not in proc.stderr.read()
    finally:
        proc.kill()
        proc.wait()


def test_the_stream_ends_when_its_parent_dies(node: Node, stream_factory) -> None:
    spawn = ("import subprocess, sys; p = subprocess.Popen(sys.argv[1:]); print(p.pid, flush=True); "
             "import time; time.sleep(0.5)")
    parent = stream_factory(argv=[node.python, "-c", spawn, *node.argv("probe", "--stream", "--interval", "5")])
    _arrived, raw = parent.lines.get(timeout=5)
    child = int(raw)
    parent.proc.wait(timeout=5)
    wait_for(lambda: not is_running(child), timeout=2, what="the orphaned stream to exit")


# -- the runtime's files ----------------------------------------------------------------------------
def test_the_manifest_lists_every_runtime_file_with_its_checksum() -> None:
    files = {f.name: f for f in runtime_files()}
    here = Path(__file__).resolve().parents[2] / "deployer" / "noderuntime"
    expected = {p.name for p in here.glob("*.py")} - {"__init__.py"}
    assert expected <= set(files) and ENTRY_POINT in files and files[ENTRY_POINT].mode == 0o755
    for item in files.values():
        assert item.sha256 == hashlib.sha256(item.path.read_bytes()).hexdigest() and item.size > 0
    if pynvml_path() is not None:
        assert files["pynvml.py"].path == pynvml_path()
    assert runtime_id().startswith(VERSION + "-") and runtime_id() == runtime_id(tuple(files.values()))


RUNTIME_DIR = Path(__file__).resolve().parents[2] / "deployer" / "noderuntime"
RUNTIME_SOURCES = sorted(p.name for p in RUNTIME_DIR.glob("*.py") if p.name != "__init__.py")
NEWER_THAN_38 = {"removeprefix", "removesuffix", "is_relative_to", "cache", "zoneinfo", "graphlib",
                 "tomllib", "pairwise", "batched", "waitstatus_to_exitcode"}


@pytest.mark.parametrize("name", RUNTIME_SOURCES)
def test_each_runtime_file_is_python_3_8_grammar_and_stdlib_only(name: str) -> None:
    tree = ast.parse((RUNTIME_DIR / name).read_text(), name, feature_version=(3, 8))
    guarded = {n.args[1].value for n in ast.walk(tree) if isinstance(n, ast.Call) and getattr(
        n.func, "id", "") == "hasattr" and len(n.args) == 2 and isinstance(n.args[1], ast.Constant)}
    used = {n.attr for n in ast.walk(tree) if isinstance(n, ast.Attribute)}
    assert not (used - guarded) & NEWER_THAN_38, sorted((used - guarded) & NEWER_THAN_38)
    runtime = {p[:-3] for p in RUNTIME_SOURCES} | {"pynvml"}
    imported = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    imported |= {n.module.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    assert imported - runtime - {"__future__"} <= set(sys.stdlib_module_names), imported


def test_every_runtime_file_compiles_under_the_oldest_python_here() -> None:
    script = "import sys\nfor path in sys.argv[1:]: compile(open(path).read(), path, 'exec')"
    proc = subprocess.run([node_python(), "-c", script, *(str(RUNTIME_DIR / n) for n in RUNTIME_SOURCES)],
                          check=False, capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, proc.stderr
