"""nodecli.py: the verbs of the flex node runtime behind its entry point flexnode.py (python3 3.8+, stdlib only).

    python3 flexnode.py [--root ROOT] VERB ...

Every verb prints ONE JSON document on stdout ({"ok": true, ...}) and exits 0, or prints
{"ok": false, "error": "...", "code": "..."} and exits non-zero (2: bad arguments, ids or spec;
124: the verb's own deadline passed; 1: anything else). Every one-shot verb is bounded in time by an
alarm. `probe --stream` and `logs --follow` print one JSON document per line until the workload ends
(logs) or the channel ends: stdin closes, the parent process changes, or stdout breaks (EPIPE).

ROOT is --root, else $FLEX_ROOT, else derived from where this file lives (<root>/runtime/<version>/).
Layout on the node:

    <root>/runtime/<version>/   flexnode.py nodecli.py supervisor.py nodeprobe.py nodectl.py nodecommon.py
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
    supervise ID [--launch N]         the allocation's supervisor, in the foreground (what `start` runs
                                      detached: forked, then exec'd as this command line, so `ps` says
                                      what it is); prints nothing
"""

from __future__ import annotations

import os
import sys
import time

try:  # without the signal module's enums (see nodeproc)
    import _signal as signal
except ImportError:  # pragma: no cover
    import signal

from nodecommon import VERSION, AllocPaths, ChannelWatch, NodeError, check_alloc_id, print_json

HERE = os.path.dirname(os.path.abspath(__file__))


def _flag(text):
    return True


# verb: (positional names, a trailing "*" or "+" for a list; options: --name -> (attribute, type, default)).
# A table and a loop rather than argparse, whose import (re, gettext, locale) and parser building
# cost ~10 ms of CPU on every verb of every node.
VERBS = {
    "start": (("alloc_id",), {"--wait": ("wait", float, 2.0), "--files": ("files", _flag, False)}),
    "stop": (("alloc_id",), {"--timeout": ("timeout", float, None), "--signal": ("signal", str, None)}),
    "status": (("alloc_ids*",), {}),
    "probe": ((), {"--stream": ("stream", _flag, False), "--interval": ("interval", float, 2.0),
                   "--count": ("count", int, 0), "--duration": ("duration", float, 0.0),
                   "--no-health": ("no_health", _flag, False), "--ignore-stdin": ("ignore_stdin", _flag, False)}),
    "renew": (("alloc_ids+",), {}),
    "logs": (("alloc_id",), {"--stream": ("log_stream", str, "stdout"), "--previous": ("previous", _flag, False),
                             "--follow": ("follow", _flag, False), "--tail": ("tail", int, 200),
                             "--ignore-stdin": ("ignore_stdin", _flag, False)}),
    "gc": (("alloc_id",), {}),
    "kill-orphan": (("alloc_id", "pgid:int"), {"--timeout": ("timeout", float, 10.0), "--signal": ("signal", str, None)}),
    "version": ((), {}),
    "supervise": (("alloc_id",), {"--launch": ("launch", int, 0)}),
}
LOG_STREAMS = ("stdout", "stderr")


class Args:
    """The parsed command line: verb, root and the verb's attributes (see VERBS)."""

    def __init__(self, verb: str, root) -> None:
        self.verb = verb
        self.root = root


def _usage(message: str) -> NodeError:
    return NodeError(f"flexnode.py: {message} (see flexnode.py --help)", code="usage", exit_status=2)


