"""A real test fleet on one Linux machine: N hosts, each a network namespace running OpenSSH's sshd.

Usable from pytest (see :mod:`tests.fleet.plugin`) and from plain scripts such as the benchmarks::

    from tests.fleet import Fleet

    with Fleet.up(10) as fleet:
        print(fleet.inventory_path)              # Ansible-style YAML inventory for the controller
        fleet.ssh_command("h01", "hostname")     # system ssh client: CompletedProcess, stdout "h01"
        fleet["h02"].partition()                 # link down; .heal() brings it back

Layout of one fleet (id ``abcde``, a free /24 such as 10.213.7.0/24):

- bridge ``fxabcdebr`` in the controller's namespace holds 10.213.7.1; host ``i`` is netns
  ``fxabcdehNN`` whose ``eth0`` (10.213.7.(i+1)) is the peer of veth ``fxabcdehNN`` on the bridge.
- each host runs ``ip netns exec NS unshare --mount --uts --pid --fork --mount-proc ...`` and a
  small script that configures the address, mounts a fresh tmpfs on /tmp, bind-mounts the host's
  flex root and a per-boot ``boot_id`` file, sets the hostname and execs ``sshd -D`` — so sshd is
  PID 1 of the host's pid namespace: killing it ends everything the host ran, and ``ps`` on a host
  shows only that host.
- the flex root (default /var/lib/flex) is a tmpfs mounted in the *controller's* namespace at
  ``<fleet dir>/hosts/NAME/flexroot`` and bind-mounted into the host. It therefore behaves like a
  disk: it SURVIVES :meth:`Host.kill` + :meth:`Host.start` and :meth:`Host.reboot` (unless
  ``wipe_flex_root=True``), while /tmp, the processes and the boot_id do not. Tests can read it
  directly through :attr:`Host.flex_root_path`.
- everything lives in ``/run/flex-fleet/<id>/`` (not /tmp, which every host covers with its own
  tmpfs): keys, sshd configs and logs, known_hosts, authorized_keys, inventory.yaml, and an
  ``owner`` file (pid + start time) that lets :func:`cleanup_stale` remove fleets of dead runs.

Teardown kills only the processes this fleet started (sshd pid 1 of each host, checked by pid and
start time, then anything left inside the fleet's own network namespaces), deletes its links and
namespaces, unmounts its tmpfs and removes its directory. An atexit hook tears down fleets a crashed
test left behind; :func:`cleanup_stale` (run by every :meth:`Fleet.up`) handles killed runs.
"""

from __future__ import annotations

import atexit
import contextlib
import ipaddress
import os
import random
import re
import secrets
import shlex
import shutil
import signal
import socket
import string
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from . import proc as procs
from .inventory import build_inventory, write_inventory
from .proc import ProcId
from .sshd import (
    finish_keygen,
    known_hosts_line,
    render_sshd_config,
    replace_key,
    ssh_client_argv,
    start_keygen,
)
from .system import (
    BASE_DIR,
    SYSTEM_PATH,
    TOOLS,
    FleetError,
    global_lock,
    ip_batch,
    mount_tmpfs,
    mounts_under,
    require_available,
    run,
    sshd_version,
    tool,
    unmount,
)

SSH_PORT = 22
DEFAULT_FLEX_ROOT = "/var/lib/flex"
MAX_HOSTS = 250
#: Second octets of the private /24s a fleet picks from: 10.200.0.0/24 ... 10.250.255.0/24.
SUBNET_SECOND_OCTETS = range(200, 251)
#: Poll interval while waiting for processes and sockets (polling, not fixed sleeps).
POLL_S = 0.01

_ID_ALPHABET = string.ascii_lowercase + string.digits
_ID_RE = re.compile(r"[a-z][a-z0-9]{4}\Z")
#: Every network object a fleet creates: bridge fx<id>br, veth and netns fx<id>h<NN>.
_NET_NAME_RE = re.compile(r"fx([a-z][a-z0-9]{4})(?:br|h\d+)\Z")
_HOST_PREFIX_RE = re.compile(r"[a-z][a-z0-9-]{0,40}\Z")
_ROUTE_TYPES = {
    "unicast", "local", "broadcast", "multicast", "throw", "unreachable", "prohibit",
    "blackhole", "nat", "anycast",
}  # fmt: skip

HostEnv = Mapping[str, str] | Callable[[str], Mapping[str, str]] | None
SizeOption = str | Mapping[str, str] | None


# --------------------------------------------------------------------------------------------
# Hosts
# --------------------------------------------------------------------------------------------


