"""How fast `soar tui` opens and pages on a big run, against "load everything" baselines in the same run.

Builds a store shaped like a long run (default: 1,000,000 rollouts, 100,000 problems, 200 teacher steps of
8 curricula x 60 problems, hard sets, promotions, evaluations every 5 steps, events) with executemany in
one transaction, then measures:

* the app (Textual pilot, 80x24) from construction to the Overview showing the run, against the 1 s goal
  and against `soar status`'s headless summary (`soar_agent.status.run_status`) on the same store;
* the Curricula tab's first page through the pilot, and a deep page (keyset) against OFFSET at the same
  depth and against loading every curriculum with its problems;
* a problem's rollouts (a hard-test problem with 20,000 eval rollouts): first page through the pilot, and a
  deep page (keyset) against OFFSET at the same depth and against loading all of the problem's rollouts.

    python bench/tui_load.py [--db PATH] [--rollouts N] [--problems N]   # --db: build there, or reuse it

The last line holds the ratios (baseline time / TUI time; above 1 means the TUI path is faster).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from soar_agent.store import Store, content_hash  # noqa: E402
from tui import queries  # noqa: E402

STEPS, DATASETS_PER_STEP, ITEMS = 200, 8, 60
HOT_ROLLOUTS = 20_000  # eval rollouts of the one "hot" hard-test problem (its deep page is page 200)
PAGE = queries.PAGE
T0 = "2025-06-01T00:00:00.000+00:00"


def build(db: Path, n_rollouts: int, n_problems: int, seed: int = 0) -> None:
    rng = random.Random(seed)
    curriculum_problems = STEPS * DATASETS_PER_STEP * ITEMS
    hard = max(100, (n_problems - curriculum_problems) // 2)
    with Store(db) as store:
        run_id = store.create_run(name="bench", mode="soar", config={"bench": True}, status="running")
        conn = store.db.conn
        conn.execute("PRAGMA synchronous = OFF")
        conn.execute("BEGIN")

        def problem_rows(source, split, count, start):
            for i in range(start, start + count):
                question = f"What is {i} * {i % 97} + {i % 13}? Show the steps and give the final answer."
                yield (run_id, question, str(i * (i % 97) + i % 13), 1, "arith", 1 + i % 7, None, source, split,
                       content_hash("arith", question), json.dumps({"teacher_step": i // (DATASETS_PER_STEP * ITEMS)}),
                       "[]", "{}", T0)

        sql = ("INSERT INTO problems (run_id, question, answer, answer_verified, domain, level, difficulty, source,"
               " split, content_hash, provenance_json, steps_json, meta_json, created_at)"
               " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)")
        conn.executemany(sql, problem_rows("hard", "train", hard, 0))
        conn.executemany(sql, problem_rows("hard", "test", hard, hard))
        conn.executemany(sql, problem_rows("teacher", None, curriculum_problems, 2 * hard))
        ids = [r[0] for r in conn.execute("SELECT id FROM problems WHERE run_id = ? ORDER BY id", (run_id,))]
        train_ids, test_ids, teacher_ids = ids[:hard], ids[hard:2 * hard], ids[2 * hard:]

        def dataset(name, kind, step, problem_ids, reward=None, promoted=0):
            dataset_id = conn.execute(
                "INSERT INTO datasets (run_id, name, kind, teacher_step, reward, promoted, created_at)"
                " VALUES (?, ?, ?, ?, ?, ?, ?)", (run_id, name, kind, step, reward, promoted, T0)).lastrowid
            conn.executemany("INSERT INTO dataset_items (dataset_id, position, problem_id) VALUES (?, ?, ?)",
                             [(dataset_id, pos, pid) for pos, pid in enumerate(problem_ids)])
            return dataset_id

        dataset("hard-train", "hard-train", None, train_ids)
        dataset("hard-test", "hard-test", None, test_ids)
        trainings, steps, checkpoints = [], [], []
        for step in range(1, STEPS + 1):
            promote = step % 10 == 0
            best = None
            for k in range(DATASETS_PER_STEP):
                chunk = teacher_ids[((step - 1) * DATASETS_PER_STEP + k) * ITEMS:][:ITEMS]
                reward = rng.gauss(0.01, 0.02)
                promoted = int(promote and k == 0)
                dataset_id = dataset(f"step-{step}-dataset-{k}", "curriculum", step, chunk, reward, promoted)
                best = best or dataset_id
                trainings += [(run_id, step, dataset_id, j, reward, 0.1, 0.1 + reward, None,
                               json.dumps({"reward_mean": 0.2 + step / 1000, "tokens_per_second": 900 + j,
                                           "completion_length": 40.0}), T0) for j in range(2)]
            if promote:
                dataset(f"promotion-step-{step}", "promotion", step, teacher_ids[:ITEMS])
            steps.append((run_id, step, "complete", 0.01, 0.01, best if promote else None,
                          json.dumps({"seconds": 300.0}), T0, T0))
            checkpoints.append((run_id, f"/bench/teacher-step-{step}", "teacher", step, "complete", "{}", T0))
            if promote:
                checkpoints.append((run_id, f"/bench/baseline-step-{step}", "baseline", step, "complete", "{}", T0))
        conn.executemany("INSERT INTO trainings (run_id, teacher_step, dataset_id, student_index, reward,"
                         " accuracy_before, accuracy_after, checkpoint_path, metrics_json, created_at)"
                         " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", trainings)
        conn.executemany("INSERT INTO teacher_steps (run_id, step, status, mean_reward, moving_average,"
                         " promoted_dataset_id, metrics_json, started_at, finished_at)"
                         " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                         steps)
        conn.executemany("INSERT INTO checkpoints (run_id, path, role, teacher_step, status, metrics_json, created_at)"
                         " VALUES (?, ?, ?, ?, ?, ?, ?)", checkpoints)
        for step in range(0, STEPS + 1, 5):
            summary = {"problems": hard, "greedy_acc": 0.1 + step / 2000, "pass@1": 0.1 + step / 2000,
                       "pass@8": 0.2 + step / 1500, "pass@32": 0.3 + step / 1000}
            evaluation_id = conn.execute(
                "INSERT INTO evaluations (run_id, set_name, teacher_step, samples_per_problem, temperature,"
                " summary_json, created_at) VALUES (?, 'hard-test', ?, 32, 1.0, ?, ?)",
                (run_id, step, json.dumps(summary), T0)).lastrowid
            conn.executemany("INSERT INTO evaluation_results (evaluation_id, problem_id, samples, correct,"
                             " greedy_correct, pass_at_json) VALUES (?, ?, 32, ?, ?, '{}')",
                             [(evaluation_id, pid, i % 5, i % 2) for i, pid in enumerate(test_ids)])
            conn.execute("INSERT INTO evaluations (run_id, set_name, teacher_step, samples_per_problem, temperature,"
                         " summary_json, created_at) VALUES (?, 'easy', ?, 0, 1.0, ?, ?)",
                         (run_id, step, json.dumps({"problems": 60, "greedy_acc": 0.7}), T0))
        conn.executemany("INSERT INTO events (run_id, ts, level, kind, message, data_json) VALUES (?, ?, ?, ?, ?, ?)",
                         [(run_id, T0, "info", kind, f"step {s}: {kind}", "{}") for s in range(1, STEPS + 1)
                          for kind in ("teacher-sampled", "promotion" if s % 10 == 0 else "student-done")])

        hot = test_ids[0]

        def rollouts():
            # The hot problem's eval rollouts are spread over the whole table, as evaluations every few steps
            # would leave them; the rest are student rollouts of curriculum problems and eval rollouts.
            every = max(1, (n_rollouts - HOT_ROLLOUTS) // HOT_ROLLOUTS)
            for i in range(n_rollouts - HOT_ROLLOUTS):
                if i % every == 0 and i // every < HOT_ROLLOUTS:
                    yield (run_id, hot, "eval", f"eval-step-{i // every // 100}/hard-test",
                           f"eval sample {i}: 12 * 7 = 84, plus 3 is 87. Answer: 87", None, None, T0)
                if i % 3 == 2:
                    yield (run_id, test_ids[i % len(test_ids)], "eval", "eval/hard-test",
                           f"eval sample {i}: Answer: {i % 100}", None, None, T0)
                else:
                    reward = (i * 7919) % 3 == 0
                    yield (run_id, teacher_ids[i % len(teacher_ids)], "student", f"step-{1 + i % STEPS}/student-0-0",
                           f"student sample {i}: 4 * 5 = 20. Answer: {i % 50}", float(reward), int(reward), T0)

        conn.executemany("INSERT INTO rollouts (run_id, problem_id, phase, ref, completion, reward, correct,"
                         " created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)", rollouts())
        conn.execute("INSERT INTO events (run_id, ts, level, kind, message, data_json) VALUES (?, ?, 'info', 'session',"
                     " 'session started', ?)", (run_id, T0, json.dumps({"deadline": time.time() + 8 * 3600})))
        conn.execute("COMMIT")
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")


def timed(fn, repeat: int = 3) -> tuple[float, object]:
    """Best of `repeat` wall times (seconds) and the last result."""
    best, result = float("inf"), None
    for _ in range(repeat):
        started = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - started)
    return best, result


async def pilot_times(db: Path, hot: int) -> dict[str, float]:
    from textual.css.query import NoMatches
    from textual.widgets import DataTable

    from tui.app import RunScreen, SoarApp
    from tui.problem import ProblemScreen

    def holds(condition) -> bool:
        try:
            return bool(condition())
        except NoMatches:  # the screen is not composed yet
            return False

    async def until(pilot, condition, limit: float = 60.0) -> None:
        deadline = time.perf_counter() + limit
        while not holds(condition):
            if time.perf_counter() > deadline:
                raise TimeoutError("the app did not get there in time")
            await asyncio.sleep(0.002)  # yield to the app (pilot.pause would also force a repaint each time)

    out = {}
    started = time.perf_counter()
    app = SoarApp(db.parent, poll_interval=60.0)
    async with app.run_test(size=(80, 24)) as pilot:
        await until(pilot, lambda: isinstance(app.screen, RunScreen) and app.screen.overview is not None
                    and app.screen.query_one("#stats").content != "loading…")
        out["overview"] = time.perf_counter() - started
        # Actions rather than pilot.press, which also waits for the tab underline's animation to end.
        started = time.perf_counter()
        await app.run_action("show_tab('curricula')", app.screen)
        await until(pilot, lambda: app.screen.query_one("#datasets", DataTable).row_count == PAGE)
        out["curricula_first"] = time.perf_counter() - started
        started = time.perf_counter()
        app.push_screen(ProblemScreen(app.screen.source, hot))
        await until(pilot, lambda: isinstance(app.screen, ProblemScreen)
                    and app.screen.query_one("#rollouts", DataTable).row_count == PAGE)
        out["rollouts_first"] = time.perf_counter() - started
        started = time.perf_counter()
        app.screen.query_one("#rollouts", DataTable).action_scroll_bottom()  # `end`: the next keyset page loads
        await until(pilot, lambda: app.screen.query_one("#rollouts", DataTable).row_count == 2 * PAGE)
        out["rollouts_next"] = time.perf_counter() - started
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--db", help="store to build (kept), or to reuse when it exists")
    parser.add_argument("--rollouts", type=int, default=1_000_000)
    parser.add_argument("--problems", type=int, default=100_000)
    args = parser.parse_args()
    temporary = None
    if args.db:
        db = Path(args.db)
    else:
        temporary = tempfile.TemporaryDirectory(prefix="tui-load-")
        db = Path(temporary.name) / "bench" / "soar.db"
    if not db.exists():
        started = time.perf_counter()
        build(db, args.rollouts, args.problems)
        print(f"built {db} in {time.perf_counter() - started:.1f}s ({db.stat().st_size / 2**20:.0f} MiB)")

    with Store(db, readonly=True) as store:
        run = store.latest_run()
        run_id = run["id"]
        n_problems = store.count("problems", run_id)
        n_rollouts = store.db.execute("SELECT max(id) FROM rollouts").fetchone()[0]
        (hard_test,) = store.datasets(run_id, kind="hard-test")
        hot = store.db.execute("SELECT problem_id FROM dataset_items WHERE dataset_id = ? AND position = 0",
                               (hard_test["id"],)).fetchone()[0]
        hot_ids = [r[0] for r in store.db.execute("SELECT id FROM rollouts WHERE problem_id = ? ORDER BY id", (hot,))]
        curricula_ids = [r[0] for r in store.db.execute(
            "SELECT id FROM datasets WHERE run_id = ? AND kind = 'curriculum' ORDER BY id DESC", (run_id,))]
        print(f"store: {n_problems:,} problems, ~{n_rollouts:,} rollouts, {len(curricula_ids):,} curricula, "
              f"hot problem {hot} with {len(hot_ids):,} rollouts")

        # Overview: the TUI's poll against the headless `soar status` summary on the same store.
        t_overview_query, _ = timed(lambda: queries.overview(store, run_id, time.time()))
        from soar_agent.status import run_status

        t_status, _ = timed(lambda: run_status(db.parent))
        t_count, _ = timed(lambda: store.count("rollouts", run_id), repeat=1)

        # Curricula: a deep page (the last one) by keyset, by OFFSET, and loading everything.
        deep_c = len(curricula_ids) - PAGE // 2
        before = curricula_ids[deep_c - 1]
        t_cur_first, _ = timed(lambda: queries.curricula_page(store, run_id))
        t_cur_deep, page = timed(lambda: queries.curricula_page(store, run_id, before_id=before))
        assert page and page[0]["id"] == curricula_ids[deep_c]
        t_cur_offset, _ = timed(lambda: store.db.execute(
            "SELECT d.*, (SELECT count(*) FROM dataset_items i WHERE i.dataset_id = d.id) FROM datasets d"
            " WHERE d.run_id = ? AND d.kind = 'curriculum' ORDER BY d.id DESC LIMIT ? OFFSET ?",
            (run_id, PAGE, deep_c)).fetchall())
        t_cur_all, _ = timed(lambda: [store.dataset_problems(d["id"]) for d in store.datasets(run_id, "curriculum")],
                             repeat=1)

        # A problem's rollouts: the deepest page by keyset, by OFFSET, and loading all of them.
        deep_r = len(hot_ids) - PAGE
        after = hot_ids[deep_r - 1]
        t_roll_first, _ = timed(lambda: queries.rollouts_page(store, hot))
        t_roll_deep, page = timed(lambda: queries.rollouts_page(store, hot, after_id=after))
        assert page[0]["id"] == hot_ids[deep_r]
        t_roll_offset, _ = timed(lambda: store.db.execute(
            "SELECT * FROM rollouts WHERE problem_id = ? ORDER BY id LIMIT ? OFFSET ?", (hot, PAGE, deep_r)).fetchall())
        t_roll_all, _ = timed(lambda: store.db.execute("SELECT * FROM rollouts WHERE run_id = ? AND problem_id = ?"
                                                       " ORDER BY id", (run_id, hot)).fetchall(), repeat=1)
        plan = " ".join(r[3] for r in store.db.execute(
            "EXPLAIN QUERY PLAN SELECT id FROM rollouts WHERE problem_id = ? AND id > ? ORDER BY id LIMIT 100",
            (hot, 0)))

    ui = asyncio.run(pilot_times(db, hot))
    ms = lambda seconds: f"{seconds * 1000:8.1f} ms"  # noqa: E731
    print(f"rollout page plan: {plan}")
    print("app (Textual pilot, 80x24):")
    print(f"  open to overview          {ms(ui['overview'])}   (goal < 1000 ms)")
    print(f"  curricula first page      {ms(ui['curricula_first'])}")
    print(f"  rollouts first page       {ms(ui['rollouts_first'])}")
    print(f"  rollouts next page        {ms(ui['rollouts_next'])}")
    print("queries (best of 3):")
    print(f"  overview poll             {ms(t_overview_query)}   vs soar status summary {ms(t_status)},"
          f" COUNT(*) rollouts {ms(t_count)}")
    print(f"  curricula first page      {ms(t_cur_first)}")
    print(f"  curricula deep page       {ms(t_cur_deep)}   vs OFFSET {ms(t_cur_offset)},"
          f" load all curricula + problems {ms(t_cur_all)}")
    print(f"  rollouts first page       {ms(t_roll_first)}")
    print(f"  rollouts deep page        {ms(t_roll_deep)}   vs OFFSET {ms(t_roll_offset)},"
          f" load all {len(hot_ids):,} {ms(t_roll_all)}")
    ratio = lambda baseline, ours: f"{baseline / ours:.1f}x"  # noqa: E731
    print(f"ratios: open-to-overview {ui['overview']:.2f}s = {ratio(1.0, ui['overview'])} under the 1 s goal;"
          f" overview poll {ratio(t_status, t_overview_query)} vs soar status;"
          f" curricula deep page {ratio(t_cur_offset, t_cur_deep)} vs OFFSET,"
          f" {ratio(t_cur_all, t_cur_deep)} vs load-all;"
          f" rollouts deep page {ratio(t_roll_offset, t_roll_deep)} vs OFFSET,"
          f" {ratio(t_roll_all, t_roll_deep)} vs load-all")
    if temporary is not None:
        temporary.cleanup()


if __name__ == "__main__":
    main()
