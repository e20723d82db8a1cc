"""Fleet: one row per node (state, load, cpu, memory, GPUs, allocations, SSH round-trip, last seen)."""

from __future__ import annotations

from collections.abc import Sequence

from textual.binding import Binding

from console.screens.base import TableScreen
from console.tables import NODE_COLUMNS, TableRow, Tables


class FleetScreen(TableScreen):
    """Every node; Enter shows its GPUs; d drain, c cordon, u uncordon."""

    view_title = "Fleet"
    COLUMNS = NODE_COLUMNS
    NOUNS = {"drain": "node", "cordon": "node", "uncordon": "node"}
    HELP_EXTRA = [("enter", "the node's GPUs")]
    BINDINGS = [
        Binding("d", "act('drain')", "drain"),
        Binding("c", "act('cordon')", "cordon"),
        Binding("u", "act('uncordon')", "uncordon"),
    ]

    def rows(self, tables: Tables) -> Sequence[TableRow]:
        return tables.nodes

    def open_row(self, row: TableRow) -> None:
        from console.screens.gpus import GpusScreen

        self.app.push_screen(GpusScreen(node=row.key))