class Host:
    """One fleet host: a network namespace plus a pid/mount/uts namespace whose PID 1 is sshd."""

    def __init__(self, fleet: Fleet, index: int, name: str, ip: str, env: Mapping[str, str]):
        self.fleet = fleet
        self.index = index
        self.name = name
        self.ip = ip
        self.env: dict[str, str] = dict(env)
        self.netns = f"fx{fleet.id}h{index:02d}"
        self.veth = self.netns  # the bridge-side end; its peer is eth0 inside the netns
        self.dir = fleet.dir / "hosts" / name
        self.host_key = self.dir / "ssh_host_ed25519_key"
        self.sshd_config = self.dir / "sshd_config"
        self.log_path = self.dir / "sshd.log"
        self.boot_id_path = self.dir / "boot_id"
        #: The host's flex root as seen from the controller (the same tmpfs as fleet.flex_root inside).
        self.flex_root_path = self.dir / "flexroot"
        #: The host key sshd serves now.
        self.public_key = ""
        #: The host key the fleet's known_hosts lists (differs after restart_sshd(new_host_key=True)).
        self.known_public_key = ""
        self.partitioned = False
        self._proc: subprocess.Popen[bytes] | None = None
        self._sshd: ProcId | None = None
        self._stopped: list[ProcId] = []

    def __repr__(self) -> str:
        state = "up" if self.alive else "down"
        return f"<Host {self.name} {self.ip} netns={self.netns} {state}>"

    # --- state ------------------------------------------------------------------------------

    @property
    def cidr(self) -> str:
        """The host's address with the fleet's prefix length, e.g. ``10.213.7.2/24``."""
        return f"{self.ip}/{self.fleet.subnet.prefixlen}"

    @property
    def sshd_pid(self) -> int | None:
        """The pid (as seen from the controller) of the host's sshd, PID 1 inside the host."""
        return self._sshd.pid if self._sshd is not None and self._sshd.alive() else None

    @property
    def alive(self) -> bool:
        """True while the host's sshd (its PID 1) runs, stopped or not."""
        return self._sshd is not None and self._sshd.alive()

    @property
    def stopped(self) -> bool:
        """True between :meth:`stop` and :meth:`cont`."""
        return bool(self._stopped)

    @property
    def boot_id(self) -> str:
        """What /proc/sys/kernel/random/boot_id says inside the host (new on every start)."""
        return self.boot_id_path.read_text().strip()

    def damage(self) -> list[str]:
        """Why this host is not in its pristine state (empty when it is)."""
        reasons = []
        if not self.alive:
            reasons.append("down")
        if self.stopped:
            reasons.append("stopped")
        if self.partitioned:
            reasons.append("partitioned")
        if self.public_key != self.known_public_key:
            reasons.append("host key changed")
        return reasons

    def log(self) -> str:
        """The host's sshd log (LogLevel ERROR, so usually empty)."""
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def pids(self) -> list[int]:
        """Pids (as seen from the controller) of every process inside the host, sshd included."""
        if self._sshd is None:
            return []
        ns = procs.namespace_id(self._sshd.pid, "pid")
        if ns is None or not self._sshd.alive():
            return []
        return procs.pids_in_namespaces("pid", {ns})

    # --- running things inside ---------------------------------------------------------------

    def _nsenter(self, argv: Sequence[str]) -> list[str]:
        pid = self.sshd_pid
        if pid is None:
            raise FleetError(f"{self.name} is down: nothing to enter")
        return [
            self.fleet.tools["nsenter"],
            "-t",
            str(pid),
            "-m",
            "-u",
            "-n",
            "-p",
            "-w",
            "--",
            *argv,
        ]

    def _env(self, env: Mapping[str, str] | None) -> dict[str, str]:
        return {
            "PATH": SYSTEM_PATH,
            "LANG": "C.UTF-8",
            "HOME": "/root",
            **self.env,
            **(env or {}),
        }

    def exec(
        self,
        argv: Sequence[str],
        *,
        check: bool = False,
        timeout: float = 30.0,
        input: str | None = None,
        env: Mapping[str, str] | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Run ``argv`` inside the host's namespaces without ssh (nsenter), for test assertions.

        The environment is a clean PATH plus the host's ``host_env`` plus ``env``.
        """
        proc = subprocess.run(
            self._nsenter(argv),
            check=False,
            input=input,
            stdin=None if input is not None else subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
            env=self._env(env),
        )
        if check and proc.returncode != 0:
            raise FleetError(
                f"{self.name}: {shlex.join(argv)} exited {proc.returncode}: {proc.stderr.strip()}"
            )
        return proc

    def spawn(
        self, argv: Sequence[str], *, env: Mapping[str, str] | None = None, **popen: Any
    ) -> subprocess.Popen[Any]:
        """Start ``argv`` inside the host in the background (nsenter); the caller owns the Popen."""
        popen.setdefault("stdin", subprocess.DEVNULL)
        return subprocess.Popen(self._nsenter(argv), env=self._env(env), **popen)

    def read_file(self, path: str) -> str:
        """A file's text as the host sees it (e.g. something under its /tmp)."""
        return self.exec(["cat", "--", path], check=True).stdout

    def ssh(self, *argv: str, **kwargs: Any) -> subprocess.CompletedProcess[str]:
        """``fleet.ssh_command(self, *argv, **kwargs)``: real ssh to this host."""
        return self.fleet.ssh_command(self, *argv, **kwargs)

    # --- faults --------------------------------------------------------------------------------

    def partition(self) -> None:
        """Cut the host off the network: the bridge-side veth goes down (packets are dropped)."""
        run([self.fleet.tools["ip"], "link", "set", self.veth, "down"])
        self.partitioned = True

    def heal(self) -> None:
        """Undo :meth:`partition`; established TCP connections resume."""
        run([self.fleet.tools["ip"], "link", "set", self.veth, "up"])
        self.partitioned = False

    def kill(self, timeout: float = 10.0) -> None:
        """SIGKILL the host's sshd, PID 1 of its pid namespace: every process of the host dies.

        Waits until the kernel has reaped them all. The flex root survives (see :meth:`start`).
        A host that is already down is left as it is.
        """
        self._terminate()
        self._reap(timeout)

    def start(self, *, new_host_key: bool = False, wipe_flex_root: bool = False) -> None:
        """Boot a host that is down: fresh /tmp, new boot_id, same address and flex root.

        ``new_host_key`` gives it another host key (the fleet's known_hosts keeps the old one);
        ``wipe_flex_root`` empties its flex root first, like a replaced disk.
        """
        if self.alive:
            raise FleetError(f"{self.name} is already running (kill() or reboot() it)")
        self._reap(1.0)
        if new_host_key:
            self._new_host_key()
        if wipe_flex_root:
            _empty_dir(self.flex_root_path)
        self._spawn()
        self.fleet._wait_ready([self], self.fleet.ready_timeout)

    def reboot(self, *, new_host_key: bool = False, wipe_flex_root: bool = False) -> None:
        """:meth:`kill` then :meth:`start`: processes gone, boot_id changed, flex root kept."""
        self.kill()
        self.start(new_host_key=new_host_key, wipe_flex_root=wipe_flex_root)

    def stop(self, *, everything: bool = False) -> None:
        """SIGSTOP the host's sshd processes: TCP still opens, no byte comes back (FAULTS.md F13).

        The listener (PID 1) and every per-connection sshd are stopped, so established
        connections hang too; the workloads keep running unless ``everything`` is true, which
        stops every process of the host (a frozen machine).
        """
        sshd = self._require_alive()
        if self.stopped:
            return
        sshd.signal(signal.SIGSTOP)
        self._stopped = [sshd]
        for _ in range(50):  # repeat until no new process shows up (forks racing the stop)
            fresh = [p for p in self._stop_targets(everything) if p not in self._stopped]
            if not fresh:
                break
            for target in fresh:
                if target.signal(signal.SIGSTOP):
                    self._stopped.append(target)
        self._await(
            lambda: all(p.stopped() or not p.alive() for p in self._stopped),
            "stop",
            5.0,
        )

    def cont(self) -> None:
        """SIGCONT what :meth:`stop` stopped."""
        for target in reversed(self._stopped):
            target.signal(signal.SIGCONT)
        self._stopped = []

    def restart_sshd(self, *, new_host_key: bool = False) -> None:
        """Restart sshd in place (SIGHUP: sshd re-executes itself, still PID 1) and wait for it.

        Processes of the host, its /tmp and its flex root all survive; established connections
        too (they belong to per-connection sshd processes). With ``new_host_key`` the host serves
        a different host key afterwards while the fleet's known_hosts still lists the old one
        (FAULTS.md F18: ssh with the fleet's known_hosts now fails with a host key mismatch).
        """
        sshd = self._require_alive()
        if self.stopped:
            raise FleetError(f"{self.name} is stopped: cont() it before restarting sshd")
        before = procs.listening_sockets(sshd.pid, SSH_PORT)
        if new_host_key:
            self._new_host_key()
        sshd.signal(signal.SIGHUP)
        self.fleet._wait_ready([self], self.fleet.ready_timeout, old_listeners={self.name: before})

    # --- internals -----------------------------------------------------------------------------

    def _require_alive(self) -> ProcId:
        if self._sshd is None or not self._sshd.alive():
            raise FleetError(f"{self.name} is down")
        return self._sshd

    def _stop_targets(self, everything: bool) -> list[ProcId]:
        targets = []
        for pid in self.pids():
            stat = procs.read_stat(pid)
            if stat is not None and (everything or stat.comm.startswith("sshd")):
                targets.append(ProcId(pid, stat.start))
        return targets

    def _await(self, condition: Callable[[], bool], what: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            if time.monotonic() > deadline:
                raise FleetError(f"{self.name}: {what} did not take effect within {timeout:g}s")
            time.sleep(POLL_S)

    def _new_host_key(self) -> None:
        self.public_key = replace_key(
            self.host_key, f"{self.name}@{self.fleet.id}-{uuid.uuid4().hex[:6]}"
        )

    def _startup_script(self) -> str:
        """The in-namespace script: every value in it is shlex.quote()d or a validated address."""
        fleet, q = self.fleet, shlex.quote
        ip = q(fleet.tools["ip"])
        tmp_options = "mode=1777" + (f",size={fleet.tmp_size}" if fleet.tmp_size else "")
        return "\n".join(
            [
                "set -e",
                f"{ip} -batch - <<'EOF'",  # idempotent: the netns and its eth0 outlive a kill()
                f"addr replace {ipaddress.IPv4Interface(self.cidr)} dev eth0",
                "link set eth0 up",
                "link set lo up",
                f"route replace default via {ipaddress.IPv4Address(fleet.gateway)}",
                "EOF",
                f"mount -t tmpfs -o {q(tmp_options)} flex-tmp /tmp",
                f"mkdir -p {q(fleet.flex_root)}",
                f"mount --bind {q(str(self.flex_root_path))} {q(fleet.flex_root)}",
                f"mount --bind {q(str(self.boot_id_path))} /proc/sys/kernel/random/boot_id",
                f"printf '%s\\n' {q(self.name)} > /proc/sys/kernel/hostname",
                f"exec {q(fleet.tools['sshd'])} -D -e -f {q(str(self.sshd_config))}",
            ]
        )

    def _spawn(self) -> None:
        """Start the host's namespaces and sshd; returns at once (see Fleet._wait_ready)."""
        tools = self.fleet.tools
        self.boot_id_path.write_text(f"{uuid.uuid4()}\n")
        argv = [
            tools["ip"], "netns", "exec", self.netns,
            tools["unshare"], "--mount", "--uts", "--pid", "--fork", "--kill-child",
            "--mount-proc", "--propagation", "private",
            "/bin/sh", "-c", self._startup_script(),
        ]  # fmt: skip
        with open(self.log_path, "ab") as log:
            self._proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                env={"PATH": SYSTEM_PATH, "LANG": "C.UTF-8"},
                start_new_session=True,
            )
        self._sshd = None
        self._stopped = []

    def _listening(self, children: Mapping[int, list[int]], old: set[int]) -> bool:
        """One readiness poll: True once sshd listens (on a socket not in ``old``)."""
        if self._proc is None:
            raise FleetError(self._failure("was never started"))
        rc = self._proc.poll()
        if rc is not None:
            raise FleetError(self._failure(f"exited with status {rc} before sshd listened"))
        if self._sshd is None:
            self._sshd = _namespace_init(self._proc.pid, children)
            if self._sshd is None:
                return False
        return bool(procs.listening_sockets(self._sshd.pid, SSH_PORT) - old)

    def _banner_error(self, deadline: float) -> str | None:
        """Connect to port 22 until sshd's banner arrives; None when it did, else why not."""
        last = "no attempt"
        while True:
            timeout = max(0.1, min(2.0, deadline - time.monotonic()))
            try:
                with socket.create_connection((self.ip, SSH_PORT), timeout=timeout) as sock:
                    banner = _read_line(sock)
                if banner.startswith(b"SSH-"):
                    return None
                last = f"unexpected banner {banner[:60]!r}"
            except OSError as exc:
                last = str(exc) or type(exc).__name__
            if self._proc is not None and self._proc.poll() is not None:
                return self._failure(f"exited with status {self._proc.returncode}")
            if time.monotonic() > deadline:
                return self._failure(f"no ssh banner on {self.ip}:{SSH_PORT} ({last})")
            time.sleep(POLL_S * 2)

    def _failure(self, reason: str) -> str:
        tail = "\n".join(f"    {line}" for line in self.log().splitlines()[-20:]) or "    (empty)"
        return f"{self.name} ({self.ip}, netns {self.netns}): {reason}\n  {self.log_path}:\n{tail}"

    def _terminate(self) -> None:
        """SIGKILL the host's PID 1 (by pid and start time); before sshd is known, our unshare child.

        The unshare process exits only once PID 1 has exited, and PID 1 exits only after the
        kernel has killed and reaped every other process of the pid namespace, so waiting for
        it (``_reap``) waits for the whole host.
        """
        if self._sshd is not None:
            self._sshd.signal(signal.SIGKILL)
        elif self._proc is not None and self._proc.poll() is None:
            self._proc.kill()  # our own child (Popen reaps it); --kill-child takes PID 1 along

    def _reap(self, timeout: float) -> None:
        """Wait for the host's unshare process (and so its whole pid namespace) to end."""
        if self._proc is not None:
            try:
                self._proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self._proc.kill()  # our own child: --kill-child takes sshd and the namespace with it
                try:
                    self._proc.wait(timeout=timeout)
                except subprocess.TimeoutExpired as exc:
                    raise FleetError(f"{self.name}: host processes did not exit") from exc
        self._proc = None
        self._sshd = None
        self._stopped = []


def _namespace_init(root: int, children: Mapping[int, list[int]]) -> ProcId | None:
    """The first descendant of ``root`` that lives in another pid namespace: the host's PID 1.

    It is unshare's forked child (the script, which execs sshd: the pid stays the same).
    """
    own = procs.namespace_id(os.getpid(), "pid")
    queue = [root]
    while queue:
        for kid in children.get(queue.pop(0), []):
            if procs.namespace_id(kid, "pid") not in (own, None):
                return ProcId.of(kid)
            queue.append(kid)
    return None


def _read_line(sock: socket.socket) -> bytes:
    data = b""
    while b"\n" not in data and len(data) < 1024:
        chunk = sock.recv(256)
        if not chunk:
            break
        data += chunk
    return data


def _empty_dir(path: Path) -> None:
    for child in path.iterdir():
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child)
        else:
            child.unlink()


