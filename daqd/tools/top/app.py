"""The ``daqd top`` screen: a Textual app over a `Monitor` fed by a `Feed`."""

from __future__ import annotations

import time
from typing import Any, ClassVar

from textual.app import App, ComposeResult
from textual.binding import Binding
from textual.screen import Screen
from textual.widgets import DataTable, Footer, Static

from daqd.tools.top import cells
from daqd.tools.top.feed import Feed
from daqd.tools.top.model import Monitor

#: Seconds between two looks at the sockets (and redraws).
TICK = 0.25


class DetailScreen(Screen[None]):
    """One stream in full: every counter, rates, losses by reason, sinks."""

    BINDINGS: ClassVar[list[Any]] = [Binding("escape,enter,backspace", "app.pop_screen", "back"),
                                     Binding("q", "app.quit", "quit"),
                                     Binding("p", "app.pause", "pause")]

    def __init__(self, key: tuple[str, str]):
        super().__init__()
        self.key = key

    def compose(self) -> ComposeResult:
        """Lay out the detail text and the key help."""
        yield Static(id="detail")
        yield Footer()

    def on_mount(self) -> None:
        """Show the row now and at every tick."""
        self.refresh_detail(force=True)
        self.set_interval(TICK, self.refresh_detail)

    def refresh_detail(self, force: bool = False) -> None:
        """Redraw from the monitor's newest state (not while paused, unless `force`)."""
        app = self.app
        assert isinstance(app, TopApp)
        if app.paused and not force:
            return
        app.monitor.view(time.monotonic())      # staleness up to date
        row = app.monitor.rows.get(self.key)
        text = "\n".join(cells.detail_lines(row)) if row is not None else "gone"
        self.query_one("#detail", Static).update(text)


class TopApp(App[None]):
    """Full-screen monitor of the daemons publishing on `feed`'s endpoints."""

    TITLE = "daqd top"
    BINDINGS: ClassVar[list[Any]] = [Binding("q", "quit", "quit"),
                                     Binding("p", "pause", "pause"),
                                     Binding("s", "sort", "sort")]

    def __init__(self, feed: Feed, monitor: Monitor):
        super().__init__()
        self.feed = feed
        self.monitor = monitor
        self.paused = False
        self.keys: list[tuple[str, str]] = []     # table row -> monitor row
        self.table: DataTable[str] = DataTable(id="streams", cursor_type="row",
                                               zebra_stripes=True)
        self.head = Static(id="head")

    def compose(self) -> ComposeResult:
        """Lay out the header line, the table and the key help."""
        self.table.add_columns(*cells.COLUMNS)
        yield self.head
        yield self.table
        yield Footer()

    def on_mount(self) -> None:
        """Poll the sockets at every tick."""
        self.tick()
        self.set_interval(TICK, self.tick)

    def on_unmount(self) -> None:
        """Close the sockets."""
        self.feed.close()

    def tick(self) -> None:
        """Take what has arrived (even when paused) and redraw unless paused."""
        now = time.monotonic()
        for endpoint, topic, message in self.feed.poll():
            self.monitor.ingest(endpoint, topic, message, now)
        if not self.paused:
            self.redraw(now)

    def redraw(self, now: float) -> None:
        """Rebuild the table from the monitor."""
        rows = self.monitor.view(now)
        table = self.table
        cursor = self.keys[table.cursor_row] if 0 <= table.cursor_row < len(self.keys) else None
        table.clear()
        self.keys = []
        for row in rows:
            table.add_row(*cells.row_cells(row))
            self.keys.append((row.endpoint, row.stream))
        table.add_row(*cells.totals_cells(self.monitor.totals(now)))
        if cursor in self.keys:
            table.move_cursor(row=self.keys.index(cursor))
        silent = self.monitor.silent()
        head = [f"{len(self.monitor.endpoints)} endpoint(s)", f"sort: {self.monitor.sort_name()}"]
        if self.paused:
            head.append("PAUSED")
        if silent:
            head.append("waiting for: " + ", ".join(silent))
        self.head.update("  ".join(head))

    def action_pause(self) -> None:
        """Freeze the screen, or let it run again."""
        self.paused = not self.paused
        self.redraw(time.monotonic())

    def action_sort(self) -> None:
        """Sort by the next key."""
        self.monitor.next_sort()
        self.redraw(time.monotonic())

    def on_data_table_row_selected(self, event: DataTable.RowSelected) -> None:
        """Enter on a stream's row: its detail."""
        if 0 <= event.cursor_row < len(self.keys):
            self.push_screen(DetailScreen(self.keys[event.cursor_row]))
