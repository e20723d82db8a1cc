"""How the Fleet, GPUs and Jobs views look at 80x24 and 160x50, from the fixed fleet and its fixed
clock (tests/console/fakes.py): SVG baselines in __snapshots__/, made with `pytest --snapshot-update`."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from textual.pilot import Pilot

from console.app import FlexConsole
from tests.console.fakes import FakeSource

VIEWS = {"fleet": "1", "gpus": "2", "jobs": "3"}
SIZES = [(80, 24), (160, 50)]


@pytest.mark.parametrize("size", SIZES, ids=[f"{w}x{h}" for w, h in SIZES])
@pytest.mark.parametrize("view", list(VIEWS))
def test_view_looks_the_same(snap_compare: Any, view: str, size: tuple[int, int]) -> None:
    source = FakeSource()
    app = FlexConsole(source, interval=0.05)

    async def first_model(pilot: Pilot[Any]) -> None:
        for _ in range(250):
            if app.updates:
                break
            await asyncio.sleep(0.02)
        await pilot.press(VIEWS[view])
        await pilot.pause()

    try:
        assert snap_compare(app, terminal_size=size, run_before=first_model)
    finally:
        source.stop()