# --------------------------------------------------------------------------------------------
# The fleet
# --------------------------------------------------------------------------------------------


class Fleet:
    """N real sshd hosts on one bridge. Create with :meth:`up`; end with :meth:`down` (or ``with``)."""

    def __init__(
        self,
        fleet_id: str,
        *,
        stock_limits: bool,
        flex_root: str,
        flex_root_size: SizeOption,
        tmp_size: str | None,
        ready_timeout: float,
    ):
        self.id = fleet_id
        self.dir = BASE_DIR / fleet_id
        self.stock_limits = stock_limits
        self.flex_root = flex_root
        self.flex_root_size = flex_root_size
        self.tmp_size = tmp_size
        self.ready_timeout = ready_timeout
        self.bridge = f"fx{fleet_id}br"
        self.client_key = self.dir / "id_ed25519"
        self.authorized_keys = self.dir / "authorized_keys"
        self.known_hosts = self.dir / "known_hosts"
        self.inventory_path = self.dir / "inventory.yaml"
        self.subnet = ipaddress.IPv4Network("0.0.0.0/32")
        self.gateway = ""
        self.hosts: list[Host] = []
        self.tools: dict[str, str] = {}
        #: Seconds spent per phase of up() and down(), for benchmarks and curious tests.
        self.timings: dict[str, float] = {}
        self._owner_pid = os.getpid()
        self._is_down = False

    # --- construction ----------------------------------------------------------------------------

    @classmethod
    def up(
        cls,
        n: int,
        *,
        stock_limits: bool = False,
        name_prefix: str = "h",
        host_env: HostEnv = None,
        flex_root: str = DEFAULT_FLEX_ROOT,
        flex_root_size: SizeOption = None,
        tmp_size: str | None = "256m",
        ready_timeout: float = 60.0,
    ) -> Fleet:
        """Bring up ``n`` hosts named ``{name_prefix}01``... and return the fleet once all answer ssh.

        - ``stock_limits``: keep OpenSSH's MaxStartups 10:30:100 / MaxSessions 10 (F15/F16);
          otherwise they are raised to 100:30:200 / 64.
        - ``host_env``: environment for ssh sessions on the hosts (sshd_config SetEnv): one
          mapping for all, or a callable host name -> mapping (e.g. a FAKE_NVML_CONFIG per host).
        - ``flex_root`` / ``flex_root_size``: where each host's private flex root is mounted and
          its tmpfs size (``"1m"`` for full-disk tests), one size or a mapping host name -> size.
        - ``tmp_size``: size of each host's /tmp tmpfs (None: the kernel's default).

        Raises FleetUnavailable when this machine cannot run a fleet, FleetError when start-up
        fails (after tearing down whatever was started).
        """
        if not 1 <= n <= MAX_HOSTS:
            raise FleetError(f"a fleet has 1..{MAX_HOSTS} hosts, not {n}")
        if not _HOST_PREFIX_RE.match(name_prefix):
            raise FleetError(f"name_prefix {name_prefix!r}: use lowercase letters, digits and '-'")
        reserved = ("", "/tmp", "/proc")
        if not flex_root.startswith("/") or flex_root.rstrip("/") in reserved:
            raise FleetError(f"flex_root {flex_root!r} must be an absolute path of its own")
        require_available()
        cleanup_stale()
        fleet = cls(
            _reserve_id(),
            stock_limits=stock_limits,
            flex_root=flex_root,
            flex_root_size=flex_root_size,
            tmp_size=tmp_size,
            ready_timeout=ready_timeout,
        )
        try:
            fleet._bring_up(n, name_prefix, host_env)
        except BaseException:
            with contextlib.suppress(Exception):
                fleet.down()
            raise
        return fleet

    def _bring_up(self, n: int, name_prefix: str, host_env: HostEnv) -> None:
        started = time.monotonic()
        _register(self)
        self.tools = {name: tool(name) for name in TOOLS}
        # sshd's privilege separation directory (the hosts share the controller's /run).
        Path("/run/sshd").mkdir(mode=0o755, parents=True, exist_ok=True)

        with global_lock():
            self.subnet = _choose_subnet(_used_networks())
            (self.dir / "subnet").write_text(f"{self.subnet}\n")
            self.gateway = str(self.subnet.network_address + 1)
            ip_batch(_bridge_commands(self.bridge, f"{self.gateway}/{self.subnet.prefixlen}"))
        self._make_hosts(n, name_prefix, host_env)

        client_keygen = start_keygen(self.client_key, f"flex-fleet-{self.id}")
        host_keygens = [start_keygen(h.host_key, f"{h.name}@{self.id}") for h in self.hosts]
        phase = time.monotonic()
        ip_batch([cmd for h in self.hosts for cmd in _host_link_commands(h.netns, self.bridge)])
        self.timings["network"] = time.monotonic() - phase

        phase = time.monotonic()
        self._prepare_host_dirs()
        client_public = finish_keygen(client_keygen, self.client_key)
        for host, keygen in zip(self.hosts, host_keygens):
            host.public_key = host.known_public_key = finish_keygen(keygen, host.host_key)
        self.authorized_keys.write_text(client_public + "\n")
        self._write_known_hosts(self.known_hosts, use_current=True)
        self.timings["prepare"] = time.monotonic() - phase

        phase = time.monotonic()
        for host in self.hosts:
            host._spawn()
        self._wait_ready(self.hosts, self.ready_timeout)
        self.timings["start"] = time.monotonic() - phase

        self.write_inventory()
        self.timings["up"] = time.monotonic() - started

    def _make_hosts(self, n: int, name_prefix: str, host_env: HostEnv) -> None:
        if n > self.subnet.num_addresses - 3:
            raise FleetError(f"{n} hosts do not fit in {self.subnet}")
        width = max(2, len(str(n)))
        for index in range(1, n + 1):
            name = f"{name_prefix}{index:0{width}d}"
            env = host_env(name) if callable(host_env) else (host_env or {})
            ip = str(self.subnet.network_address + 1 + index)
            self.hosts.append(Host(self, index, name, ip, env))
            self.hosts[-1].dir.mkdir(parents=True)
        if any(h.env for h in self.hosts) and sshd_version(self.tools["sshd"]) < (8, 7):
            raise FleetError("host_env needs OpenSSH >= 8.7 (sshd_config SetEnv)")

    def _prepare_host_dirs(self) -> None:
        """Mount each host's flex root tmpfs and write its sshd_config."""
        for host in self.hosts:
            size = self.flex_root_size
            size = size.get(host.name) if isinstance(size, Mapping) else size
            host.flex_root_path.mkdir()
            options = "mode=0755" + (f",size={size}" if size else "")
            mount_tmpfs(
                host.flex_root_path,
                source=f"flex-{self.id}-{host.name}",
                options=options,
            )
            host.sshd_config.write_text(
                render_sshd_config(
                    listen=host.ip,
                    host_key=host.host_key,
                    authorized_keys=self.authorized_keys,
                    env=host.env,
                    stock_limits=self.stock_limits,
                )
            )

    def _wait_ready(
        self,
        hosts: Sequence[Host],
        timeout: float,
        old_listeners: Mapping[str, set[int]] | None = None,
    ) -> None:
        """Wait until every host's sshd listens and (unless partitioned) sends its banner."""
        deadline = time.monotonic() + timeout
        old = old_listeners or {}
        failures: dict[str, str] = {}
        pending = list(hosts)
        while pending:
            children = procs.children_map() if any(h._sshd is None for h in pending) else {}
            still = []
            for host in pending:
                try:
                    if not host._listening(children, old.get(host.name, set())):
                        still.append(host)
                except FleetError as exc:
                    failures[host.name] = str(exc)
            pending = still
            if pending and time.monotonic() > deadline:
                for host in pending:
                    failures[host.name] = host._failure(f"sshd not listening after {timeout:g}s")
                break
            if pending:
                time.sleep(POLL_S)
        reachable = [h for h in hosts if h.name not in failures and not h.partitioned]
        if reachable:
            with ThreadPoolExecutor(max_workers=min(32, len(reachable))) as pool:
                for host, error in zip(
                    reachable, pool.map(lambda h: h._banner_error(deadline), reachable)
                ):
                    if error is not None:
                        failures[host.name] = error
        if failures:
            raise FleetError(
                f"fleet {self.id}: {len(failures)} of {len(hosts)} hosts did not come up:\n"
                + "\n".join(failures[h.name] for h in hosts if h.name in failures)
            )

    # --- access ----------------------------------------------------------------------------------

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.down()

    def __iter__(self) -> Iterator[Host]:
        return iter(self.hosts)

    def __len__(self) -> int:
        return len(self.hosts)

    def __getitem__(self, key: str | int) -> Host:
        """``fleet["h03"]`` by name, ``fleet[0]`` by position."""
        return self.hosts[key] if isinstance(key, int) else self.host(key)

    def __repr__(self) -> str:
        return f"<Fleet {self.id} {self.subnet} {len(self.hosts)} hosts{' down' if self._is_down else ''}>"

    def host(self, name: str | Host) -> Host:
        """The host called ``name`` (a Host is returned as it is)."""
        if isinstance(name, Host):
            return name
        for host in self.hosts:
            if host.name == name or host.ip == name:
                return host
        raise KeyError(f"fleet {self.id} has no host {name!r} (hosts: {self.names})")

    @property
    def names(self) -> list[str]:
        """Host names in order."""
        return [h.name for h in self.hosts]

    def damage(self) -> dict[str, list[str]]:
        """Host name -> why it is not pristine, for the hosts that are not."""
        if self._is_down:
            return {"fleet": ["torn down"]}
        return {h.name: reasons for h in self.hosts if (reasons := h.damage())}

    # --- ssh client helpers -------------------------------------------------------------------------

    def ssh_argv(
        self,
        host: str | Host,
        *argv: str,
        known_hosts: Path | None = None,
        identity: Path | None = None,
        connect_timeout: float = 3.0,
        options: Sequence[str] = (),
    ) -> list[str]:
        """The system ssh client's argv for ``argv`` on ``host`` (see sshd.ssh_client_argv)."""
        return ssh_client_argv(
            self.host(host).ip,
            argv,
            identity=identity or self.client_key,
            known_hosts=known_hosts or self.known_hosts,
            connect_timeout=connect_timeout,
            options=options,
        )

    def ssh_command(
        self,
        host: str | Host,
        *argv: str,
        timeout: float = 20.0,
        check: bool = False,
        input: str | None = None,
        known_hosts: Path | None = None,
        identity: Path | None = None,
        connect_timeout: float = 3.0,
        options: Sequence[str] = (),
    ) -> subprocess.CompletedProcess[str]:
        """Run ``argv`` (an argv list, joined with shlex.join) on ``host`` with the system ssh client.

        No ~/.ssh/config, the fleet's key and known_hosts (strict), BatchMode. Returns the
        CompletedProcess (text); ssh's own failures exit 255. ``timeout`` bounds the whole call.
        """
        command = self.ssh_argv(
            host,
            *argv,
            known_hosts=known_hosts,
            identity=identity,
            connect_timeout=connect_timeout,
            options=options,
        )
        return subprocess.run(
            command,
            input=input,
            stdin=None if input is not None else subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=check,
        )

    def ssh_all(
        self, *argv: str, hosts: Sequence[str | Host] | None = None, **kwargs: Any
    ) -> dict[str, subprocess.CompletedProcess[str]]:
        """:meth:`ssh_command` on many hosts at once (threads); host name -> result."""
        targets = [self.host(h) for h in (hosts if hosts is not None else self.hosts)]
        with ThreadPoolExecutor(max_workers=min(32, len(targets) or 1)) as pool:
            results = pool.map(lambda h: self.ssh_command(h, *argv, **kwargs), targets)
            return {h.name: result for h, result in zip(targets, results)}

    def write_known_hosts(self, path: Path) -> Path:
        """Write a known_hosts with the keys the hosts serve NOW (the fleet's own file keeps the old)."""
        return self._write_known_hosts(path, use_current=True)

    def trust_current_keys(self) -> None:
        """Rewrite the fleet's known_hosts with the keys the hosts serve now (the 'fix' for F18)."""
        for host in self.hosts:
            host.known_public_key = host.public_key
        self._write_known_hosts(self.known_hosts, use_current=False)

    def _write_known_hosts(self, path: Path, *, use_current: bool) -> Path:
        lines = [
            known_hosts_line(h.ip, h.public_key if use_current else h.known_public_key, SSH_PORT)
            for h in self.hosts
        ]
        path.write_text("\n".join(lines) + "\n")
        return path

    def write_inventory(
        self,
        path: Path | None = None,
        *,
        hosts: Sequence[str | Host] | None = None,
        host_vars: Callable[[Host], Mapping[str, Any]] | None = None,
        all_vars: Mapping[str, Any] | None = None,
    ) -> Path:
        """Write an Ansible-style YAML inventory (default: the fleet's own, :attr:`inventory_path`).

        ``hosts`` picks a subset; ``host_vars(host)`` adds or overrides per-host variables;
        ``all_vars`` adds group ``all`` variables.
        """
        chosen = [self.host(h) for h in hosts] if hosts is not None else self.hosts
        document = build_inventory(self, chosen, extra_host_vars=host_vars, all_vars=all_vars)
        return write_inventory(path or self.inventory_path, document)

    # --- teardown ----------------------------------------------------------------------------------

    def down(self) -> None:
        """Tear everything down: kill what the fleet started (by pid), delete links, namespaces,
        mounts and the fleet directory. Idempotent; safe after a partial start-up and after
        tests killed hosts. Raises FleetError listing whatever could not be removed."""
        if self._is_down:
            return
        started = time.monotonic()
        errors: list[str] = []
        for host in self.hosts:
            host._terminate()
        for host in self.hosts:
            try:
                host._reap(10.0)
            except FleetError as exc:
                errors.append(str(exc))
        errors += _destroy(self.id)
        self._is_down = True
        _unregister(self)
        self.timings["down"] = time.monotonic() - started
        if errors:
            raise FleetError(f"teardown of fleet {self.id} incomplete:\n  " + "\n  ".join(errors))


