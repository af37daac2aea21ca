"""What every tab of the run screen shares: which store and run it reads, and the latest Overview."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from textual.containers import Vertical
from textual.reactive import reactive
from textual.widgets import TabbedContent

from tui.queries import Overview


@dataclass(frozen=True)
class Source:
    """The run being watched. Workers open their own read-only Store from ``db_path``."""

    db_path: Path
    run_id: int

    @property
    def run_dir(self) -> Path:
        return self.db_path.parent


class TabBody(Vertical):
    """A tab's content. The run screen sets ``overview`` after every poll (attributes down); a tab reloads
    its own data in a worker when the marks it depends on change."""

    overview: reactive[Overview | None] = reactive(None, init=False)

    def __init__(self, source: Source, **kwargs) -> None:
        super().__init__(**kwargs)
        self.source = source

    def focus_main(self) -> None:
        """Give the keyboard to the tab's main widget when the tab is shown; a tab with nothing to focus
        gives it to the tab bar (left/right switch tabs), never leaving it on a hidden widget."""
        for widget in self.query("*"):
            if widget.focusable:
                widget.focus()
                return
        tabbed = next(a for a in self.ancestors if isinstance(a, TabbedContent))
        tabbed.query_one("ContentTabs").focus()
