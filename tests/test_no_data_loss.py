"""No command loses data: `soar pretrain-tiny` replaces a non-empty --out only with --force (never the current
directory); one agent per run directory (a second `soar run` or `soar eval-pq` is refused naming the live
pid, readers are not); a full disk stops `soar run` with one line naming what filled up and how to resume
(exit status 3), the store stays consistent and the resume finishes the run. The full disk is each writer's
real error: SQLite's SQLITE_FULL (a store held to its size), safetensors' SafetensorError, torch.save onto
/dev/full, and, as root, a tmpfs that really fills up."""

import json
import os
import random
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from soar_agent import cli
from soar_agent.agent import Agent
from soar_agent.mining import write_jsonl
from soar_agent.store import Store, StoreError, quick_check
from soar_agent.tasks import arith, generate_problems
from tests.test_cli import assert_one_line_error, soar


def tree(root: Path) -> dict:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def toml_path(path) -> str:
    return json.dumps(str(path))


def hard_sets(tmp_path: Path) -> list[str]:
    rng = random.Random(5)
    write_jsonl(generate_problems(arith, [5] * 3, rng), tmp_path / "train.jsonl")
    write_jsonl(generate_problems(arith, [5] * 2, rng), tmp_path / "test.jsonl")
    return [f"domain.hard_train={toml_path(tmp_path / 'train.jsonl')}",
            f"domain.hard_test={toml_path(tmp_path / 'test.jsonl')}"]


def sets(overrides: list[str]) -> list[str]:
    return [part for override in overrides for part in ("--set", override)]


# ---------------------------------------------------------------------------------------- pretrain-tiny --out


def test_pretrain_refuses_a_non_empty_out_before_training_and_replaces_it_only_with_force(tmp_path,
                                                                                         random_tiny_dir):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    quick = ["--steps", "1", "--examples-per-domain", "2"]
    result = soar("pretrain-tiny", "--out", out, *quick)
    assert_one_line_error(result, str(out), "not empty", "--force")
    assert result.stdout == ""  # refused before the corpus was built
    assert tree(out) == {"notes.txt": b"keep me"}

    project = tmp_path / "project"  # `--out .` from a project: never, not even with --force
    project.mkdir()
    (project / "main.py").write_text("print('hours of work')")
    for target in (".", ".."):
        assert_one_line_error(soar("pretrain-tiny", "--out", target, "--force", *quick, cwd=project),
                              f"--out {target}", "contains the current directory")
    assert tree(project) == {"main.py": b"print('hours of work')"}

    init = out / "model"  # the model --init continues from, inside --out
    shutil.copytree(random_tiny_dir, init)
    assert_one_line_error(soar("pretrain-tiny", "--out", out, "--init", init, "--force", *quick),
                          str(out), "holds the --init model")
    assert tree(init) == tree(random_tiny_dir)
    shutil.rmtree(init)

    result = soar("pretrain-tiny", "--out", out, "--force", *quick)
    assert result.returncode == 0, result.stderr
    assert (out / "model.safetensors").is_file() and not (out / "notes.txt").exists()


# ---------------------------------------------------------------------------------------- one agent per run


def wait_for_session(run: Path, process: subprocess.Popen, seconds: float = 120) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and process.poll() is None:
        if (run / "soar.db").is_file():
            try:
                with Store(run / "soar.db", readonly=True) as store:
                    latest = store.latest_run()
                    if latest and any(e["kind"] == "session" for e in store.events(latest["id"], limit=50)):
                        return
            except StoreError:  # the schema is being written
                pass
        time.sleep(0.3)
    raise AssertionError(f"the first run did not start its session: {process.poll()}")


