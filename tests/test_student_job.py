"""Students as independent jobs (soar_agent.student_job): the job is pure (same job -> same result, in
this process and as a Ray task), and a SOAR step on Ray workers records each unit once, even when a
worker is killed mid-training (Ray retries the task with the same seed)."""

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from soar_agent.agent import Agent, Budget
from soar_agent.config import config_to_dict, load_config
from soar_agent.student_job import StudentJob, run_on_ray, run_student_job
from soar_agent.tasks import arith, generate_problems
from tests.test_agent import FAST, needs_embedded

import random


def small_job(tmp_path, name: str, seed: int = 3) -> StudentJob:
    config = load_config(None, FAST)
    rng = random.Random(1)
    return StudentJob(key=(0, None, 0), baseline_path="default", config=config_to_dict(config),
                      problems=generate_problems(arith, [3, 4] * 4, rng),
                      reward_questions=generate_problems(arith, [5] * 4, rng), steps=2, seed=seed,
                      reward_seed=55, out_dir=str(tmp_path / name), ref="step-1/student-0-0")


def weights(path):
    from safetensors.torch import load_file

    return load_file(os.path.join(path, "model.safetensors"))


@pytest.fixture(scope="module")
def local_ray():
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"OMP_NUM_THREADS": "1"}})
    yield
    ray.shutdown()


def assert_same_result(result, first) -> None:
    assert result.after == first.after and result.metrics["reward_mean"] == first.metrics["reward_mean"]
    assert [r["completion"] for r in result.rollouts] == [r["completion"] for r in first.rollouts]
    a, b = weights(first.checkpoint_path), weights(result.checkpoint_path)
    assert all((a[k] == b[k]).all() for k in a)


@needs_embedded
def test_a_student_job_is_pure_in_process(tmp_path):
    first = run_student_job(small_job(tmp_path, "a"), threads=1)
    second = run_student_job(small_job(tmp_path, "b"), threads=1)
    other_seed = run_student_job(small_job(tmp_path, "d", seed=4), threads=1)
    assert first.metrics["updates"] >= 1  # the job really trained
    assert_same_result(second, first)
    assert [r["completion"] for r in other_seed.rollouts] != [r["completion"] for r in first.rollouts]
    assert {r["ref"] for r in first.rollouts} == {"step-1/student-0-0"}
    assert {r["question"] for r in first.rollouts} <= {p.question for p in small_job(tmp_path, "a").problems}
    assert set(os.listdir(tmp_path)) == {"a", "b", "d"}  # a job writes nothing but its out_dir


@pytest.mark.slow  # starts Ray (about a minute on 2 cores); run with -m slow after pip install '.[ray]'
@needs_embedded
def test_a_student_job_as_a_ray_task_gives_the_in_process_result(tmp_path, local_ray):
    first = run_student_job(small_job(tmp_path, "a"), threads=1)
    (remote,) = list(run_on_ray([small_job(tmp_path, "c")], workers=2))
    assert_same_result(remote, first)


def kill_one_student_worker(killed: list, deadline: float) -> None:
    """SIGKILL the first Ray worker seen running a student job (its process title names the task)."""
    while time.time() < deadline and not killed:
        for pid in filter(str.isdigit, os.listdir("/proc")):
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as handle:
                    title = handle.read().decode(errors="replace")
            except OSError:
                continue
            if "ray::run_student_job" in title:
                time.sleep(1.0)  # mid-training, not while it starts
                os.kill(int(pid), signal.SIGKILL)
                killed.append(int(pid))
                return
        time.sleep(0.2)


@pytest.mark.slow  # Ray plus two full teacher steps: about 8 minutes on 2 cores
@needs_embedded
def test_a_step_on_ray_workers_records_each_unit_once_after_a_worker_dies(tmp_path, hard_files, local_ray):  # noqa: F811
    config = load_config(None, FAST + hard_files + ["run.workers=2"])
    agent = Agent.open(config, tmp_path / "run", log=lambda m: None)
    killed: list[int] = []
    killer = threading.Thread(target=kill_one_student_worker, args=(killed, time.time() + 120))
    killer.start()
    assert "1 teacher steps" in agent.run(Budget(max_teacher_steps=1))
    killer.join()
    assert killed, "no student worker was seen (the test killed nothing)"
    store, run = agent.store, agent.run_id
    (step,) = store.teacher_steps(run)
    assert step["status"] == "complete"
    trainings = store.trainings(run, 1)
    keys = [(t["dataset_id"], t["student_index"]) for t in trainings]
    assert len(keys) == len(set(keys)) == 2 and all(t["reward"] is not None for t in trainings)
    assert all(os.path.isdir(t["checkpoint_path"]) or step["promoted_dataset_id"] for t in trainings)
    # the same units run serially give the same rewards: the retried job repeated its seed
    serial = Agent.open(load_config(None, FAST + hard_files), tmp_path / "serial", log=lambda m: None)
    serial.run(Budget(max_teacher_steps=1))
    assert sorted(t["reward"] for t in serial.store.trainings(serial.run_id, 1)) == \
        pytest.approx(sorted(t["reward"] for t in trainings), abs=1e-6)


FRAGMENTED_HEAP = """
import sys
from pathlib import Path
from soar_agent.student_job import release_freed_memory

def rss_mb():
    return int(next(l for l in Path("/proc/self/status").read_text().splitlines() if l.startswith("VmRSS:")).split()[1]) / 1024

blocks = [bytearray(64 * 1024) for _ in range(3000)]  # ~190 MB of heap chunks (below glibc's mmap threshold)
pin = bytearray(64 * 1024)  # the heap's top stays in use, so freeing the rest cannot shrink it from the end
del blocks
freed = rss_mb()
if sys.argv[1] == "release":
    release_freed_memory()
print(freed, rss_mb())
"""


@pytest.mark.skipif(not Path("/proc/self/status").is_file() or os.uname().sysname != "Linux", reason="Linux RSS")
@pytest.mark.parametrize("action", ["release", "keep"])
def test_freed_memory_goes_back_to_the_os(action):
    """glibc keeps the freed chunks resident; release_freed_memory (called after each teacher step) returns
    them. The 'keep' control shows the allocator really held them."""
    out = subprocess.run([sys.executable, "-c", FRAGMENTED_HEAP, action], capture_output=True, text=True, check=True)
    freed, after = map(float, out.stdout.split())
    if action == "release":
        assert freed - after > 100, out.stdout
    else:
        assert freed - after < 20, out.stdout


def test_the_loop_releases_freed_memory_every_iteration(tmp_path, hard_files, random_tiny_dir, monkeypatch):  # noqa: F811
    calls = []
    monkeypatch.setattr("soar_agent.agent.release_freed_memory", lambda: calls.append(1))
    config = load_config(None, FAST + hard_files + [f"model.path={json.dumps(str(random_tiny_dir))}",
                                                    "teacher.max_sampling_rounds=1", "eval.samples=1",
                                                    "eval.max_new_tokens=8"])
    agent = Agent.open(config, tmp_path / "run", log=lambda m: None)
    assert "garbage" in agent.run(Budget(max_teacher_steps=5))  # three skipped steps, then the stop
    assert len(calls) == 3
