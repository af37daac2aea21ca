"""Problem detail: the problem and its provenance, then its stored rollouts (student and eval phases),
paged by keyset, with the full completion of the highlighted one."""

from __future__ import annotations

from rich.markup import escape
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.message import Message
from textual.screen import Screen
from textual.widgets import DataTable, Footer, Header, Static
from textual.worker import get_current_worker

from tui import fmt, queries
from tui.queries import PAGE
from tui.tab import Source
from tui.widgets import PagedTable

PHASES = (None, "student", "srl", "eval", "teacher")  # the phase filter cycles through these (None = all)


def srl_view(problem: dict, ref: str, action: str, similarity: float | None) -> str:
    """An SRL rollout (ref ends in `/srl-K`): the step prompt (expert lines before K), the expert step K,
    the student's action and its similarity (-1 = format violation)."""
    from soar_agent.tasks.base import render_steps  # torch-free

    index = int(ref.rsplit("/srl-", 1)[1])
    lines = render_steps(problem.get("steps") or ()).splitlines() + [f"Answer: {problem['answer']}"]
    shown = "\n".join(escape(line) for line in lines[:index]) or "[dim](first step)[/dim]"
    expert = escape(lines[index]) if index < len(lines) else "?"
    score = "-" if similarity is None else f"{similarity:.3f}"
    return (f"[b]step {index + 1}[/b] · similarity [b]{score}[/b]\n[dim]prompt:[/dim]\n{shown}\n"
            f"[dim]expert step:[/dim] {expert}\n[dim]action:[/dim]      {escape(action)}")


def describe(p: dict) -> str:
    provenance = p.get("provenance") or {}
    lines = [f"[b]problem {p['id']}[/b] · {p['domain']} level {p['level'] if p['level'] is not None else '-'}"
             f" · {p['source']} · answer [b]{escape(str(p['answer']))}[/b]", escape(p["question"])]
    if "teacher_step" in provenance:
        teacher = str(provenance.get("teacher_answer"))
        if p["answer_verified"] == 0:
            check = ("wrong (the solver's answer is used)" if teacher != str(p["answer"])
                     else "wrong (students train on it as written)")
        else:
            check = {1: "right (checked by the solver)", None: "not checked (no solver for this domain)"}.get(
                p["answer_verified"], "?")
        lines.append(f"teacher step {provenance['teacher_step']}, dataset {provenance.get('dataset')},"
                     f" teacher's answer {escape(teacher)}: {check}")
        if provenance.get("teacher_solution"):  # teacher.reward_target = teacher: what students imitated
            steps = [line.strip() for line in provenance["teacher_solution"].splitlines() if line.strip()]
            lines.append("teacher's worked solution: " + escape(" | ".join(steps)))
    if p["datasets"]:
        lines.append("in " + ", ".join(escape(d["name"]) for d in p["datasets"][:6])
                     + (f" +{len(p['datasets']) - 6}" if len(p["datasets"]) > 6 else ""))
    counts = [f"{phase} {fmt.ratio(c, t) if phase == 'student' else t}"
              for phase, (c, t) in sorted(p["phases"].items())]
    lines.append("rollouts: " + (" · ".join(counts) or "none"))
    return "\n".join(lines)


