"""The TUI driven by Textual's pilot on small stores built with the Store API: navigation, curricula
filtering, drilling into a problem's rollouts, commands reaching the store and being acknowledged (by a
separate process playing the agent, and by the real ``Agent.poll_commands``), live refresh while another
process writes, SVG snapshots at 80x24, and no torch in the TUI process."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
import time
from datetime import datetime
from importlib.metadata import version
from pathlib import Path

import pytest
from rich.console import Console, ConsoleRenderable
from rich.text import Text

from soar_agent.store import Store
from soar_agent.tasks.base import Problem

pytest.importorskip("textual")

from textual.widgets import DataTable, Static, TabbedContent  # noqa: E402

from tui.app import TABS, HelpScreen, RunPicker, RunScreen, SoarApp  # noqa: E402
from tui.curricula import CompareScreen, CurriculumScreen  # noqa: E402
from tui.problem import ProblemScreen  # noqa: E402

CREATED = "2025-06-01T00:00:00.000+00:00"
NOW = datetime.fromisoformat(CREATED).timestamp() + 3 * 3600 + 125  # 3h 02m 05s into the run
SIZE = (80, 24)


# ------------------------------------------------------------------------------------------ fixtures


def arith(i: int, level: int = 3) -> Problem:
    return Problem(question=f"What is {i} + {i * 7}?", answer=str(i * 8), domain="arith", level=level)


def build_store(db: Path, steps: int = 4) -> int:
    """A deterministic little run: hard sets, `steps` teacher steps of 2 curricula x 3 problems with 2
    students each, promotions at even steps, evaluations (hard-test, easy, hard-test-pq), rollouts and
    events. Timestamps are pinned so that screenshots do not depend on when the test runs."""
    with Store(db) as store:
        run = store.create_run(name="demo", mode="soar", config={"run": {"name": "demo"}}, status="running")
        hard = {split: store.add_problems(run_id=run, problems=[arith(1000 + 10 * n + i, 7) for i in range(n)],
                                          source="hard", split=split)
                for split, n in (("train", 6), ("test", 5))}
        for split, ids in hard.items():
            store.create_dataset(run_id=run, name=f"hard-{split}", kind=f"hard-{split}", problem_ids=ids)
        store.log_event(run_id=run, level="info", kind="start", message="run created")
        store.log_event(run_id=run, level="info", kind="session", message="session started",
                        data={"deadline": NOW + 5 * 3600, "max_teacher_steps": 0})
        evaluate(store, run, hard["test"], step=0, score=0.1)
        for step in range(1, steps + 1):
            add_step(store, run, step)
            if step % 2 == 0:
                evaluate(store, run, hard["test"], step=step, score=0.1 + 0.05 * step)
        store.add_evaluation(run_id=run, set_name="hard-test-pq", results=[], samples_per_problem=4, temperature=1.0,
                             summary={"pass@1": 0.31, "pass@4": 0.52, "problems": 5})
        store.add_rollouts(run_id=run, rows=[
            {"problem_id": hard["test"][0], "phase": "eval", "ref": f"eval-step-{s}/hard-test",
             "completion": f"eval completion {k} of step {s}: Answer: {k}"}
            for s in range(0, steps + 1, 2) for k in range(90)])
        store.log_event(run_id=run, level="warning", kind="student-collapse", message="step 3: student 1-0 [empty]")
        # Pin every timestamp (the Store stamps rows with the wall clock).
        conn = store.db.conn
        conn.execute("UPDATE runs SET created_at = ?, heartbeat_at = NULL", (CREATED,))
        for table in ("events",):
            conn.execute(f"UPDATE {table} SET ts = strftime('%Y-%m-%dT%H:%M:%S.000+00:00', ?, '+' || (id * 60)"
                         " || ' seconds')", (CREATED,))
        for table in ("checkpoints", "rollouts", "evaluations", "problems", "datasets"):
            conn.execute(f"UPDATE {table} SET created_at = strftime('%Y-%m-%dT%H:%M:%S.000+00:00', ?, '+' || (id * 60)"
                         " || ' seconds')", (CREATED,))
        return run


def repeating(questions: list[Problem], repeats_of_first: int) -> list[Problem]:
    """The teacher repeats itself (a default run's short dataset: 2,880 items, 2,113 distinct problems): the
    first question comes back ``repeats_of_first`` more times; the store keeps one problem row for all of them."""
    return questions + [questions[0]] * repeats_of_first


def add_step(store: Store, run: int, step: int) -> None:
    """Two curricula of 3 distinct questions, the first of which dataset k repeats k + 1 more times."""
    datasets = []
    for k in range(2):
        problems = repeating([arith(100 * step + 10 * k + i, 2 + k) for i in range(3)], k + 1)
        datasets.append({"name": f"step-{step}-dataset-{k}", "meta": {"index": k}, "problems": problems,
                         "provenance": [{"teacher_step": step, "dataset": k, "text": f"<question>q{i}</question>",
                                         "teacher_answer": str(i)} for i in range(len(problems))],
                         "answer_verified": [True, True, k == 0] + [True] * (k + 1)})
    ids = store.add_curriculum(run_id=run, teacher_step=step, datasets=datasets)
    store.log_event(run_id=run, level="info", kind="teacher-sampled", message=f"step {step}: 6 items (5 verified)",
                    data={"step": step, "sampled": 6 + step, "accepted": 6})
    for k, dataset_id in enumerate(ids):
        problems = [row["id"] for row in store.dataset_problems(dataset_id)]
        for j in range(2):
            store.add_training(
                run_id=run, teacher_step=step, dataset_id=dataset_id, student_index=j, reward=0.01 * (step + k - j),
                accuracy_before=0.1, accuracy_after=0.1 + 0.01 * (step + k - j), checkpoint_path=None,
                metrics={"reward_mean": 0.2 + 0.05 * step + 0.02 * k, "tokens_per_second": 900.0 + 10 * step,
                         "completion_length": 12.0},
                rollouts=[{"problem_id": pid, "phase": "student", "ref": f"step-{step}/student-{k}-{j}",
                           "completion": f"Answer: {n}", "reward": float((n + i) % 2), "correct": (n + i) % 2}
                          for i, pid in enumerate(problems) for n in range(4)])
    promoted = ids[1] if step % 2 == 0 else None
    rewards = {ids[0]: 0.01 * step, ids[1]: 0.02 * step}
    checkpoints = [{"path": f"/runs/demo/checkpoints/teacher-step-{step}", "role": "teacher"}]
    if promoted:
        checkpoints.append({"path": f"/runs/demo/checkpoints/baseline-step-{step}", "role": "baseline"})
    store.complete_teacher_step(run_id=run, step=step, dataset_rewards=rewards, mean_reward=0.015 * step,
                                moving_average=0.012 * step, promoted_dataset_id=promoted, checkpoints=checkpoints,
                                metrics={"seconds": 300.0 + step, "teacher_rewards": list(rewards.values()),
                                         "reward_metric": "sampled", "reward_stderr": 0.004 * step})
    if promoted:
        store.log_event(run_id=run, level="info", kind="promotion", message=f"step {step}: step-{step}-dataset-1 promoted",
                        data={"step": step, "dataset_id": promoted})  # as the agent words it: the name Curricula shows


def evaluate(store: Store, run: int, problem_ids: list[int], step: int, score: float) -> None:
    baseline = store.checkpoints(run, role="baseline")
    summary = {"problems": len(problem_ids), "greedy_acc": score, "pass@1": score, "pass@2": score * 1.5,
               "pass@4": score * 2}
    store.add_evaluation(run_id=run, set_name="hard-test", summary=summary, samples_per_problem=4, temperature=1.0,
                         teacher_step=step, checkpoint_id=baseline[-1]["id"] if baseline else None,
                         results=[{"problem_id": pid, "samples": 4, "correct": i % 3, "greedy_correct": i % 2,
                                   "pass_at": {1: 0.1, 4: 0.3}} for i, pid in enumerate(problem_ids)])
    store.add_evaluation(run_id=run, set_name="easy", summary={"problems": 60, "greedy_acc": 0.6 + score},
                         samples_per_problem=0, temperature=1.0, teacher_step=step, results=[])


LONG_ITEMS, LONG_DISTINCT = 230, 100  # positions p and p + 100 (and p + 200) hold the same question


def add_long_step(store: Store, run: int, step: int) -> int:
    """A promoted curriculum longer than two pages whose questions come back on later pages, the way a
    default run's teacher repeats itself; returns its dataset id. Its first repeat (position 100) opens the
    second page, where the issue's user hit DuplicateKey."""
    questions = [arith(5000 + i) for i in range(LONG_DISTINCT)]
    problems = [questions[p % LONG_DISTINCT] for p in range(LONG_ITEMS)]
    (dataset_id,) = store.add_curriculum(run_id=run, teacher_step=step, datasets=[{
        "name": f"step-{step}-long", "problems": problems, "answer_verified": [True] * LONG_ITEMS,
        "provenance": [{"teacher_step": step, "dataset": 0, "teacher_answer": q.answer} for q in problems]}])
    store.add_training(run_id=run, teacher_step=step, dataset_id=dataset_id, student_index=0, reward=0.1,
                       accuracy_before=0.1, accuracy_after=0.2, checkpoint_path=None, metrics={"reward_mean": 0.3},
                       rollouts=[{"problem_id": row["id"], "phase": "student", "ref": f"step-{step}/student-0-0",
                                  "completion": "Answer: 1", "reward": 1.0, "correct": 1}
                                 for row in store.dataset_problems(dataset_id)])
    store.complete_teacher_step(run_id=run, step=step, dataset_rewards={dataset_id: 0.5}, mean_reward=0.5,
                                moving_average=0.1, promoted_dataset_id=dataset_id, checkpoints=[], metrics={})
    return dataset_id


@pytest.fixture(autouse=True)
def utc(monkeypatch):
    """Times are shown in local time: pin the zone so that screenshots match anywhere."""
    monkeypatch.setenv("TZ", "UTC")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


@pytest.fixture(scope="module")
def fixture_db(tmp_path_factory) -> Path:
    db = tmp_path_factory.mktemp("tui") / "demo" / "soar.db"
    build_store(db)
    return db


@pytest.fixture
def run_db(tmp_path) -> Path:
    """A fresh copy for tests that write."""
    db = tmp_path / "demo" / "soar.db"
    build_store(db)
    return db


@pytest.fixture
def repeats_db(tmp_path) -> Path:
    """The demo run and a fifth step whose promoted curriculum repeats questions across pages (writable:
    the Control tab's keys send commands)."""
    db = tmp_path / "repeats" / "soar.db"
    build_store(db)
    with Store(db) as store:
        add_long_step(store, 1, step=5)
    return db


def make_app(db: Path, **kwargs) -> SoarApp:
    return SoarApp(db.parent, poll_interval=kwargs.pop("poll_interval", 60.0), clock=lambda: NOW, **kwargs)


async def settle(pilot, rounds: int = 20) -> None:
    """Wait for every worker and for the messages they posted (workers may start more workers)."""
    app = pilot.app
    for _ in range(rounds):
        await app.workers.wait_for_complete()
        await pilot.pause()
        if not any(w.is_running for w in app.workers):
            await pilot.pause()
            if not any(w.is_running for w in app.workers):
                return
    raise AssertionError(f"workers still running: {list(app.workers)}")


async def wait_for(pilot, condition, timeout: float = 10.0, poll: bool = True) -> None:
    """Re-read the store until ``condition()`` holds (for data written by another process)."""
    deadline = time.monotonic() + timeout
    while True:
        if poll and isinstance(pilot.app.screen, RunScreen):
            pilot.app.screen.poll()
        await settle(pilot)
        if condition():
            return
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await pilot.pause(0.1)


def cells(table: DataTable, column: int) -> list[str]:
    return [str(table.get_row_at(i)[column]) for i in range(table.row_count)]


def column(table: DataTable, label: str) -> list[str]:
    (index,) = [i for i, c in enumerate(table.columns.values()) if str(c.label) == label]
    return cells(table, index)


def text(widget: Static) -> str:
    """What a Static shows, as plain text (markup strings and Rich renderables alike)."""
    content = widget.content
    if isinstance(content, str):
        return Text.from_markup(content).plain
    if not isinstance(content, ConsoleRenderable):
        return str(content)
    console = Console(width=200, color_system=None)
    with console.capture() as captured:
        console.print(content)
    return captured.get()


# ------------------------------------------------------------------------------------------ pilot tests


@pytest.mark.asyncio
async def test_overview_shows_the_run(fixture_db):
    app = make_app(fixture_db)
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        screen = app.screen
        assert isinstance(screen, RunScreen)
        stats = text(screen.query_one("#stats", Static))
        for needle in ("demo · soar", "running · student-collapse", "step", "4", "3h 02m", "left 5h 00m", "940",
                       "2 promoted", "pass@1 30.0%", "pass@4 60.0%", "none attached",  # percentages, as soar status
                       "+0.0600 ± 0.0160 (sampled)"):
            assert needle in stats, (needle, stats)
        chart = screen.query_one("#pass-chart")
        assert set(chart.series) == {"pass@1", "pass@4"} and chart.series["pass@4"][-1] == (4, pytest.approx(60))
        assert [s for s, _ in screen.query_one("#student-chart").series["reward_mean"]] == [1, 2, 3, 4]


@pytest.mark.asyncio
async def test_the_overview_fits_80x24_and_the_footer_shows_the_tab_keys(fixture_db):
    """Every stats row is on screen whole (none wrapped, none below the pane), rates are percentages like
    `soar status`'s, and the footer names the 1-6 tab keys."""
    from textual.widgets._footer import FooterKey

    app = make_app(fixture_db)
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        stats = app.screen.query_one("#stats", Static)
        console = Console(width=stats.content_region.width, color_system=None)
        with console.capture() as captured:
            console.print(stats.content)
        lines = captured.get().rstrip("\n").splitlines()
        keys = [line.split()[0] for line in lines if line.strip()]
        assert keys == ["run", "status", "step", "elapsed", "last", "reward", "kept", "hard-test", "PQ", "agent"], lines
        assert len(lines) <= stats.content_region.height, lines
        assert {str(key.key) for key in app.screen.query(FooterKey)} >= {"1", "2", "3", "4", "5", "6"}
        await pilot.press("4")
        await settle(pilot)
        assert "pass@4 60.0%" in column(app.screen.query_one("#checkpoint-table", DataTable), "hard-test")
        await pilot.press("3")
        await settle(pilot)
        assert column(app.screen.query_one("#eval-table", DataTable), "pass@1")[0] == "30.0%"


@pytest.mark.asyncio
async def test_navigation_between_tabs_and_screens(fixture_db):
    app = make_app(fixture_db)
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        tabs = app.screen.query_one("#tabs", TabbedContent)
        for key, tab in (("2", "curricula"), ("3", "evaluations"), ("4", "checkpoints"), ("5", "events"),
                         ("6", "control"), ("1", "overview")):
            await pilot.press(key)
            await settle(pilot)
            assert tabs.active == tab
        await pilot.press("?")
        assert isinstance(app.screen, HelpScreen)
        await pilot.press("escape")
        assert isinstance(app.screen, RunScreen)
        theme = app.theme
        await pilot.press("t")
        assert app.theme != theme
        # evaluations: one table per set, switched with the set tabs
        await pilot.press("3")
        await settle(pilot)
        table = app.screen.query_one("#eval-table", DataTable)
        assert cells(table, 0) == ["4", "2", "0"] and "pass@4" in [str(c.label) for c in table.columns.values()]
        await pilot.click("#sets Tab#set-2")
        await settle(pilot)
        assert app.screen.query_one("#evaluations-tab").current == "hard-test-pq"
        assert cells(app.screen.query_one("#eval-table", DataTable), 0) == ["-"]
        # checkpoints list with their evaluations
        await pilot.press("4")
        await settle(pilot)
        table = app.screen.query_one("#checkpoint-table", DataTable)
        assert table.row_count == 6 and "baseline" in cells(table, 1)
        # events filtered by level
        await pilot.press("5", "l")
        await settle(pilot)
        table = app.screen.query_one("#event-table", DataTable)
        assert cells(table, 2) == ["student-collapse"]


@pytest.mark.asyncio
async def test_an_events_whole_message_is_shown_under_the_table(run_db):
    long = "student 3-1 collapsed: " + " ".join(f"word{i}" for i in range(40)) + " THE END"
    with Store(run_db) as store:
        store.log_event(run_id=1, level="warning", kind="student-collapse", message=long)
    app = make_app(run_db)
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        await pilot.press("5")
        await settle(pilot)
        table = app.screen.query_one("#event-table", DataTable)
        detail = app.screen.query_one("#event-detail", Static)
        assert long in " ".join(str(detail.content).split())  # the cursor follows the tail: the newest event, whole
        await pilot.press("up")
        assert str(detail.content).endswith("student-collapse: step 3: student 1-0 [empty]")  # no markup parsed
        # a promotion event names the dataset as Curricula does
        assert "step 4: step-4-dataset-1 promoted" in column(table, "message")


@pytest.mark.asyncio
async def test_promotion_datasets_show_as_promoted(fixture_db):
    app = make_app(fixture_db)
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        await pilot.press("2", "p")
        await settle(pilot)
        table = app.screen.query_one("#datasets", DataTable)
        assert cells(table, 1) == ["promotion-step-4", "promotion-step-2"] and column(table, "promoted") == ["yes", "yes"]
        await pilot.press("slash", *"promoted", "enter")  # the filter agrees with the column
        await settle(pilot)
        assert cells(table, 1) == ["promotion-step-4", "promotion-step-2"]
        await pilot.press("enter")
        await settle(pilot)
        assert isinstance(app.screen, CurriculumScreen)
        assert "promoted yes" in " ".join(text(w) for w in app.screen.query(Static))


@pytest.mark.asyncio
async def test_filter_curricula_and_drill_into_a_problem(fixture_db):
    app = make_app(fixture_db)
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        await pilot.press("2")
        await settle(pilot)
        table = app.screen.query_one("#datasets", DataTable)
        assert table.row_count == 8 and cells(table, 1)[0] == "step-4-dataset-1"  # newest first
        await pilot.press("slash", *"3")
        await settle(pilot)
        assert cells(table, 1) == ["step-3-dataset-1", "step-3-dataset-0"]
        await pilot.press("backspace", *"promoted")
        await settle(pilot)
        assert cells(table, 1) == ["step-4-dataset-1", "step-2-dataset-1"]
        await pilot.press("enter")  # back to the table
        # promotion questions view
        await pilot.press("p")
        await settle(pilot)
        assert cells(table, 1) == ["promotion-step-4", "promotion-step-2"]  # promotion questions are all promoted
        await pilot.press("slash", *["backspace"] * 8, "enter", "p")
        await settle(pilot)
        assert table.row_count == 8
        # drill into the newest curriculum, then into its first problem
        await pilot.press("home", "enter")
        await settle(pilot)
        screen = app.screen
        assert isinstance(screen, CurriculumScreen)
        problems = screen.query_one("#problems", DataTable)
        assert cells(problems, 1) == ["What is 410 + 2870?", "What is 411 + 2877?", "What is 412 + 2884?",
                                      "What is 410 + 2870?", "What is 410 + 2870?"]
        assert column(problems, "rep") == ["×3", "", "", "×3", "×3"]
        assert column(problems, "student")[0] == "12/24  50%"  # the rollouts of all three items
        await pilot.press("slash", *"411", "enter")
        await settle(pilot)
        assert cells(problems, 1) == ["What is 411 + 2877?"]
        await pilot.press("enter")
        await settle(pilot)
        assert isinstance(app.screen, ProblemScreen)
        rollouts = app.screen.query_one("#rollouts", DataTable)
        assert rollouts.row_count == 8 and set(cells(rollouts, 1)) == {"student"}
        assert "What is 411 + 2877?" in text(app.screen.query_one("#problem", Static))
        assert "rollout" in text(app.screen.query_one("#completion", Static))
        await pilot.press("escape", "escape")
        assert isinstance(app.screen, RunScreen)


@pytest.mark.asyncio
async def test_rollouts_page_by_keyset_as_the_cursor_moves(fixture_db):
    with Store(fixture_db, readonly=True) as store:
        (hard_test,) = store.datasets(1, kind="hard-test")
        problem_id = store.dataset_problems(hard_test["id"])[0]["id"]
    app = make_app(fixture_db)
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        app.push_screen(ProblemScreen(app.screen.source, problem_id))
        await settle(pilot)
        table = app.screen.query_one("#rollouts", DataTable)
        assert table.row_count == 100  # one page of 270
        await pilot.press("end")
        await settle(pilot)
        assert table.row_count == 200
        await pilot.press("end")
        await settle(pilot)
        await pilot.press("end")
        await settle(pilot)
        assert table.row_count == 270 and len(set(cells(table, 0))) == 270
        await pilot.press("f")  # student phase only: none for a hard-test problem
        await settle(pilot)
        assert table.row_count == 0


@pytest.mark.asyncio
async def test_compare_two_curricula(fixture_db):
    app = make_app(fixture_db)
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        await pilot.press("2")
        await settle(pilot)
        await pilot.press("m", "down", "down", "c")
        await settle(pilot)
        screen = app.screen
        assert isinstance(screen, CompareScreen)
        assert "step-4-dataset-1" in text(screen.query_one("#left-summary", Static))
        assert "step-3-dataset-1" in text(screen.query_one("#right-summary", Static))
        assert screen.query_one("#right-table", DataTable).row_count == 5


def long_dataset_problem_ids(db: Path) -> list[int]:
    with Store(db, readonly=True) as store:
        (long,) = store.datasets(1, name="step-5-long")
        return [row["id"] for row in store.dataset_problems(long["id"])]


async def load_every_page(pilot, table: DataTable, rows: int) -> None:
    while table.row_count < rows:
        loaded = table.row_count
        await pilot.press("end")
        await settle(pilot)
        assert table.row_count > loaded, f"paging stopped at {loaded} rows of {rows}"


@pytest.mark.asyncio
async def test_a_curriculum_that_repeats_questions_shows_every_item_and_its_repeats(repeats_db):
    ids = long_dataset_problem_ids(repeats_db)
    assert ids[0] == ids[LONG_DISTINCT] == ids[2 * LONG_DISTINCT] and len(set(ids)) == LONG_DISTINCT
    app = make_app(repeats_db)
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        await pilot.press("2")
        await settle(pilot)
        assert cells(app.screen.query_one("#datasets", DataTable), 1)[0] == "step-5-long"
        await pilot.press("enter")
        await settle(pilot)
        screen = app.screen
        assert isinstance(screen, CurriculumScreen)
        problems = screen.query_one("#problems", DataTable)
        await load_every_page(pilot, problems, LONG_ITEMS)  # the second page opens with the first repeat
        assert "230 items, 100 distinct" in text(screen.query_one("#info", Static))
        assert cells(problems, 0) == [str(p) for p in range(LONG_ITEMS)]
        assert column(problems, "rep") == ["×3" if p % LONG_DISTINCT < 30 else "×2" for p in range(LONG_ITEMS)]
        problems.move_cursor(row=LONG_DISTINCT)
        await pilot.press("enter")  # a repeat opens the problem it repeats
        await settle(pilot)
        assert isinstance(app.screen, ProblemScreen) and app.screen.problem_id == ids[0]
        # the problem is listed once per dataset holding it, however often the dataset repeats it
        assert "in step-5-long, promotion-step-5\n" in text(app.screen.query_one("#problem", Static))
        await pilot.press("escape")
        await pilot.press("slash", *"5000 +", "enter")  # the filter keeps every occurrence
        await settle(pilot)
        assert cells(problems, 0) == ["0", "100", "200"] and column(problems, "rep") == ["×3"] * 3
        await pilot.press("escape", "p")  # the promoted copy repeats the same way
        await settle(pilot)
        assert cells(app.screen.query_one("#datasets", DataTable), 1)[0] == "promotion-step-5"
        await pilot.press("enter")
        await settle(pilot)
        problems = app.screen.query_one("#problems", DataTable)
        await load_every_page(pilot, problems, LONG_ITEMS)
        assert column(problems, "rep")[LONG_DISTINCT] == "×3"


@pytest.mark.asyncio
async def test_compare_curricula_that_repeat_questions(repeats_db):
    ids = long_dataset_problem_ids(repeats_db)
    app = make_app(repeats_db)
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        await pilot.press("2")
        await settle(pilot)
        await pilot.press("m", "down", "c")  # step-5-long against step-4-dataset-1
        await settle(pilot)
        screen = app.screen
        assert isinstance(screen, CompareScreen)
        assert "230 items, 100 distinct" in text(screen.query_one("#left-summary", Static))
        assert "5 items, 3 distinct" in text(screen.query_one("#right-summary", Static))
        left, right = screen.query_one("#left-table", DataTable), screen.query_one("#right-table", DataTable)
        assert left.row_count == LONG_ITEMS and column(left, "rep")[2 * LONG_DISTINCT] == "×3"
        assert right.row_count == 5 and column(right, "rep") == ["×3", "", "", "×3", "×3"]
        left.move_cursor(row=2 * LONG_DISTINCT)
        await pilot.press("enter")
        await settle(pilot)
        assert isinstance(app.screen, ProblemScreen) and app.screen.problem_id == ids[0]


QUIT_ACTIONS = {"quit", "app.quit"}
CLOSE_ACTIONS = {"app.pop_screen"}


def bound_keys(app) -> list[str]:
    """Every key bound where the keyboard is (the focused widget, its screen, the app), but those that quit;
    the keys that close the screen come last, so that every other key is pressed on it first."""
    actions = {key: active.binding.action for key, active in app.screen.active_bindings.items()
               if active.binding.action not in QUIT_ACTIONS}
    return sorted(actions, key=lambda key: (actions[key] in CLOSE_ACTIONS, key))


async def back_to(pilot, screen) -> None:
    while pilot.app.screen is not screen:
        pilot.app.pop_screen()
        await settle(pilot)


async def refocus(pilot, screen, tab_id: str, home) -> None:
    """Give the keyboard back to ``home``, the widget that had it when the screen opened (on the run screen:
    the tab's main widget): a key may have moved it to a filter or the tab bar, where the next key would be
    typed or switch tabs instead of being the key under test."""
    if isinstance(screen, RunScreen):
        await screen.action_show_tab(tab_id)
    elif home is not None:
        home.focus()
    await settle(pilot)


async def press_every_key(pilot, tab_id: str, trail: tuple[str, ...], explored: set[type], reopen=None) -> None:
    """Press every key bound on the current screen, coming back to it after each; a key that opens one of the
    TUI's screens has every key of that screen pressed too (each kind of screen once). ``reopen`` brings the
    screen back after a key closed it."""
    app = pilot.app
    context, home = app.screen, app.focused
    keys = bound_keys(app)
    for index, key in enumerate(keys):
        if app.screen is not context:
            assert reopen is not None, f"{' '.join(trail)} left its screen with keys {keys[index:]} unpressed"
            context = await reopen()
            home = app.focused
        await pilot.press(key)
        await settle(pilot)
        assert app.return_code is None, f"the TUI exited on {' '.join(trail + (key,))}"
        opened = app.screen
        if opened is not context and context in app.screen_stack:
            if type(opened).__module__.startswith("tui.") and type(opened) not in explored:
                explored.add(type(opened))

                async def reopen_opened(parent=context, parent_home=home, key=key, kind=type(opened)):
                    await back_to(pilot, parent)
                    await refocus(pilot, parent, tab_id, parent_home)
                    await pilot.press(key)
                    await settle(pilot)
                    assert type(app.screen) is kind, f"{' '.join(trail + (key,))} did not reopen {kind.__name__}"
                    return app.screen

                await press_every_key(pilot, tab_id, trail + (key,), explored, reopen_opened)
            await back_to(pilot, context)
        if app.screen is context and app.focused is not home:
            await refocus(pilot, context, tab_id, home)


# The keys that lead to each screen whose keys are all pressed: every tab, the promotion questions, and
# the comparison (a curriculum marked, the cursor moved, compare).
KEY_CONTEXTS = [("1",), ("2",), ("2", "p"), ("2", "m", "down", "c"), ("3",), ("4",), ("5",), ("6",)]
TUI_SCREENS = {CurriculumScreen, CompareScreen, ProblemScreen, HelpScreen}  # all but the run picker


@pytest.mark.asyncio
async def test_every_key_on_every_tab_of_a_run_that_repeats_questions(repeats_db):
    """The TUI survives every bound key, on every tab and on every screen a key opens, on a store whose
    curricula repeat questions as a default run's do. Each context starts a fresh app; a screen already
    explored from another context is opened but not explored again. The export key runs a harmless stand-in."""
    explored: set[type] = set()
    for path in KEY_CONTEXTS:
        tab_id = TABS[int(path[0]) - 1][0]
        app = make_app(repeats_db, export_argv=lambda run_dir, out, checkpoint: [sys.executable, "-c", "print()"])
        app.animation_level = "none"  # scrolling ends where it would anyway; waiting for it only costs time
        async with app.run_test(size=SIZE) as pilot:
            await settle(pilot)
            await pilot.press(*path)
            await settle(pilot)
            assert app.return_code is None, f"the TUI exited on {' '.join(path)}"
            if isinstance(app.screen, RunScreen):
                assert app.screen.query_one("#tabs", TabbedContent).active == tab_id
            else:
                explored.add(type(app.screen))
            await press_every_key(pilot, tab_id, path, explored)
            await back_to(pilot, next(screen for screen in app.screen_stack if isinstance(screen, RunScreen)))
            await pilot.press("q")
            await pilot.pause()
        assert app.return_code == 0, path
    assert explored == TUI_SCREENS


@pytest.mark.asyncio
async def test_command_reaches_the_store_and_says_no_agent(run_db):
    app = make_app(run_db)
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        await pilot.press("6", "p")
        await settle(pilot)
        notice = text(app.screen.query_one("#notice", Static))
        assert "no agent attached: command queued" in notice
        await pilot.click("#cmd-stop")
        await settle(pilot)
    with Store(run_db, readonly=True) as store:
        assert [(c["command"], c["acked_at"]) for c in store.commands(1)] == [("pause", None), ("stop", None)]


AGENT_SCRIPT = textwrap.dedent("""
    # Plays the agent's side of the commands table exactly as Agent.poll_commands does (heartbeat, then ack
    # every pending command), without importing torch.
    import sys, time
    from soar_agent.store import Store

    store = Store(sys.argv[1])
    run_id = store.latest_run()["id"]
    deadline = time.time() + float(sys.argv[2])
    while time.time() < deadline:
        store.heartbeat(run_id)
        for command in store.pending_commands(run_id):
            store.ack_command(command["id"], f"{command['command']}: done by the test agent")
            store.log_event(run_id=run_id, level="info", kind=f"command-{command['command']}", message="acked")
        time.sleep(0.1)
""")


@pytest.mark.asyncio
async def test_command_acknowledged_by_an_agent_process(run_db, tmp_path):
    script = tmp_path / "agent.py"
    script.write_text(AGENT_SCRIPT)
    agent = subprocess.Popen([sys.executable, str(script), str(run_db), "30"])
    try:
        app = SoarApp(run_db.parent, poll_interval=0.5)  # the real clock: the heartbeat is live
        async with app.run_test(size=SIZE) as pilot:
            await wait_for(pilot, lambda: app.screen.overview is not None and app.screen.overview.attached)
            await pilot.press("6", "m")
            await wait_for(pilot, lambda: "agent acknowledged promote" in text(app.screen.query_one("#notice")))
            assert "promote: done by the test agent" in text(app.screen.query_one("#notice", Static))
            assert cells(app.screen.query_one("#commands", DataTable), 4)[0] == "promote: done by the test agent"
    finally:
        agent.terminate()
        agent.wait(10)


@pytest.mark.asyncio
async def test_the_real_agent_acknowledges_tui_commands(run_db):
    from soar_agent.agent import Agent, RunPaths
    from soar_agent.config import RunConfig

    app = make_app(run_db)
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        await pilot.press("6", "p")
        await settle(pilot)
        await pilot.press("u", "s")
        await settle(pilot)
        with Store(run_db) as store:
            agent = Agent(config=RunConfig(), paths=RunPaths(run_db.parent), store=store, run_id=1, log=lambda m: None)
            agent.poll_commands()
            assert agent.stop_reason == "stop command received" and not agent.paused
        await wait_for(pilot, lambda: "agent acknowledged" in text(app.screen.query_one("#notice")))
        table = app.screen.query_one("#commands", DataTable)
        assert cells(table, 1) == ["stop", "resume", "pause"]
        assert cells(table, 4) == ["stopping after the current unit", "resumed", "paused after the current unit"]


WRITER_SCRIPT = textwrap.dedent("""
    # Another process writing to the store while the TUI reads it: new teacher steps, events, evaluations.
    import sys, time
    sys.path.insert(0, sys.argv[2])
    from test_tui import add_step, evaluate
    from soar_agent.store import Store

    store = Store(sys.argv[1])
    (hard_test,) = store.datasets(1, kind="hard-test")
    ids = [p["id"] for p in store.dataset_problems(hard_test["id"])]
    for step in (5, 6):
        add_step(store, 1, step)
        evaluate(store, 1, ids, step=step, score=0.5)
        store.log_event(run_id=1, level="error", kind="writer", message=f"wrote step {step}")
        time.sleep(0.2)
""")


@pytest.mark.asyncio
async def test_live_refresh_while_another_process_writes(run_db, tmp_path):
    script = tmp_path / "writer.py"
    script.write_text(WRITER_SCRIPT)
    app = make_app(run_db, poll_interval=0.3)
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        await pilot.press("5")  # events tab: it tails what the writer logs
        writer = subprocess.Popen([sys.executable, str(script), str(run_db), str(Path(__file__).parent)])
        while writer.poll() is None:  # the app keeps polling (every 0.3 s) while the other process writes
            await pilot.pause(0.1)
        assert writer.returncode == 0
        await wait_for(pilot, lambda: app.screen.overview.teacher_step == 6)
        assert "wrote step 6" in cells(app.screen.query_one("#event-table", DataTable), 3)
        stats = text(app.screen.query_one("#stats", Static))
        assert re.search(r"step\s+6 · 3 promoted", stats) and "pass@1 50.0%" in stats, stats
        assert app.screen.query_one("#pass-chart").series["pass@1"][-1] == (6, 50.0)
        await pilot.press("2")
        await settle(pilot)
        assert cells(app.screen.query_one("#datasets", DataTable), 1)[0] == "step-6-dataset-1"
        await pilot.press("3")
        await settle(pilot)
        assert cells(app.screen.query_one("#eval-table", DataTable), 0)[0] == "6"


@pytest.mark.asyncio
async def test_export_runs_as_a_subprocess_with_progress(run_db, tmp_path):
    done = tmp_path / "exported"
    fake = ["-c", f"import time, pathlib; print('loading', flush=True); time.sleep(0.6);"
                  f" pathlib.Path({str(done)!r}).mkdir(); print({str(done)!r})"]
    seen: list[list[str]] = []

    def argv(run_dir, out, checkpoint):
        seen.append([str(run_dir), str(checkpoint)])
        return [sys.executable, *fake]

    app = make_app(run_db, export_argv=argv)
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        await pilot.press("4")
        await settle(pilot)
        tab = app.screen.query_one("#checkpoints-tab")
        await pilot.press("e")
        await pilot.pause(0.3)
        assert tab.has_class("exporting") and "export" in text(tab.query_one("#export-status", Static))
        await settle(pilot)
        assert not tab.has_class("exporting")
        assert text(tab.query_one("#export-status", Static)) == f"exported to {done}"
    assert done.is_dir() and seen == [[str(run_db.parent), "6"]]


@pytest.mark.asyncio
async def test_run_picker_lists_runs(tmp_path):
    build_store(tmp_path / "runs" / "alpha" / "soar.db", steps=1)
    (tmp_path / "runs" / "broken").mkdir()
    (tmp_path / "runs" / "broken" / "soar.db").write_text("not sqlite")
    app = SoarApp(None, runs_root=tmp_path / "runs", poll_interval=60, clock=lambda: NOW)
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        assert isinstance(app.screen, RunPicker)
        table = app.screen.query_one("#runs", DataTable)
        assert cells(table, 0) == ["demo", "broken"]
        await pilot.press("enter")
        await settle(pilot)
        assert isinstance(app.screen, RunScreen) and app.screen.overview.run["name"] == "demo"


def test_ui_queries_never_scan_rollouts(fixture_db):
    """Every statement the tabs run that touches rollouts goes through an index (the fixture is small, so
    the plans, not timings, are what is checked; bench/tui_load.py times them on a million rollouts)."""
    from tui import queries

    with queries.open_reader(fixture_db) as store:
        statements: list[str] = []
        store.db.conn.set_trace_callback(statements.append)
        (hard_test,) = store.datasets(1, kind="hard-test")
        problem_id = store.dataset_problems(hard_test["id"])[0]["id"]
        queries.overview(store, 1, NOW)
        page = queries.curricula_page(store, 1, text="step:3 dataset")
        queries.curricula_page(store, 1, before_id=page[-1]["id"])
        queries.dataset_problems_page(store, page[0]["id"], text="+")
        queries.dataset_summary(store, page[0]["id"])
        queries.problem(store, problem_id)
        queries.rollouts_page(store, problem_id, phase="eval", after_id=5)
        queries.evaluations(store, 1)
        queries.checkpoints(store, 1)
        store.db.conn.set_trace_callback(None)
        touching = [sql for sql in statements if "rollouts" in sql and sql.lstrip().upper().startswith("SELECT")]
        assert len(touching) >= 4
        for sql in touching:
            plan = " | ".join(row[3] for row in store.db.execute("EXPLAIN QUERY PLAN " + sql))
            assert "SCAN rollouts" not in plan and "rollouts_problem" in plan, (sql, plan)


def test_a_comparison_counts_a_repeated_questions_rollouts_once(tmp_path):
    """A repeated question is one problem whose student figures already hold the rollouts of every repeat:
    the dataset's student success adds them once, however often the dataset repeats the question."""
    from tui import queries

    db = tmp_path / "summary" / "soar.db"
    with Store(db) as store:
        run = store.create_run(name="summary", mode="soar", config={}, status="running")
        (dataset_id,) = store.add_curriculum(run_id=run, teacher_step=1, datasets=[
            {"name": "repeats", "problems": [arith(1), arith(1), arith(1), arith(2)]}])
        repeated, once = (row["id"] for row in store.dataset_problems(dataset_id)[2:])
        store.add_rollouts(run_id=run, rows=[
            *({"problem_id": repeated, "phase": "student", "ref": "r", "completion": "", "correct": 1}
              for _ in range(3)),
            {"problem_id": once, "phase": "student", "ref": "r", "completion": "", "correct": 0}])
    with queries.open_reader(db) as store:
        summary = queries.dataset_summary(store, dataset_id)
    assert summary["items"] == 4 and summary["distinct_problems"] == 2
    assert [p["repeats"] for p in summary["problems"]] == [3, 3, 3, 1]
    assert summary["student_success"] == 3 / 4  # not (3 * 3) / (3 * 3 + 1), counting the repeats' rollouts thrice


# ------------------------------------------------------------------------------------------ snapshots


def keys_then_settle(*keys: str):
    async def run_before(pilot) -> None:
        await settle(pilot)
        await pilot.press(*keys)
        await settle(pilot)
    return run_before


# The SVGs were taken with these versions; other versions draw differently (borders, plot glyphs), so
# compare only under them. After an upgrade: check the screens, then `pytest tests/test_tui.py --snapshot-update`.
SNAPSHOT_VERSIONS = {"textual": "8.2.8", "plotext": "5.3.2", "rich": "15.0.0"}
same_versions = pytest.mark.skipif(
    any(version(package) != wanted for package, wanted in SNAPSHOT_VERSIONS.items()),
    reason=f"snapshots were taken with {SNAPSHOT_VERSIONS}")


@same_versions
@pytest.mark.parametrize("keys", [(), ("2",), ("3",), ("4",), ("5",), ("6",), ("2", "enter"), ("2", "enter", "enter"),
                                  ("?",)], ids=["overview", "curricula", "evaluations", "checkpoints", "events",
                                               "control", "curriculum", "problem", "help"])
def test_snapshots(snap_compare, fixture_db, keys):
    assert snap_compare(make_app(fixture_db), terminal_size=SIZE, run_before=keys_then_settle(*keys))


@same_versions
def test_snapshot_light_theme(snap_compare, fixture_db):
    assert snap_compare(SoarApp(fixture_db.parent, poll_interval=60, clock=lambda: NOW, theme="textual-light"),
                        terminal_size=SIZE, run_before=keys_then_settle())


# ------------------------------------------------------------------------------------------ no torch


NO_TORCH_SCRIPT = textwrap.dedent("""
    # The whole `soar tui` path in a fresh interpreter: the CLI's imports, then the app through every tab
    # and detail screen; torch (and transformers) must never be loaded.
    import asyncio, sys
    import soar_agent.cli
    from soar_agent.config import ConfigError
    from soar_agent.models import ModelLoadError
    from soar_agent.tasks.base import RejectedItem
    from tui.app import SoarApp

    async def main():
        app = SoarApp(sys.argv[1], poll_interval=0.2)
        async with app.run_test(size=(80, 24)) as pilot:
            for key in ["2", "enter", "enter", "f", "escape", "escape", "3", "4", "5", "6", "1", "question_mark"]:
                await pilot.press(key)
                await pilot.pause(0.1)
            await app.workers.wait_for_complete()

    asyncio.run(main())
    loaded = sorted(m for m in ("torch", "transformers", "peft") if m in sys.modules)
    print("loaded:", loaded)
""")


def test_the_tui_never_imports_torch(fixture_db, tmp_path):
    script = tmp_path / "no_torch.py"
    script.write_text(NO_TORCH_SCRIPT)
    result = subprocess.run([sys.executable, str(script), str(fixture_db.parent)], capture_output=True, text=True,
                            timeout=120, env={**os.environ, "PYTHONPATH": str(Path(__file__).parent.parent)})
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip().splitlines()[-1] == "loaded: []", result.stdout


def test_soar_tui_subcommand_rejects_a_missing_run(tmp_path):
    result = subprocess.run([sys.executable, "-m", "soar_agent.cli", "tui", str(tmp_path / "nope")],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "not a run directory" in result.stderr
    assert "torch" not in result.stderr


@pytest.mark.asyncio
async def test_problem_screen_shows_an_srl_rollout_step_by_step(tmp_path):
    """An SRL rollout (phase "srl", ref ".../srl-K") is shown as the step prompt (expert lines before K),
    the expert step K, the student's action and its similarity."""
    db = tmp_path / "srl" / "soar.db"
    with Store(db) as store:
        run = store.create_run(name="srl", mode="soar", config={}, status="running")
        problem = Problem(question="What is 12 + 30?", answer="42", domain="arith", level=3,
                          steps=("**ones** 2 + 0 = 2", "**tens** 1 + 3 = 4"))
        (problem_id,) = store.add_problems(run_id=run, problems=[problem], source="hard", split="train")
        store.add_rollouts(run_id=run, rows=[
            {"problem_id": problem_id, "phase": "srl", "ref": "step-1/student-0-0/srl-1",
             "completion": "2. **tens** 1 + 3 = 5", "reward": 0.912, "correct": None}])
    app = make_app(db)
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        app.push_screen(ProblemScreen(app.screen.source, problem_id))
        await settle(pilot)
        rollouts = app.screen.query_one("#rollouts", DataTable)
        assert rollouts.row_count == 1 and cells(rollouts, 1) == ["srl"]
        shown = text(app.screen.query_one("#completion", Static))
        assert "step 2" in shown and "similarity 0.912" in shown
        assert "1. **ones** 2 + 0 = 2" in shown  # the prompt: expert lines before the step
        assert "expert step: 2. **tens** 1 + 3 = 4" in shown
        assert "action:      2. **tens** 1 + 3 = 5" in shown
