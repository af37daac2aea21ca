"""Fuzz-style test of every CLI input (issue 8, "Done when"): random bytes, huge values (1e308, -1, nan, inf,
10**30), deep nesting and wrong types into each subcommand's options, every --set key, config files and
data files of every domain. Each case must end with exactly one line `soar: error: ...` on stderr, exit
status 2 and no traceback, and a run's store must be byte-for-byte unchanged.

Seeded. Most cases call the CLI's `main` in this process (stderr captured, argparse's SystemExit caught)
so that hundreds of cases take seconds; a handful run as real subprocesses, raw non-UTF-8 argv included.
Every value is chosen to be invalid where it goes (a valid one would start real work)."""

import contextlib
import dataclasses
import hashlib
import io
import json
import os
import random
import subprocess
import sys
import typing
from pathlib import Path

import pytest

from soar_agent import cli
from soar_agent.config import ConfigError, _sections, load_config
from tests.test_cli import assert_one_line_error
from tests.test_hardening_cli import hard_sets, toml_path

SEED = 20_251_130
pytestmark = pytest.mark.timeout(300)  # a case that starts real work instead of refusing fails, not hangs
HUGE = ["1e308", "-1", "nan", "inf", "-inf", str(10**30), "1e309", "-1e308"]
WRONG = ["", " ", "seven", "[1, 2]", "{a = 1}", "true", "0x10", "1_000_000_000_000", "[" * 100_000]


def random_text(rng: random.Random, size: int = 24) -> str:
    """Random bytes as the OS hands them to Python (undecodable bytes as surrogates), never a number and
    never NUL (argv cannot hold one)."""
    while True:
        raw = bytes(rng.randrange(1, 256) for _ in range(rng.randrange(1, size)))
        text = os.fsdecode(raw)
        try:
            float(text)
        except ValueError:
            return text


def call(argv: list[str]) -> tuple[int, str]:
    """(exit status, stderr) of `soar argv` run in this process."""
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            status = cli.main([str(a) for a in argv])
        except SystemExit as exit_:  # argparse
            status = exit_.code
    return status, err.getvalue()


def assert_refused(argv, status: int, err: str) -> None:
    lines = err.strip().splitlines()
    assert status == 2, (argv, status, err[-2000:])
    assert len(lines) == 1 and lines[0].startswith("soar: error: "), (argv, err[-2000:])
    assert "Traceback" not in err


def digest(run: Path) -> dict:
    """The store's bytes: soar.db and its write-ahead log when it holds anything (a read-only open may leave
    an empty -wal and the -shm index behind; neither holds data)."""
    files = [run / "soar.db"] + [p for p in (run / "soar.db-wal",) if p.is_file() and p.stat().st_size]
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in files}


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, random_tiny_dir) -> Path:
    """A real run (store, hard sets) on the random tiny model, no training."""
    from soar_agent.agent import Agent

    tmp = tmp_path_factory.mktemp("fuzz")
    train, test = hard_sets(tmp)
    config = load_config(None, [f"model.path={toml_path(random_tiny_dir)}", f"domain.hard_train={toml_path(train)}",
                                f"domain.hard_test={toml_path(test)}"])
    Agent.open(config, tmp / "run", log=lambda m: None).store.close()
    return tmp / "run"


def numeric_options() -> dict[str, list[str]]:
    """subcommand -> its numeric options (each refuses every HUGE and WRONG value)."""
    out: dict[str, list[str]] = {}
    for name, sub in cli.build_parser()._subparsers._group_actions[0].choices.items():
        out[name] = [action.option_strings[0] for action in sub._actions
                     if action.option_strings and action.type not in (None, str)]
    return out


def required(command: str, run: Path, scratch: Path) -> list[str]:
    """The arguments a command needs besides the fuzzed one, pointing at the run or at scratch space."""
    return {"run": ["--run-dir", run, "--no-export"], "status": [run], "export": [run, "--out", scratch / "out"],
            "eval-pq": [run], "pretrain-tiny": ["--out", scratch / "model"], "tui": [run],
            "mine-hard": ["--db", scratch / "mine.db", "--out-dir", scratch / "hard"]}.get(command, [])


def test_numeric_options_refuse_huge_values_wrong_types_and_random_bytes(run_dir, tmp_path):
    rng = random.Random(SEED)
    before = digest(run_dir)
    cases = 0
    for command, options in numeric_options().items():
        assert command not in ("run", "eval", "mine-hard") or options, command
        for option in options:
            for value in HUGE + WRONG + [random_text(rng) for _ in range(3)]:
                argv = [command, *required(command, run_dir, tmp_path), f"{option}={value}"]
                assert_refused(argv, *call(argv))
                cases += 1
    assert cases > 250
    assert digest(run_dir) == before
    assert not (tmp_path / "mine.db").exists() and not (tmp_path / "model").exists()


