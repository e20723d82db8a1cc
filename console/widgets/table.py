"""KeyedTable: a DataTable that applies a list of TableRows in place, by key.

Each apply adds the new keys, removes the gone ones, updates (update_cell) only the cells whose text or
style changed, re-sorts only when the order changed, and puts the cursor back on the key it was on.
The table is rebuilt (cleared) only when most of it goes at once: a new filter, never a refresh.

A changed row that is scrolled out of view is only marked dirty, and its cells are updated when it
scrolls into view: with 8,000 GPU rows changing every tick, the UI thread pays for the rows it shows
(about a screenful of update_cell calls), not for the whole fleet.
"""

from __future__ import annotations

from collections.abc import Sequence

from rich.cells import cell_len
from rich.text import Text
from textual.binding import Binding
from textual.widgets import DataTable
from textual.coordinate import Coordinate
from textual.widgets.data_table import CellDoesNotExist, RowDoesNotExist

from console.tables import Column, TableRow

REBUILD_AFTER = 64  # removing more rows than this (and a quarter of the table) rebuilds it instead
MARK, NO_MARK = "*", " "

Shown = tuple[tuple[str, ...], tuple[str, ...], str, bool]  # cells, styles, row style, is marked


class KeyedTable(DataTable[Text]):
    """Rows keyed by TableRow.key, updated in place; `marks` holds the keys marked with space."""

    BINDINGS = [
        Binding("j", "cursor_down", "down", show=False),
        Binding("k", "cursor_up", "up", show=False),
        Binding("g", "scroll_top", "top", show=False),
        Binding("G", "scroll_bottom", "bottom", show=False),
    ]

    def __init__(self, columns: Sequence[Column], *, id: str | None = None) -> None:
        super().__init__(id=id, cursor_type="row", zebra_stripes=False, cell_padding=1)
        self.spec = tuple(columns)
        self.marks: set[str] = set()
        self._rows: dict[str, TableRow] = {}
        self._shown: dict[str, Shown] = {}  # what each row should show
        self._synced: dict[str, Shown] = {}  # what the DataTable's cells hold
        self._dirty: set[str] = set()  # rows whose cells lag (out of view)
        self._order: list[str] = []
        self._first: dict[int, str] = {}  # id() of each row's first cell -> its key (for sort)

    def on_mount(self) -> None:
        for column in self.spec:
            self.add_column(column.label, key=column.key)

    @property
    def cursor_key(self) -> str | None:
        """The key of the row under the cursor, or None when the table is empty."""
        if not self._order or not self.is_valid_row_index(self.cursor_row):
            return None
        try:
            return self.coordinate_to_cell_key(self.cursor_coordinate).row_key.value
        except CellDoesNotExist:
            return None

    @property
    def cursor_row_data(self) -> TableRow | None:
        """The TableRow under the cursor."""
        key = self.cursor_key
        return None if key is None else self._rows.get(key)

    def row(self, key: str) -> TableRow | None:
        """The TableRow shown under key, if any."""
        return self._rows.get(key)

    @property
    def keys(self) -> list[str]:
        """Every shown key, in table order."""
        return list(self._order)

    def toggle_mark(self) -> None:
        """Mark the row under the cursor (or unmark it) and move down, like k9s's space."""
        key = self.cursor_key
        if key is None:
            return
        self.marks.symmetric_difference_update({key})
        self._set_row(self._rows.pop(key))
        self._sync(key)
        self.action_cursor_down()

    def clear_marks(self) -> None:
        """Unmark every row."""
        marked, self.marks = self.marks, set()
        for key in marked:
            if key in self._rows:
                self._set_row(self._rows.pop(key))
        self._sync_visible()

    def apply(self, rows: Sequence[TableRow]) -> None:
        """Show exactly rows, in their order: add, remove and update in place by key."""
        cursor = self.cursor_key
        keys = [row.key for row in rows]
        if keys == self._order:
            self._update_rows(rows)  # the common tick: same rows, some cells changed
        else:
            self._apply_keys(rows)
        self._restore(cursor)
        self._sync_visible()

    def _update_rows(self, rows: Sequence[TableRow]) -> None:
        """Note the changed rows of a table whose keys and order stay (one tight loop: 8,000 rows a tick)."""
        known, shown_by_key, marks, dirty = self._rows, self._shown, self.marks, self._dirty
        for row in rows:
            key = row.key
            if known.get(key) is row:
                continue  # the same prepared row as before (the poll worker's cache): nothing changed
            known[key] = row
            shown = (row.cells, row.styles, row.style, key in marks)
            if shown_by_key.get(key) != shown:
                shown_by_key[key] = shown
                dirty.add(key)

    def _apply_keys(self, rows: Sequence[TableRow]) -> None:
        """Rows came or went or moved: remove, add, update, then re-sort if the order changed."""
        wanted = {row.key: row for row in rows}
        gone = [key for key in self._order if key not in wanted]
        if len(gone) > REBUILD_AFTER and len(gone) * 4 > len(self._order):
            self._rebuild(list(wanted.values()))
        else:
            self._remove(gone)
            added = [key for key in wanted if key not in self._shown]
            for row in wanted.values():
                self._set_row(row)
            self._reorder([k for k in self._order if k in wanted] + added, list(wanted))
        self.marks &= wanted.keys()

    def watch_scroll_y(self, old_value: float, new_value: float) -> None:
        super().watch_scroll_y(old_value, new_value)
        self._sync_visible()

    def on_resize(self) -> None:
        self._sync_visible()

    def _remove(self, keys: Sequence[str]) -> None:
        for key in keys:
            try:
                first = self.get_cell(key, self.spec[0].key)
                self._first.pop(id(first), None)
                self.remove_row(key)
            except (RowDoesNotExist, CellDoesNotExist):
                pass
            self._rows.pop(key, None)
            self._shown.pop(key, None)
            self._synced.pop(key, None)
            self._dirty.discard(key)

    def _rebuild(self, rows: list[TableRow]) -> None:
        self.clear()
        for column in self.columns.values():
            column.content_width = cell_len(column.label.plain)
        self._rows.clear()
        self._shown.clear()
        self._synced.clear()
        self._dirty.clear()
        self._first.clear()
        for row in rows:
            self._set_row(row)
        self._order = [row.key for row in rows]

    def _set_row(self, row: TableRow) -> None:
        """Add row to the DataTable, or note what changed in it (its cells follow in _sync)."""
        if self._rows.get(row.key) is row:
            return  # the same prepared row as before (the poll worker's cache): nothing changed
        shown = (row.cells, row.styles, row.style, row.key in self.marks)
        self._rows[row.key] = row
        if self._shown.get(row.key) == shown:
            return
        self._shown[row.key] = shown
        if row.key in self._synced:
            self._dirty.add(row.key)
            return
        texts = [Text(*self._cell(shown, i), no_wrap=True, end="") for i in range(len(self.spec))]
        self.add_row(*texts, key=row.key)
        self._first[id(texts[0])] = row.key
        self._synced[row.key] = shown

    def _sync(self, key: str) -> None:
        """update_cell every cell of row key that differs from what the DataTable holds."""
        self._dirty.discard(key)
        before, shown = self._synced.get(key), self._shown.get(key)
        if before is None or shown is None or before == shown:
            return
        self._synced[key] = shown
        for i in range(len(self.spec)):
            cell = self._cell(shown, i)
            if cell != self._cell(before, i):
                self._update(key, i, Text(*cell, no_wrap=True, end=""))

    def _sync_visible(self) -> None:
        """Bring the rows in view (and a margin) up to date."""
        if not self._dirty:
            return
        top = int(self.scroll_y)
        height = self.size.height or 50
        for index in range(max(0, top - 5), min(len(self._order), top + height + 5)):
            key = self.coordinate_to_cell_key(Coordinate(index, 0)).row_key.value
            if key in self._dirty:
                self._sync(key)

    def _update(self, key: str, index: int, text: Text) -> None:
        column = self.spec[index].key
        if index == 0:
            self._first.pop(id(self.get_cell(key, column)), None)
            self._first[id(text)] = key
        grows = cell_len(text.plain) > self.columns[column].content_width  # type: ignore[index]
        self.update_cell(key, column, text, update_width=grows)

    @staticmethod
    def _cell(shown: Shown, index: int) -> tuple[str, str]:
        """The (text, style) of one cell: the mark goes before the first cell, marked rows are bold."""
        cells, styles, row_style, marked = shown
        plain = cells[index] if index < len(cells) else ""
        if index == 0:
            plain = (MARK if marked else NO_MARK) + plain
        style = " ".join(s for s in (row_style, styles[index] if index < len(styles) else "",
                                     "bold" if marked else "") if s)
        return plain, style

    def _reorder(self, current: list[str], desired: list[str]) -> None:
        self._order = desired
        if current == desired:
            return
        position = {key: i for i, key in enumerate(desired)}
        self.sort(self.spec[0].key, key=lambda cell: position.get(self._first.get(id(cell), ""), -1))

    def _restore(self, key: str | None) -> None:
        if key is None or key not in self._shown:
            return
        index = self.get_row_index(key)
        if index != self.cursor_row:
            self.move_cursor(row=index, animate=False)


__all__ = ["KeyedTable"]
