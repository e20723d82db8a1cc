"""flexnode.py: the single entry point of the flex node runtime (python3 3.8+, stdlib only).

    python3 flexnode.py [--root ROOT] VERB ...

Every verb prints ONE JSON document on stdout ({"ok": true, ...}) and exits 0, or prints
{"ok": false, "error": "...", "code": "..."} and exits non-zero (2: bad arguments, ids or spec;
124: the verb's own deadline passed; 1: anything else). Every one-shot verb is bounded in time by an
alarm. `probe --stream` and `logs --follow` print one JSON document per line until the workload ends
(logs) or the channel ends: stdin closes, the parent process changes, or stdout breaks (EPIPE).

ROOT is --root, else $FLEX_ROOT, else derived from where this file lives (<root>/runtime/<version>/).
Layout on the node:

    <root>/runtime/<version>/   flexnode.py supervisor.py nodeprobe.py nodectl.py nodecommon.py
                                nodeproc.py nodespec.py nodelogs.py nodehealth.py nvml.py pynvml.py
    <root>/wakeup               rewritten (new inode) on every allocation state change; streams poll it
    <root>/allocs/<alloc_id>/   one directory per allocation (id: [A-Za-z0-9][A-Za-z0-9_.-]{0,127})
        spec.json               pushed by the controller, no secrets (see nodespec.py for the keys)
        env.secret              0600 JSON {NAME: "value"}; read by the supervisor, never in argv or ps
        lease                   rewritten by `renew` (or the controller); any content change renews
        state.json              atomic (temp + fsync + rename): alloc_id, status
                                (starting|running|exited|stopped|fenced), pid, pgid, start_time
                                (/proc/<pid>/stat field 22, ticks since boot, as a string), boot_id,
                                started_at, finished_at, exit_code, signal, restarts (launches into
                                this directory), generation (spec.json's restart generation at the
                                launch), stop_requested, supervisor_pid, supervisor_start_time,
                                requested_at, error
        stdout.log stderr.log   size-capped (spec log_max_bytes), rotated to *.log.1
        stdout.prev.log ...     the previous run's logs (`logs --previous`)
        events.jsonl            append-only {ts (node wall clock), alloc_id, event, ...}
        health.json             last health result {ok, detail, checked_at, failures, last_ok_at}
        supervisor.log          the supervisor's own stderr (tracebacks only)
        .lock                   flock serializing start, stop, gc and state writes

Identity of a workload is (boot_id, pid, start_time): a reused pid or a reboot is not the workload.

Verbs (VIEW = an allocation's view, see nodectl.py: alloc_id, status, stored_status, alive,
supervisor_alive, pid, pgid, start_time, boot_id, started_at, finished_at, exit_code, signal,
restarts, generation, stop_requested, supervisor_pid, error):
    start ID [--wait S] [--files]     VIEW + ok, already_running, confirmed (pid recorded in time);
                                      --files: first place the files on stdin (nodewrite.py)
    stop ID [--timeout S] [--signal SIG]
                                      VIEW + ok, was_running, stop_signal, escalated, left
    status [ID...]                    ok, time, boot_id, allocations {ID: VIEW + health}
    probe [--no-health]               see nodeprobe.py
    probe --stream [--interval S] [--count N] [--duration S] [--no-health] [--ignore-stdin]
    renew ID...                       ok, time, renewed [ID], missing [ID]
    logs ID [--stream stdout|stderr] [--previous] [--tail N]
                                      ok, alloc_id, stream, previous, lines
    logs ID --follow [...]            that document, then {lines} per batch, then
                                      {end: true, reason, status, exit_code, signal}
    gc ID                             ok, alloc_id, removed, status
    kill-orphan ID PGID [--timeout S] [--signal SIG]
                                      ok, alloc_id, pgid, killed [pid], escalated, left [pid]
    version                           ok, version, dir, python
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time

from nodecommon import VERSION, AllocPaths, ChannelWatch, NodeError, print_json

HERE = os.path.dirname(os.path.abspath(__file__))


class _Parser(argparse.ArgumentParser):
    """argparse that raises NodeError (usage, exit 2) instead of printing and exiting."""

    def error(self, message):
        raise NodeError(f"{self.prog}: {message}", code="usage", exit_status=2)


def build_parser() -> argparse.ArgumentParser:
    """The verbs and their options."""
    parser = _Parser(prog="flexnode.py", description="flex node runtime")
    parser.add_argument("--root", help="flex root (default: $FLEX_ROOT or derived from this file's place)")
    verbs = parser.add_subparsers(dest="verb", parser_class=_Parser)
    verbs.required = True
    start = verbs.add_parser("start", help="start an allocation (idempotent)")
    start.add_argument("alloc_id")
    start.add_argument("--wait", type=float, default=2.0, help="seconds to wait for the workload pid")
    start.add_argument("--files", action="store_true",
                       help="first place the allocation's files from stdin (nodewrite.py's format)")
    stop = verbs.add_parser("stop", help="stop an allocation's whole process group (idempotent)")
    stop.add_argument("alloc_id")
    stop.add_argument("--timeout", type=float, help="seconds before SIGKILL (default: the spec's)")
    stop.add_argument("--signal", help="first signal (default: the spec's stop_signal)")
    status = verbs.add_parser("status", help="allocation states")
    status.add_argument("alloc_ids", nargs="*")
    probe = verbs.add_parser("probe", help="node, GPU and allocation document")
    probe.add_argument("--stream", action="store_true", help="keep emitting documents, one per line")
    probe.add_argument("--interval", type=float, default=2.0)
    probe.add_argument("--count", type=int, default=0, help="stop after N documents (0: no limit)")
    probe.add_argument("--duration", type=float, default=0.0, help="stop after S seconds (0: no limit)")
    probe.add_argument("--no-health", action="store_true", help="do not run health checks")
    probe.add_argument("--ignore-stdin", action="store_true", help="stream: do not end when stdin closes")
    renew = verbs.add_parser("renew", help="renew the leases of allocations")
    renew.add_argument("alloc_ids", nargs="+")
    logs = verbs.add_parser("logs", help="an allocation's logs")
    logs.add_argument("alloc_id")
    logs.add_argument("--stream", dest="log_stream", choices=("stdout", "stderr"), default="stdout")
    logs.add_argument("--previous", action="store_true", help="the previous run's logs")
    logs.add_argument("--follow", action="store_true", help="keep printing until the workload ends")
    logs.add_argument("--tail", type=int, default=200, help="last N lines (0: all that is kept)")
    logs.add_argument("--ignore-stdin", action="store_true", help="follow: do not end when stdin closes")
    gc = verbs.add_parser("gc", help="remove a stopped allocation's directory")
    gc.add_argument("alloc_id")
    orphan = verbs.add_parser("kill-orphan", help="stop an orphaned flex-labelled process group")
    orphan.add_argument("alloc_id")
    orphan.add_argument("pgid", type=int)
    orphan.add_argument("--timeout", type=float, default=10.0, help="seconds before SIGKILL")
    orphan.add_argument("--signal", help="first signal (default SIGTERM)")
    verbs.add_parser("version", help="runtime version")
    return parser


def resolve_root(explicit) -> str:
    """--root, $FLEX_ROOT, or <root> when this file lives in <root>/runtime/<version>/."""
    root = explicit or os.environ.get("FLEX_ROOT")
    if not root:
        parent = os.path.dirname(HERE)
        if os.path.basename(parent) != "runtime":
            raise NodeError("no flex root: pass --root or set FLEX_ROOT", code="usage", exit_status=2)
        root = os.path.dirname(parent)
    return os.path.abspath(root)


def deadline_for(args) -> float:
    """Seconds after which a one-shot verb gives up (0: no alarm, for streams and follow)."""
    if args.verb == "probe" and args.stream or args.verb == "logs" and args.follow:
        return 0
    if args.verb == "start":
        return args.wait + (620 if args.files else 20)
    if args.verb in ("stop", "kill-orphan"):
        return (args.timeout if args.timeout is not None else 600) + 20
    return 60


def _on_alarm(signum, frame):
    raise NodeError("flexnode.py did not finish within its deadline", code="timeout", exit_status=124)


def run(args) -> int:
    """Dispatch one verb; returns the exit status."""
    root = resolve_root(args.root)
    import nodectl
    if args.verb == "start":
        if args.files:  # a new allocation: its files and its start in one process and one round trip
            import nodewrite
            try:
                nodewrite.write_batch(sys.stdin.buffer)
            except nodewrite.WriteFailed as exc:
                raise NodeError(f"allocation {args.alloc_id}: its files were not placed: {exc}", code="write",
                                phase=exc.doc["phase"], path=exc.doc["path"], errno=exc.doc["errno"]) from None
        print_json(nodectl.start(root, args.alloc_id, args.wait))
    elif args.verb == "stop":
        print_json(nodectl.stop(root, args.alloc_id, args.timeout, args.signal))
    elif args.verb == "status":
        print_json(nodectl.status(root, args.alloc_ids))
    elif args.verb == "renew":
        print_json(nodectl.renew(root, args.alloc_ids))
    elif args.verb == "gc":
        print_json(nodectl.gc(root, args.alloc_id))
    elif args.verb == "kill-orphan":
        print_json(nodectl.kill_orphan(root, args.alloc_id, args.pgid, args.timeout, args.signal))
    elif args.verb == "logs":
        return logs(root, args)
    elif args.verb == "probe":
        return probe(root, args)
    else:
        print_json({"ok": True, "version": VERSION, "dir": HERE, "python": ".".join(map(str, sys.version_info[:3]))})
    return 0


def probe(root: str, args) -> int:
    """One document, or the stream."""
    import nodeprobe
    if args.stream:
        if args.interval <= 0:
            raise NodeError("--interval must be > 0", code="usage", exit_status=2)
        watch = ChannelWatch(watch_stdin=not args.ignore_stdin, max_seconds=args.duration)
        return nodeprobe.stream(root, args.interval, watch, args.count, health=not args.no_health)
    print_json(nodeprobe.probe_document(root, nodeprobe.GpuCollector(), health=not args.no_health))
    return 0


def logs(root: str, args) -> int:
    """Print a log tail; with --follow, batches of new lines until the workload ends, then an end line."""
    import nodectl
    import nodelogs
    paths = AllocPaths(root, args.alloc_id)
    if not paths.exists():
        raise NodeError(f"allocation {args.alloc_id} does not exist", code="no_alloc")
    head = {"ok": True, "alloc_id": args.alloc_id, "stream": args.log_stream, "previous": args.previous}
    if not args.follow or args.previous:
        head["lines"] = nodelogs.tail_lines(paths, args.log_stream, args.tail, args.previous)
        print_json(head)
        return 0
    follower = nodelogs.Follower(paths.log(args.log_stream))
    head["lines"] = follower.open_at_end(args.tail)
    print_json(head)
    watch = ChannelWatch(watch_stdin=not args.ignore_stdin)
    while True:
        reason = watch.reason(100)
        view = nodectl.alloc_view(paths)
        ended = view["status"] not in ("starting", "running")
        lines = follower.read() + (follower.flush() if ended or reason else [])
        if lines:
            print_json({"lines": lines})
        if ended or reason:
            why = f"workload {view['status']}" if ended else reason
            print_json({"end": True, "reason": why, "status": view["status"],
                        "exit_code": view.get("exit_code"), "signal": view.get("signal")})
            return 0


def main(argv=None) -> int:
    """Parse, run under an alarm, and turn every failure into a JSON error document."""
    try:
        args = build_parser().parse_args(argv)
        seconds = deadline_for(args)
        if seconds:
            signal.signal(signal.SIGALRM, _on_alarm)
            signal.alarm(int(seconds) + 1)
        return run(args)
    except NodeError as exc:
        _emit_error(exc.to_json())
        return exc.exit_status
    except BrokenPipeError:
        _silence_stdout()
        return 0
    except Exception as exc:  # noqa: BLE001 - a traceback is never the answer; stderr keeps it
        import traceback  # only on this path: 3-5 ms of import on every verb otherwise
        traceback.print_exc()
        _emit_error({"ok": False, "error": f"internal error: {type(exc).__name__}: {exc}",
                     "code": "internal"})
        return 1


def _emit_error(doc: dict) -> None:
    doc.setdefault("time", time.time())
    try:
        print_json(doc)
    except BrokenPipeError:
        _silence_stdout()


def _silence_stdout() -> None:
    """After EPIPE, point stdout at /dev/null so the interpreter's final flush cannot fail again."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except OSError:
        pass


if __name__ == "__main__":
    sys.exit(main())
