"""Hardening, second round: the machine a run needs (engine, device, Ray cluster) is checked before the run
directory exists and a resume may change it; the code domain refuses teacher modes; no batch size the config
allows exhausts memory; arith/program data rows the domain cannot score are refused naming file and line;
`\\boxed{6 = 5}` is not 5; a huge config path is a short error; `--run-dir ""` is refused; a moved run resumes."""

import importlib.util
import json
import os
import random
import resource
import shutil
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from soar_agent.config import ConfigError, load_config
from soar_agent.mining import write_jsonl
from soar_agent.store import Store
from soar_agent.tasks import arith, generate_problems
from tests.test_cli import assert_one_line_error, soar
from tests.test_hardening_cli import hard_sets, jsonl, toml_path

ROOT = Path(__file__).resolve().parent.parent


def cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def closed_port() -> int:
    """A port on 127.0.0.1 nothing listens on: bound for a moment and released, never listened on."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


# ------------------------------------------------------------------ 8: engine, device and cluster up front


@pytest.mark.parametrize("setting, field", [
    ("model.engine=vllm", "model.engine"), ("model.device=cuda", "model.device"),
    ("model.device=cuda:1", "model.device"), (None, "run.ray_address")],
    ids=["vllm-without-extra", "cuda-without-gpu", "cuda-1-without-gpu", "ray-unreachable"])
def test_engine_device_and_cluster_are_refused_before_the_run_dir_exists(tmp_path, setting, field):
    if field == "model.engine" and importlib.util.find_spec("vllm") is not None and cuda_available():
        pytest.skip("vLLM and a GPU are here: the engine works")
    if field == "model.device" and cuda_available():
        pytest.skip("a CUDA GPU is here")
    settings = [setting] if setting else ["run.workers=2", f'run.ray_address="127.0.0.1:{closed_port()}"']
    run = tmp_path / "run"
    started = time.monotonic()
    result = soar("run", "--run-dir", run, "--no-export", *[x for s in settings for x in ("--set", s)])
    assert_one_line_error(result, field)
    assert time.monotonic() - started < 60  # before the model, the data and the first evaluation
    assert not run.exists()
    if field == "run.ray_address":
        assert "no Ray cluster answers at 127.0.0.1:" in result.stderr and "run.workers = 1" in result.stderr


def test_a_ray_address_is_checked_without_ray(monkeypatch):
    from soar_agent import preflight

    monkeypatch.setattr(preflight, "_installed", lambda module: False)  # the check needs no Ray to run
    with pytest.raises(ConfigError, match=r"run.ray_address = '127.0.0.1:\d+': no Ray cluster answers"):
        preflight.check_cluster(2, f"127.0.0.1:{closed_port()}")
    monkeypatch.setenv("RAY_ADDRESS", f"ray://127.0.0.1:{closed_port()}")
    with pytest.raises(ConfigError, match=r"RAY_ADDRESS = 'ray://127.0.0.1:\d+': no Ray cluster answers"):
        preflight.check_cluster(2, "")
    with pytest.raises(ConfigError, match="run.ray_address = 'http://x': not a Ray address"):
        preflight.check_cluster(2, "http://x")
    with pytest.raises(ConfigError, match="run.workers = 2 needs Ray"):  # reachable or "auto": Ray itself
        preflight.check_cluster(2, "auto")
    preflight.check_cluster(1, f"127.0.0.1:{closed_port()}")  # one worker joins no cluster


def _created_on_a_gpu_box(tmp_path, random_tiny_dir) -> Path:
    """A run whose stored config says model.device = cuda, as one started on a GPU machine does."""
    from soar_agent.agent import Agent

    train, test = hard_sets(tmp_path)
    config = load_config(None, [f"model.path={toml_path(random_tiny_dir)}", f"domain.hard_train={toml_path(train)}",
                                f"domain.hard_test={toml_path(test)}"])
    Agent.open(config, tmp_path / "run", log=lambda m: None).store.close()
    with Store(tmp_path / "run" / "soar.db") as store:
        run = store.latest_run()
        stored = dict(run["config"], model=dict(run["config"]["model"], device="cuda", engine="vllm"))
        store._write(lambda c: c.execute("UPDATE runs SET config_json = ? WHERE id = ?", (json.dumps(stored), run["id"])))
    return tmp_path / "run"


def test_a_resume_is_checked_and_takes_this_sessions_device_and_engine(tmp_path, random_tiny_dir):
    from soar_agent.agent import Agent

    if cuda_available():
        pytest.skip("a CUDA GPU is here: the stored device works")
    run = _created_on_a_gpu_box(tmp_path, random_tiny_dir)
    events = lambda: Store(run / "soar.db", readonly=True).events(1)  # noqa: E731
    before = len(events())
    assert_one_line_error(soar("run", "--run-dir", run, "--no-export"), "model.engine", "--set model.engine=hf")
    assert_one_line_error(soar("run", "--run-dir", run, "--no-export", "--set", "model.engine=hf"), "model.device",
                          "--set model.device=cpu")
    assert len(events()) == before  # refused before the resume wrote anything
    notes = []
    given = load_config(None, ["model.device=cpu", "model.engine=hf", "student.lr=0.5"])
    agent = Agent.open(given, run, log=notes.append, given={"model.device", "model.engine", "student.lr"})
    assert (agent.config.model.device, agent.config.model.engine) == ("cpu", "hf")
    assert agent.config.student.lr != 0.5  # the experiment's settings stay the stored ones
    said = " ".join(notes)
    assert "model.device = 'cpu'" in said and "model.engine = 'hf'" in said and "student.lr" in said
    agent.model("baseline")  # loads on this machine
    agent.store.close()


# ------------------------------------------------------------------ 9: the code domain and teacher modes


@pytest.mark.parametrize("mode", ["soar", "intrinsic"])
def test_the_code_domain_refuses_teacher_modes_before_the_run(tmp_path, mode):
    from soar_agent.agent import check_run_config

    problems = jsonl(tmp_path / "code.jsonl", {"question": "Write add(a, b).", "tests": ["assert add(1, 2) == 3"]},
                     {"question": "Write neg(a).", "tests": ["assert neg(2) == -2"]})
    files = [f"domain.hard_train={toml_path(problems)}", f"domain.hard_test={toml_path(problems)}",
             "eval.max_new_tokens=64", "student.max_new_tokens=64"]  # the shipped model's 512 positions
    with pytest.raises(ConfigError, match=f"run.mode = '{mode}' with domain.name = 'code'.*use --mode hard-only"):
        check_run_config(load_config(None, ['domain.name="code"', f"run.mode={mode}", *files]))
    run = tmp_path / "run"
    result = soar("run", "--run-dir", run, "--no-export", "--allow-weak-sandbox", "--mode", mode,
                  "--set", 'domain.name="code"', *[x for f in files for x in ("--set", f)])
    assert_one_line_error(result, "run.mode", "no tests", "--mode hard-only")
    assert not run.exists()
    check_run_config(load_config(None, ['domain.name="code"', "run.mode=hard-only", *files]))  # hard-only runs


# ------------------------------------------------------------------ 10: no batch size exhausts memory


def test_the_largest_batch_the_config_allows_is_micro_batched_to_fit():
    from soar_agent.models import load_model
    from soar_agent.rl.train import MEMORY_SHARE, Rollout, device_memory, rows_per_pass, token_bytes

    cfg = load_config(None, ["student.group_size=256", "student.batch_prompts=1024", "student.micro_batch=0",
                             "student.backend=rloo"]).student
    model = load_model("default")
    rows = cfg.group_size * cfg.batch_prompts
    batch = Rollout([None] * rows, [[5] * 40] * rows, [[6] * cfg.max_new_tokens] * rows, [], [], cfg.group_size, 0, 0.0)
    size = rows_per_pass(model, batch, cfg.micro_batch)
    assert 1 <= size < rows
    assert size * (40 + cfg.max_new_tokens) * token_bytes(model) <= device_memory("cpu") // MEMORY_SHARE
    assert rows_per_pass(model, batch, 8) == min(8, size)  # a micro-batch that fits is kept
    small = Rollout([None] * 64, [[5] * 10] * 64, [[6] * 10] * 64, [], [], 8, 0, 0.0)
    assert rows_per_pass(model, small, 0) == 64  # 0 = the whole batch, when it fits


BOMB = textwrap.dedent("""
    import resource, sys
    resource.setrlimit(resource.RLIMIT_AS, (3 * 2**30, 3 * 2**30))  # a 3 GB machine
    import torch
    from soar_agent.config import load_config
    from soar_agent.models import load_model
    from soar_agent.rl import train

    cfg = load_config(None, ["student.group_size=256", "student.batch_prompts=1024", "student.micro_batch=0",
                             "student.backend=rloo", "student.kl_coef=0"]).student
    model = load_model(sys.argv[1])
    rows = cfg.group_size * cfg.batch_prompts
    passes = []
    forward = train.sequence_logprobs
    train.sequence_logprobs = lambda m, p, c, *a, **k: passes.append(len(c)) or forward(m, p, c, *a, **k)
    batch = train.Rollout([None] * rows, [[10 + row // 256 % 50, 11, 11, 11] for row in range(rows)],
                          [[20 + row % 40] * 2 for row in range(rows)], [[-1.0] * 2] * rows, [""] * rows,
                          cfg.group_size, 2 * rows, 0.0)
    stats = train.policy_step(model, torch.optim.AdamW(model.parameters(), lr=1e-5), batch,
                              torch.tensor([1.0, -1.0] * (rows // 2)), cfg, 0)
    print("updated", stats["updated"], "passes", len(passes), "rows", max(passes))
""")


@pytest.mark.timeout(300)
def test_the_issues_batch_trains_a_step_in_3_gb(random_tiny_dir):
    """The issue's settings (1,024 prompts x 256 completions, micro_batch = 0, rloo): one policy step of the
    262,144 rows under a 3 GB address-space limit. Before, the whole batch went through the model at once and
    died allocating; now it is micro-batched to fit."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, "-c", BOMB, str(random_tiny_dir)], capture_output=True, text=True,
                            env=env, cwd=ROOT, timeout=280)
    assert result.returncode == 0, result.stderr[-2000:]
    words = result.stdout.split()
    assert words[:2] == ["updated", "True"] and int(words[3]) > 1 and int(words[5]) < 262_144, result.stdout


# ------------------------------------------------------------------ 11: arith and program data rows


@pytest.mark.parametrize("domain, row, needle", [
    ("arith", {"question": "3 + 4", "answer": "7.0"}, "field 'answer'"),
    ("arith", {"question": "3 + 4", "answer": "07"}, "field 'answer'"),
    ("arith", {"question": "3 + 4", "answer": "two"}, "field 'answer'"),
    ("arith", {"question": "3 + 4", "answer": "-0"}, "field 'answer'"),
    ("arith", {"question": "3 / 4", "answer": "1"}, "field 'question': not an arith expression"),
    ("arith", {"question": "two plus two", "answer": "4"}, "field 'question': not an arith expression"),
    ("program", {"question": "a=3\nprint(a)", "answer": "3.0"}, "field 'answer'"),
    ("program", {"question": "import os\nprint(1)", "answer": "1"}, "field 'question': not a program"),
], ids=["7.0", "07", "two", "-0", "division", "words", "program-3.0", "program-import"])
def test_a_data_row_the_domain_cannot_score_names_file_and_line(tmp_path, domain, row, needle):
    good = {"arith": {"question": "3 + 4", "answer": "7"}, "program": {"question": "a=3\nprint(a)", "answer": "3"}}
    data = jsonl(tmp_path / "pool.jsonl", good[domain], row)
    result = soar("eval", "--model", tmp_path / "no-model", "--domain", domain, "--data", data, "--allow-weak-sandbox")
    assert_one_line_error(result, "pool.jsonl:2:", needle)  # read before the model (a missing one here)


def test_the_shipped_hard_sets_pass_the_row_checks():
    from soar_agent.tasks import get_domain, load_problem_file

    for path in sorted((ROOT / "curricula" / "hard").glob("*.jsonl")):
        name = path.name.split("-hard-")[0]
        if name in ("arith", "program"):
            assert load_problem_file(path, get_domain(name)), path


# ------------------------------------------------------------------ 12: smaller ones


def test_a_boxed_equation_between_numbers_is_not_its_right_side():
    from soar_agent.tasks import math as math_domain

    predictions = ["6 = 5", "5", "x = 5", "2+3=5", "\\frac{10}{2} = 5", "6"]
    try:
        assert math_domain.verify_batch(["5"] * len(predictions), predictions) == [False, True, True, True, True, False]
    finally:
        math_domain.shutdown_verifier()


def test_a_huge_path_in_the_config_is_a_short_error_naming_the_field(tmp_path):
    config = tmp_path / "big.toml"
    config.write_text('[domain]\nhard_train = "' + "a" * 5_000_000 + '"\n')
    result = soar("run", config, "--run-dir", tmp_path / "run", "--no-export")
    assert_one_line_error(result, "domain.hard_train", "at most 4096 characters", "5000000")
    assert len(result.stderr) < 500
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("value", ["", " "])
def test_an_empty_run_dir_is_refused(tmp_path, value):
    result = soar("run", "--run-dir", value, "--no-export", cwd=tmp_path)
    assert_one_line_error(result, "--run-dir", "expected a directory")
    assert list(tmp_path.iterdir()) == []  # no runs/default


def test_checkpoint_paths_are_stored_relative_to_the_run_dir(tmp_path, monkeypatch):
    run = tmp_path / "run"
    with Store(run / "soar.db") as store:
        run_id = store.create_run(name="r", mode="soar")
        store.add_checkpoint(run_id=run_id, path=run / "checkpoints" / "teacher-step-1", role="teacher",
                             status="complete")
        store.add_checkpoint(run_id=run_id, path=tmp_path / "elsewhere", role="export", status="complete")
        store.add_training(run_id=run_id, teacher_step=1, dataset_id=None, student_index=0, reward=0.0,
                           accuracy_before=None, accuracy_after=None, metrics={},
                           checkpoint_path=str(run / "checkpoints" / "step-1" / "student-0-0"))
        stored = [tuple(r) for r in store.db.conn.execute("SELECT path FROM checkpoints ORDER BY id")]
        assert stored == [("checkpoints/teacher-step-1",), (str(tmp_path / "elsewhere"),)]
    shutil.move(run, tmp_path / "moved")
    with Store(tmp_path / "moved" / "soar.db", readonly=True) as store:
        assert [c["path"] for c in store.checkpoints(1)] == [str(tmp_path / "moved" / "checkpoints" / "teacher-step-1"),
                                                              str(tmp_path / "elsewhere")]
        assert store.trainings(1)[0]["checkpoint_path"] == str(tmp_path / "moved" / "checkpoints" / "step-1" /
                                                               "student-0-0")
    monkeypatch.chdir(tmp_path)  # opened by a relative path: the paths are relative to where it is opened from
    with Store(Path("moved") / "soar.db", readonly=True) as store:
        assert store.checkpoints(1)[0]["path"] == os.path.join("moved", "checkpoints", "teacher-step-1")


def test_a_run_stored_with_absolute_paths_and_then_moved_resumes(tmp_path, monkeypatch):
    """A store written before paths were relative (schema 4): migration 5 makes them relative to the run
    directory, also when the run was moved before the upgrade."""
    from soar_agent import store as store_mod

    run = tmp_path / "run"
    (run / "checkpoints" / "baseline-step-1").mkdir(parents=True)
    old = list(store_mod.MIGRATIONS)
    monkeypatch.setattr(store_mod, "MIGRATIONS", old[:4])
    with Store(run / "soar.db") as store:
        run_id = store.create_run(name="r", mode="soar")
        store.db.conn.execute("INSERT INTO checkpoints (run_id, path, role, status, created_at) VALUES (?, ?, ?, ?, ?)",
                              (run_id, str(run / "checkpoints" / "baseline-step-1"), "baseline", "complete", "t"))
    monkeypatch.setattr(store_mod, "MIGRATIONS", old)
    shutil.move(run, tmp_path / "moved")
    with Store(tmp_path / "moved" / "soar.db") as store:
        (checkpoint,) = store.checkpoints(1)
        assert checkpoint["path"] == str(tmp_path / "moved" / "checkpoints" / "baseline-step-1")
        assert Path(checkpoint["path"]).is_dir()


def test_a_moved_run_resumes_from_its_checkpoints(tmp_path, random_tiny_dir):
    from soar_agent.agent import Agent, Budget

    train, test = hard_sets(tmp_path)
    config = load_config(None, [f"model.path={toml_path(random_tiny_dir)}", f"domain.hard_train={toml_path(train)}",
                                f"domain.hard_test={toml_path(test)}", "run.mode=hard-only", "student.steps=1",
                                "student.batch_prompts=2", "student.group_size=2", "student.max_new_tokens=8",
                                "eval.samples=1", "eval.max_new_tokens=8", "reward.questions=2",
                                "teacher.datasets_per_step=1", "budget.pq_steps=0", "promotion.tau=-1.0"])
    agent = Agent.open(config, tmp_path / "run", log=lambda m: None)
    agent.run(Budget(max_teacher_steps=1))
    agent.store.close()
    shutil.move(tmp_path / "run", tmp_path / "moved")
    agent = Agent.open(None, tmp_path / "moved", log=lambda m: None)
    checkpoint = agent.latest_checkpoint("baseline")
    assert checkpoint is not None and Path(checkpoint["path"]).is_dir()
    assert Path(checkpoint["path"]).is_relative_to(tmp_path / "moved")
    agent.model("baseline")  # a resume's first load: the old absolute path pointed into the old directory
    agent.store.close()
