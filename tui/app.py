"""`soar tui`: watch a run live, inspect its curricula and rollouts, control the agent, export checkpoints.

The app only reads the store (WAL: the agent keeps writing while we read). A thread worker polls it every
``poll_interval`` seconds with its own read-only Store and posts an ``Overview``; the run screen hands it to
each tab (attributes down), and tabs load their own pages in their own workers (messages up). Nothing on
the UI thread touches SQLite, so input never blocks, not even on a store the agent holds locked.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable
from pathlib import Path

from rich.table import Table
from textual import on, work
from textual.app import App, ComposeResult
from textual.binding import Binding
from textual.message import Message
from textual.screen import ModalScreen, Screen
from textual.containers import VerticalScroll
from textual.widgets import DataTable, Footer, Header, Static, TabbedContent, TabPane

from soar_agent.store import StoreError
from tui import control, fmt, queries
from tui.checkpoints import CheckpointsTab
from tui.commands import ControlTab
from tui.curricula import CurriculaTab
from tui.evaluations import EvaluationsTab
from tui.events import EventsTab
from tui.overview import OverviewTab
from tui.queries import Overview
from tui.tab import Source, TabBody

TABS = [("overview", "Overview", OverviewTab), ("curricula", "Curricula", CurriculaTab),
        ("evaluations", "Evaluations", EvaluationsTab), ("checkpoints", "Checkpoints", CheckpointsTab),
        ("events", "Events", EventsTab), ("control", "Control", ControlTab)]
THEMES = ("textual-dark", "textual-light")
TAB_KEYS = Binding.Group("Tabs", compact=True)

KEYS = [  # (keys, where, what): the help screen
    ("1 … 6", "run", "Overview, Curricula, Evaluations, Checkpoints, Events, Control"),
    ("r", "run", "refresh now (the run is re-read every few seconds anyway)"),
    ("/", "curricula", "filter: name, step number, 'promoted' (in a curriculum: question text)"),
    ("enter", "tables", "open the curriculum / problem under the cursor"),
    ("p", "curricula", "switch between curricula and the promotion questions"),
    ("m, c", "curricula", "mark a curriculum, then compare it with the one under the cursor"),
    ("f", "problem", "rollout phase filter: all, student, eval, teacher"),
    ("e", "checkpoints", "export the highlighted checkpoint (soar export, a subprocess)"),
    ("l", "events", "cycle the minimum level"),
    ("p u s", "control", "pause, resume, stop at the next step"),
    ("m x", "control", "promote now, export the best checkpoint (by the agent)"),
    ("escape", "details", "back"),
    ("t", "anywhere", "light / dark theme"),
    ("?", "anywhere", "this help"),
    ("q", "anywhere", "quit"),
]
HELP_NOTES = ("Reads the run's store live (read-only). Commands go through the store's commands table; the "
              "agent acknowledges them within seconds, between the steps of its work. With no agent attached (no "
              "heartbeat for 30 s) they are queued, and the next `soar run` session drops them (acked 'dropped'): "
              "send them again once it runs. Tables load a page at a time as you scroll.")


def resolve_db(path: str | Path) -> Path:
    """A run directory or its soar.db file -> the soar.db path (FileNotFoundError when there is none)."""
    path = Path(path)
    db = path if path.is_file() else path / "soar.db"
    if not db.is_file():
        raise FileNotFoundError(f"{path}: not a run directory (no soar.db)")
    return db


def help_table() -> Table:
    table = Table(box=None, padding=(0, 1), show_header=False, expand=True)
    table.add_column(style="bold", no_wrap=True)
    table.add_column(style="dim", no_wrap=True)
    table.add_column(ratio=1)
    for row in KEYS:
        table.add_row(*row)
    return table


class HelpScreen(ModalScreen):
    DEFAULT_CSS = """
    HelpScreen { align: center middle; }
    HelpScreen VerticalScroll { width: 90%; max-width: 100; height: auto; max-height: 90%;
                                border: round $accent; background: $surface; padding: 0 1; }
    HelpScreen #notes { color: $text-muted; margin-top: 1; }
    """
    BINDINGS = [Binding("escape,q,question_mark", "app.pop_screen", "Close")]

    def compose(self) -> ComposeResult:
        with VerticalScroll() as scroll:
            scroll.border_title = "soar tui: keys"
            yield Static(help_table())
            yield Static(HELP_NOTES, id="notes", markup=False)


class RunScreen(Screen):
    """One run: a tab per view, refreshed from the store every ``poll_interval`` seconds."""

    DEFAULT_CSS = """
    RunScreen #tabs { height: 1fr; }
    RunScreen #tabs ContentSwitcher { height: 1fr; }
    RunScreen #tabs TabPane { height: 1fr; padding: 0; }
    """

    BINDINGS = [Binding("r", "refresh", "Refresh", show=False),  # the footer shows the tab keys as one "123456 Tabs"
                *[Binding(str(i), f"show_tab('{tab_id}')", label, group=TAB_KEYS)
                  for i, (tab_id, label, _) in enumerate(TABS, 1)]]

    class Polled(Message):
        def __init__(self, overview: Overview) -> None:
            super().__init__()
            self.overview = overview

    class PollFailed(Message):
        def __init__(self, error: str) -> None:
            super().__init__()
            self.error = error

    def __init__(self, source: Source, poll_interval: float, clock: Callable[[], float]) -> None:
        super().__init__()
        self.source, self.poll_interval, self.clock = source, poll_interval, clock
        self.overview: Overview | None = None
        self._polling, self._last_error = False, ""

    def compose(self) -> ComposeResult:
        yield Header()
        with TabbedContent(id="tabs"):
            for index, (tab_id, label, tab_class) in enumerate(TABS):
                with TabPane(label, id=tab_id):
                    if index == 0:  # the others are mounted when first shown: the overview opens faster
                        yield tab_class(self.source, id=f"{tab_id}-tab")
        yield Footer()

    def on_mount(self) -> None:
        self.sub_title = "reading…"
        self.poll()
        self.set_interval(self.poll_interval, self.poll)

    def poll(self) -> None:
        if not self._polling:  # a slow read (store locked, huge WAL) never piles up readers
            self._polling = True
            self.read_overview(self.clock())

    @work(thread=True, group="poll")
    def read_overview(self, now: float) -> None:
        try:
            with queries.open_reader(self.source.db_path) as store:
                self.post_message(self.Polled(queries.overview(store, self.source.run_id, now)))
        except (StoreError, sqlite3.Error) as error:
            self.post_message(self.PollFailed(str(error)))

    @on(Polled)
    def polled(self, message: Polled) -> None:
        self._polling, self._last_error = False, ""
        o = self.overview = message.overview
        agent = "agent attached" if o.attached else "no agent attached"
        self.sub_title = f"{o.run['name']} · step {o.teacher_step} · {o.run['status']} · {agent}"
        for tab in self.query(TabBody):
            tab.overview = o

    @on(PollFailed)
    def poll_failed(self, message: PollFailed) -> None:
        self._polling = False
        self.sub_title = "cannot read the store"
        if message.error != self._last_error:  # once per distinct error, not every poll
            self.notify(message.error, title="Store", severity="error", markup=False)
        self._last_error = message.error

    @on(ControlTab.RefreshRequested)
    def refresh_requested(self) -> None:
        self.poll()

    def action_refresh(self) -> None:
        self.poll()

    async def action_show_tab(self, tab_id: str) -> None:
        tabs = self.query_one("#tabs", TabbedContent)
        if tabs.active == tab_id:
            await self.show_body(tabs.get_pane(tab_id))
        else:
            tabs.active = tab_id  # TabActivated shows its body

    @on(TabbedContent.TabActivated)
    async def tab_activated(self, event: TabbedContent.TabActivated) -> None:
        if event.tabbed_content.id == "tabs":
            await self.show_body(event.pane)

    async def show_body(self, pane: TabPane) -> None:
        """Focus the tab's body, mounting it (with the latest Overview) the first time it is shown."""
        body = next(iter(pane.query(TabBody)), None)
        if body is None:
            tab_class = {tab_id: cls for tab_id, _, cls in TABS}[pane.id]
            body = tab_class(self.source, id=f"{pane.id}-tab")
            await pane.mount(body)
            body.overview = self.overview
        body.focus_main()


