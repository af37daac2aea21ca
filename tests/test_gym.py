"""reasoning-gym datasets as `gym:<dataset>` domains: levels from the curriculum, scoring with the dataset's
own scorer (metadata regenerated from the stored [level, seed]), the JSONL round trip, the CLI's eval and
mine-hard, one `soar run` teacher step, and the one-line errors (unknown dataset, missing extra)."""

import json
import random
import sys

import pytest

pytest.importorskip("reasoning_gym")

from soar_agent.agent import Agent, Budget  # noqa: E402
from soar_agent.config import ConfigError, load_config  # noqa: E402
from soar_agent.mining import write_jsonl  # noqa: E402
from soar_agent.tasks import generate_problems, get_domain  # noqa: E402
from soar_agent.tasks import gym  # noqa: E402
from soar_agent.tasks.base import Problem, RejectedItem  # noqa: E402
from tests.test_agent import FAST, needs_embedded  # noqa: E402
from tests.test_cli import assert_one_line_error, soar  # noqa: E402


def test_levels_follow_the_datasets_curriculum():
    chain = get_domain("gym:chain_sum")
    assert chain.NAME == "gym:chain_sum" and chain.LEVELS == tuple(range(1, 11))
    rng = random.Random(0)
    easy, hard = chain.generate(1, rng), chain.generate(6, rng)
    # level L uses the L-th setting of each attribute: chain_sum level 1 = 2 terms of 1 digit
    assert easy.question.count("+") + easy.question.count("-") == 1
    assert len(hard.question.rstrip(" =").split()[-1]) == 6  # level 6: operands of 6 digits
    assert easy.meta["gym"][0] == 1 and hard.level == 6


@pytest.mark.parametrize("name", ["gym:chain_sum", "gym:leg_counting", "gym:basic_arithmetic"])
def test_answers_are_scored_by_the_datasets_scorer(name):
    domain = get_domain(name)
    problems = generate_problems(domain, [1, 2, 3], random.Random(1))
    for p in problems:
        assert domain.verify(p, domain.extract_answer(f"1. think\nAnswer: {p.answer}"))
        assert not domain.verify(p, domain.extract_answer("1. think\nAnswer: 0.5x"))
        assert not domain.verify(p, domain.extract_answer(f"Answer: {p.answer}\nand more"))  # not the last line
        assert not domain.verify(p, None)


def test_scoring_uses_the_regenerated_entry_not_only_the_answer_text():
    domain = get_domain("gym:chain_sum")
    p = domain.generate(2, random.Random(2))
    forged = Problem(p.question, str(int(p.answer) + 1), p.domain, p.level, meta=p.meta)
    # the stored answer text is wrong, but the entry regenerated from [level, seed] is the truth
    assert domain.verify(forged, p.answer) and not domain.verify(forged, forged.answer)
    bare = Problem(p.question, p.answer, p.domain, p.level)  # a user's or teacher's question: its own answer
    assert domain.verify(bare, p.answer) and not domain.verify(bare, forged.answer)


def test_an_answer_runs_no_code_here_and_cannot_change_later_scores(tmp_path):
    """Scorers eval or parse_expr the answer (puzzle24 and countdown through sympy, string_insertion with
    eval): an answer's code must not run in soar's process, and one answer must not change how any later
    answer scores."""
    puzzle24, countdown, insertion = (get_domain(f"gym:{name}") for name in ("puzzle24", "countdown",
                                                                              "string_insertion"))
    rng = random.Random(0)
    sums_to_24, countdown_problem, insertion_problem = (domain.generate(1, rng) for domain in
                                                        (puzzle24, countdown, insertion))
    marker = tmp_path / "answer-code-ran"
    for domain, problem in ((puzzle24, sums_to_24), (countdown, countdown_problem)):
        assert not domain.verify(problem, f'__import__("os").system("touch {marker}")')
    assert not marker.exists()
    wrong = "1 + 2 + 3 + 4"  # four numbers in puzzle24's range, but 10, not 24
    assert not puzzle24.verify(sums_to_24, wrong)
    patch_the_scorer = ("exec(\"import sys; sys.modules['reasoning_gym.games.puzzle24'].parse_expr"
                        " = lambda *args, **kwargs: 24\")")
    assert not insertion.verify(insertion_problem, patch_the_scorer)
    assert not puzzle24.verify(sums_to_24, wrong)
    assert puzzle24.verify(sums_to_24, sums_to_24.answer)
    assert countdown.verify(countdown_problem, countdown_problem.answer)