def parse_args(argv) -> Args:
    """`[--root ROOT] VERB ...` as VERBS describes it; NodeError (usage, exit 2) for anything else."""
    rest = list(argv)
    root = None
    while rest and rest[0].startswith("--root"):
        name, eq, value = rest.pop(0).partition("=")
        if name != "--root" or not (eq or rest):
            raise _usage(f"unknown option {name}")
        root = value if eq else rest.pop(0)
    if not rest or rest[0] not in VERBS:
        raise _usage(f"a verb is required: {', '.join(VERBS)}" if not rest else f"unknown verb {rest[0]!r}")
    verb = rest.pop(0)
    names, options = VERBS[verb]
    args = Args(verb, root)
    for attribute, _, default in options.values():
        setattr(args, attribute, default)
    positional = []
    while rest:
        arg = rest.pop(0)
        if arg == "--":  # the rest is positional
            positional += rest
            rest = []
            continue
        if not arg.startswith("--"):
            positional.append(arg)
            continue
        name, eq, value = arg.partition("=")
        if name == "--root" and (eq or rest):
            args.root = value if eq else rest.pop(0)
            continue
        if name not in options:
            raise _usage(f"{verb}: unknown option {name}")
        attribute, kind, _ = options[name]
        if kind is _flag:
            if eq:
                raise _usage(f"{verb}: {name} takes no value")
            setattr(args, attribute, True)
            continue
        if not eq:
            if not rest:
                raise _usage(f"{verb}: {name} needs a value")
            value = rest.pop(0)
        try:
            setattr(args, attribute, kind(value))
        except ValueError:
            raise _usage(f"{verb}: {name}: not a {kind.__name__}: {value!r}") from None
    for name in names:
        if name.endswith(("*", "+")):
            if name.endswith("+") and not positional:
                raise _usage(f"{verb}: at least one {name[:-1].rstrip('s')} is required")
            setattr(args, name[:-1], positional)
            positional = []
            continue
        attribute, _, kind = name.partition(":")
        if not positional:
            raise _usage(f"{verb}: {attribute} is required")
        value = positional.pop(0)
        if kind == "int":
            try:
                value = int(value)
            except ValueError:
                raise _usage(f"{verb}: {attribute}: not an integer: {value!r}") from None
        setattr(args, attribute, value)
    if positional:
        raise _usage(f"{verb}: unexpected argument {positional[0]!r}")
    if verb == "logs" and args.log_stream not in LOG_STREAMS:
        raise _usage(f"logs: --stream must be one of {', '.join(LOG_STREAMS)}")
    return args


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
    if args.verb == "probe" and args.stream or args.verb == "logs" and args.follow or args.verb == "supervise":
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
        print_json(start(root, args, sys.stdin.buffer))
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
    elif args.verb == "supervise":  # what `start` runs, detached: the allocation's supervisor in this process
        import supervisor
        return supervisor.main(["--root", root, "--launch", str(args.launch), args.alloc_id])
    else:
        print_json({"ok": True, "version": VERSION, "dir": HERE, "python": ".".join(map(str, sys.version_info[:3]))})
    return 0


def start(root: str, args, stdin) -> dict:
    """The start verb's document; with --files the allocation's files are first placed from stdin
    (a new allocation: its files and its start in one process and one round trip)."""
    import nodectl
    check_alloc_id(args.alloc_id)
    if args.files:
        import nodewrite
        try:
            nodewrite.write_batch(stdin)
        except nodewrite.WriteFailed as exc:
            raise NodeError(f"allocation {args.alloc_id}: its files were not placed: {exc}", code="write",
                            phase=exc.doc["phase"], path=exc.doc["path"], errno=exc.doc["errno"]) from None
        except ValueError as exc:  # not nodewrite's format: nothing was written
            raise NodeError(f"allocation {args.alloc_id}: unreadable files on stdin: {exc}", code="write",
                            phase="read", path=None, errno=0) from None
    return nodectl.start(root, args.alloc_id, args.wait)


# verbs a probe stream serves from its stdin: quick ones only (the stream prints no document meanwhile)
STREAM_VERBS = ("start",)


def serve_request(root: str, head: dict, data: bytes) -> dict:
    """A probe stream's answer to one request read from its stdin (see ChannelWatch):
    {"reply": CALL, "doc": the verb's document}. The launch of a new allocation needs no interpreter
    and no SSH channel of its own this way (the supervisor is forked from this process, then exec'd)."""
    call = head.get("call")
    try:
        argv = head.get("argv")
        if "bad" in head or not isinstance(argv, list) or not argv or argv[0] not in STREAM_VERBS \
                or not all(isinstance(a, str) for a in argv):
            raise NodeError(f"not a request this stream serves: {head.get('bad') or argv!r} (it serves "
                            f"{', '.join(STREAM_VERBS)})", code="usage", exit_status=2)
        import io
        doc = start(root, parse_args(["--root", root, *argv]), io.BytesIO(data))
    except NodeError as exc:
        doc = exc.to_json()
    except Exception as exc:  # noqa: BLE001 - one failed request must not end the stream
        doc = internal_error(exc)
    return {"reply": call, "doc": doc}


def internal_error(exc: Exception) -> dict:
    """The document of a failure nobody foresaw; its traceback goes to stderr (a traceback is never
    the answer, but whoever reads the node's stderr or supervisor.log needs it)."""
    import traceback  # only on this path: 3-5 ms of import on every verb otherwise
    traceback.print_exc()
    return {"ok": False, "error": f"internal error: {type(exc).__name__}: {exc}", "code": "internal"}


def probe(root: str, args) -> int:
    """One document, or the stream."""
    import nodeprobe
    if args.stream:
        if args.interval <= 0:
            raise NodeError("--interval must be > 0", code="usage", exit_status=2)
        watch = ChannelWatch(watch_stdin=not args.ignore_stdin, max_seconds=args.duration)
        return nodeprobe.stream(root, args.interval, watch, args.count, health=not args.no_health,
                                serve=lambda head, data: serve_request(root, head, data))
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
        argv = sys.argv[1:] if argv is None else argv
        if argv[:1] in (["-h"], ["--help"], ["help"]):
            sys.stdout.write(__doc__)
            return 0
        args = parse_args(argv)
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
        _emit_error(internal_error(exc))
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
