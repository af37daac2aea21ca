"""The `soar` CLI run as a subprocess: eval, mine-hard, --version and one-line errors for bad input."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from soar_agent import __version__
from soar_agent.store import Store


def soar(*args, cwd=None, timeout=300):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-m", "soar_agent.cli", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, env=env, timeout=timeout)


def assert_one_line_error(result, *needles):
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("soar: error: ")
    for needle in needles:
        assert needle in lines[0], lines[0]


def test_version():
    result = soar("--version")
    assert result.returncode == 0 and __version__ in result.stdout


def test_eval_json_reports_levels_and_pass_at_k(random_tiny_dir):
    result = soar("eval", "--model", random_tiny_dir, "--domain", "arith", "--levels", "1,2", "--per-level", "3",
                  "--samples", "4", "--max-new-tokens", "16", "--json")
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert set(summary["levels"]) == {"1", "2"}
    for figures in list(summary["levels"].values()) + [summary]:
        assert {"greedy_acc", "pass@1", "pass@2", "pass@4"} <= set(figures)
        assert 0.0 <= figures["pass@1"] <= figures["pass@2"] <= figures["pass@4"] <= 1.0
    assert summary["problems"] == 6


def test_mine_hard_writes_store_and_jsonl(random_tiny_dir, tmp_path):
    db, out = tmp_path / "mine.db", tmp_path / "hard"
    result = soar("mine-hard", "--model", random_tiny_dir, "--domain", "program", "--levels", "1,2", "--k", "4",
                  "--pool-per-level", "6", "--test-fraction", "0.5", "--val-fraction", "0.25",
                  "--max-new-tokens", "12", "--db", db, "--out-dir", out, "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    # a random model never writes "Answer: N": every problem is fail@k; per level 3 test, 2 val (1.5 rounds
    # to 2), 1 train
    assert (report["train"], report["val"], report["test"]) == (2, 4, 6)
    rows = {split: [json.loads(line) for line in (out / f"program-hard-{split}.jsonl").read_text().splitlines()]
            for split in ("train", "val", "test")}
    assert len(rows["train"]) == 2 and all(row["steps"] and row["answer"] for row in rows["train"])
    questions = [row["question"] for split in rows.values() for row in split]
    assert len(questions) == len(set(questions)) == 12  # disjoint
    with Store(db, readonly=True) as store:
        run = store.latest_run()
        assert run["mode"] == "mine-hard"
        assert len(store.problems_for(run["id"], source="hard", split="val")) == 4
        assert {d["kind"] for d in store.datasets(run["id"])} == {"hard-train", "hard-val", "hard-test"}
    # --split val adds a validation set beside existing sets: every kept problem goes there, none that the
    # sets already hold, and train and test are left as they were
    before = {split: (out / f"program-hard-{split}.jsonl").read_text() for split in ("train", "test")}
    again = soar("mine-hard", "--model", random_tiny_dir, "--domain", "program", "--levels", "1,2", "--k", "4",
                 "--pool-per-level", "9", "--max-new-tokens", "12", "--db", tmp_path / "val.db", "--out-dir", out,
                 "--split", "val", "--json")
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout)["val"] > 0 and "train" not in json.loads(again.stdout)
    val = [json.loads(line)["question"] for line in (out / "program-hard-val.jsonl").read_text().splitlines()]
    assert not set(val) & {row["question"] for split in ("train", "test") for row in rows[split]}
    assert before == {split: (out / f"program-hard-{split}.jsonl").read_text() for split in ("train", "test")}


def test_missing_model_directory(tmp_path):
    missing = tmp_path / "nope"
    assert_one_line_error(soar("eval", "--model", missing, "--domain", "arith"), str(missing), "does not exist")


def test_directory_that_is_not_a_model(tmp_path):
    assert_one_line_error(soar("eval", "--model", tmp_path, "--domain", "arith"), "config.json")


def test_bad_levels_and_unknown_domain(random_tiny_dir):
    assert_one_line_error(soar("eval", "--model", random_tiny_dir, "--levels", "0,99"), "--levels")
    assert_one_line_error(soar("eval", "--model", random_tiny_dir, "--domain", "poetry"), "unknown domain")


def test_an_options_error_names_the_option_typed(capsys):
    """`soar mine-hard --domain foo` is about --domain, not a --set the user never wrote."""
    from soar_agent import cli

    assert cli.main(["mine-hard", "--domain", "foo"]) == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith("soar: error: --domain: ") and "--set" not in error and "'foo'" in error
    assert cli.main(["mine-hard", "--set", "domain.name=foo"]) == 2
    assert capsys.readouterr().err.startswith("soar: error: --set domain.name: ")


def test_subcommand_help_shows_the_defaults(capsys):
    from soar_agent import cli

    for argv, shown in ((["eval"], ["--samples", "(default: 4)", "(default: 400)", "(default: arith)"]),
                        (["pretrain-tiny"], ["(default: 2400)", "(default: 0)"]),
                        (["export"], ["(default: best)"]),
                        (["run"], ["default: the config's, soar", "budget.hours"])):
        assert cli.main([*argv, "--help"]) == 0
        text = " ".join(capsys.readouterr().out.split())
        assert all(needle in text for needle in shown), (argv, text)
        assert "(default: None)" not in text and "(default: False)" not in text


def test_malformed_and_unknown_config_keys(tmp_path, random_tiny_dir):
    bad = tmp_path / "bad.toml"
    bad.write_text("[mining\nk = 3\n")
    assert_one_line_error(soar("mine-hard", bad), "bad.toml", "invalid TOML")
    unknown = tmp_path / "unknown.toml"
    unknown.write_text("[mining]\nkk = 3\n")
    assert_one_line_error(soar("mine-hard", unknown), "unknown.toml", "mining.kk")
    assert_one_line_error(soar("mine-hard", "--model", random_tiny_dir, "--set", "mining.k=zero"), "mining.k")


def test_corrupt_jsonl_data_names_file_and_line(tmp_path, random_tiny_dir):
    data = tmp_path / "pool.jsonl"
    data.write_text('{"question": "1+1", "answer": "2"}\n{"question": "2+2", \n')
    assert_one_line_error(soar("eval", "--model", random_tiny_dir, "--domain", "arith", "--data", data),
                          "pool.jsonl:2", "invalid JSON")
    data.write_text('{"question": "1+1"}\n')
    assert_one_line_error(soar("eval", "--model", random_tiny_dir, "--domain", "arith", "--data", data),
                          "pool.jsonl:1", "answer")


def test_existing_store_survives_a_failed_mining_run(tmp_path, random_tiny_dir):
    db = tmp_path / "keep.db"
    with Store(db) as store:
        run = store.create_run(name="earlier", mode="soar")
        store.log_event(run_id=run, level="info", kind="note", message="keep me")
    assert_one_line_error(soar("mine-hard", "--model", tmp_path / "missing", "--db", db), "does not exist")
    with Store(db, readonly=True) as store:
        assert [e["message"] for e in store.events(run)] == ["keep me"]


def test_run_mode_flag_sets_run_mode(tmp_path):
    # curated on a dataset domain without domain.curated is refused by name: proof --mode reached the config
    result = soar("run", "--mode", "curated", "--set", "domain.name=math", "--run-dir", tmp_path / "run",
                  "--no-export", cwd=tmp_path)
    assert_one_line_error(result, "domain.curated")


def test_status_text_is_a_short_report_a_person_reads(tmp_path):
    from tests.test_tui import build_store

    build_store(tmp_path / "demo" / "soar.db")
    result = soar("status", tmp_path / "demo")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "run demo (soar): running: training students"
    assert re.fullmatch(r"time: \d+d \d\dh elapsed, 0m 00s left", lines[1]), lines[1]  # the pinned deadline passed
    assert lines[2] == "teacher steps: 4 complete, none in progress; promotions: 2"
    assert lines[3] == "hard-test after step 4: pass@1 30.0%; PQ student: pass@1 31.0%"  # the model run exports
    assert lines[4].startswith("teacher reward: greedy, moving average ")
    assert lines[5].split() == ["step", "reward", "±", "stderr", "moving", "average", "samples", "kept", "teacher",
                                "right", "promoted"]
    assert [line.split()[0] for line in lines[6:]] == ["1", "2", "3", "4"]
    # the share of the teacher's samples kept: step N of the fixture kept 6 of 6 + N
    assert [next(w for w in line.split() if w.endswith("%")) for line in lines[6:]] == ["86%", "75%", "67%", "60%"]
    assert sum("promoted" in line for line in lines[6:]) == 2
    assert "{" not in result.stdout and "session" not in result.stdout  # no raw dicts, no jargon
    assert json.loads(soar("status", tmp_path / "demo", "--json").stdout)["teacher_step"] == 4


def test_mined_sets_are_written_before_the_store_so_a_refused_row_loses_no_sampling(random_tiny_dir, tmp_path,
                                                                                    monkeypatch):
    """Mining is hours of sampling: the JSONL sets are written first, so a store that refuses a row (as one whose
    code predates a new split did, after 1h50m of fail@128 sampling) leaves the mined problems on disk."""
    import sqlite3

    from soar_agent import cli
    from soar_agent.store import Store

    def refuse(self, **kwargs):
        raise sqlite3.IntegrityError("CHECK constraint failed: split IN ('train', 'test')")

    monkeypatch.setattr(Store, "add_problems", refuse)
    out = tmp_path / "hard"
    with pytest.raises(sqlite3.IntegrityError):
        cli.main(["mine-hard", "--model", str(random_tiny_dir), "--domain", "arith", "--levels", "1", "--k", "2",
                  "--pool-per-level", "3", "--max-new-tokens", "8", "--db", str(tmp_path / "mine.db"),
                  "--out-dir", str(out), "--split", "val"])
    assert len((out / "arith-hard-val.jsonl").read_text().splitlines()) == 3  # a random model fails all three
