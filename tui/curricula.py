"""The Curricula tab (the teacher's datasets, or the promotion questions), a curriculum's problems, and
two curricula side by side. Tables page by keyset: a run with thousands of curricula opens at once.

The teacher repeats questions and the store keeps one problem row per question, so a dataset's rows are
keyed by item (position), never by problem id, and show how often their question occurs."""

from __future__ import annotations

from rich.markup import escape
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.message import Message
from textual.screen import Screen
from textual.widgets import DataTable, Footer, Header, Input, Static
from textual.worker import get_current_worker

from tui import fmt, queries
from tui.problem import ProblemScreen
from tui.queries import PAGE, Overview
from tui.tab import Source, TabBody
from tui.widgets import PagedTable

KINDS = {"curriculum": "curricula", "promotion": "promotion questions"}


def repeat_cell(count: int) -> str:
    """How many items of the dataset hold this question ("×3"), blank for a question asked once."""
    return f"×{count}" if count > 1 else ""


def describe_items(d: dict) -> str:
    """"230 items, 100 distinct": a dataset's size, and how many problems those items are when it repeats some."""
    distinct = d.get("distinct_problems")
    items = d.get("items", 0)
    return f"{items} items" + (f", {distinct} distinct" if distinct is not None and distinct != items else "")


def cursor_key(table: DataTable) -> str | None:
    if not table.row_count:
        return None
    return table.coordinate_to_cell_key(table.cursor_coordinate).row_key.value


def restore_cursor(table: DataTable, key: str | None) -> None:
    if key is not None and key in table.rows:
        table.move_cursor(row=table.get_row_index(key))


class CurriculaTab(TabBody):
    DEFAULT_CSS = """
    CurriculaTab #bar { height: 3; }
    CurriculaTab #filter { width: 1fr; }
    CurriculaTab #view { width: auto; max-width: 40; padding: 1 1 0 1; color: $text-muted; }
    """
    BINDINGS = [
        Binding("slash", "focus_filter", "Filter"),
        Binding("p", "toggle_promotions", "Promotion Qs"),
        Binding("m", "mark", "Mark"),
        Binding("c", "compare", "Compare"),
    ]

    class Loaded(Message):
        def __init__(self, rows: list[dict], token: int, reset: bool) -> None:
            super().__init__()
            self.rows, self.token, self.reset = rows, token, reset

    def __init__(self, source: Source, **kwargs) -> None:
        super().__init__(source, **kwargs)
        self.kind = "curriculum"
        self.marked: dict | None = None
        self._seen_marks: tuple | None = None
        self._rows: dict[str, dict] = {}

    def compose(self) -> ComposeResult:
        with Horizontal(id="bar"):
            yield Input(placeholder="filter: name, step number, 'promoted'", id="filter")
            yield Static("", id="view")
        yield PagedTable(page_size=PAGE, id="datasets")

    def on_mount(self) -> None:
        table = self.query_one("#datasets", PagedTable)
        table.add_column("step", key="step")
        table.add_column("name", key="name")
        table.add_column("reward", key="reward")
        table.add_column("promoted", key="promoted")
        table.add_column("items", key="items")
        self._describe()
        self.reload()

    def focus_main(self) -> None:
        self.query_one("#datasets").focus()

    # -- loading ---------------------------------------------------------------------------------

    def reload(self) -> None:
        token = self.query_one("#datasets", PagedTable).begin_reload()
        self.load(self.kind, self.query_one("#filter", Input).value, None, token, reset=True)

    @work(thread=True, group="curricula")
    def load(self, kind: str, text: str, before_id: int | None, token: int, reset: bool) -> None:
        worker = get_current_worker()
        with queries.open_reader(self.source.db_path) as store:
            rows = queries.curricula_page(store, self.source.run_id, kind, text, before_id)
        if not worker.is_cancelled:
            self.post_message(self.Loaded(rows, token, reset))

    @on(Loaded)
    def show_page(self, message: Loaded) -> None:
        table = self.query_one("#datasets", PagedTable)
        if not table.accepts(message.token, message.reset):
            return
        keep = cursor_key(table)
        if message.reset:
            table.reset()
            self._rows = {}
        for row in message.rows:
            self._rows[str(row["id"])] = row
        table.add_page([(str(r["id"]), self._cells(r)) for r in message.rows],
                       last_key=message.rows[-1]["id"] if message.rows else None)
        restore_cursor(table, keep)

    def _cells(self, r: dict) -> list:
        marked = self.marked is not None and self.marked["id"] == r["id"]
        step = r["teacher_step"] if r["teacher_step"] is not None else "-"
        return [step, fmt.cell(("* " if marked else "") + r["name"]),
                fmt.number(r["reward"], signed=True), fmt.flag(r["promoted"]), r["items"]]

    @on(PagedTable.NeedMore, "#datasets")
    def more(self, message: PagedTable.NeedMore) -> None:
        table = message.table
        if table.can_page():
            self.load(self.kind, self.query_one("#filter", Input).value, table.last_key, table.request, reset=False)

    def watch_overview(self, o: Overview | None) -> None:
        if o is None:
            return
        marks = (o.marks["datasets"], o.marks["steps"])
        table = self.query_one("#datasets", PagedTable)
        # New curricula (or rewards of a finished step): refresh, unless the user has scrolled past page one.
        if self._seen_marks is not None and marks != self._seen_marks and table.row_count <= PAGE:
            self.reload()
        self._seen_marks = marks

    # -- actions ---------------------------------------------------------------------------------

    @on(Input.Changed, "#filter")
    def filter_changed(self) -> None:
        self.reload()

    @on(Input.Submitted, "#filter")
    def filter_submitted(self) -> None:
        self.focus_main()

    def action_focus_filter(self) -> None:
        self.query_one("#filter").focus()

    def action_toggle_promotions(self) -> None:
        self.kind = "promotion" if self.kind == "curriculum" else "curriculum"
        self._describe()
        self.reload()

    def action_mark(self) -> None:
        key = cursor_key(self.query_one("#datasets", DataTable))
        if key is None:
            return
        previous, self.marked = self.marked, self._rows[key]
        if previous is not None and previous["id"] == self.marked["id"]:
            self.marked = None
        for row in filter(None, [previous, self.marked]):
            self._refresh_row(row)
        self._describe()

    def action_compare(self) -> None:
        key = cursor_key(self.query_one("#datasets", DataTable))
        if self.marked is None or key is None or int(key) == self.marked["id"]:
            self.notify("Mark a curriculum with m, move to another, then press c", title="Compare")
            return
        self.app.push_screen(CompareScreen(self.source, self.marked["id"], int(key)))

    def _refresh_row(self, row: dict) -> None:
        table = self.query_one("#datasets", DataTable)
        if str(row["id"]) in table.rows:
            table.update_cell(str(row["id"]), "name", self._cells(row)[1])

    def _describe(self) -> None:
        text = KINDS[self.kind]
        if self.marked is not None:
            text += f" · marked {escape(self.marked['name'])}"
        self.query_one("#view", Static).update(text)

    @on(DataTable.RowSelected, "#datasets")
    def open_dataset(self, event: DataTable.RowSelected) -> None:
        self.app.push_screen(CurriculumScreen(self.source, int(event.row_key.value)))