def set_keys() -> list[tuple[str, type, dict]]:
    keys = []
    for section, cls in _sections().items():
        hints = typing.get_type_hints(cls)
        keys += [(f"{section}.{f.name}", hints[f.name], dict(f.metadata)) for f in dataclasses.fields(cls)]
    return keys


def invalid_values(dotted: str, tp, rng: random.Random) -> list[str]:
    """--set values for a field: huge numbers, wrong types, deep nesting, random bytes, keeping only those
    the config refuses (a valid one, e.g. run.name=1e308, would start real work). Free-text fields (paths)
    accept any string and are fuzzed as data files below."""
    values = HUGE + WRONG + ["[[[[1]]]]", "{x = {y = 1}}", "1", "yes"] + [random_text(rng) for _ in range(4)]
    values += ["/" + random_text(rng) for _ in range(2)]
    refused = []
    for value in values:
        try:
            load_config(None, [f"{dotted}={value}"])
        except ConfigError:
            refused.append(value)
    assert tp is str or len(refused) >= len(HUGE), (dotted, refused)
    return refused


def test_every_set_key_refuses_bad_values_and_the_store_is_unchanged(run_dir):
    rng = random.Random(SEED + 1)
    before = digest(run_dir)
    cases = 0
    for dotted, tp, meta in set_keys():
        for value in invalid_values(dotted, tp, rng):
            for argv in (["run", "--run-dir", run_dir, "--no-export", "--set", f"{dotted}={value}"],
                         ["mine-hard", "--db", run_dir / "soar.db", "--set", f"{dotted}={value}"]):
                status, err = call(argv)
                assert_refused(argv, status, err)
                assert dotted in err, (argv, err)
                cases += 1
    for raw in ["nokey", "=1", "a.b.c=1", "student=1", "student.=1", "no.such=1", random_text(rng) + "=1"]:
        assert_refused(raw, *call(["run", "--run-dir", run_dir, "--set", raw]))
    assert cases > 500
    assert digest(run_dir) == before


def test_config_files_of_random_bytes_deep_nesting_and_wrong_types(run_dir, tmp_path):
    rng = random.Random(SEED + 2)
    before = digest(run_dir)
    contents = [bytes(rng.randrange(256) for _ in range(rng.randrange(1, 3000))) for _ in range(8)]
    contents += [b"[run]\nseed = " + b"[" * 100_000, b"x = " + b"{a = " * 50_000, b"[student]\nsteps = 1e308\n",
                 b"[student]\nsteps = 1000000000000000000000000000000\n", b"[student]\nlr = nan\n",
                 b"[reward]\nsamples = inf\n", b"[teacher]\nitems_per_dataset = \"many\"\n", b"[eval]\nsamples = -1\n",
                 b"student = 5\n", b"[budget]\nhours = 1e305\n", b"\xef\xbb\xbf\xff\xfe", b"[mining]\nlevels = [[1]]\n"]
    for index, content in enumerate(contents):
        config = tmp_path / f"c{index}.toml"
        config.write_bytes(content)
        for argv in (["run", config, "--run-dir", run_dir, "--no-export"], ["mine-hard", config, "--db", run_dir / "soar.db"]):
            status, err = call(argv)
            assert_refused(argv, status, err)
            assert config.name in err, err
    assert digest(run_dir) == before


def bad_rows(domain: str, rng: random.Random) -> list[bytes]:
    """Data files no loader may accept: random bytes, deep nesting, huge and non-JSON numbers, wrong
    types, rows that are not objects, a line over the 1 MB limit."""
    question = {"code": {"question": "f", "tests": ["assert f() == 1"]}}.get(domain, {"question": "3 + 4", "answer": "7"})
    rows: list[object] = [
        {**question, "question": 1e308}, {**question, "question": 10**30}, {**question, "question": None},
        {**question, "question": ["3 + 4"]}, {**question, "question": {"text": "3 + 4"}}, {**question, "question": True},
        [question], "3 + 4", 7, None,
    ]
    if domain != "code":
        rows += [{**question, "answer": None}, {**question, "answer": [7]}, {**question, "answer": {"v": 7}},
                 {**question, "level": 1e308}, {**question, "level": -1}, {**question, "level": 10**30},
                 {**question, "level": "5"}, {**question, "level": [5]}]
    else:
        rows += [{**question, "tests": 1e308}, {**question, "tests": [5]}, {**question, "tests": None},
                 {**question, "entry_point": "f()"}]
    files = [json.dumps(row).encode() + b"\n" for row in rows]
    files += [b"[" * 100_000 + b"]" * 100_000 + b"\n", b'{"question": "3 + 4", "answer": NaN}\n',
              b'{"question": "3 + 4", "answer": Infinity, "level": -Infinity}\n', b'{"question": "3 + 4", \n',
              b"\n\n\n", b"", b'{"question": "' + b"1+" * 600_000 + b'1", "answer": "2"}\n',
              b'{"question": "3 + 4", "answer": "7", "level": ' + b"9" * 5000 + b"}\n"]
    files += [bytes(rng.randrange(256) for _ in range(rng.randrange(1, 4000))) for _ in range(6)]
    return files


