"""The Events tab: the run's log, tailed as the agent writes it, filtered by minimum level."""

from __future__ import annotations

from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.message import Message
from textual.widgets import DataTable, Select, Static
from textual.worker import get_current_worker

from soar_agent.store import EVENT_LEVELS
from tui import fmt, queries
from tui.queries import Overview
from tui.tab import TabBody

TAIL = 200  # events shown when the tab opens or the level changes; newer ones are appended
LEVEL_STYLE = {"debug": "dim", "info": "", "warning": "yellow", "error": "bold red"}


class EventsTab(TabBody):
    DEFAULT_CSS = """
    EventsTab #level { width: 24; }
    EventsTab #event-table { height: 1fr; }
    EventsTab #event-detail { height: auto; max-height: 6; padding: 0 1; border-top: solid $primary-background; }
    """
    BINDINGS = [Binding("l", "cycle_level", "Level")]

    class Loaded(Message):
        def __init__(self, rows: list[dict], level: str, reset: bool) -> None:
            super().__init__()
            self.rows, self.level, self.reset = rows, level, reset

    def __init__(self, source, **kwargs) -> None:
        super().__init__(source, **kwargs)
        self.level = "info"
        self.last_id: int | None = None
        self._seen: object = None
        self.events: dict[str, dict] = {}  # by row key: the whole event, for the detail line

    def compose(self) -> ComposeResult:
        yield Select([(f"level ≥ {lv}", lv) for lv in EVENT_LEVELS], value=self.level, allow_blank=False, id="level")
        yield DataTable(id="event-table", cursor_type="row", zebra_stripes=True)
        yield Static("", id="event-detail", markup=False)  # the highlighted event's whole message

    def on_mount(self) -> None:
        table = self.query_one("#event-table", DataTable)
        for label, width in (("time", 8), ("level", 7), ("kind", 16), ("message", 40)):
            table.add_column(label, width=width)

    def focus_main(self) -> None:
        self.query_one("#event-table").focus()

    def watch_overview(self, o: Overview | None) -> None:
        if o is None or o.marks["events"] == self._seen:
            return
        first = self._seen is None
        self._seen = o.marks["events"]
        self.load(self.level, None if first else self.last_id, reset=first)

    @work(thread=True, exclusive=True, group="events")
    def load(self, level: str, after_id: int | None, reset: bool) -> None:
        worker = get_current_worker()
        with queries.open_reader(self.source.db_path) as store:
            rows = store.events(self.source.run_id, level=level, limit=TAIL if after_id is None else 1000,
                                after_id=after_id)
        if not worker.is_cancelled:
            self.post_message(self.Loaded(rows, level, reset))

    @on(Loaded)
    def show(self, message: Loaded) -> None:
        if message.level != self.level:
            return  # a tail read for the previous filter
        table = self.query_one("#event-table", DataTable)
        following = not table.row_count or table.cursor_row >= table.row_count - 1
        if message.reset:
            table.clear()
            self.events = {}
        for e in message.rows:
            self.events[str(e["id"])] = e
            if str(e["id"]) in table.rows:
                continue
            style = LEVEL_STYLE[e["level"]]
            level = f"[{style}]{e['level']}[/]" if style else e["level"]
            table.add_row(fmt.clock_time(e["ts"]), level, fmt.cell(e["kind"], 16), fmt.cell(e["message"]),
                          key=str(e["id"]))
        if message.rows:
            self.last_id = message.rows[-1]["id"]
        if following and table.row_count:
            table.move_cursor(row=table.row_count - 1)
        self._show_detail()

    @on(DataTable.RowHighlighted, "#event-table")
    def _show_detail(self) -> None:
        """The message column is cut at its width: the line under the table shows the whole message of the
        event under the cursor."""
        table = self.query_one("#event-table", DataTable)
        key = table.coordinate_to_cell_key(table.cursor_coordinate).row_key.value if table.row_count else None
        e = self.events.get(key)
        self.query_one("#event-detail", Static).update(
            f"{fmt.clock_time(e['ts'])} {e['level']} {e['kind']}: {e['message']}" if e else "no events")

    @on(Select.Changed, "#level")
    def level_changed(self, event: Select.Changed) -> None:
        self.level = str(event.value)
        self.load(self.level, None, reset=True)

    def action_cycle_level(self) -> None:
        self.query_one("#level", Select).value = EVENT_LEVELS[(EVENT_LEVELS.index(self.level) + 1) % len(EVENT_LEVELS)]
