"""The per-allocation supervisor: a launch (the `start` verb, or the probe stream serving one) forks
twice and execs `flexnode.py --root ROOT supervise ALLOC_ID --launch N`, which runs `main(["--root",
ROOT, "--launch", N, ALLOC_ID])` already detached: own session, stdin /dev/null, stdout /dev/null,
stderr supervisor.log, no other descriptor (`python3 supervisor.py --root ROOT [--launch N] ALLOC_ID`
runs it the same way by hand).

It launches the workload in a session and process group of its own (setsid), pipes its stdout/stderr
into the capped logs, records pid + start_time, fences the workload when the lease is not renewed for
lease_ttl seconds (time.monotonic(), immune to wall-clock steps), and when the workload's main process
exits it stops whatever is left of its group (systemd's KillMode=control-group), then records
exit_code / signal / finished_at atomically, appends an event, touches <root>/wakeup and exits.
It is a child subreaper, so orphaned grandchildren are reaped here instead of lingering as zombies.
"""

from __future__ import annotations

import errno
import os
import select
import sys
import time

try:  # without the signal module's enums (see nodeproc)
    import _signal as signal
except ImportError:  # pragma: no cover
    import signal

from nodecommon import AllocPaths, append_event, read_state, suppress, touch_wakeup, update_state
from nodelogs import CappedLog, rotate_previous
from nodeproc import (
    become_subreaper,
    boot_id,
    exec_detached,
    group_members,
    read_stat,
    read_to_end,
    signal_group,
    signal_name,
)
from nodespec import load_secrets, load_spec, workload_env

TICK_MS = 100  # lease checks and SIGKILL escalation; exits and output wake the loop at once
DRAIN_AFTER_EXIT_S = 1.0


class LeaseWatch:
    """Time since the lease file's content last changed, on the monotonic clock."""

    def __init__(self, path: str, ttl: float) -> None:
        self.path = path
        self.ttl = ttl
        self.content = self._read()
        self.changed_at = time.monotonic()

    def _read(self):
        try:
            with open(self.path, "rb") as handle:
                return handle.read()
        except OSError:
            return None

    def age(self) -> float:
        """Seconds since the last renewal seen (renewal = any change of the file's content)."""
        now = time.monotonic()
        content = self._read()
        if content != self.content:
            self.content, self.changed_at = content, now
        return now - self.changed_at

    def expired(self) -> bool:
        """Whether the lease went unrenewed for its whole TTL."""
        return self.age() >= self.ttl


