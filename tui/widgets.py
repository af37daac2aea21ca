"""Small widgets shared by the tabs: a DataTable filled a page at a time, and a line chart."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from textual.binding import Binding
from textual.message import Message
from textual.widgets import DataTable
from textual_plotext import PlotextPlot


class PagedTable(DataTable):
    """A DataTable filled one keyset page at a time. When the cursor (or the scroll position) nears the
    last loaded row it posts ``NeedMore`` once; its owner reads the next page in a worker and hands it to
    ``add_page``. Nothing is loaded that the user has not scrolled to.

    Reloads (a new filter, fresh data) are numbered so that pages read for an older request are dropped:
    the owner takes a token from ``begin_reload``, passes it through its worker, and shows a page only if
    ``accepts(token, first_page)``."""

    DEFAULT_CSS = """
    PagedTable { height: 1fr; }
    """
    BINDINGS = [Binding("home", "scroll_top", "Top", show=False), Binding("end", "scroll_bottom", "Bottom", show=False)]

    class NeedMore(Message):
        def __init__(self, table: PagedTable) -> None:
            super().__init__()
            self.table = table

        @property
        def control(self) -> PagedTable:
            return self.table

    def __init__(self, *, page_size: int, **kwargs) -> None:
        super().__init__(cursor_type="row", zebra_stripes=True, **kwargs)
        self.page_size = page_size
        self.exhausted = False
        self.last_key: object = None  # the keyset position of the last loaded row
        self.request = 0  # the latest reload asked for
        self.shown = -1  # the reload whose first page is on screen
        self._waiting = False

    def begin_reload(self) -> int:
        self.request += 1
        return self.request

    def can_page(self) -> bool:
        """Whether a next page may be read now (not while a reload is on its way: it restarts paging)."""
        return self.shown == self.request

    def accepts(self, token: int, first_page: bool) -> bool:
        return token == self.request and (first_page or self.shown == token)

    def reset(self) -> None:
        """Empty the table for the first page of the latest reload."""
        self.clear()
        self.exhausted, self.last_key, self._waiting = False, None, False
        self.shown = self.request

    def add_page(self, rows: Sequence[tuple[str, Iterable]], last_key: object) -> None:
        """Append one page of ``(row_key, cells)``; a short page means there is nothing more."""
        for key, cells in rows:
            self.add_row(*cells, key=key)
        self.exhausted = len(rows) < self.page_size
        if rows:
            self.last_key = last_key
        self._waiting = False

    def _maybe_more(self) -> None:
        if self.exhausted or self._waiting or not self.row_count:
            return
        near_end = self.cursor_row >= self.row_count - 3 or (self.max_scroll_y and self.scroll_y >= self.max_scroll_y)
        if near_end:
            self._waiting = True
            self.post_message(self.NeedMore(self))

    def on_data_table_row_highlighted(self, event: DataTable.RowHighlighted) -> None:
        self._maybe_more()  # the event goes on bubbling to the owner

    def watch_scroll_y(self, old_value: float, new_value: float) -> None:
        super().watch_scroll_y(old_value, new_value)
        if new_value > old_value:
            self._maybe_more()


class Chart(PlotextPlot):
    """A line chart of a few series over teacher steps (textual-plotext; colours follow the app theme)."""

    DEFAULT_CSS = """
    Chart { height: 1fr; min-height: 6; }
    """

    def __init__(self, title: str, **kwargs) -> None:
        super().__init__(**kwargs)
        self.chart_title = title
        self.series: dict[str, list[tuple[float, float]]] = {}

    def on_mount(self) -> None:
        super().on_mount()
        self.draw()

    def set_series(self, series: dict[str, list[tuple[float, float]]]) -> None:
        if series != self.series:
            self.series = series
            self.draw()

    def draw(self) -> None:
        plt = self.plt
        plt.clear_data()
        plt.clear_figure()
        plt.title(self.chart_title)
        plotted = False
        for label, points in self.series.items():
            if points:
                plt.plot([x for x, _ in points], [y for _, y in points], label=label, marker="braille")
                plotted = True
        if not plotted:
            plt.title(f"{self.chart_title}: no data yet")
        else:
            steps = sorted({x for points in self.series.values() for x, _ in points})
            plt.xticks(integer_ticks(steps[0], steps[-1]))
        self.refresh()


def integer_ticks(low: float, high: float, most: int = 5) -> list[int]:
    """At most ``most`` whole-number ticks from low to high (teacher steps are integers)."""
    low, high = int(low), int(high)
    stride = max(1, -(-(high - low) // (most - 1)))
    ticks = list(range(low, high + 1, stride))
    if ticks[-1] != high and len(ticks) < most:
        ticks.append(high)
    return ticks