def test_a_second_agent_on_a_run_dir_is_refused_naming_the_live_pid(tmp_path, random_tiny_dir, monkeypatch):
    run = tmp_path / "run"
    overrides = [f"model.path={toml_path(random_tiny_dir)}", *hard_sets(tmp_path),
                 "eval.samples=1024", "eval.max_new_tokens=400"]  # minutes of sampling in the first evaluation
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    first = subprocess.Popen([sys.executable, "-m", "soar_agent.cli", "run", "--run-dir", str(run), "--no-export",
                              *sets(overrides)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                             env=env)
    try:
        wait_for_session(run, first)
        second = soar("run", "--run-dir", run, "--no-export", *sets(overrides), timeout=60)
        assert_one_line_error(second, str(run), f"pid {first.pid} (soar run)", "already working on this run")
        resumed = soar("run", "--run-dir", run, "--no-export", timeout=60)  # a resume is the same agent
        assert_one_line_error(resumed, f"pid {first.pid} (soar run)")
        assert_one_line_error(soar("eval-pq", run, timeout=60), f"pid {first.pid} (soar run)")
        status = soar("status", run, "--json", timeout=60)  # readers take no lock
        assert status.returncode == 0 and json.loads(status.stdout)["run"], status.stderr
        assert first.poll() is None
    finally:
        first.kill()
        first.communicate()
    quick_check(run / "soar.db")
    with Store(run / "soar.db", readonly=True) as store:
        latest = store.latest_run()["id"]
        names = [d["name"] for d in store.datasets(latest)]
        assert sorted(names) == ["hard-test", "hard-train", "hard-val"]  # the refused ones stored nothing
        kinds = [e["kind"] for e in store.events(latest, limit=1000)]
        assert kinds.count("session") == 1 and "resume" not in kinds

    # the kernel dropped the killed process's lock: the resume starts at once (its loop is not what is tested)
    monkeypatch.setattr(Agent, "run", lambda agent, budget: "stopped by the test")
    assert cli.main(["run", "--run-dir", str(run), "--no-export"]) == 0
    assert not (run / "soar.lock").exists()


def test_a_refused_new_run_leaves_no_run_directory(tmp_path):
    run = tmp_path / "run"
    result = soar("run", "--run-dir", run, "--no-export", "--set", f"model.path={toml_path(tmp_path / 'missing')}")
    assert_one_line_error(result, "missing")
    assert not run.exists()


# ---------------------------------------------------------------------------------------- a full disk

FAST = ["teacher.datasets_per_step=2", "teacher.items_per_dataset=4", "teacher.max_new_tokens=60",
        "student.students_per_dataset=1", "student.steps=2", "student.batch_prompts=2", "student.group_size=4",
        "student.max_new_tokens=8", "reward.questions=6", "eval.samples=1", "eval.every_teacher_steps=1",
        "eval.max_new_tokens=8", "promotion.tau=-1.0", "budget.pq_steps=0"]


@pytest.fixture
def fixed_teacher(monkeypatch):
    """The random model cannot write items: the teacher gets a fixed, well-formed curriculum instead."""
    import soar_agent.teacher as teacher

    def fixed_items(engine, domain, count, cfg, seed, progress=None):
        items = [teacher.check_item(domain, f"<question>{i}+1</question><answer>{i + 1}</answer>", "verified")
                 for i in range(count)]
        return items, {"sampled": count, "accepted": count, "rejected": {}}

    monkeypatch.setattr(teacher, "sample_items", fixed_items)


def run_once(tmp_path, random_tiny_dir, capsys) -> tuple[int, str, list[str]]:
    argv = ["run", "--run-dir", str(tmp_path / "run"), "--max-teacher-steps", "1", "--no-export",
            *sets(FAST + hard_sets(tmp_path) + [f"model.path={toml_path(random_tiny_dir)}"])]
    code = cli.main(argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err.strip().splitlines()


def assert_stopped_by_a_full_disk(code: int, err: list[str], run: Path, full: str) -> None:
    assert code == cli.EXIT_DISK_FULL, err
    assert len(err) == 1 and "Traceback" not in err[0], err
    line = err[0]
    assert line.startswith("soar: error: ") and full in line and "no space left on device" in line, line
    assert f"resume with soar run --run-dir {run}" in line, line
    quick_check(run / "soar.db")


def assert_resume_finishes_the_step(run: Path, capsys) -> None:
    assert cli.main(["run", "--run-dir", str(run), "--no-export"]) == 0, capsys.readouterr().err
    with Store(run / "soar.db", readonly=True) as store:
        latest = store.latest_run()["id"]
        assert [(s["step"], s["status"]) for s in store.teacher_steps(latest)] == [(1, "complete")]
        names = [d["name"] for d in store.datasets(latest)]
        assert len(names) == len(set(names)) and names.count("step-1-dataset-0") == 1
        assert [e["teacher_step"] for e in store.evaluations(latest, set_name="hard-test")] == [0, 1]
        assert len(store.trainings(latest)) == 2


def test_a_full_disk_while_saving_a_checkpoint_stops_in_one_line_and_the_run_resumes(
        tmp_path, random_tiny_dir, fixed_teacher, monkeypatch, capsys):
    import safetensors
    import transformers.modeling_utils

    def no_space(*args, **kwargs):  # safetensors' own error for ENOSPC, as it reads on a full tmpfs
        raise safetensors.SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")

    saved = transformers.modeling_utils.safe_save_file
    monkeypatch.setattr(transformers.modeling_utils, "safe_save_file", no_space)
    run = tmp_path / "run"
    code, out, err = run_once(tmp_path, random_tiny_dir, capsys)
    assert_stopped_by_a_full_disk(code, err, run, str(run / "checkpoints" / "step-1"))
    with Store(run / "soar.db", readonly=True) as store:
        latest = store.latest_run()
        assert latest["status"] == "stopped"
        assert any(e["kind"] == "io-error" for e in store.events(latest["id"], level="error"))
        assert len(store.datasets(latest["id"], kind="curriculum")) == 2  # the sampled curriculum is kept
        assert store.trainings(latest["id"]) == []  # the student whose save failed was not recorded
    assert not list((run / "checkpoints").rglob("*.safetensors"))  # no half-written checkpoint
    assert not (run / "exports").exists()  # nothing exported onto the full disk

    monkeypatch.setattr(transformers.modeling_utils, "safe_save_file", saved)  # space freed
    assert_resume_finishes_the_step(run, capsys)


def test_a_full_store_stops_in_one_line_and_the_run_resumes(tmp_path, random_tiny_dir, fixed_teacher, monkeypatch,
                                                            capsys):
    """SQLite's own SQLITE_FULL: the store may not grow past its size when the session starts (max_page_count),
    so the first evaluation's rows (outside a teacher step) do not fit."""
    opened = Agent.open.__func__

    def open_then_fill(cls, *args, **kwargs):
        agent = opened(cls, *args, **kwargs)
        conn = agent.store.db.conn
        conn.execute(f"PRAGMA max_page_count = {conn.execute('PRAGMA page_count').fetchone()[0]}")
        return agent

    monkeypatch.setattr(Agent, "open", classmethod(open_then_fill))
    run = tmp_path / "run"
    code, out, err = run_once(tmp_path, random_tiny_dir, capsys)
    assert_stopped_by_a_full_disk(code, err, run, str(run / "soar.db"))
    with Store(run / "soar.db", readonly=True) as store:
        latest = store.latest_run()["id"]
        # the first evaluation's sets are one transaction each: what did not fit left no row behind
        assert {(e["set_name"], e["teacher_step"]) for e in store.evaluations(latest)} <= {("hard-test", 0)}
        assert store.teacher_steps(latest) == [] and store.datasets(latest, kind="curriculum") == []
        assert sorted(d["name"] for d in store.datasets(latest)) == ["hard-test", "hard-train", "hard-val"]

    monkeypatch.setattr(Agent, "open", classmethod(opened))  # space freed
    assert_resume_finishes_the_step(run, capsys)


@pytest.fixture
def small_disk(tmp_path):
    """A 64 MiB tmpfs (root only): a disk that really fills up."""
    mount = tmp_path / "disk"
    mount.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", str(mount)],
                                           capture_output=True).returncode != 0:
        pytest.skip("mounting a tmpfs needs root")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], capture_output=True)  # lazy: the in-process store may be open