class Supervisor:
    """Launch, watch and record one run of an allocation's workload."""

    def __init__(self, root: str, alloc_id: str, launch: int = 0) -> None:
        self.root = root
        self.launch = launch
        self.paths = AllocPaths(root, alloc_id)
        self.spec = {}
        self.pid = 0
        self.exit_status = None
        self.finished_at = None
        self.kill_sent_at = None
        self.kill_reason = ""
        self.escalated = False
        self.fenced = False
        self.terminate_reason = ""
        self.logs = {}
        self.pipes = {}
        self.wake_r = -1

    # -- launch ---------------------------------------------------------------------------------
    def run(self) -> int:
        """The supervisor's whole life; returns its exit status."""
        self.spec = load_spec(self.paths)
        secrets, warning = load_secrets(self.paths)
        if warning:
            append_event(self.paths, "warning", detail=warning)
        become_subreaper()
        signal.signal(signal.SIGTERM, self._on_terminate)
        signal.signal(signal.SIGINT, self._on_terminate)
        self._wake_on_sigchld()
        launch = self.launch or int(read_state(self.paths).get("restarts") or 1)
        rotate_previous(self.paths)
        for stream in ("stdout", "stderr"):
            self.logs[stream] = CappedLog(self.paths.log(stream), self.paths.log(stream, rotated=True),
                                          self.spec["log_max_bytes"])
        env = workload_env(self.paths, self.spec, secrets, launch)
        if not self._launch(env):
            return 0
        self._watch()
        self._drain(DRAIN_AFTER_EXIT_S)
        self._record_exit()
        return 0

    def _on_terminate(self, signum, frame) -> None:
        self.terminate_reason = f"supervisor received {signal_name(signum)}"

    def _wake_on_sigchld(self) -> None:
        """A byte on a pipe for every signal (set_wakeup_fd), so poll() returns the moment a child exits."""
        self.wake_r, wake_w = os.pipe()
        os.set_blocking(self.wake_r, False)
        os.set_blocking(wake_w, False)
        signal.set_wakeup_fd(wake_w)
        signal.signal(signal.SIGCHLD, lambda signum, frame: None)

    def _launch(self, env: dict) -> bool:
        """Start the workload; on an exec failure record exit 126/127 and return False."""
        try:
            self.pid, out, err = spawn(self.spec["argv"], self.spec["cwd"], env)
        except OSError as exc:
            self._record_exec_failure(exc)
            return False
        stat = read_stat(self.pid)
        now = time.time()
        with suppress(OSError):  # the previous run's health result says nothing about this one
            os.unlink(self.paths.health)
        for stream, fd in (("stdout", out), ("stderr", err)):
            os.set_blocking(fd, False)
            self.pipes[fd] = stream
        state = update_state(self.paths, {
            "status": "running", "pid": self.pid, "pgid": self.pid, "boot_id": boot_id(),
            "start_time": stat["start_ticks"] if stat else None, "started_at": now,
            "exit_code": None, "signal": None, "finished_at": None})
        append_event(self.paths, "started", pid=self.pid, start_time=state["start_time"],
                     launch=state.get("restarts"), argv0=self.spec["argv"][0])
        touch_wakeup(self.root)
        if state.get("stop_requested"):
            self._request_kill("stop requested before the workload started")
        return True

    def _record_exec_failure(self, exc: OSError) -> None:
        code = 127 if exc.errno == errno.ENOENT else 126
        detail = f"cannot execute {self.spec['argv'][0]} in {self.spec['cwd']}: {exc.strerror or exc}"
        self.logs["stderr"].write((f"flex: {detail}\n").encode())
        update_state(self.paths, {"status": "exited", "pid": None, "pgid": None, "start_time": None,
                                  "boot_id": boot_id(), "started_at": time.time(), "exit_code": code,
                                  "signal": None, "finished_at": time.time(), "error": detail})
        append_event(self.paths, "exec_failed", exit_code=code, detail=detail)
        touch_wakeup(self.root)

    # -- watch ----------------------------------------------------------------------------------
    def _watch(self) -> None:
        """Pump logs, reap children, fence and stop, until the main process exited and its group is gone."""
        poller = select.poll()
        for fd in self.pipes:
            poller.register(fd, select.POLLIN | select.POLLHUP | select.POLLERR)
        if self.wake_r >= 0:
            poller.register(self.wake_r, select.POLLIN)
        lease = LeaseWatch(self.paths.lease, self.spec["lease_ttl"]) if self.spec["lease_ttl"] > 0 else None
        while True:
            self._pump(poller, poller.poll(TICK_MS))
            self._reap()
            if lease is not None and self.kill_sent_at is None and self.exit_status is None and lease.expired():
                self._fence(lease)
            if self.terminate_reason and self.kill_sent_at is None:
                self._request_kill(self.terminate_reason)
            if self.exit_status is not None:
                if not group_members(self.pid):
                    return
                if self.kill_sent_at is None:
                    self._request_kill("the main process exited; stopping the rest of its process group")
            self._escalate()

    def _pump(self, poller, ready) -> None:
        for fd, _ in ready:
            if fd == self.wake_r:
                with suppress(OSError):
                    os.read(fd, 4096)
                continue
            if fd not in self.pipes:
                continue
            stream = self.pipes[fd]
            try:
                data = os.read(fd, 65536)
            except BlockingIOError:
                continue
            if data:
                self.logs[stream].write(data)
            else:
                poller.unregister(fd)
                os.close(fd)
                del self.pipes[fd]

    def _drain(self, timeout: float) -> None:
        """Read what is left in the pipes (bounded: a process that left the group may hold them)."""
        deadline = time.monotonic() + timeout
        poller = select.poll()
        for fd in self.pipes:
            poller.register(fd, select.POLLIN | select.POLLHUP | select.POLLERR)
        while self.pipes and time.monotonic() < deadline:
            self._pump(poller, poller.poll(TICK_MS))
        for fd in self.pipes:
            os.close(fd)
        self.pipes.clear()
        for log in self.logs.values():
            log.close()

    def _reap(self) -> None:
        """Reap every exited child (the workload and orphans we are the subreaper of)."""
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            if pid == self.pid and self.exit_status is None:
                self.exit_status, self.finished_at = status, time.time()

    def _fence(self, lease: LeaseWatch) -> None:
        self.fenced = True
        age = lease.age()
        append_event(self.paths, "fenced", lease_ttl=lease.ttl, lease_age=round(age, 3),
                     detail=f"lease not renewed for {age:.1f} s (ttl {lease.ttl:g} s); stopping the workload")
        self._request_kill("lease expired")

    def _request_kill(self, reason: str) -> None:
        """Signal the workload's group with the stop signal; SIGKILL follows after stop_timeout."""
        self.kill_sent_at, self.kill_reason = time.monotonic(), reason
        sig = self.spec["stop_signal"]
        if signal_group(self.pid, sig):
            append_event(self.paths, "signal_sent", signal=signal_name(sig), reason=reason, pgid=self.pid)

    def _escalate(self) -> None:
        if self.kill_sent_at is None or self.escalated:
            return
        if time.monotonic() - self.kill_sent_at >= self.spec["stop_timeout"] and group_members(self.pid):
            self.escalated = True
            signal_group(self.pid, signal.SIGKILL)
            append_event(self.paths, "killed", signal="SIGKILL", pgid=self.pid,
                         reason=f"still running {self.spec['stop_timeout']:g} s after {self.kill_reason}")

    # -- record ---------------------------------------------------------------------------------
    def _record_exit(self) -> None:
        status = self.exit_status or 0
        code = os.WEXITSTATUS(status) if os.WIFEXITED(status) else None
        sig = os.WTERMSIG(status) if os.WIFSIGNALED(status) else None
        dropped = sum(log.dropped for log in self.logs.values())
        state = read_state(self.paths)
        if self.fenced:
            outcome = "fenced"
        elif state.get("stop_requested") or self.terminate_reason:
            outcome = "stopped"
        else:
            outcome = "exited"
        changes = {"status": outcome, "exit_code": code, "signal": sig, "finished_at": self.finished_at or time.time()}
        if self.terminate_reason:
            changes["stop_requested"] = True
        update_state(self.paths, changes)
        fields = {"status": outcome, "exit_code": code, "signal": sig, "pid": self.pid}
        if dropped:
            fields["log_bytes_dropped"] = dropped
        append_event(self.paths, "exited", **fields)
        touch_wakeup(self.root)


