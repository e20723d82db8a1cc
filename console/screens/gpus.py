"""GPUs: one row per GPU across the fleet (or of one node): utilization bar and history on a fixed
0-100 scale, memory, temperature, power, ECC, and who holds it; unowned processes flagged."""

from __future__ import annotations

from collections.abc import Sequence

from textual.binding import Binding

from console.screens.base import TableScreen
from console.tables import GPU_COLUMNS, TableRow, Tables


class GpusScreen(TableScreen):
    """Every GPU (or one node's); Enter opens the holding allocation; c/u cordon a GPU, d drains its node."""

    COLUMNS = GPU_COLUMNS
    NOUNS = {"cordon": "GPU", "uncordon": "GPU", "drain": "node", "restart": "allocation"}
    HELP_EXTRA = [("enter", "the allocation holding the GPU")]
    BINDINGS = [
        Binding("c", "act('cordon')", "cordon GPU"),
        Binding("u", "act('uncordon')", "uncordon GPU"),
        Binding("d", "act('drain')", "drain node"),
        Binding("r", "act('restart')", "restart holder"),
    ]

    def __init__(self, node: str | None = None) -> None:
        super().__init__()
        self.node = node
        self.view_title = f"GPUs of {node}" if node else "GPUs"

    def rows(self, tables: Tables) -> Sequence[TableRow]:
        if self.node is None:
            return tables.gpus
        return [r for r in tables.gpus if r.extra.get("node") == self.node]

    def open_row(self, row: TableRow) -> None:
        alloc = row.targets.get("restart")
        if not alloc:
            self.show_status(f"{row.key}: no allocation holds it")
            return
        from console.screens.alloc import AllocScreen

        self.app.push_screen(AllocScreen(alloc))