# --------------------------------------------------------------------------------------------
# ids, subnets, network commands
# --------------------------------------------------------------------------------------------


def _reserve_id() -> str:
    """A fresh fleet id, reserved by creating its directory (exclusive) with an owner file."""
    BASE_DIR.mkdir(mode=0o755, parents=True, exist_ok=True)
    for _ in range(100):
        fleet_id = secrets.choice(string.ascii_lowercase) + "".join(
            secrets.choice(_ID_ALPHABET) for _ in range(4)
        )
        try:
            (BASE_DIR / fleet_id).mkdir(mode=0o755)
        except FileExistsError:
            continue
        if _network_objects(fleet_id):  # a leftover nobody owns any more: pick another id
            (BASE_DIR / fleet_id).rmdir()
            continue
        owner = ProcId.of(os.getpid())
        assert owner is not None
        (BASE_DIR / fleet_id / "owner").write_text(owner.dump())
        return fleet_id
    raise FleetError(f"could not reserve a fleet id under {BASE_DIR}")


def _used_networks() -> list[ipaddress.IPv4Network]:
    """IPv4 networks this machine uses: addresses, specific routes, other fleets' subnets."""
    ip = tool("ip")
    used: list[ipaddress.IPv4Network] = []
    for line in run([ip, "-o", "-4", "addr", "show"]).stdout.splitlines():
        fields = line.split()
        if "inet" in fields:
            used.append(ipaddress.IPv4Interface(fields[fields.index("inet") + 1]).network)
    for line in run([ip, "-4", "route", "show", "table", "all"]).stdout.splitlines():
        fields = line.split()
        if not fields:
            continue
        dest = fields[1] if fields[0] in _ROUTE_TYPES and len(fields) > 1 else fields[0]
        with contextlib.suppress(ValueError):
            network = ipaddress.IPv4Network(dest, strict=False)
            if network.prefixlen >= 16:  # a /8 VPN route is shadowed by our /24, not hurt by it
                used.append(network)
    for recorded in BASE_DIR.glob("*/subnet"):
        with contextlib.suppress(ValueError, OSError):
            used.append(ipaddress.IPv4Network(recorded.read_text().strip()))
    return used


