"""Jobs (kind, counts, health, restarts, next cron run, why pending), and one job's allocations."""

from __future__ import annotations

from collections.abc import Sequence

from textual.binding import Binding

from console.screens.base import TableScreen
from console.tables import ALLOC_COLUMNS, JOB_COLUMNS, TableRow, Tables


class JobsScreen(TableScreen):
    """Every job; Enter shows its allocations; r restarts, s stops."""

    view_title = "Jobs"
    COLUMNS = JOB_COLUMNS
    NOUNS = {"restart": "job", "stop": "job"}
    HELP_EXTRA = [("enter", "the job's allocations")]
    BINDINGS = [
        Binding("r", "act('restart')", "restart job"),
        Binding("s", "act('stop')", "stop job"),
    ]

    def rows(self, tables: Tables) -> Sequence[TableRow]:
        return tables.jobs

    def open_row(self, row: TableRow) -> None:
        self.app.push_screen(AllocsScreen(job=row.key))


class AllocsScreen(TableScreen):
    """Allocations (of one job, or all): Enter shows one; r restarts it, s stops its job, l its logs."""

    COLUMNS = ALLOC_COLUMNS
    NOUNS = {"restart": "allocation", "stop": "job"}
    HELP_EXTRA = [("enter", "the allocation's detail")]
    BINDINGS = [
        Binding("r", "act('restart')", "restart allocation"),
        Binding("s", "act('stop')", "stop job"),
        Binding("l", "logs", "logs"),
    ]

    def __init__(self, job: str | None = None) -> None:
        super().__init__()
        self.job = job
        self.view_title = f"Jobs › {job}" if job else "Allocations"

    def rows(self, tables: Tables) -> Sequence[TableRow]:
        if self.job is None:
            return tables.allocations
        return [r for r in tables.allocations if r.extra.get("job") == self.job]

    def open_row(self, row: TableRow) -> None:
        from console.screens.alloc import AllocScreen

        self.app.push_screen(AllocScreen(row.key))

    def action_logs(self) -> None:
        """l: the logs of the allocation under the cursor."""
        row = self.table.cursor_row_data
        if row is None:
            self.show_status("no allocation here")
            return
        from console.screens.logs import LogScreen

        self.app.push_screen(LogScreen(row.key))
