"""The node runtime's supervisor and allocation verbs, run for real (subprocesses, a temp flex root,
the oldest python3 >= 3.8 here): start is idempotent, exits are recorded, stop leaves nothing of the
process group alive, logs are capped, secrets and shell metacharacters are safe, leases fence."""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import pytest

from tests.unit._noderuntime import (
    Node,
    is_running,
    live_group_members,
    node,
    proc_stat,
    read_file,
    wait_for,
)

__all__ = ["node"]  # the fixture, imported for pytest


def test_start_records_the_pid_and_its_start_time(node: Node) -> None:
    doc = node.start("web-1", argv=["sleep", "30"])
    state = node.state("web-1")
    assert doc["ok"] and not doc["already_running"] and doc["confirmed"]
    assert doc["status"] == state["status"] == "running" and doc["alive"]
    assert state["pid"] == state["pgid"] == doc["pid"] and state["restarts"] == 1
    assert state["start_time"] == proc_stat(state["pid"])[19]
    assert state["boot_id"] == Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    assert is_running(state["supervisor_pid"]) and state["stop_requested"] is False


def test_starting_a_running_allocation_again_is_a_no_op_with_the_same_pid(node: Node) -> None:
    first = node.start("web-1", argv=["sleep", "30"])
    again = node.run("start", "web-1")
    assert again["already_running"] and again["pid"] == first["pid"]
    assert again["start_time"] == first["start_time"] and node.state("web-1")["restarts"] == 1


def test_the_restart_generation_of_a_launch_is_kept_with_its_run(node: Node) -> None:
    node.start("web-1", argv=["sleep", "30"], generation=3)  # what the controller restarted it for (F10)
    assert node.state("web-1")["generation"] == 3
    assert node.run("status", "web-1")["allocations"]["web-1"]["generation"] == 3
    node.run("stop", "web-1", "--timeout", "2")
    node.spec("web-1", argv=["sleep", "30"], generation=4)
    node.run("start", "web-1")
    assert node.state("web-1")["generation"] == 4 and node.state("web-1")["restarts"] == 2


def test_an_exit_code_is_recorded_with_its_events(node: Node) -> None:
    node.start("batch-1", command="echo working; echo broken >&2; exit 3")
    state = node.wait_status("batch-1", "exited")
    assert state["exit_code"] == 3 and state["signal"] is None and state["finished_at"] >= state["started_at"]
    events = node.events("batch-1")
    assert [e["event"] for e in events] == ["started", "exited"]
    assert events[-1]["exit_code"] == 3 and events[-1]["status"] == "exited"
    status = node.run("status", "batch-1")["allocations"]["batch-1"]
    assert status["status"] == "exited" and not status["alive"]


def test_a_relaunch_into_the_same_directory_counts_and_keeps_the_previous_logs(node: Node) -> None:
    node.start("batch-1", command='echo "run $FLEX_LAUNCH"')
    node.wait_status("batch-1", "exited")
    node.run("start", "batch-1")
    state = wait_for(lambda: node.state("batch-1").get("restarts") == 2 and node.state("batch-1").get(
        "status") == "exited" and node.state("batch-1"), what="second run")
    assert state["exit_code"] == 0
    assert node.run("logs", "batch-1")["lines"] == ["run 2"]
    assert node.run("logs", "batch-1", "--previous")["lines"] == ["run 1"]


@pytest.mark.parametrize("spec, code", [
    ({"argv": ["/nonexistent/flex-test-binary"]}, 127),
    ({"argv": ["/etc/hostname"]}, 126),
], ids=["a missing program exits 127", "a file that is not executable exits 126"])
def test_a_program_that_cannot_run_is_recorded_as_an_exit(node: Node, spec: dict, code: int) -> None:
    doc = node.start("bad-1", **spec)
    state = node.wait_status("bad-1", "exited")
    assert doc["ok"] and state["exit_code"] == code and "cannot execute" in state["error"]
    assert node.events("bad-1")[-1]["event"] == "exec_failed"
    assert "cannot execute" in node.run("logs", "bad-1", "--stream", "stderr")["lines"][0]


def test_stop_leaves_no_process_of_a_forking_workload_alive(node: Node) -> None:
    node.start("train-1", command="sleep 100 & sleep 100 & wait")
    pgid = node.state("train-1")["pgid"]
    wait_for(lambda: len(live_group_members(pgid)) == 3, what="the shell and its two children")
    doc = node.run("stop", "train-1")
    assert doc["was_running"] and not doc["escalated"] and doc["left"] == []
    assert live_group_members(pgid) == []
    label = b"FLEX_ALLOC_DIR=%s\0" % bytes(node.alloc_dir("train-1"))
    assert not [p for p in map(int, filter(str.isdigit, os.listdir("/proc"))) if is_running(p) and label in _environ(p)]
    state = node.wait_status("train-1", "stopped")
    assert state["stop_requested"] and state["signal"] == 15