def test_every_shipped_dataset_scores_out_of_process_as_it_would_in_process():
    """Every dataset reasoning-gym ships (the installed version's list, not a copy of it) is scored through
    the sandbox exactly as its scorer scores our own trusted texts in process: the confinement and its
    compile gate refuse nothing a gold answer needs. A dataset whose generator fails at level 1 is
    unusable as a domain anyway (and is named here, so a new one shows up)."""
    import reasoning_gym

    datasets = sorted(reasoning_gym.factory.DATASETS)
    assert len(datasets) >= 100
    problems, predictions, expected, unusable = {}, [], [], []
    for name in datasets:
        try:
            domain = get_domain(f"gym:{name}")
            problem = domain.generate(domain.LEVELS[0], random.Random(6))
        except Exception:  # noqa: BLE001: the dataset's own generator
            unusable.append(name)
            continue
        entry = gym._entry(domain, *problem.meta["gym"])
        for text in (str(entry["answer"]), "0"):
            # trusted text only (the generator's own answer, "0"), so scoring it here is safe
            try:
                want = float(reasoning_gym.get_score_answer_fn(name)(text, entry) or 0.0) >= 1.0
            except Exception:  # noqa: BLE001: verify's rule for a scorer that raises: an exact match
                want = text.strip() == problem.answer.strip()
            problems.setdefault(name, []).append((problem, text, want))
    assert set(unusable) <= {"composite", "knight_swap"}, unusable
    for name, cases in problems.items():
        domain = get_domain(f"gym:{name}")
        got = domain.verify_batch([case[0] for case in cases], [case[1] for case in cases])
        assert got == [case[2] for case in cases], name


def test_jsonl_round_trip_keeps_how_a_problem_was_made(tmp_path):
    domain = get_domain("gym:leg_counting")
    problems = generate_problems(domain, [1, 4], random.Random(3))
    write_jsonl(problems, tmp_path / "set.jsonl")
    loaded = domain.load_problems(tmp_path / "set.jsonl")
    assert [(p.question, p.answer, p.level, p.meta) for p in loaded] == \
        [(p.question, p.answer, p.level, p.meta) for p in problems]
    (tmp_path / "bad.jsonl").write_text(json.dumps({"question": "q", "answer": "1", "meta": {"gym": [99, 1]}}) + "\n")
    with pytest.raises(RejectedItem, match=r"bad.jsonl:1: field 'meta.gym'"):
        domain.load_problems(tmp_path / "bad.jsonl")


def test_unknown_dataset_and_missing_extra_are_one_line_errors(monkeypatch):
    with pytest.raises(ValueError, match="unknown reasoning-gym dataset 'chain_summ'.*chain_sum"):
        get_domain("gym:chain_summ")
    with pytest.raises(ConfigError, match="domain.name"):
        load_config(None, ['domain.name="gym:Bad Name"'])
    gym.load.cache_clear()
    monkeypatch.setitem(sys.modules, "reasoning_gym", None)  # as if the extra were not installed
    with pytest.raises(gym.MissingExtra, match=r"pip install 'soar-agent\[gym\]'"):
        get_domain("gym:chain_sum")
    gym.load.cache_clear()


def test_cli_eval_and_mine_hard_on_a_gym_dataset(random_tiny_dir, tmp_path):
    result = soar("eval", "--model", random_tiny_dir, "--domain", "gym:chain_sum", "--levels", "1,2",
                  "--per-level", "3", "--samples", "2", "--max-new-tokens", "16", "--json")
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert set(summary["levels"]) == {"1", "2"} and summary["problems"] == 6
    out = tmp_path / "hard"
    result = soar("mine-hard", "--model", random_tiny_dir, "--domain", "gym:basic_arithmetic", "--levels", "2,3",
                  "--k", "2", "--pool-per-level", "4", "--test-fraction", "0.5", "--val-fraction", "0",
                  "--max-new-tokens", "12", "--db", tmp_path / "mine.db", "--out-dir", out, "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["train"] == 4 and report["val"] == 0  # a random model fails everything; no hard-val asked for
    rows = [json.loads(line) for line in (out / "gym:basic_arithmetic-hard-train.jsonl").read_text().splitlines()]
    assert all(row["domain"] == "gym:basic_arithmetic" and row["meta"]["gym"][0] in (2, 3) for row in rows)
    assert_one_line_error(soar("eval", "--model", random_tiny_dir, "--domain", "gym:nope"), "reasoning-gym dataset")


@needs_embedded
def test_one_soar_run_teacher_step_on_a_gym_dataset(tmp_path):
    domain = get_domain("gym:chain_sum")
    rng = random.Random(4)
    for split, count in (("train", 8), ("test", 4)):
        write_jsonl(generate_problems(domain, [7] * count, rng), tmp_path / f"{split}.jsonl")
    config = load_config(None, FAST + ['domain.name="gym:chain_sum"',
                                       f'domain.hard_train="{tmp_path / "train.jsonl"}"',
                                       f'domain.hard_test="{tmp_path / "test.jsonl"}"'])
    agent = Agent.open(config, tmp_path / "run", log=lambda m: None)
    assert "1 teacher steps" in agent.run(Budget(max_teacher_steps=1))
    store, run = agent.store, agent.run_id
    assert store.teacher_steps(run)[0]["status"] == "complete"
    hard = store.problems_for(run, source="hard", split="train")
    assert len(hard) == 8 and all(store.to_problem(row).meta["gym"][0] == 7 for row in hard)
    assert {e["set_name"] for e in store.evaluations(run)} >= {"hard-test"}
    # no solver here: the teacher solved its own questions, and students trained supervised on those solutions
    (dataset, *_) = store.datasets(run, kind="curriculum")
    assert dataset["meta"]["solutions"] and all(s.strip() for s in dataset["meta"]["solutions"])
    assert all(t["metrics"]["sft_steps"] > 0 for t in store.trainings(run))
