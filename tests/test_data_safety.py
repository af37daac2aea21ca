"""Nothing stored is lost (issue 8 §3): `soar export` never replaces the run or the model it exports and
replaces other non-empty directories only with --force; a store that holds no run is a one-line error,
not a new run; `soar run` refuses a store that fails PRAGMA quick_check. The CLI runs as a subprocess."""

import hashlib
import shutil
import sqlite3
from pathlib import Path

import pytest

from soar_agent.agent import Agent
from soar_agent.store import Store
from tests.test_cli import assert_one_line_error, soar
from tests.test_export import make_run


def tree_digest(root: Path) -> dict:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture
def run_dir(tmp_path, random_tiny_dir) -> Path:
    """A run created by the agent (its store, hard sets and a checkpoint file), no training."""
    run = make_run(tmp_path, str(random_tiny_dir))
    (run / "checkpoints" / "step-1").mkdir(parents=True)
    (run / "checkpoints" / "step-1" / "weights.bin").write_bytes(b"trained for hours")
    return run


def test_export_never_replaces_the_run_or_the_model_even_with_force(run_dir, tmp_path, random_tiny_dir):
    run_before, model_before = tree_digest(run_dir), tree_digest(random_tiny_dir)
    refused = {run_dir: "contains the run", tmp_path: "contains the run",
               run_dir / "checkpoints": "inside the run's checkpoints",
               run_dir / "checkpoints" / "step-1": "inside the run's checkpoints",
               run_dir / "soar.db": "is the run's store", random_tiny_dir: "holds the model being exported",
               random_tiny_dir.parent: "holds the model being exported"}
    for out, reason in refused.items():
        for force in ([], ["--force"]):
            assert_one_line_error(soar("export", run_dir, "--out", out, *force, cwd=tmp_path), str(out), reason)
    # the same directory reached through a relative path and a symlink
    assert_one_line_error(soar("export", "run", "--out", "run/../run", "--force", cwd=tmp_path), "contains the run")
    (tmp_path / "alias").symlink_to(run_dir)
    assert_one_line_error(soar("export", run_dir, "--out", tmp_path / "alias", "--force"), "contains the run")
    assert tree_digest(run_dir) == run_before
    assert tree_digest(random_tiny_dir) == model_before


def test_export_replaces_a_non_empty_directory_only_with_force(run_dir, tmp_path):
    target = tmp_path / "mine"
    target.mkdir()
    (target / "notes.txt").write_text("keep me")
    assert_one_line_error(soar("export", run_dir, "--out", target), str(target), "not empty", "--force")
    assert (target / "notes.txt").read_text() == "keep me"
    result = soar("export", run_dir, "--out", target, "--force")
    assert result.returncode == 0, result.stderr
    assert (target / "config.json").is_file() and not (target / "notes.txt").exists()
    empty = tmp_path / "empty"
    empty.mkdir()
    assert soar("export", run_dir, "--out", empty).returncode == 0  # an empty directory needs no --force
    assert (empty / "model.safetensors").is_file()


def lost_wal_store(tmp_path: Path) -> Path:
    """A run dir whose soar.db is as it was on disk while the agent held it open, its -wal file lost."""
    live, lost = tmp_path / "live", tmp_path / "lost"
    lost.mkdir()
    with Store(live / "soar.db") as store:  # the open connection keeps the WAL from being checkpointed
        store.create_run(name="lost", mode="soar")
        shutil.copy(live / "soar.db", lost / "soar.db")
    (lost / "checkpoints" / "step-1").mkdir(parents=True)
    (lost / "checkpoints" / "step-1" / "weights.bin").write_bytes(b"trained for hours")
    return lost


@pytest.mark.parametrize("case", ["empty-file", "lost-wal"])
def test_a_store_without_a_run_is_a_one_line_error_and_stays_untouched(case, tmp_path):
    if case == "empty-file":
        bad = tmp_path / "empty-run"
        bad.mkdir()
        (bad / "soar.db").touch()
    else:
        bad = lost_wal_store(tmp_path)
    before = tree_digest(bad)
    out = tmp_path / "out"
    for args in (["status", bad], ["status", bad, "--json"], ["export", bad, "--out", out], ["eval-pq", bad]):
        assert_one_line_error(soar(*args), str(bad / "soar.db"), "holds no run")
    assert_one_line_error(soar("run", "--run-dir", bad, "--max-teacher-steps", "1"), "holds no run", "move it away")
    assert tree_digest(bad) == before and not out.exists()


def test_run_refuses_a_store_that_fails_quick_check(run_dir, tmp_path):
    db = run_dir / "soar.db"
    with Store(db) as store:  # enough rows that the last page holds data, not the schema
        store.add_rollouts(run_id=store.latest_run()["id"], rows=[{"phase": "eval", "completion": "x" * 200}] * 1500)
    conn = sqlite3.connect(db)
    page_size, pages = conn.execute("PRAGMA page_size").fetchone()[0], conn.execute("PRAGMA page_count").fetchone()[0]
    conn.close()
    damaged = bytearray(db.read_bytes())
    damaged[(pages - 1) * page_size + 1:(pages - 1) * page_size + 40] = b"\xff" * 39  # a b-tree page header
    db.write_bytes(bytes(damaged))
    with Store(db, readonly=True) as store:  # it still opens: only the check finds the damage
        assert store.latest_run() is not None
    before = tree_digest(run_dir)
    assert_one_line_error(soar("run", "--run-dir", run_dir, "--max-teacher-steps", "1", "--no-export"),
                          str(db), "quick_check", ".recover")
    assert tree_digest(run_dir) == before


def test_end_of_run_exports_are_pruned_like_checkpoints(run_dir):
    agent = Agent.open(None, run_dir, log=lambda m: None)
    keep = agent.config.budget.keep_checkpoints
    requested = agent.export("best", str(run_dir / "exports" / "checkpoint-best-1"))  # asked for: never pruned
    made = [agent.export("best") for _ in range(keep + 2)]
    assert len({p.name for p in made}) == keep + 2  # no two exports share a name
    left = sorted(p.name for p in (run_dir / "exports").iterdir())
    assert left == sorted([requested.name] + [p.name for p in made[-keep:]])
    assert all((p / "model.safetensors").is_file() for p in made[-keep:])


def test_a_refused_export_command_is_acknowledged_and_the_run_goes_on(run_dir):
    agent = Agent.open(None, run_dir, log=lambda m: None)
    before = tree_digest(run_dir / "checkpoints")
    command = agent.store.send_command(run_id=agent.run_id, command="export", args={"out": str(run_dir)})
    agent.poll_commands()
    (acked,) = [c for c in agent.store.commands(agent.run_id) if c["id"] == command]
    assert acked["ack_message"].startswith("export failed: --out") and "contains the run" in acked["ack_message"]
    assert (run_dir / "soar.db").is_file() and tree_digest(run_dir / "checkpoints") == before
