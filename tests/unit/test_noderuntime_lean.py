"""The node runtime starts lean: a push starts interpreters on every node, so what a verb imports is
most of what it costs. These tests run the real runtime under the node's python3 (the oldest >= 3.8
here) and check what it imports, that its own JSON, argument parsing and process spawning behave like
the stdlib's they replace, and that the supervisor a `start` forks holds nothing of the verb."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.unit._noderuntime import Node, node, wait_for

__all__ = ["node"]  # the fixture, imported for pytest

# imported by none of the verbs a push or a probe runs: each costs 3-20 ms of CPU per interpreter
HEAVY = {"re", "enum", "argparse", "contextlib", "threading", "subprocess", "json", "socket", "typing",
         "tempfile", "shutil", "gettext", "locale", "http", "email", "selectors", "signal"}


def imported(node: Node, *args: str, stdin: str = "") -> set[str]:
    """Every module one verb imported (python3 -X importtime), top-level names."""
    proc = subprocess.run([node.python, "-E", "-S", "-X", "importtime", str(node.runtime / "flexnode.py"), *args],
                          input=stdin, capture_output=True, text=True, timeout=30, check=False)
    assert proc.stdout.strip(), proc.stderr[-2000:]
    names = set()
    for line in proc.stderr.splitlines():
        if line.startswith("import time:") and "|" in line:
            name = line.rsplit("|", 1)[1].strip()
            if name != "imported package":
                names.add(name.split(".")[0])
    return names


def test_the_verbs_of_a_push_import_nothing_heavy(node: Node) -> None:
    server = subprocess.Popen([sys.executable, "-m", "http.server", "0", "--bind", "127.0.0.1"],
                              stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        port = int(wait_for(lambda: server.stdout.readline().split(" port ")[1].split()[0], what="http.server"))
        node.spec("web-1", argv=["sleep", "30"], health={"type": "http", "port": port, "path": "/",
                                                        "interval": 1, "timeout": 2})
        seen = {
            "start": imported(node, "start", "web-1"),
            "probe --stream (with an HTTP check)": imported(node, "probe", "--stream", "--count", "1"),
            "probe": imported(node, "probe"),
            "status": imported(node, "status"),
            "renew": imported(node, "renew", "web-1"),
            "version": imported(node, "version"),
        }
        assert node.run("probe")["allocations"]["web-1"]["health"]["ok"] is True  # the check really ran
    finally:
        server.kill()
        server.wait()
    heavy = {verb: sorted(names & HEAVY) for verb, names in seen.items() if names & HEAVY}
    assert not heavy, f"heavy imports on the node: {heavy}"


def test_a_usage_error_is_a_json_document_naming_the_fix(node: Node) -> None:
    cases = {
        ("bogus",): "unknown verb 'bogus'",
        ("start",): "start: alloc_id is required",
        ("probe", "--interval", "x"): "probe: --interval: not a float: 'x'",
        ("probe", "--bogus"): "probe: unknown option --bogus",
        ("probe", "--stream=yes"): "probe: --stream takes no value",
        ("logs", "a", "--stream", "stdin"): "logs: --stream must be one of stdout, stderr",
        ("kill-orphan", "a", "12x"): "kill-orphan: pgid: not an integer: '12x'",
        ("renew",): "renew: at least one alloc_id is required",
        ("status", "--tail", "1"): "status: unknown option --tail",
        ("gc", "a", "b"): "gc: unexpected argument 'b'",
    }
    for args, message in cases.items():
        doc = node.run(*args, check=False)
        assert doc["_rc"] == 2 and doc["ok"] is False and doc["code"] == "usage", (args, doc)
        assert message in doc["error"] and "flexnode.py --help" in doc["error"], (args, doc)


def test_options_in_either_spelling_and_the_help(node: Node) -> None:
    node.spec("job-1", argv=["sleep", "30"])
    assert node.run("--root", str(node.root), "start", "job-1", "--wait=3")["ok"]
    assert node.run("status", "job-1", f"--root={node.root}")["allocations"]["job-1"]["status"] == "running"
    doc = node.run("probe", "--stream", "--interval=0.2", "--count", "1", "--no-health")
    assert doc["allocations"]["job-1"]["alive"]
    assert node.run("stop", "job-1", "--timeout", "2", "--signal", "TERM")["stop_signal"] == "SIGTERM"
    help_text = subprocess.run([node.python, str(node.runtime / "flexnode.py"), "--help"], capture_output=True,
                               text=True, check=True).stdout
    assert "probe --stream" in help_text and "kill-orphan ID PGID" in help_text


def test_the_supervisor_keeps_nothing_of_the_start_verb_and_says_what_it_is(node: Node) -> None:
    doc = node.start("web-1", argv=["sleep", "30"])
    supervisor = node.state("web-1")["supervisor_pid"]
    fds = {int(fd): os.readlink(f"/proc/{supervisor}/fd/{fd}") for fd in os.listdir(f"/proc/{supervisor}/fd")}
    assert fds[0] == fds[1] == "/dev/null"
    assert fds[2] == str(node.alloc_dir("web-1") / "supervisor.log")
    logs = {str(node.alloc_dir("web-1") / name) for name in ("stdout.log", "stderr.log")}
    others = sorted(target for fd, target in fds.items() if fd > 2 and target not in logs)
    # its own: the workload's two pipes and the wakeup pipe's two ends (no .lock, no verb's stdin or stdout)
    assert len(others) == 4 and all(target.startswith("pipe:") for target in others), fds
    stat = Path(f"/proc/{supervisor}/stat").read_text().rsplit(")", 1)[1].split()
    assert int(stat[3]) == supervisor, "the supervisor leads a session of its own"
    argv = Path(f"/proc/{supervisor}/cmdline").read_bytes().split(b"\0")
    assert b"supervise" in argv and b"web-1" in argv and b"start" not in argv, argv  # `ps` says what it is
    status = Path(f"/proc/{doc['pid']}/status").read_text()
    ignored = int(next(line for line in status.splitlines() if line.startswith("SigIgn:")).split()[1], 16)
    assert not ignored & (1 << (13 - 1)), "the workload inherited Python's SIG_IGN for SIGPIPE"
    workload_fds = {os.readlink(f"/proc/{doc['pid']}/fd/{fd}") for fd in os.listdir(f"/proc/{doc['pid']}/fd")}
    assert len(workload_fds) == 3 and "/dev/null" in workload_fds, workload_fds
    node.run("stop", "web-1", "--timeout", "2")
    assert wait_for(lambda: not Path(f"/proc/{supervisor}").exists(), what="the supervisor to exit")


def test_a_workload_that_cannot_run_in_its_directory_is_exit_127(node: Node, tmp_path: Path) -> None:
    node.start("job-1", argv=["true"], cwd=str(tmp_path / "missing"))
    state = node.wait_status("job-1", "exited")
    assert state["exit_code"] == 127 and "No such file or directory" in state["error"], state


def test_restarts_reuse_the_allocation_and_count(node: Node) -> None:
    node.start("batch-1", command="exit 0")
    node.wait_status("batch-1", "exited")
    started = time.monotonic()
    for launch in (2, 3):
        node.run("start", "batch-1")
        wait_for(lambda n=launch: node.state("batch-1").get("restarts") == n
                 and node.state("batch-1").get("status") == "exited", what=f"run {launch}")
    assert time.monotonic() - started < 10
    assert [e["event"] for e in node.events("batch-1")].count("started") == 3


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=20)


def _node_json() -> Any:
    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "deployer" / "noderuntime"))
    try:
        import nodecommon
    finally:
        sys.path.pop(0)
    return nodecommon


@settings(max_examples=300, deadline=None)
@given(JSON_VALUES)
def test_the_runtime_json_writes_and_reads_what_the_json_module_does(value: Any) -> None:
    common = _node_json()
    text = common.dumps(value)
    assert text == json.dumps(value, sort_keys=True)
    assert common.loads(f" {text}\n") == json.loads(text)


def test_the_runtime_json_refuses_what_the_json_module_refuses() -> None:
    common = _node_json()
    for bad in ["", "{", "[1,]", "1 2", "nul", '{"a": 1}x', "'a'"]:
        with pytest.raises(ValueError):
            common.loads(bad)
    with pytest.raises(TypeError, match="not JSON serializable"):
        common.dumps({"a": object()})
    assert math.isnan(common.loads("NaN")) and common.loads("-Infinity") == float("-inf")
    assert common.dumps({"b": 1, "a": [1.5, None, True, "é\n"]}) == '{"a": [1.5, null, true, "\\u00e9\\n"], "b": 1}'
