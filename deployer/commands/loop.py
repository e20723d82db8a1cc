"""Driving the reconcile loop from a CLI verb: run it here when no controller runs, else wait for the
running one, until the verb's goal is reached or time runs out. Used by `flex push` and `--wait`."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from deployer.commands import emit


async def drive(inventory: Any, store: Any, goal: Callable[[Any], bool], *, timeout: float, settings: Any,
                progress: Callable[[], None]) -> str:
    """Until goal(controller or None) is true or timeout passes; returns how: "ran the loop here" or
    "handed to the running controller". goal gets the in-process controller (None when waiting for
    another), so it can also require that no operation is in flight."""
    import asyncio

    from deployer.controller import Controller, ControllerBusy, live_lease_holder

    deadline = time.monotonic() + timeout
    while True:
        if live_lease_holder(store) is None:  # nobody runs the loop: run it here, at least one full pass
            try:
                async with Controller(inventory, store, settings) as controller:
                    controller.wait_on_close = False  # the CLI exits after its report
                    await controller.run(until=lambda: _tick(progress) or time.monotonic() > deadline
                                         or goal(controller))
                    return "ran the loop here"
            except ControllerBusy:
                pass  # one started meanwhile: wait for it
        progress()
        if goal(None) or time.monotonic() > deadline:
            return "handed to the running controller"
        await asyncio.sleep(0.2)


def _tick(progress: Callable[[], None]) -> bool:
    progress()
    return False


class EventPrinter:
    """Prints the controller's events as they are recorded (progress per host and job); a callable."""

    def __init__(self, store: Any, after: int, quiet: bool, jobs: set[str] | None = None) -> None:
        self.store, self.after, self.quiet, self.jobs = store, after, quiet, jobs

    def __call__(self) -> None:
        for event in self.store.events(after_seq=self.after, limit=500):
            self.after = event.seq
            if self.quiet or event.kind == "submitted" or (self.jobs and event.job and event.job not in self.jobs):
                continue
            where = event.node or "-"
            emit(f"  {where:<12} {(event.alloc or event.job or ''):<24} {event.kind:<10} {event.message}")