def test_a_really_full_disk_stops_in_one_line_and_the_run_resumes(tmp_path, small_disk, random_tiny_dir, monkeypatch,
                                                                  capsys):
    """The teacher's sampling fills the disk; the next write (the curriculum's transaction, as it happens,
    or a checkpoint) meets the real ENOSPC."""
    import soar_agent.teacher as teacher

    filler = small_disk / "filler"

    def fill_the_disk():
        with open(filler, "wb") as handle:
            with pytest.raises(OSError, match="No space left"):
                while True:
                    handle.write(bytes(1 << 16))
                    handle.flush()

    def items_then_a_full_disk(engine, domain, count, cfg, seed, progress=None):
        if not filler.exists():
            fill_the_disk()
        items = [teacher.check_item(domain, f"<question>{i}+1</question><answer>{i + 1}</answer>", "verified")
                 for i in range(count)]
        return items, {"sampled": count, "accepted": count, "rejected": {}}

    monkeypatch.setattr(teacher, "sample_items", items_then_a_full_disk)
    run = small_disk / "run"
    argv = ["run", "--run-dir", str(run), "--max-teacher-steps", "1", "--no-export",
            *sets(FAST + hard_sets(tmp_path) + [f"model.path={toml_path(random_tiny_dir)}"])]
    code = cli.main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert_stopped_by_a_full_disk(code, err, run, str(run))
    assert "0.0 MiB free there now" in err[0]
    filler.write_bytes(b"")  # space freed; the teacher samples as before
    assert_resume_finishes_the_step(run, capsys)


@pytest.mark.skipif(not Path("/dev/full").is_char_device(), reason="no /dev/full")
def test_torch_save_onto_a_full_disk_is_disk_full_naming_the_file():
    """torch.save into a path says only "unexpected pos"; models.save_torch names the file and the cause."""
    import torch

    from soar_agent.diskfull import DiskFull
    from soar_agent.models import save_torch

    with pytest.raises(DiskFull) as raised:
        save_torch({"state": torch.zeros(100_000)}, "/dev/full", "saving the teacher's optimizer")
    assert raised.value.filename == "/dev/full" and "no space left on device" in str(raised.value)
    assert Path("/dev/full").is_char_device()  # never removed as a partial file