class RunPicker(Screen):
    """`soar tui` without a run: choose one of ``runs/*/soar.db``."""

    DEFAULT_CSS = """
    RunPicker #runs { height: 1fr; }
    RunPicker #hint { height: auto; padding: 0 1; color: $text-muted; }
    """
    BINDINGS = [Binding("r", "reload", "Reload")]

    class Found(Message):
        def __init__(self, runs: list[dict]) -> None:
            super().__init__()
            self.runs = runs

    def __init__(self, root: Path) -> None:
        super().__init__()
        self.root = root
        self.runs: dict[str, dict] = {}

    def compose(self) -> ComposeResult:
        yield Header()
        yield Static(f"runs under {self.root}/ (enter opens one)", id="hint")
        yield DataTable(id="runs", cursor_type="row", zebra_stripes=True)
        yield Footer()

    def on_mount(self) -> None:
        self.sub_title = "choose a run"
        table = self.query_one("#runs", DataTable)
        for label in ("run", "mode", "status", "steps", "agent", "directory"):
            table.add_column(label)
        table.focus()
        self.action_reload()

    def action_reload(self) -> None:
        self.find(time.time())

    @work(thread=True, exclusive=True, group="find-runs")
    def find(self, now: float) -> None:
        runs = queries.find_runs(self.root)
        for run in runs:
            heartbeat = queries.epoch(run.get("heartbeat_at"))
            run["attached"] = heartbeat is not None and now - heartbeat < queries.ATTACHED_WITHIN_S
        self.post_message(self.Found(runs))

    @on(Found)
    def found(self, message: Found) -> None:
        table = self.query_one("#runs", DataTable)
        table.clear()
        self.runs = {str(r["db"]): r for r in message.runs}
        for r in message.runs:
            if "error" in r:
                table.add_row(fmt.cell(r["name"]), "-", fmt.cell(r["error"], 40), "-", "-", fmt.cell(r["run_dir"]),
                              key=str(r["db"]))
            else:
                table.add_row(fmt.cell(r["name"]), r["mode"], r["status"], r["steps"],
                              "attached" if r["attached"] else "-", fmt.cell(r["run_dir"]), key=str(r["db"]))
        if not message.runs:
            self.query_one("#hint", Static).update(f"no runs under {self.root}/: start one with `soar run`")

    @on(DataTable.RowSelected, "#runs")
    def chosen(self, event: DataTable.RowSelected) -> None:
        run = self.runs[event.row_key.value]
        if "error" in run:
            self.notify(f"{run['db']}: {run['error']}", severity="error", markup=False)
            return
        self.app.open_run(Path(event.row_key.value))


