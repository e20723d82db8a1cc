"""`flex events [INVENTORY] [-f] [--job JOB] [-n N]`: the event log of the state database, oldest first.

Reads the store only. `-f` follows the log (polling, like `tail -f`) until Ctrl-C; `--json` prints one
JSON object per event and line (JSON lines), so `flex events -f --json | jq` works.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from datetime import datetime
from typing import TYPE_CHECKING, Any, Callable

from deployer.commands import add_inventory_arguments, emit, open_store

if TYPE_CHECKING:
    from deployer.store import Event, Store

FOLLOW_INTERVAL = 0.2  # seconds between polls with -f


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of `flex events`."""
    add_inventory_arguments(parser)
    parser.add_argument("-f", "--follow", action="store_true", help="keep printing new events until Ctrl-C")
    parser.add_argument("--job", metavar="JOB", default=None, help="only the events of this job")
    parser.add_argument("-n", "--limit", type=int, default=50, metavar="N",
                        help="how many of the latest events to show first (default 50; 0 with -f: only new ones)")


def run(args: argparse.Namespace) -> int:
    """Print the last N events (then new ones with -f; Ctrl-C ends it with exit 0)."""
    from deployer.errors import ConfigError

    if args.limit < 0:
        raise ConfigError(f"--limit {args.limit}: must be 0 or more", fix="pass -n 50, for example")
    show = _printer(args.json)
    store: Store
    with open_store(args) as store:
        last = store.last_event_seq()
        for event in tail(store, args.limit, args.job, last):
            show(event)
        if args.follow:
            try:
                follow(store, last, args.job, show)
            except KeyboardInterrupt:
                pass
    return 0


def tail(store: Store, limit: int, job: str | None, last: int) -> list[Event]:
    """The last `limit` events (of job, when given) with seq <= last, oldest first."""
    span = limit
    while limit > 0:
        after = max(0, last - span)
        events = [e for e in store.events(after_seq=after, limit=last - after, job=job) if e.seq <= last]
        if len(events) >= limit or after == 0:
            return events[-limit:]
        span *= 4  # a job's events are sparse in the log: look further back
    return []


def follow(store: Store, last: int, job: str | None, show: Callable[[Event], None]) -> None:
    """Show every event after seq `last` as it is appended, polling; returns only by an exception."""
    while True:
        for event in store.events(after_seq=last, job=job):
            show(event)
            last = event.seq
        sys.stdout.flush()  # `flex events -f | grep ...` must see each event now, not a buffer later
        time.sleep(FOLLOW_INTERVAL)


def _printer(as_json: bool) -> Callable[[Event], None]:
    def show(event: Event) -> None:
        emit(json.dumps(event_json(event), sort_keys=True) if as_json else render_event(event))

    return show


def local_time(when: float) -> str:
    """A wall-clock time as local ISO 8601 to the second: 2024-05-01T14:03:27."""
    return datetime.fromtimestamp(when).isoformat(timespec="seconds")


def render_event(event: Event) -> str:
    """One event as a line: TIME KIND JOB ALLOC NODE MESSAGE [by ACTOR] ('-' for an absent field)."""
    by = f" [by {event.actor}]" if event.actor else ""
    return (f"{local_time(event.time)} {event.kind:<17} {event.job or '-':<16} {event.alloc or '-':<20} "
            f"{event.node or '-':<12} {event.message}{by}")


def event_json(event: Event) -> dict[str, Any]:
    """An event as a plain JSON object (its fields, plus the local time as text)."""
    from dataclasses import asdict

    return {**asdict(event), "local_time": local_time(event.time)}