class CurriculumScreen(Screen):
    """One curriculum's problems: question, answer, whether the teacher's answer was right, student success;
    Enter opens a problem."""

    DEFAULT_CSS = """
    CurriculumScreen #info { height: auto; padding: 0 1; }
    CurriculumScreen #filter { margin: 0 0; }
    """
    BINDINGS = [Binding("escape", "app.pop_screen", "Back"), Binding("slash", "focus_filter", "Filter")]

    class Loaded(Message):
        def __init__(self, info: dict | None, rows: list[dict], token: int, reset: bool) -> None:
            super().__init__()
            self.info, self.rows, self.token, self.reset = info, rows, token, reset

    def __init__(self, source: Source, dataset_id: int) -> None:
        super().__init__()
        self.source, self.dataset_id = source, dataset_id
        self._problem_ids: dict[str, int] = {}  # row key (the item's position) -> its problem

    def compose(self) -> ComposeResult:
        yield Header()
        yield Static("loading…", id="info")
        yield Input(placeholder="filter questions", id="filter")
        yield PagedTable(page_size=PAGE, id="problems")
        yield Footer()

    def on_mount(self) -> None:
        table = self.query_one("#problems", PagedTable)
        for label, width in (("#", 4), ("question", 30), ("rep", 4), ("answer", 10), ("teacher", 9),
                             ("student", 11)):
            table.add_column(label, width=width)
        table.focus()
        self.reload("")

    def reload(self, text: str) -> None:
        self.load(text, -1, self.query_one("#problems", PagedTable).begin_reload(), reset=True)

    @work(thread=True, group="curriculum")
    def load(self, text: str, after: int, token: int, reset: bool) -> None:
        worker = get_current_worker()
        with queries.open_reader(self.source.db_path) as store:
            info = queries.dataset(store, self.dataset_id) if reset else None
            rows = queries.dataset_problems_page(store, self.dataset_id, text, after)
        if not worker.is_cancelled:
            self.post_message(self.Loaded(info, rows, token, reset))

    @on(Loaded)
    def show_page(self, message: Loaded) -> None:
        table = self.query_one("#problems", PagedTable)
        if not table.accepts(message.token, message.reset):
            return
        if message.info is not None:
            d = message.info
            self.sub_title = d["name"]
            step = d["teacher_step"] if d["teacher_step"] is not None else "-"
            self.query_one("#info", Static).update(
                f"[b]{escape(d['name'])}[/b] ({d['kind']}) · step {step}"
                f" · reward {fmt.number(d['reward'], signed=True)} · promoted {fmt.flag(d['promoted'])}"
                f" · {describe_items(d)}")
        if message.reset:
            table.reset()
            self._problem_ids = {}
        self._problem_ids.update((str(r["position"]), r["id"]) for r in message.rows)
        table.add_page([(str(r["position"]), [r["position"], fmt.cell(r["question"], 30), repeat_cell(r["repeats"]),
                                              fmt.cell(r["answer"], 10), fmt.teacher_answer(r["answer_verified"]),
                                              fmt.ratio(r["correct"], r["total"])]) for r in message.rows],
                       last_key=message.rows[-1]["position"] if message.rows else None)

    @on(PagedTable.NeedMore, "#problems")
    def more(self, message: PagedTable.NeedMore) -> None:
        table = message.table
        if table.can_page():
            self.load(self.query_one("#filter", Input).value, table.last_key, table.request, reset=False)

    @on(Input.Changed, "#filter")
    def filter_changed(self, event: Input.Changed) -> None:
        self.reload(event.value)

    @on(Input.Submitted, "#filter")
    def filter_submitted(self) -> None:
        self.query_one("#problems").focus()

    def action_focus_filter(self) -> None:
        self.query_one("#filter").focus()

    @on(DataTable.RowSelected, "#problems")
    def open_problem(self, event: DataTable.RowSelected) -> None:
        self.app.push_screen(ProblemScreen(self.source, self._problem_ids[event.row_key.value]))


