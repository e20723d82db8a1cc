"""Events: the controller's timeline, newest first (placements, exits, restarts, lost nodes, intents)."""

from __future__ import annotations

from collections.abc import Sequence

from console.screens.base import TableScreen
from console.tables import EVENT_COLUMNS, TableRow, Tables


class EventsScreen(TableScreen):
    """The timeline; Enter opens the event's allocation (or its job's allocations)."""

    view_title = "Events"
    COLUMNS = EVENT_COLUMNS
    HELP_EXTRA = [("enter", "the event's allocation or job")]

    def rows(self, tables: Tables) -> Sequence[TableRow]:
        return tables.events

    def open_row(self, row: TableRow) -> None:
        alloc, job = row.extra.get("alloc", "n/a"), row.extra.get("job", "n/a")
        if alloc != "n/a":
            from console.screens.alloc import AllocScreen

            self.app.push_screen(AllocScreen(alloc))
        elif job != "n/a":
            from console.screens.jobs import AllocsScreen

            self.app.push_screen(AllocsScreen(job=job))