class SoarApp(App):
    """The TUI. ``run_dir`` (a run directory or its soar.db) opens that run; without it, a run picker
    lists ``runs_root/*/soar.db``. ``clock`` and ``export_argv`` are injectable for tests."""

    TITLE = "soar"
    BINDINGS = [Binding("q", "quit", "Quit"), Binding("question_mark", "help", "Help"),
                Binding("t", "toggle_theme", "Theme")]

    class Opened(Message):
        def __init__(self, source: Source | None, error: str = "") -> None:
            super().__init__()
            self.source, self.error = source, error

    def __init__(self, run_dir: str | Path | None = None, *, runs_root: str | Path = "runs",
                 poll_interval: float = 2.0, clock: Callable[[], float] = time.time,
                 export_argv: Callable[..., list[str]] = control.export_argv, theme: str = THEMES[0]) -> None:
        super().__init__()
        self.run_dir, self.runs_root = run_dir, Path(runs_root)
        self.poll_interval, self.clock, self.export_argv = poll_interval, clock, export_argv
        self.theme = theme

    def on_mount(self) -> None:
        if self.run_dir is None:
            self.push_screen(RunPicker(self.runs_root))
        else:
            self.open_run(resolve_db(self.run_dir))

    def open_run(self, db_path: Path) -> None:
        self.locate_run(db_path)

    @work(thread=True, exclusive=True, group="open")
    def locate_run(self, db_path: Path) -> None:
        try:
            with queries.open_reader(db_path) as store:
                run = store.latest_run()
        except (StoreError, sqlite3.Error) as error:
            self.post_message(self.Opened(None, str(error)))
            return
        if run is None:
            self.post_message(self.Opened(None, f"{db_path}: no run in this store yet"))
        else:
            self.post_message(self.Opened(Source(db_path, run["id"])))

    @on(Opened)
    def opened(self, message: Opened) -> None:
        if message.source is None:
            self.notify(message.error, title="Cannot open the run", severity="error", markup=False)
            return
        screen = RunScreen(message.source, self.poll_interval, self.clock)
        if isinstance(self.screen, RunPicker):
            self.switch_screen(screen)
        else:
            self.push_screen(screen)

    def action_help(self) -> None:
        if not isinstance(self.screen, HelpScreen):
            self.push_screen(HelpScreen())

    def action_toggle_theme(self) -> None:
        self.theme = THEMES[1] if self.theme == THEMES[0] else THEMES[0]


def main(run_dir: str | Path | None = None) -> None:
    SoarApp(run_dir).run()
