"""The real `flex console` in a real terminal (tmux): it shows the nodes and a job pushed before, and a
restart typed in it (jobs -> the allocation -> r -> confirm) is applied: the Events view shows it.

The fleet is inventory/local.yaml with its flex roots and the state database in tmp_path (the local
connection: no sshd). No controller runs, so the console runs the loop itself. The job is stopped
before the test ends, and anything left is killed by its recorded identity.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.integration.test_cli_local import kill_leftovers, local_inventory

ROOT = Path(__file__).resolve().parents[2]
JOB = """name: holder
kind: service
command: [python3, -c, "import time; time.sleep(600)"]
resources: {cpus: 0.1, memory: 16MiB}
"""

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed (apt-get install tmux)")]


class Terminal:
    """One tmux session on a private server socket, 120x35, running one command."""

    def __init__(self, socket: Path, command: str) -> None:
        self.socket = socket
        self.tmux("new-session", "-d", "-s", "flex", "-x", "120", "-y", "35", command)

    def tmux(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["tmux", "-S", str(self.socket), *args], capture_output=True, text=True, timeout=10)

    def screen(self) -> str:
        """What the pane shows now."""
        return self.tmux("capture-pane", "-p", "-t", "flex").stdout

    def keys(self, *keys: str) -> None:
        """Type keys (tmux key names: Enter, Escape...), letting the app take each."""
        for key in keys:
            self.tmux("send-keys", "-t", "flex", key)
            time.sleep(0.3)

    def wait(self, predicate: Callable[[str], bool], timeout: float, what: str) -> str:
        """The screen once predicate holds on it; fail with the last screen."""
        deadline = time.monotonic() + timeout
        text = ""
        while time.monotonic() < deadline:
            text = self.screen()
            if predicate(text):
                return text
            time.sleep(0.3)
        pytest.fail(f"timed out after {timeout}s waiting for {what}; the screen:\n{text}")

    @property
    def is_alive(self) -> bool:
        return self.tmux("has-session", "-t", "flex").returncode == 0

    def close(self) -> None:
        self.tmux("kill-server")


@pytest.fixture
def local(tmp_path: Path) -> Iterator[tuple[Path, Path, dict[str, str]]]:
    """(inventory, state db, environment): inventory/local.yaml moved into tmp_path."""
    inventory, roots = local_inventory(tmp_path)
    state = tmp_path / "state.db"
    env = {**os.environ, "FLEX_STATE": str(state), "FLEX_INVENTORY": str(inventory)}
    try:
        yield inventory, state, env
    finally:
        kill_leftovers(roots)


def flex(env: dict[str, str], *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "deployer.cli", *args], capture_output=True, text=True, cwd=ROOT,
                          env=env, timeout=timeout)


def test_the_console_shows_the_fleet_and_a_restart_typed_in_it_happens(
        local: tuple[Path, Path, dict[str, str]], tmp_path: Path) -> None:
    inventory, state, env = local
    spec = tmp_path / "holder.yaml"
    spec.write_text(JOB)
    pushed = flex(env, "push", str(inventory), str(spec), "--timeout", "60")
    assert pushed.returncode == 0, pushed.stdout + pushed.stderr

    command = shlex.join(["env", f"FLEX_STATE={state}", f"PYTHONPATH={ROOT}", sys.executable, "-m", "deployer.cli",
                          "console", str(inventory), "--state", str(state)])
    term = Terminal(tmp_path / "tmux.sock", f"cd {shlex.quote(str(ROOT))} && {command}")
    try:
        term.wait(lambda s: "node1" in s and "node2" in s and "ready" in s, 30, "the nodes, ready")
        term.keys("3")
        term.wait(lambda s: "holder" in s and "healthy" in s, 20, "the job, healthy")
        term.keys("Enter")
        screen = term.wait(lambda s: "holder-0-" in s and "running" in s, 20, "the job's allocation")
        assert "Jobs › holder" in screen
        term.keys("r")
        dialog = term.wait(lambda s: "Restart 1 allocation?" in s, 10, "the confirm dialog")
        assert "holder-0-" in dialog and "Cancel" in dialog
        term.keys("y")
        term.wait(lambda s: "requested" in s, 10, "the request's result on the status line")
        term.keys("4")
        term.wait(lambda s: "restarted" in s, 30, "the restart in the Events view")
        term.keys("3")  # the Jobs view kept its drill-down: holder's allocations
        term.wait(lambda s: any(line.split()[3:4] == ["1"] for line in s.splitlines() if "holder-0-" in line), 20,
                  "the allocation's restarts count at 1")
        term.keys("q")
        deadline = time.monotonic() + 30
        while term.is_alive and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not term.is_alive, "the console did not quit on q"
    finally:
        term.close()
        stopped = flex(env, "stop", "holder", "-i", str(inventory), "--wait", "--timeout", "60")
        assert stopped.returncode == 0, stopped.stdout + stopped.stderr