def _environ(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return b""


def test_stop_escalates_to_sigkill_when_the_workload_ignores_sigterm(node: Node) -> None:
    node.start("stubborn-1", command='trap "" TERM; sleep 100 & wait', stop_timeout=0.3)
    pgid = node.state("stubborn-1")["pgid"]
    wait_for(lambda: len(live_group_members(pgid)) == 2, what="the shell and its child")
    begun = time.monotonic()
    doc = node.run("stop", "stubborn-1")
    assert doc["escalated"] and live_group_members(pgid) == [] and time.monotonic() - begun < 3
    assert node.wait_status("stubborn-1", "stopped")["signal"] == 9
    assert "killed" in [e["event"] for e in node.events("stubborn-1")]


def test_stop_is_idempotent_and_accepts_an_unknown_allocation(node: Node) -> None:
    node.start("web-1", argv=["sleep", "30"])
    assert node.run("stop", "web-1", "--timeout", "1")["was_running"]
    again = node.run("stop", "web-1")
    assert not again["was_running"] and again["status"] == "stopped"
    assert node.run("stop", "never-existed")["status"] == "absent"


def test_sigkill_of_the_workload_is_recorded_as_an_exit_by_signal(node: Node) -> None:
    pid = node.start("web-1", argv=["sleep", "30"])["pid"]
    os.kill(pid, 9)
    state = node.wait_status("web-1", "exited")
    assert state["signal"] == 9 and state["exit_code"] is None and not state["stop_requested"]


def test_logs_are_capped_and_rotated(node: Node) -> None:
    node.start("chatty-1", command="i=0; while [ $i -lt 300 ]; do echo line-$i; i=$((i+1)); done",
               log_max_bytes=1000)
    node.wait_status("chatty-1", "exited")
    directory = node.alloc_dir("chatty-1")
    current, rotated = directory / "stdout.log", directory / "stdout.log.1"
    assert 0 < current.stat().st_size <= 1000 and 900 <= rotated.stat().st_size <= 1000
    assert read_file(current).endswith("line-299\n") and read_file(rotated).endswith("\n")
    assert node.run("logs", "chatty-1", "--tail", "3")["lines"] == ["line-297", "line-298", "line-299"]
    spanning = node.run("logs", "chatty-1", "--tail", "0")["lines"]
    assert spanning[-1] == "line-299" and len(spanning) > len(read_file(current).splitlines())


def test_secrets_reach_the_workload_and_never_an_argv_or_a_state_file(node: Node) -> None:
    secret = f"s3cr3t-{os.urandom(6).hex()}"
    node.spec("api-1", command='printf %s "$API_TOKEN" > token.txt; exec sleep 30', env={"PLAIN": "visible"})
    node.secret("api-1", {"API_TOKEN": secret})
    node.run("start", "api-1")
    directory = node.alloc_dir("api-1")
    assert wait_for(lambda: read_file(directory / "token.txt")) == secret
    for pid in filter(str.isdigit, os.listdir("/proc")):
        assert secret.encode() not in _cmdline(int(pid)), f"secret in the argv of pid {pid}"
    for name in ("spec.json", "state.json", "events.jsonl", "stdout.log", "stderr.log"):
        assert secret not in read_file(directory / name), name
    assert oct((directory / "env.secret").stat().st_mode & 0o777) == "0o600"


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def test_a_secret_file_readable_by_others_is_tightened_and_reported(node: Node) -> None:
    node.spec("api-1", argv=["true"])
    node.secret("api-1", {"TOKEN": "x"})
    os.chmod(node.alloc_dir("api-1") / "env.secret", 0o644)
    node.run("start", "api-1")
    node.wait_status("api-1", "exited")
    assert (node.alloc_dir("api-1") / "env.secret").stat().st_mode & 0o077 == 0
    assert any(e["event"] == "warning" and "tightened" in e["detail"] for e in node.events("api-1"))


def test_shell_metacharacters_in_env_reach_the_workload_verbatim_and_run_nothing(node: Node, tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    evil = f"$(touch {marker}); `touch {marker}`; echo 'quoted' \"double\" \\ | && ;"
    node.start("evil-1", argv=["sh", "-c", 'printf %s "$EVIL" > evil.txt'], env={"EVIL": evil})
    node.wait_status("evil-1", "exited")
    assert read_file(node.alloc_dir("evil-1") / "evil.txt") == evil and not marker.exists()


@pytest.mark.parametrize("gpus, expected", [
    ([0, 2], {"CUDA_VISIBLE_DEVICES": "0,2", "NVIDIA_VISIBLE_DEVICES": "0,2", "FLEX_GPUS": "0,2"}),
    ([], {"CUDA_VISIBLE_DEVICES": "", "NVIDIA_VISIBLE_DEVICES": "void", "FLEX_GPUS": ""}),
    (None, {"CUDA_VISIBLE_DEVICES": None, "NVIDIA_VISIBLE_DEVICES": None, "FLEX_GPUS": None}),
], ids=["assigned gpus are visible by index", "an explicit empty list hides every gpu",
        "no gpu field leaves the variables unset"])
def test_gpu_assignment_sets_the_visible_devices(node: Node, gpus: list | None, expected: dict) -> None:
    spec = {"argv": ["python3", "-c", "import json, os; print(json.dumps(dict(os.environ)))"], "job": "train"}
    if gpus is not None:
        spec["gpus"] = gpus
    node.start("gpu-1", **spec)
    node.wait_status("gpu-1", "exited")
    env = json.loads(node.run("logs", "gpu-1")["lines"][0])
    assert {k: env.get(k) for k in expected} == expected
    assert env["FLEX_ALLOC_ID"] == "gpu-1" and env["FLEX_JOB"] == "train" and env["FLEX_LAUNCH"] == "1"
    assert not [k for k in env if k.startswith("SSH_")]


def test_an_unrenewed_lease_fences_the_workload_within_its_ttl(node: Node) -> None:
    node.start("leased-1", argv=["sleep", "30"], lease_ttl=1)
    state = node.wait_status("leased-1", "fenced", timeout=4)
    assert state["finished_at"] - state["started_at"] < 1.6 and state["signal"] == 15
    fenced = [e for e in node.events("leased-1") if e["event"] == "fenced"]
    assert fenced and 1.0 <= fenced[0]["lease_age"] < 1.5 and fenced[0]["ts"] <= state["finished_at"]
    assert live_group_members(state["pgid"]) == []


def test_a_renewed_lease_keeps_the_workload_running(node: Node) -> None:
    node.start("leased-1", argv=["sleep", "30"], lease_ttl=0.6)
    node.spec("other-1", argv=["true"])
    deadline = time.monotonic() + 1.5  # two and a half TTLs
    while time.monotonic() < deadline:
        doc = node.run("renew", "leased-1", "other-1", "gone-1")
        assert doc["renewed"] == ["leased-1", "other-1"] and doc["missing"] == ["gone-1"]
        time.sleep(0.15)
    assert node.state("leased-1")["status"] == "running"


@pytest.mark.parametrize("alloc_id", ["../escape", "a/b", "-rf", "a;b", "$(id)", "", "a" * 129],
                         ids=["a parent path", "a slash", "a leading dash", "a semicolon", "a command substitution",
                              "an empty id", "an id too long"])
def test_an_unsafe_allocation_id_is_refused_with_a_json_error(node: Node, alloc_id: str) -> None:
    doc = node.run("start", alloc_id, check=False)
    assert doc["_rc"] == 2 and doc["ok"] is False and doc["code"] in ("bad_alloc_id", "usage")


@pytest.mark.parametrize("spec, problem", [
    ({}, "needs argv"),
    ({"argv": "sleep 1"}, "argv must be a non-empty list"),
    ({"argv": ["true"], "command": "true"}, "not both"),
    ({"argv": ["true"], "env": {"BAD NAME": "x"}}, "not a valid variable name"),
    ({"argv": ["true"], "env": {"N": 3}}, "must be a string"),
    ({"argv": ["true"], "stop_signal": "SIGNOPE"}, "unknown signal"),
    ({"argv": ["true"], "health": {"type": "http", "port": "80"}}, "health.port"),
], ids=["no command", "a string argv", "argv and command", "a bad env name", "a non-string env value",
        "an unknown stop signal", "a health port that is not a number"])
def test_a_bad_spec_is_refused_before_anything_starts(node: Node, spec: dict, problem: str) -> None:
    node.spec("bad-1", **spec)
    doc = node.run("start", "bad-1", check=False)
    assert doc["_rc"] == 2 and doc["code"] == "bad_spec" and problem in doc["error"]
    assert not (node.alloc_dir("bad-1") / "state.json").exists()


def test_logs_follow_ends_when_the_workload_ends(node: Node) -> None:
    node.start("batch-1", command="echo one; sleep 0.4; echo two; sleep 0.2; exit 4")
    proc = subprocess.Popen(node.argv("logs", "batch-1", "--follow", "--tail", "10"), stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)  # stdin stays open: only the workload ends it
    try:
        out = proc.stdout.read()
        proc.wait(timeout=5)
    finally:
        proc.kill()
    docs = [json.loads(line) for line in out.splitlines()]
    lines = [line for doc in docs for line in doc.get("lines", [])]
    assert lines == ["one", "two"] and docs[-1]["end"] and docs[-1]["exit_code"] == 4


def test_gc_refuses_a_running_allocation_and_removes_a_stopped_one(node: Node) -> None:
    node.start("web-1", argv=["sleep", "30"])
    refused = node.run("gc", "web-1", check=False)
    assert refused["_rc"] == 1 and refused["code"] == "running"
    node.run("stop", "web-1")
    assert node.run("gc", "web-1")["removed"] and not node.alloc_dir("web-1").exists()
    assert node.run("gc", "web-1")["removed"] is False
