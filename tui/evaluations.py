"""The Evaluations tab: pass@k per evaluation set (hard-test, easy, hard-test-pq, ...) over teacher steps,
newest first. Reloads when a new evaluation lands."""

from __future__ import annotations

from textual import on, work
from textual.app import ComposeResult
from textual.message import Message
from textual.widgets import DataTable, Tab as TabLabel, Tabs

from tui import fmt, queries
from tui.queries import Overview, pass_keys
from tui.tab import TabBody

PREFERRED = ("hard-test", "easy", "hard-test-pq")  # shown first when present


def columns(rows: list[dict]) -> list[str]:
    keys = {k for r in rows for k in r["summary"]}
    return (["greedy_acc"] if "greedy_acc" in keys else []) + pass_keys(dict.fromkeys(keys))


class EvaluationsTab(TabBody):
    DEFAULT_CSS = """
    EvaluationsTab #eval-table { height: 1fr; }
    """

    class Loaded(Message):
        def __init__(self, by_set: dict[str, list[dict]]) -> None:
            super().__init__()
            self.by_set = by_set

    def __init__(self, source, **kwargs) -> None:
        super().__init__(source, **kwargs)
        self.by_set: dict[str, list[dict]] = {}
        self.current: str | None = None
        self._seen: object = ()

    def compose(self) -> ComposeResult:
        yield Tabs(id="sets")
        yield DataTable(id="eval-table", cursor_type="row", zebra_stripes=True)

    def focus_main(self) -> None:
        self.query_one("#eval-table").focus()

    def watch_overview(self, o: Overview | None) -> None:
        if o is not None and o.marks["evaluations"] != self._seen:
            self._seen = o.marks["evaluations"]
            self.load()

    @work(thread=True, exclusive=True, group="evaluations")
    def load(self) -> None:
        with queries.open_reader(self.source.db_path) as store:
            by_set = queries.evaluations(store, self.source.run_id)
        self.post_message(self.Loaded(by_set))

    @on(Loaded)
    async def show(self, message: Loaded) -> None:
        names = sorted(message.by_set, key=lambda n: (PREFERRED.index(n) if n in PREFERRED else len(PREFERRED), n))
        tabs = self.query_one("#sets", Tabs)
        if names != list(self.by_set):
            await tabs.clear()
            for index, name in enumerate(names):
                await tabs.add_tab(TabLabel(name, id=f"set-{index}"))
        self.by_set = {name: message.by_set[name] for name in names}
        if self.current not in self.by_set:
            self.current = names[0] if names else None
        if self.current is not None:
            tabs.active = f"set-{names.index(self.current)}"
        self._fill()

    @on(Tabs.TabActivated, "#sets")
    def set_chosen(self, event: Tabs.TabActivated) -> None:
        event.stop()
        if event.tab is None:
            return
        self.current = list(self.by_set)[int(event.tab.id.removeprefix("set-"))]
        self._fill()

    def _fill(self) -> None:
        table = self.query_one("#eval-table", DataTable)
        table.clear(columns=True)
        rows = self.by_set.get(self.current, [])
        if not rows:
            table.add_column("no evaluations yet")
            return
        keys = columns(rows)
        table.add_column("step", key="step")
        table.add_column("ckpt", key="ckpt")
        for key in keys:
            table.add_column("greedy" if key == "greedy_acc" else key, key=key)
        for r in reversed(rows):
            step = r["teacher_step"] if r["teacher_step"] is not None else "-"
            table.add_row(step, r["checkpoint_id"] or "-", *[fmt.percent(r["summary"].get(k)) for k in keys],
                          key=str(r["id"]))