def spawn(argv: list, cwd: str, env: dict) -> tuple:
    """Start argv in its own session (setsid: its pid is its process group), stdin /dev/null, stdout
    and stderr on pipes; (pid, stdout fd, stderr fd). What subprocess.Popen(start_new_session=True,
    close_fds=True, restore_signals=True) does, without importing subprocess (~15 ms of CPU per launch).

    Raises:
        OSError: argv could not be executed (or cwd entered), with the child's errno.
    """
    out_r, out_w = os.pipe()  # every descriptor os.pipe makes is close-on-exec
    err_r, err_w = os.pipe()
    report_r, report_w = os.pipe()  # the child's exec error, or EOF at a successful exec
    pid = os.fork()
    if pid == 0:  # the child: only async-signal-safe habits until exec (one thread, nothing shared)
        try:
            exec_detached(argv, cwd, env, out_w, err_w, keep=report_w)
        except OSError as exc:
            os.write(report_w, f"{exc.errno or 0}:{exc.strerror or exc}".encode("utf-8", "replace"))
        except BaseException as exc:  # noqa: BLE001 - never return into the supervisor
            os.write(report_w, f"0:{type(exc).__name__}: {exc}".encode("utf-8", "replace"))
        finally:
            os._exit(127)
    for fd in (out_w, err_w, report_w):
        os.close(fd)
    report = read_to_end(report_r)
    if report:
        os.close(out_r)
        os.close(err_r)
        os.waitpid(pid, 0)
        number, _, text = report.decode("utf-8", "replace").partition(":")
        raise OSError(int(number) if number.isdigit() else 0, text)
    return pid, out_r, err_r


def parse_args(argv: list) -> tuple:
    """(root, alloc_id, launch) of `--root ROOT [--launch N] ALLOC_ID` (launch: FLEX_LAUNCH, default 0),
    the command line nodectl builds; argparse (with gettext and locale) would add ~5 ms to every launch.

    Raises:
        ValueError: any other command line.
    """
    options, positional, rest = {"--root": None, "--launch": "0"}, [], list(argv)
    while rest:
        arg = rest.pop(0)
        if arg in options and rest:
            options[arg] = rest.pop(0)
        else:
            positional.append(arg)
    if options["--root"] is None or len(positional) != 1 or not options["--launch"].isdigit():
        raise ValueError("usage: supervisor.py --root ROOT [--launch N] ALLOC_ID")
    return options["--root"], positional[0], int(options["--launch"])


def main(argv=None) -> int:
    """Entry point; a crash is recorded in state.json and events before the supervisor exits."""
    try:
        root, alloc_id, launch = parse_args(sys.argv[1:] if argv is None else argv)
    except ValueError as exc:
        sys.stderr.write(f"{exc}\n")
        return 2
    sup = Supervisor(root, alloc_id, launch)
    try:
        return sup.run()
    except Exception as exc:  # record any crash, then let the traceback reach supervisor.log
        detail = f"supervisor failed: {type(exc).__name__}: {getattr(exc, 'message', exc)}"
        if sup.pid:
            signal_group(sup.pid, signal.SIGKILL)
        try:
            update_state(sup.paths, {"status": "exited", "error": detail, "finished_at": time.time()})
            append_event(sup.paths, "supervisor_error", detail=detail)
            touch_wakeup(sup.root)
        finally:
            sys.stderr.write(detail + "\n")
        raise


if __name__ == "__main__":
    sys.exit(main())