def _choose_subnet(used: Sequence[ipaddress.IPv4Network]) -> ipaddress.IPv4Network:
    """A random free 10.(200-250).x.0/24."""
    candidates = [(a, b) for a in SUBNET_SECOND_OCTETS for b in range(256)]
    random.SystemRandom().shuffle(candidates)
    for a, b in candidates:
        subnet = ipaddress.IPv4Network(f"10.{a}.{b}.0/24")
        if not any(subnet.overlaps(other) for other in used):
            return subnet
    raise FleetError("no free /24 left in 10.200.0.0-10.250.255.0 for a test fleet")


def _bridge_commands(bridge: str, address: str) -> list[str]:
    # A fixed, locally administered MAC: the bridge must not take a port's MAC later on.
    mac = "02:66:78:" + ":".join(f"{secrets.randbelow(256):02x}" for _ in range(3))
    return [
        f"link add {bridge} address {mac} type bridge",
        f"addr add {address} dev {bridge}",
        f"link set {bridge} up",
    ]


def _host_link_commands(netns: str, bridge: str) -> list[str]:
    return [
        f"netns add {netns}",
        f"link add {netns} type veth peer name eth0 netns {netns}",
        f"link set {netns} master {bridge} up",
    ]


def _netns_names() -> list[str]:
    proc = run([tool("ip"), "netns", "list"], check=False)
    return [line.split()[0] for line in proc.stdout.splitlines() if line.strip()]