def test_data_files_of_every_domain_refused_with_file_and_reason(run_dir, tmp_path):
    from soar_agent.tasks import get_domain

    rng = random.Random(SEED + 3)
    before = digest(run_dir)
    domains = ["arith", "program", "math", "code"]
    with contextlib.suppress(ImportError, ValueError):
        get_domain("gym:basic_arithmetic")
        domains.append("gym:basic_arithmetic")
    for domain in domains:
        for index, content in enumerate(bad_rows(domain, rng)):
            data = tmp_path / f"{domain.replace(':', '-')}-{index}.jsonl"
            data.write_bytes(content)
            fresh = tmp_path / f"run-{domain.replace(':', '-')}-{index}"
            for argv in (["eval", "--domain", domain, "--data", data, "--allow-weak-sandbox"],
                         ["mine-hard", "--domain", domain, "--data", data, "--db", run_dir / "soar.db",
                          "--allow-weak-sandbox"],
                         ["run", "--run-dir", fresh, "--no-export", "--allow-weak-sandbox", "--set", f"domain.name={json.dumps(domain)}",
                          "--set", f"domain.hard_train={toml_path(data)}", "--set", f"domain.hard_test={toml_path(data)}"]):
                status, err = call(argv)
                assert_refused(argv, status, err)
                assert data.name in err, (argv, err)
            assert not (fresh / "soar.db").exists()
    assert digest(run_dir) == before


def test_path_inputs_that_are_missing_files_directories_or_random(run_dir, tmp_path):
    rng = random.Random(SEED + 4)
    before = digest(run_dir)
    (tmp_path / "afile").write_text("x")
    for value in [tmp_path / "missing", tmp_path / "afile", tmp_path / "afile" / "below", tmp_path,
                  random_text(rng), random_text(rng), "\n", "-"]:
        for argv in (["eval", "--model", value], ["eval", "--data", value], ["eval", "--domain", value],
                     ["eval", "--levels", value], ["run", value, "--run-dir", run_dir], ["status", value],
                     ["export", value, "--out", tmp_path / "x"], ["export", run_dir, "--checkpoint", value, "--out", tmp_path / "x"],
                     ["eval-pq", value], ["tui", value], ["mine-hard", "--model", value, "--db", tmp_path / "m.db"],
                     ["run", f"--until={value}", "--run-dir", run_dir], ["run", "--mode", value, "--run-dir", run_dir]):
            if argv[:2] == ["eval", "--domain"] and value == tmp_path:
                continue
            status, err = call(argv)
            assert_refused(argv, status, err)
    assert digest(run_dir) == before and not (tmp_path / "x").exists() and not (tmp_path / "m.db").exists()


def test_a_handful_of_real_subprocesses_with_raw_bytes(run_dir, tmp_path):
    """The same refusals through the real entry point: argv as raw (non-UTF-8) bytes, a binary data file."""
    rng = random.Random(SEED + 5)
    before = digest(run_dir)
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    junk = bytes(rng.randrange(128, 256) for _ in range(12))
    data = tmp_path / "junk.jsonl"
    data.write_bytes(bytes(rng.randrange(128, 256) for _ in range(5000)))
    cases = [[b"eval", b"--samples", junk], [b"run", b"--run-dir", bytes(run_dir), b"--hours", b"1e308"],
             [b"run", b"--run-dir", bytes(run_dir), b"--set", b"student.steps=" + junk],
             [b"run", b"--run-dir", bytes(run_dir), b"--set", b"teacher.items_per_dataset=1000000000"],
             [b"eval", b"--data", bytes(data)], [b"status", junk], [b"mine-hard", b"--k", b"nan"]]
    for argv in cases:
        result = subprocess.run([sys.executable.encode(), b"-m", b"soar_agent.cli", *argv], capture_output=True,
                                env=env, timeout=120)
        result.stderr = result.stderr.decode("utf-8", "backslashreplace")
        assert_one_line_error(result)
        assert "Traceback" not in result.stderr
    assert digest(run_dir) == before