class ProblemScreen(Screen):
    DEFAULT_CSS = """
    ProblemScreen #problem { height: auto; max-height: 8; padding: 0 1; border-bottom: solid $primary-background; }
    ProblemScreen #rollouts { height: 1fr; min-height: 5; }
    ProblemScreen #completion-box { height: 1fr; min-height: 4; border-top: solid $primary-background; }
    ProblemScreen #completion { padding: 0 1; }
    """
    BINDINGS = [Binding("escape", "app.pop_screen", "Back"), Binding("f", "cycle_phase", "Phase filter")]

    class Loaded(Message):
        def __init__(self, problem: dict | None, rows: list[dict], token: int, reset: bool) -> None:
            super().__init__()
            self.problem, self.rows, self.token, self.reset = problem, rows, token, reset

    class CompletionLoaded(Message):
        def __init__(self, rollout_id: int, text: str) -> None:
            super().__init__()
            self.rollout_id, self.text = rollout_id, text

    def __init__(self, source: Source, problem_id: int) -> None:
        super().__init__()
        self.source, self.problem_id = source, problem_id
        self.phase: str | None = None
        self._problem: dict | None = None
        self._rows: dict[int, dict] = {}

    def compose(self) -> ComposeResult:
        yield Header()
        yield Static("loading…", id="problem")
        yield PagedTable(page_size=PAGE, id="rollouts")
        with VerticalScroll(id="completion-box"):
            yield Static("", id="completion")
        yield Footer()

    def on_mount(self) -> None:
        self.sub_title = f"problem {self.problem_id} · rollouts: all phases"
        table = self.query_one("#rollouts", PagedTable)
        for label, width in (("id", 7), ("phase", 7), ("ref", 18), ("reward", 6), ("ok", 3), ("completion", 22)):
            table.add_column(label, width=width)
        table.focus()
        self.reload()

    def reload(self) -> None:
        self.load(self.phase, 0, self.query_one("#rollouts", PagedTable).begin_reload(), reset=True)

    @work(thread=True, group="rollouts")
    def load(self, phase: str | None, after_id: int, token: int, reset: bool) -> None:
        worker = get_current_worker()
        with queries.open_reader(self.source.db_path) as store:
            problem = queries.problem(store, self.problem_id) if reset else None
            rows = queries.rollouts_page(store, self.problem_id, phase, after_id)
        if not worker.is_cancelled:
            self.post_message(self.Loaded(problem, rows, token, reset))

    @on(Loaded)
    def show_page(self, message: Loaded) -> None:
        table = self.query_one("#rollouts", PagedTable)
        if not table.accepts(message.token, message.reset):
            return
        if message.problem is not None:
            self._problem = message.problem
            self.query_one("#problem", Static).update(describe(message.problem))
        self._rows.update({r["id"]: r for r in message.rows})
        if message.reset:
            table.reset()
            self.query_one("#completion", Static).update("" if message.rows else "no rollouts stored for this problem")
        table.add_page([(str(r["id"]), [r["id"], r["phase"], fmt.cell(r["ref"], 18), fmt.number(r["reward"], 2),
                                        fmt.flag(r["correct"]) if r["correct"] is not None else "-",
                                        fmt.cell(r["preview"], 22)]) for r in message.rows],
                       last_key=message.rows[-1]["id"] if message.rows else None)

    @on(PagedTable.NeedMore, "#rollouts")
    def more(self, message: PagedTable.NeedMore) -> None:
        table = message.table
        if table.can_page():
            self.load(self.phase, table.last_key, table.request, reset=False)

    @on(DataTable.RowHighlighted, "#rollouts")
    def highlighted(self, event: DataTable.RowHighlighted) -> None:
        if event.row_key.value is not None:
            self.load_completion(int(event.row_key.value))

    @work(thread=True, exclusive=True, group="completion")
    def load_completion(self, rollout_id: int) -> None:
        worker = get_current_worker()
        with queries.open_reader(self.source.db_path) as store:
            text = queries.completion(store, rollout_id)
        if not worker.is_cancelled:
            self.post_message(self.CompletionLoaded(rollout_id, text))

    @on(CompletionLoaded)
    def show_completion(self, message: CompletionLoaded) -> None:
        row = self._rows.get(message.rollout_id)
        if row is not None and row["phase"] == "srl" and self._problem is not None and "/srl-" in (row["ref"] or ""):
            body = srl_view(self._problem, row["ref"], message.text, row["reward"])
        else:
            body = escape(message.text)
        self.query_one("#completion", Static).update(f"[b]rollout {message.rollout_id}[/b]\n{body}")

    def action_cycle_phase(self) -> None:
        self.phase = PHASES[(PHASES.index(self.phase) + 1) % len(PHASES)]
        self.sub_title = f"problem {self.problem_id} · rollouts: {self.phase or 'all phases'}"
        self.reload()