def _link_names() -> list[str]:
    proc = run([tool("ip"), "-o", "link", "show"], check=False)
    names = []
    for line in proc.stdout.splitlines():
        parts = line.split(": ", 2)
        if len(parts) > 1:
            names.append(parts[1].split("@")[0])
    return names


def _network_objects(fleet_id: str | None = None) -> dict[str, list[str]]:
    """Fleet network objects that exist now: {"netns": [...], "link": [...]} (only non-empty)."""
    found: dict[str, list[str]] = {}
    for kind, names in (("netns", _netns_names()), ("link", _link_names())):
        for name in names:
            match = _NET_NAME_RE.match(name)
            if match and (fleet_id is None or match.group(1) == fleet_id):
                found.setdefault(kind, []).append(name)
    return found


def _destroy(fleet_id: str) -> list[str]:
    """Remove every trace of fleet ``fleet_id``; the list of what could not be removed."""
    errors: list[str] = []
    objects = _network_objects(fleet_id)
    netns = objects.get("netns", [])
    # Anything still running inside the fleet's network namespaces was started there by the
    # fleet or its tests (hosts, `ip netns exec` helpers): kill it, by pid and start time.
    namespaces = {ns for name in netns if (ns := procs.netns_file_id(Path("/run/netns") / name))}
    inside = [p for pid in procs.pids_in_namespaces("net", namespaces) if (p := ProcId.of(pid))]
    procs.signal_all(inside, signal.SIGKILL)
    deadline = time.monotonic() + 10.0
    while any(p.alive() for p in inside) and time.monotonic() < deadline:
        time.sleep(POLL_S)
    if survivors := [p.pid for p in inside if p.alive()]:
        errors.append(f"processes still alive: {survivors}")
    # Deleting the namespaces lets the kernel destroy their veth pairs in one batch, which is
    # much faster than `link del` one by one; links still there after a while get deleted.
    commands = [f"netns del {name}" for name in netns]
    commands += [f"link del {name}" for name in objects.get("link", []) if name.endswith("br")]
    if commands:
        ip_batch(commands, force=True)
    deadline = time.monotonic() + 5.0
    while (links := _network_objects(fleet_id).get("link")) and time.monotonic() < deadline:
        time.sleep(POLL_S * 5)
    if links:
        ip_batch([f"link del {name}" for name in links], force=True)
    if leftovers := _network_objects(fleet_id):
        errors.append(f"network objects left: {leftovers}")
    errors += _remove_fleet_dir(BASE_DIR / fleet_id)
    return errors


