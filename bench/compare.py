"""flex side by side with ansible-core and pyinfra on N real sshd hosts (a benchmark, not a test).

    python3 -m bench.compare --hosts 1,10,30 --rounds 3        # writes bench/results/compare.json

Run it as root from the repository root (``tests.fleet`` brings up the hosts in network
namespaces). The peers are installed once into their own virtual environment,
``bench/.venv-peers`` (``pip install ansible-core pyinfra py-spy``; reused when present,
``--reinstall-peers`` builds it again), so they never touch flex's environment.

For each N a fresh fleet is brought up, then every round runs, for each tool in turn (round r
starts with tool r mod 3, so that machine drift hits every tool alike):

- reset (untimed): every host is rebooted (``Host.reboot(wipe_flex_root=True)``: every process
  killed, fresh /tmp, empty flex root), the empty shell rc is bind-mounted again, flex's state
  database is deleted, ansible's ControlPersist sockets are removed: fresh hosts for every tool;
- ``cold``: the reference workload pushed from nothing (the tool's own CLI, a subprocess);
- ``nochange``: the same push right after (nothing uploaded, nothing restarted: checked);
- ``probe``: one round reading load and memory of every host (the tool's CLI, one-shot);
- ``streams`` (flex only): a probe round as flex's controller does it, over the probe streams it
  keeps open (``bench/probe_round.py``: every stream poked, every fresh document back; the median of
  10 rounds). The peers keep nothing open between runs, so they have no such row.

The reference workload per host: create the app directory, upload a 1 MiB file and a small HTTP
server script (only when changed), start the server detached (unless it runs), check that it
answers. flex: ``flex push INVENTORY bench/peers/flex/job.yaml`` (a system job: one copy per host,
health http), FLEX_STATE in a temporary directory. ansible-core: ``ansible-playbook
bench/peers/ansible/site.yml`` (forks = N, pipelining on). pyinfra: ``pyinfra -y --parallel N
INVENTORY bench/peers/pyinfra/deploy.py``. Every round is checked afterwards (untimed): exit status,
each host's server answers over HTTP, the 1 MiB file's sha256; for no-change pushes the same
listening pid and the same inode and mtime of both files as after the cold push.

Nothing here asserts a wall time; a round that fails its check is recorded with ok=false and
printed. The exit status is 1 when any round failed. See bench/README.md.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import hashlib
import json
import os
import random
import re
import resource
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from bench.push_probe import PAYLOAD_BYTES, clean_shell_rc, fmt_s, machine_info, rotated

BENCH = Path(__file__).resolve().parent
PEERS = BENCH / "peers"
REPO = BENCH.parent
DEFAULT_VENV = BENCH / ".venv-peers"
# flex gets a virtualenv of its own too: the base interpreter of this machine processes a sandbox
# .pth file (it imports certifi: ~45 ms of every start) that a virtualenv, like the peers', skips
FLEX_VENV = BENCH / ".venv-flex"
PEER_PACKAGES = ("ansible-core", "pyinfra", "py-spy")
SCENARIOS = ("cold", "nochange", "probe", "streams")  # streams: flex only (see Flex.round)
RUN_TIMEOUT = 600.0
FLEX_PORT, ANSIBLE_PORT, PYINFRA_PORT = 8080, 8081, 8082  # per-host network namespaces: no clash
FLEX_ALLOCS = "allocs"  # under the flex root: allocs/<alloc id>/{blob.bin,server.py,...}


# --- samples ----------------------------------------------------------------------------------


@dataclass
class Sample:
    """One round of one scenario with one tool on N hosts: one CLI run, timed from outside."""

    tool: str
    scenario: str
    n: int
    round: int
    wall_s: float
    cpu_s: float  # user + system CPU of the CLI process and the children it waited for
    load1: float  # this machine's 1-minute load average just before the round
    exit_status: int
    ok: bool = True
    problems: list[str] = field(default_factory=list)
    output_tail: str = ""


def loadavg() -> list[float]:
    return [float(x) for x in Path("/proc/loadavg").read_text().split()[:3]]


def run_timed(argv: Sequence[str], *, env: Mapping[str, str], cwd: Path,
              timeout: float = RUN_TIMEOUT) -> tuple[float, float, subprocess.CompletedProcess[str]]:
    """Run argv; (wall seconds, CPU seconds of it and its waited-for children, the result)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    try:
        done = subprocess.run(list(argv), env=dict(env), cwd=cwd, capture_output=True, text=True,
                              timeout=timeout, check=False, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired as exc:
        out = exc.stdout.decode(errors="replace") if isinstance(exc.stdout, bytes) else exc.stdout or ""
        done = subprocess.CompletedProcess(list(argv), 124, out, f"timed out after {timeout:g}s")
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu, done


# --- what is on the hosts (untimed checks) ----------------------------------------------------


@dataclass
class HostView:
    """What one host shows after a push: who listens on the port, the app files, the answer."""

    pid: int | None
    files: dict[str, str]  # name -> "inode mtime"
    blob_sha256: str | None
    answer: str | None


def _view(host: Any, port: int, app_glob: str) -> HostView:
    script = (f"ss -ltnpH 'sport = :{port}'; echo ---; "
              f"for f in {app_glob}/blob.bin {app_glob}/server.py; do "
              "[ -f \"$f\" ] && stat -c '%n %i %.9Y' \"$f\"; done; echo ---; "
              f"sha256sum {app_glob}/blob.bin 2>/dev/null")
    done = host.exec(["sh", "-c", script], timeout=30)
    listen, files, sums = (done.stdout.split("---\n") + ["", "", ""])[:3]
    match = re.search(r"pid=(\d+)", listen)
    names = {}
    for line in files.splitlines():
        path, inode, mtime = line.rsplit(" ", 2)
        names[Path(path).name] = f"{inode} {mtime}"
    blob = sums.split()[0] if sums.split() else None
    answer: str | None
    try:
        with urllib.request.urlopen(f"http://{host.ip}:{port}/", timeout=5) as reply:
            answer = f"{reply.status} {reply.read().decode(errors='replace').strip()}"
    except OSError as exc:
        answer = f"error {exc}"
    return HostView(int(match.group(1)) if match else None, names, blob, answer)


def views(fleet: Any, port: int, app_glob: str) -> dict[str, HostView]:
    with concurrent.futures.ThreadPoolExecutor(max_workers=8) as pool:
        futures = {h.name: pool.submit(_view, h, port, app_glob) for h in fleet.hosts}
    return {name: f.result() for name, f in futures.items()}


def cli_env(venv: Path) -> dict[str, str]:
    """The environment of every timed CLI: this one, with bytecode caching on.

    Where PYTHONDONTWRITEBYTECODE is set (it is on this machine), an editable flex install compiles
    every deployer module from source at each start (~0.1 s of CPU), while the peers' site-packages
    hold the .pyc files pip wrote. So every CLI gets a cache: PYTHONPYCACHEPREFIX inside the peers'
    (git-ignored) virtualenv, filled by the first run; nothing is written into the repository.
    """
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    env["PYTHONPYCACHEPREFIX"] = str(venv / "pycache")
    return env


# --- the tools --------------------------------------------------------------------------------


class Tool:
    """One tool of the comparison: its CLI invocations and where its workload lands on a host."""

    name = ""
    port = 0
    app_glob = ""  # the app directory on a host (a shell glob)

    def __init__(self, fleet: Any, workdir: Path, venv: Path) -> None:
        self.fleet = fleet
        self.n = len(fleet.hosts)
        self.dir = workdir / self.name
        self.dir.mkdir(parents=True, exist_ok=True)
        self.venv = venv
        self.env = cli_env(venv)
        self.after_cold: dict[str, HostView] = {}

    def reset(self) -> None:
        """Untimed, after the fleet's reboot: forget what this tool keeps on the controller."""

    def push_argv(self) -> list[str]:
        raise NotImplementedError

    def probe_argv(self) -> list[str]:
        raise NotImplementedError

    def check_push(self, done: subprocess.CompletedProcess[str], cold: bool) -> list[str]:
        """Problems in the tool's own output (exit status is checked by the caller)."""
        return []

    def check_probe(self, done: subprocess.CompletedProcess[str]) -> list[str]:
        return []

    # --- one timed round ---------------------------------------------------------------------

    def round(self, scenario: str, rnd: int) -> Sample:
        argv = self.probe_argv() if scenario == "probe" else self.push_argv()
        load1 = loadavg()[0]
        wall, cpu, done = run_timed(argv, env=self.env, cwd=self.dir)
        sample = Sample(self.name, scenario, self.n, rnd, wall, cpu, load1, done.returncode)
        problems = sample.problems
        if done.returncode != 0:
            problems.append(f"exit status {done.returncode}")
        if scenario == "probe":
            problems += self.check_probe(done)
        else:
            problems += self.check_push(done, cold=scenario == "cold")
            problems += self.check_hosts(cold=scenario == "cold")
        sample.ok = not problems
        if problems:
            sample.output_tail = (done.stdout[-3000:] + "\n--- stderr ---\n" + done.stderr[-3000:]).strip()
        return sample

    def check_hosts(self, *, cold: bool) -> list[str]:
        seen = views(self.fleet, self.port, self.app_glob)
        problems = []
        expected_blob = hashlib.sha256(blob_bytes()).hexdigest()
        for name, view in seen.items():
            if view.answer != "200 ok":
                problems.append(f"{name}: GET / on port {self.port}: {view.answer}")
            if view.blob_sha256 != expected_blob:
                problems.append(f"{name}: blob.bin sha256 {view.blob_sha256}")
            if cold:
                continue
            before = self.after_cold.get(name)
            if before is None:
                continue
            if view.pid != before.pid:
                problems.append(f"{name}: restarted (listening pid {before.pid} -> {view.pid})")
            if view.files != before.files:
                problems.append(f"{name}: files rewritten ({before.files} -> {view.files})")
        if cold:
            self.after_cold = seen
        return problems


class Flex(Tool):
    name = "flex"
    port = FLEX_PORT

    def __init__(self, fleet: Any, workdir: Path, venv: Path) -> None:
        super().__init__(fleet, workdir, venv)
        self.app_glob = f"{fleet.flex_root}/{FLEX_ALLOCS}/bench-web-*"
        write_app(self.dir / "app")
        shutil.copy(PEERS / "flex" / "job.yaml", self.dir / "job.yaml")
        self.state = self.dir / "state" / "flex.db"
        self.state.parent.mkdir(exist_ok=True)
        self.env["FLEX_STATE"] = str(self.state)
        # the working tree's flex, whatever `pip install .` put into site-packages before (a non-editable
        # install would otherwise be what the console script imports: stale code, measured)
        self.env["PYTHONPATH"] = os.pathsep.join([str(REPO), *filter(None, [self.env.get("PYTHONPATH")])])
        self.inventory = str(fleet.inventory_path)

    @staticmethod
    def command() -> list[str]:
        """The `flex` console script of bench/.venv-flex (ensure_flex), else of this interpreter (not a
        PATH shim such as pyenv's). Either runs the working tree's code (PYTHONPATH, see __init__)."""
        script = FLEX_VENV / "bin" / "flex"
        if script.exists():
            return [str(script)]
        script = Path(sys.executable).parent / "flex"
        if script.exists():
            return [str(script)]
        found = shutil.which("flex")
        return [found] if found else [sys.executable, "-m", "deployer.cli"]

    def reset(self) -> None:
        for path in self.state.parent.iterdir():  # flex.db and its -wal/-shm
            path.unlink()

    def push_argv(self) -> list[str]:
        return [*self.command(), "push", self.inventory, str(self.dir / "job.yaml")]

    def probe_argv(self) -> list[str]:
        return [*self.command(), "probe", self.inventory, "--json"]

    def check_push(self, done: subprocess.CompletedProcess[str], cold: bool) -> list[str]:
        problems = []
        if "converged" not in done.stdout:
            problems.append("no 'converged' in the output")
        if not cold and "no changes" not in done.stdout:
            problems.append("no-change push did not print 'no changes'")
        if cold and "no changes" in done.stdout:
            problems.append("cold push printed 'no changes'")
        return problems

    def round(self, scenario: str, rnd: int) -> Sample:
        if scenario != "streams":
            return super().round(scenario, rnd)
        argv = [sys.executable, "-m", "bench.probe_round", self.inventory, "--rounds", "10", "--json"]
        load1 = loadavg()[0]
        _, _, done = run_timed(argv, env=self.env, cwd=REPO)
        sample = Sample(self.name, scenario, self.n, rnd, 0.0, 0.0, load1, done.returncode)
        try:
            result = json.loads(done.stdout)
            sample.wall_s, sample.cpu_s = result["median_s"], statistics.median(result["cpu_s"])
        except (ValueError, KeyError) as exc:
            sample.problems.append(f"probe_round output: {exc}")
        if done.returncode != 0:
            sample.problems.append(f"exit status {done.returncode}")
        sample.ok = not sample.problems
        if sample.problems:
            sample.output_tail = (done.stdout[-3000:] + "\n--- stderr ---\n" + done.stderr[-3000:]).strip()
        return sample

    def check_probe(self, done: subprocess.CompletedProcess[str]) -> list[str]:
        try:
            doc = json.loads(done.stdout)
        except ValueError as exc:
            return [f"probe output is not JSON: {exc}"]
        problems = []
        for host in self.fleet.hosts:
            state = doc.get(host.name) or {}
            if state.get("status") != "ready" or not state.get("load") or not state.get("memory_available"):
                problems.append(f"{host.name}: {str(state)[:200]}")
        return problems


class Ansible(Tool):
    name = "ansible"
    port = ANSIBLE_PORT
    app_glob = "/tmp/bench-ansible"  # each host has its own /tmp

    def __init__(self, fleet: Any, workdir: Path, venv: Path) -> None:
        super().__init__(fleet, workdir, venv)
        write_app(self.dir / "app")
        self.control = self.dir / "cp"
        self.control.mkdir(exist_ok=True)
        import yaml

        common = {
            "ansible_user": "root",
            "ansible_ssh_private_key_file": str(fleet.client_key),
            "ansible_ssh_common_args": f"-o UserKnownHostsFile={fleet.known_hosts} -o StrictHostKeyChecking=yes",
            "ansible_python_interpreter": "/usr/bin/python3",  # no interpreter discovery round trip
            "bench_app_dir": self.app_glob,
            "bench_port": self.port,
            "bench_src": str(self.dir / "app"),
        }
        inventory = {"all": {"vars": common, "hosts": {h.name: {"ansible_host": h.ip} for h in fleet.hosts}}}
        (self.dir / "inventory.yml").write_text("# generated by bench/compare.py\n"
                                                + yaml.safe_dump(inventory, sort_keys=False))
        (self.dir / "ansible.cfg").write_text(
            "# generated by bench/compare.py\n"
            "[defaults]\n"
            f"forks = {self.n}\n"
            "gathering = explicit\n"
            "host_key_checking = True\n"
            "retry_files_enabled = False\n"
            "deprecation_warnings = False\n"
            f"local_tmp = {self.dir / 'tmp'}\n"
            "[ssh_connection]\n"
            "pipelining = True\n"
            f"control_path_dir = {self.control}\n"
        )
        self.env.update({"ANSIBLE_CONFIG": str(self.dir / "ansible.cfg"), "ANSIBLE_NOCOLOR": "1",
                         "ANSIBLE_FORCE_COLOR": "0"})

    def reset(self) -> None:
        # The reboot ended the hosts' side of every ControlPersist connection, so the masters exit;
        # drop their sockets so that the next run opens new connections, as on fresh hosts.
        for path in self.control.iterdir():
            path.unlink()

    def push_argv(self) -> list[str]:
        return [str(self.venv / "bin" / "ansible-playbook"), "-i", "inventory.yml",
                str(PEERS / "ansible" / "site.yml")]

    def probe_argv(self) -> list[str]:
        return [str(self.venv / "bin" / "ansible"), "all", "-i", "inventory.yml", "-m", "ansible.builtin.command",
                "-a", "cat /proc/loadavg /proc/meminfo"]

    def check_push(self, done: subprocess.CompletedProcess[str], cold: bool) -> list[str]:
        recap = dict(re.findall(r"^(\S+)\s+: ok=\d+\s+changed=(\d+)", done.stdout, re.M))
        problems = [f"{h.name}: not in the play recap" for h in self.fleet.hosts if h.name not in recap]
        if not cold:
            problems += [f"{name}: changed={c} in a no-change push" for name, c in recap.items() if c != "0"]
        return problems

    def check_probe(self, done: subprocess.CompletedProcess[str]) -> list[str]:
        parts = re.split(r"^(\S+) \| CHANGED \| rc=0 >>$", done.stdout, flags=re.M)
        answered = {name for name, body in zip(parts[1::2], parts[2::2])
                    if re.match(r"\n[\d.]+ [\d.]+ [\d.]+ ", body) and "\nMemAvailable:" in body}
        return [f"{h.name}: no load average or memory in the output" for h in self.fleet.hosts
                if h.name not in answered]


class Pyinfra(Tool):
    name = "pyinfra"
    port = PYINFRA_PORT
    app_glob = "/tmp/bench-pyinfra"

    def __init__(self, fleet: Any, workdir: Path, venv: Path) -> None:
        super().__init__(fleet, workdir, venv)
        write_app(self.dir / "app")
        common = {
            "ssh_user": "root",
            "ssh_key": str(fleet.client_key),
            "ssh_known_hosts_file": str(fleet.known_hosts),
            "ssh_strict_host_key_checking": "yes",
            "bench_app_dir": self.app_glob,
            "bench_port": self.port,
            "bench_src": str(self.dir / "app"),
        }
        hosts = [(h.name, {"ssh_hostname": h.ip, **common}) for h in fleet.hosts]
        (self.dir / "inventory.py").write_text(f"# generated by bench/compare.py\nbench_hosts = {hosts!r}\n")

    def push_argv(self) -> list[str]:
        return [str(self.venv / "bin" / "pyinfra"), "-y", "--parallel", str(self.n), "inventory.py",
                str(PEERS / "pyinfra" / "deploy.py")]

    def probe_argv(self) -> list[str]:
        return [str(self.venv / "bin" / "pyinfra"), "-y", "--parallel", str(self.n), "inventory.py",
                "exec", "--", "cat", "/proc/loadavg", "/proc/meminfo"]

    @staticmethod
    def results(stdout: str) -> dict[str, list[int]]:
        """The results table: operation -> [hosts, success, error, no change] ('-' is 0)."""
        rows = {}
        for line in stdout.split("--> Results:", 1)[-1].splitlines():
            cells = re.split(r"\s{2,}", line.strip())
            if len(cells) == 5 and cells[1].isdigit():
                rows[cells[0]] = [int(c) if c.isdigit() else 0 for c in cells[1:]]
        return rows

    def check_push(self, done: subprocess.CompletedProcess[str], cold: bool) -> list[str]:
        rows = self.results(done.stdout + done.stderr)  # pyinfra reports on stderr
        problems = []
        for op in ("app directory", "blob.bin", "server.py", "start the server detached (unless it runs)",
                   "alive (GET / answers 200)"):
            hosts, success, error, nochange = rows.get(op, [0, 0, 0, 0])
            if hosts != self.n or error:
                problems.append(f"{op}: {rows.get(op)} (hosts, success, error, no change)")
            if not cold and op in ("blob.bin", "server.py") and nochange != self.n:
                problems.append(f"{op}: changed on {self.n - nochange} hosts in a no-change push")
        return problems

    def check_probe(self, done: subprocess.CompletedProcess[str]) -> list[str]:
        out = done.stdout + done.stderr
        loads = set(re.findall(r"^\[(\S+)\] [\d.]+ [\d.]+ [\d.]+ \d+/\d+ \d+$", out, re.M))
        memory = set(re.findall(r"^\[(\S+)\] MemAvailable: +\d+ kB$", out, re.M))
        return [f"{h.name}: no load average or memory in the output" for h in self.fleet.hosts
                if h.name not in loads or h.name not in memory]


TOOLS: dict[str, type[Tool]] = {"flex": Flex, "ansible": Ansible, "pyinfra": Pyinfra}


# --- inputs -----------------------------------------------------------------------------------


def blob_bytes() -> bytes:
    """The 1 MiB data file of the workload (the same bytes as bench/push_probe.py's)."""
    return random.Random(0).randbytes(PAYLOAD_BYTES)


def write_app(directory: Path) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    shutil.copy(PEERS / "app" / "server.py", directory / "server.py")
    (directory / "blob.bin").write_bytes(blob_bytes())


def ensure_peers(venv: Path, *, reinstall: bool = False) -> dict[str, str]:
    """The peers' virtual environment (created and filled from PyPI when absent); their versions."""
    bins = venv / "bin"
    wanted = [bins / "ansible-playbook", bins / "ansible", bins / "pyinfra"]
    if reinstall or not all(p.exists() for p in wanted):
        make_venv(venv, PEER_PACKAGES)
    script = ("import importlib.metadata as m, json\n"
              f"print(json.dumps({{p: m.version(p) for p in {list(PEER_PACKAGES)!r}}}))")
    done = subprocess.run([str(bins / "python"), "-c", script], capture_output=True, text=True, check=True)
    versions: dict[str, str] = json.loads(done.stdout)
    versions["python"] = subprocess.run([str(bins / "python"), "-c", "import sys; print(sys.version.split()[0])"],
                                        capture_output=True, text=True, check=True).stdout.strip()
    return versions


def ensure_flex(venv: Path, *, reinstall: bool = False) -> None:
    """flex's own virtualenv (created when absent): its dependencies from PyPI and its console script,
    as a user's `pip install` in a virtualenv makes them; the code it runs is the working tree's."""
    if reinstall or not (venv / "bin" / "flex").exists():
        make_venv(venv, [str(REPO)])


def make_venv(venv: Path, packages: Sequence[str]) -> None:
    """A fresh virtualenv at venv with packages installed from PyPI (or paths)."""
    print(f"# installing {', '.join(packages)} into {venv}", flush=True)
    subprocess.run([sys.executable, "-m", "venv", "--clear", str(venv)], check=True)
    subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet", *packages], check=True)


# --- the run ----------------------------------------------------------------------------------


def reboot_fleet(fleet: Any, clean_rc: bool) -> None:
    """Fresh hosts: every process killed, fresh /tmp, empty flex root (untimed)."""
    for host in fleet.hosts:
        host.reboot(wipe_flex_root=True)
    if clean_rc:
        clean_shell_rc(fleet)  # the bind mounts lived in the old mount namespaces


def bench_fleet(fleet: Any, tools: Sequence[Tool], rounds: int, scenarios: Sequence[str], clean_rc: bool,
                report: Callable[[Sample], None]) -> None:
    for rnd in range(rounds):
        for tool in rotated(tools, rnd):
            reboot_fleet(fleet, clean_rc)
            for t in tools:
                t.reset()
            time.sleep(0.5)  # let the reboot's own CPU settle
            for scenario in SCENARIOS:
                if scenario == "streams" and not isinstance(tool, Flex):
                    continue  # the peers keep no connection open between runs
                if scenario == "cold" or scenario in scenarios:  # the others need the cold push first
                    report(tool.round(scenario, rnd))


def summarize(samples: Sequence[Sample]) -> list[dict[str, Any]]:
    groups: dict[tuple[str, str, int], list[Sample]] = {}
    for s in samples:
        groups.setdefault((s.tool, s.scenario, s.n), []).append(s)
    rows = []
    for (tool, scenario, n), group in groups.items():
        walls = [s.wall_s for s in group]
        rows.append({"tool": tool, "scenario": scenario, "n": n, "rounds": len(group),
                     "median_s": statistics.median(walls), "min_s": min(walls), "max_s": max(walls),
                     "cpu_median_s": statistics.median(s.cpu_s for s in group),
                     "load1_median": statistics.median(s.load1 for s in group),
                     "ok_rounds": sum(s.ok for s in group)})
    return rows


def ratios(samples: Sequence[Sample]) -> list[dict[str, Any]]:
    """flex/peer per scenario and N: of the medians, and per round (the tools ran back to back)."""
    by: dict[tuple[str, str, int], dict[int, float]] = {}
    for s in samples:
        by.setdefault((s.tool, s.scenario, s.n), {})[s.round] = s.wall_s
    rows = []
    for (tool, scenario, n), flex_rounds in sorted(by.items()):
        if tool != "flex":
            continue
        for peer in ("ansible", "pyinfra"):
            peer_rounds = by.get((peer, scenario, n))
            if not peer_rounds:
                continue
            paired = [flex_rounds[r] / peer_rounds[r] for r in flex_rounds if r in peer_rounds]
            of_medians = statistics.median(flex_rounds.values()) / statistics.median(peer_rounds.values())
            rows.append({"scenario": scenario, "n": n, "peer": peer, "flex_over_peer": of_medians,
                         "speedup": 1 / of_medians,
                         "paired_median": statistics.median(paired) if paired else None,
                         "paired_min": min(paired) if paired else None,
                         "paired_max": max(paired) if paired else None})
    return rows


TARGETS = (  # (scenario, N, peer or None, the floor: peer/flex speedup, or flex's seconds when peer is None)
    ("cold", 30, "ansible", 10.0),
    ("cold", 30, "pyinfra", 2.0),
    ("nochange", 30, "pyinfra", 2.0),
    ("probe", 30, None, 0.3),
    ("streams", 30, None, 0.3),
)


def targets(rows: Sequence[Mapping[str, Any]], ratio_rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for scenario, n, peer, floor in TARGETS:
        if peer is None:
            row = next((r for r in rows if r["tool"] == "flex" and r["scenario"] == scenario and r["n"] == n), None)
            if row is not None:
                out.append({"target": f"{scenario} N={n}: flex under {floor:g} s", "value": row["median_s"],
                            "met": row["median_s"] < floor})
            continue
        ratio = next((r for r in ratio_rows if r["scenario"] == scenario and r["n"] == n and r["peer"] == peer), None)
        if ratio is not None:
            out.append({"target": f"{scenario} N={n}: flex >= {floor:g}x faster than {peer}",
                        "value": ratio["speedup"], "met": ratio["speedup"] >= floor})
    return out


def table(rows: Sequence[Mapping[str, Any]], ratio_rows: Sequence[Mapping[str, Any]]) -> str:
    """Markdown: one line per scenario and N, the three tools' medians (min-max) and the ratios."""
    cell = {(r["tool"], r["scenario"], r["n"]): r for r in rows}
    ratio = {(r["scenario"], r["n"], r["peer"]): r for r in ratio_rows}
    head = ["scenario", "N", "flex", "ansible-core", "pyinfra", "flex/ansible", "flex/pyinfra"]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    for scenario in SCENARIOS:
        for n in sorted({r["n"] for r in rows}):
            if not any(k[1] == scenario and k[2] == n for k in cell):
                continue
            cells = [scenario, str(n)]
            for tool in ("flex", "ansible", "pyinfra"):
                r = cell.get((tool, scenario, n))
                bad = "" if r is None or r["ok_rounds"] == r["rounds"] else f" ({r['ok_rounds']}/{r['rounds']} ok)"
                cells.append("-" if r is None else
                             f"{fmt_s(r['median_s'])} ({fmt_s(r['min_s'])}-{fmt_s(r['max_s'])}){bad}")
            for peer in ("ansible", "pyinfra"):
                q = ratio.get((scenario, n, peer))
                cells.append("-" if q is None else f"{q['flex_over_peer']:.2f} ({q['speedup']:.1f}x)")
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def cpu_table(rows: Sequence[Mapping[str, Any]]) -> str:
    """Markdown: the median CPU time (user + system) of each tool's CLI process and its children."""
    cell = {(r["tool"], r["scenario"], r["n"]): r for r in rows}
    lines = ["| scenario | N | flex CPU | ansible-core CPU | pyinfra CPU |", "|---|---|---|---|---|"]
    for scenario in SCENARIOS:
        for n in sorted({r["n"] for r in rows}):
            if any(k[1] == scenario and k[2] == n for k in cell):
                lines.append(f"| {scenario} | {n} | " + " | ".join(
                    fmt_s(cell[(t, scenario, n)]["cpu_median_s"]) if (t, scenario, n) in cell else "-"
                    for t in ("flex", "ansible", "pyinfra")) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python3 -m bench.compare", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hosts", default="1,10,30", help="comma-separated fleet sizes (default 1,10,30)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds per tool (default 3)")
    parser.add_argument("--tools", default="flex,ansible,pyinfra", help=f"comma-separated, of: {', '.join(TOOLS)}")
    parser.add_argument("--scenarios", default=",".join(SCENARIOS),
                        help="comma-separated, of: cold,nochange,probe,streams (cold always runs: the others need it)")
    parser.add_argument("--json", type=Path, default=BENCH / "results" / "compare.json",
                        help="result file (default bench/results/compare.json)")
    parser.add_argument("--venv", type=Path, default=DEFAULT_VENV,
                        help="the peers' virtualenv (default bench/.venv-peers)")
    parser.add_argument("--reinstall-peers", action="store_true",
                        help="build the peers' virtualenv and flex's (bench/.venv-flex) again")
    parser.add_argument("--keep-rc", action="store_true",
                        help="leave this machine's ~/.bashrc visible to the hosts' ssh sessions (see push_probe)")
    args = parser.parse_args(argv)
    sizes = [int(x) for x in args.hosts.split(",") if x.strip()]
    tool_names = [t.strip() for t in args.tools.split(",") if t.strip()]
    scenarios = [s.strip() for s in args.scenarios.split(",") if s.strip()]
    bad = [t for t in tool_names if t not in TOOLS] + [s for s in scenarios if s not in SCENARIOS]
    if bad or args.rounds < 1 or not sizes or not tool_names:
        parser.error(f"unknown: {bad}" if bad else "need at least one size, one tool and one round")

    from tests.fleet import Fleet

    peers = ensure_peers(args.venv, reinstall=args.reinstall_peers)
    if "flex" in tool_names:
        ensure_flex(FLEX_VENV, reinstall=args.reinstall_peers)
    info = machine_info()
    info["peers"] = peers
    info["flex_command"] = shlex.join(Flex.command())
    print(f"# {info['date']}  {info['nproc']} CPUs ({info['cpu_model']}), Python {info['python']}, "
          f"flex {info['flex_version']}, asyncssh {info['asyncssh']}, {info['openssh']}; "
          f"ansible-core {peers['ansible-core']}, pyinfra {peers['pyinfra']}; load {loadavg()}"
          f"{'' if args.keep_rc else '; hosts with an empty ~/.bashrc'}", flush=True)
    samples: list[Sample] = []
    fleets: dict[int, dict[str, float]] = {}
    loads: list[list[float]] = [loadavg()]

    def report(sample: Sample) -> None:
        samples.append(sample)
        loads.append(loadavg())
        flag = "" if sample.ok else "  FAILED: " + "; ".join(sample.problems[:3])
        print(f"  {sample.tool:8} {sample.scenario:9} N={sample.n:<3} round {sample.round}: "
              f"{fmt_s(sample.wall_s):>9}  cpu {fmt_s(sample.cpu_s):>9}  load {sample.load1:4.2f}{flag}", flush=True)

    for n in sizes:
        with tempfile.TemporaryDirectory(prefix="flex-compare-") as tmp, Fleet.up(n) as fleet:
            fleets[n] = dict(fleet.timings)
            print(f"fleet of {n} up in {fleet.timings.get('up', 0):.2f}s", flush=True)
            tools = [TOOLS[name](fleet, Path(tmp), args.venv) for name in tool_names]
            bench_fleet(fleet, tools, args.rounds, scenarios, not args.keep_rc, report)
    rows = summarize(samples)
    ratio_rows = ratios(samples)
    target_rows = targets(rows, ratio_rows)
    print()
    print(table(rows, ratio_rows))
    print()
    print(cpu_table(rows))
    print()
    for t in target_rows:
        print(f"{'met   ' if t['met'] else 'MISSED'} {t['target']}: {t['value']:.2f}")
    load1 = [x[0] for x in loads]
    print(f"\nload average (1 min) during the run: {min(load1):.2f} - {max(load1):.2f}, "
          f"median {statistics.median(load1):.2f}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        doc = {"machine": info, "args": {"hosts": sizes, "rounds": args.rounds, "tools": tool_names,
                                         "scenarios": scenarios, "clean_rc": not args.keep_rc},
               "load_average": {"min": min(load1), "max": max(load1), "median": statistics.median(load1),
                                "samples": loads},
               "fleet_timings_s": fleets, "summary": rows, "ratios": ratio_rows, "targets": target_rows,
               "samples": [asdict(s) for s in samples]}
        args.json.write_text(json.dumps(doc, indent=1) + "\n")
        print(f"wrote {args.json}")
    return 0 if all(s.ok for s in samples) else 1


if __name__ == "__main__":
    sys.exit(main())