class CompareScreen(Screen):
    """Two curricula side by side: their figures and their problems."""

    DEFAULT_CSS = """
    CompareScreen Horizontal { height: 1fr; }
    CompareScreen .side { width: 1fr; border: round $primary-background; }
    CompareScreen .side:focus-within { border: round $accent; }
    CompareScreen .summary { height: auto; padding: 0 1; }
    """
    BINDINGS = [Binding("escape", "app.pop_screen", "Back")]

    class Loaded(Message):
        def __init__(self, left: dict, right: dict) -> None:
            super().__init__()
            self.left, self.right = left, right

    def __init__(self, source: Source, left_id: int, right_id: int) -> None:
        super().__init__()
        self.source, self.ids = source, (left_id, right_id)
        # per table: row key (the item's position) -> its problem
        self._problem_ids: dict[str, dict[str, int]] = {"left-table": {}, "right-table": {}}

    def compose(self) -> ComposeResult:
        yield Header()
        with Horizontal():
            for side in ("left", "right"):
                with Vertical(classes="side"):
                    yield Static("loading…", id=f"{side}-summary", classes="summary")
                    yield DataTable(id=f"{side}-table", cursor_type="row", zebra_stripes=True)
        yield Footer()

    def on_mount(self) -> None:
        self.sub_title = "compare curricula"
        for side in ("left", "right"):
            table = self.query_one(f"#{side}-table", DataTable)
            table.add_column("question", width=16)
            table.add_column("rep", width=4)
            table.add_column("answer", width=6)
            table.add_column("student", width=9)
        self.query_one("#left-table").focus()
        self.load()

    @work(thread=True, exclusive=True, group="compare")
    def load(self) -> None:
        with queries.open_reader(self.source.db_path) as store:
            left, right = (queries.dataset_summary(store, i) for i in self.ids)
        self.post_message(self.Loaded(left, right))

    @on(Loaded)
    def show(self, message: Loaded) -> None:
        for side, d in (("left", message.left), ("right", message.right)):
            self.query_one(f"#{side}-summary", Static).update(
                f"[b]{escape(d.get('name', '?'))}[/b]\nstep {d.get('teacher_step')} · reward "
                f"{fmt.number(d.get('reward'), signed=True)} · promoted {fmt.flag(d.get('promoted'))}\n"
                f"{describe_items(d)} · teacher right {fmt.number(d['verified_fraction'], 2)}"
                f" · student {fmt.number(d['student_success'], 2)}")
            table = self.query_one(f"#{side}-table", DataTable)
            table.clear()
            self._problem_ids[table.id] = {str(p["position"]): p["id"] for p in d["problems"]}
            for p in d["problems"]:
                table.add_row(fmt.cell(p["question"], 16), repeat_cell(p["repeats"]), fmt.cell(p["answer"], 6),
                              fmt.ratio(p["correct"], p["total"]), key=str(p["position"]))

    @on(DataTable.RowSelected)
    def open_problem(self, event: DataTable.RowSelected) -> None:
        problem_id = self._problem_ids[event.data_table.id][event.row_key.value]
        self.app.push_screen(ProblemScreen(self.source, problem_id))