def _remove_fleet_dir(path: Path) -> list[str]:
    if not path.exists():
        return []
    for point in mounts_under(path):
        try:
            unmount(point)
        except FleetError as exc:
            return [str(exc)]
    if remaining := mounts_under(path):
        return [f"still mounted: {', '.join(map(str, remaining))}"]
    try:
        shutil.rmtree(path)
    except OSError as exc:
        return [f"could not remove {path}: {exc}"]
    return []


def cleanup_stale(*, min_age_s: float = 60.0) -> list[str]:
    """Remove fleets whose owner process is dead (killed test runs); returns their ids.

    A fleet directory without an owner file counts as stale only when older than ``min_age_s``
    (it may be a fleet being born right now); network objects named like a fleet's without any
    directory are always stale (a fleet creates its directory first and removes it last).
    """
    if os.geteuid() != 0 or not BASE_DIR.exists():
        return []
    removed = []
    with global_lock():
        dirs = {d.name for d in BASE_DIR.iterdir() if d.is_dir() and _ID_RE.match(d.name)}
        orphans = {
            match.group(1)
            for names in _network_objects().values()
            for name in names
            if (match := _NET_NAME_RE.match(name))
        }
        for fleet_id in sorted(dirs | orphans):
            if fleet_id in dirs and not _owner_gone(BASE_DIR / fleet_id, min_age_s):
                continue
            errors = _destroy(fleet_id)
            if errors:
                print(
                    f"flex fleet: stale fleet {fleet_id}: {'; '.join(errors)}",
                    file=sys.stderr,
                )
            removed.append(fleet_id)
    return removed


def _owner_gone(fleet_dir: Path, min_age_s: float) -> bool:
    try:
        owner = ProcId.parse((fleet_dir / "owner").read_text())
    except FileNotFoundError:
        owner = None
    if owner is None:
        try:
            return time.time() - fleet_dir.stat().st_mtime > min_age_s
        except FileNotFoundError:
            return False
    return not owner.alive()


# --------------------------------------------------------------------------------------------
# live fleets of this process: torn down at exit
# --------------------------------------------------------------------------------------------

_LIVE: dict[str, Fleet] = {}
_LIVE_LOCK = threading.Lock()


def _register(fleet: Fleet) -> None:
    with _LIVE_LOCK:
        _LIVE[fleet.id] = fleet


def _unregister(fleet: Fleet) -> None:
    with _LIVE_LOCK:
        _LIVE.pop(fleet.id, None)


def live_fleets() -> list[Fleet]:
    """Fleets this process brought up and has not torn down yet."""
    with _LIVE_LOCK:
        return list(_LIVE.values())


def _down_all_at_exit() -> None:
    for fleet in live_fleets():
        if fleet._owner_pid != os.getpid():  # a forked child must not tear down its parent's fleet
            continue
        try:
            fleet.down()
        except Exception as exc:  # noqa: BLE001 - at exit, report and go on
            print(
                f"flex fleet {fleet.id}: teardown at exit failed: {exc}",
                file=sys.stderr,
            )


atexit.register(_down_all_at_exit)
os.register_at_fork(after_in_child=_LIVE.clear)
