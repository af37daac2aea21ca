"""The scoring sandbox shared by the gym and math domains: its helper runs under the code sandbox's layers,
each answer is scored in its own child under a compile gate, and nothing it sends back is trusted."""

from __future__ import annotations

import logging
import os
import random

import pytest

from soar_agent import isolation, scoring_sandbox
from soar_agent.scoring_sandbox import Outcome


@pytest.fixture(scope="module", autouse=True)
def _stop_helpers():
    yield
    scoring_sandbox.stop_all()


def _status(pid: int) -> dict[str, str]:
    with open(f"/proc/{pid}/status") as handle:
        return dict(line.rstrip("\n").split(":\t", 1) for line in handle if ":\t" in line)


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="reads /proc")
def test_the_helper_runs_under_the_code_sandboxs_layers():
    sandbox = scoring_sandbox.sandbox_for("math")
    assert sandbox.score([("1", "1", 1)]) == [Outcome(1.0)]
    status, plan = _status(sandbox.pid), isolation.layers().plan
    assert status["NoNewPrivs"].strip() == "1"
    if plan.uid is not None:
        assert status["Uid"].split()[:2] == [str(plan.uid)] * 2
    if plan.seccomp:
        assert status["Seccomp"].strip() == "2"
    if plan.netns:
        assert os.readlink(f"/proc/{sandbox.pid}/ns/net") != os.readlink("/proc/self/ns/net")


def _string_insertion_entry():
    reasoning_gym = pytest.importorskip("reasoning_gym")
    return reasoning_gym.create_dataset("string_insertion", seed=1, size=1)[0]


def test_an_answer_cannot_forge_its_own_score():
    """string_insertion evals the answer. In its disposable child an answer that ran would still decide
    its own score (here: by replacing float, which the child applies to the scorer's result); the
    compile gate stops it from running at all."""
    entry = _string_insertion_entry()
    forge = 'exec("import builtins; builtins.float = lambda *args: 1.0")'
    name_of_the_scorers_local = "oracle_answer"  # plain eval sees the scorer's own variables
    as_a_list = repr(list(entry["answer"]))  # the dataset's documented alternative form: a literal
    outcomes = scoring_sandbox.sandbox_for("gym").score(
        [("string_insertion", text, entry) for text in (forge, name_of_the_scorers_local, as_a_list)])
    assert outcomes[0] == Outcome(None, "blocked")
    assert outcomes[1] == Outcome(None, "blocked")
    assert outcomes[2] == Outcome(0.1)  # literals still go through (the scorer's partial credit)


def test_sympy_answers_are_parsed_but_not_run(tmp_path):
    reasoning_gym = pytest.importorskip("reasoning_gym")
    entry = reasoning_gym.create_dataset("puzzle24", seed=2, size=1)[0]
    marker = tmp_path / "ran"
    calls = [("puzzle24", text, entry) for text in (
        entry["answer"],
        f"open('{marker}', 'w')",  # a builtin outside the harmless few
        "Integer(24).__class__",  # attributes
        f"__import__('os').system('touch {marker}')",
    )]
    outcomes = scoring_sandbox.sandbox_for("gym").score(calls)
    assert outcomes == [Outcome(1.0)] + [Outcome(None, "blocked")] * 3
    assert not marker.exists()


def test_the_helpers_replies_are_checked_not_trusted():
    assert scoring_sandbox._outcome({"i": 0, "score": 1.0}) == Outcome(1.0)
    for reply in ({"i": 0, "score": float("nan")}, {"i": 0, "score": "1"}, {"i": 0, "score": True},
                  {"i": 0, "failure": "anything"}, {"i": 0}):
        assert scoring_sandbox._outcome(reply) == Outcome(None, "crashed")
    for line in (b"", b"not json", b"[" * 100_000, b"\xff"):
        assert scoring_sandbox._parse_json(line) is None


def test_a_batch_keeps_order_and_calls_without_answers_cost_nothing():
    sandbox = scoring_sandbox.sandbox_for("math")
    assert sandbox.score([]) == []
    golds = [str(i) for i in range(20)]
    predictions = [str(i if i % 3 else i + 1) for i in range(20)]
    random.Random(0).shuffle(order := list(range(20)))
    outcomes = sandbox.score([(golds[i], predictions[i], 1) for i in order], workers=3)
    assert [outcome.score for outcome in outcomes] == [0.0 if i % 3 == 0 else 1.0 for i in order]


def test_a_helper_nobody_cannot_import_for_runs_under_our_uid_and_says_so(monkeypatch, caplog):
    plan = isolation.layers().plan
    if plan.uid is None:
        pytest.skip("no uid drop on this machine")
    real_start = scoring_sandbox.ScoringSandbox._start

    def start_as_if_nobody_could_not_read_the_packages(self, plan):
        if plan.uid is not None:
            raise scoring_sandbox.SandboxFailure("ModuleNotFoundError: No module named 'math_verify'")
        return real_start(self, plan)

    monkeypatch.setattr(scoring_sandbox.ScoringSandbox, "_start", start_as_if_nobody_could_not_read_the_packages)
    sandbox = scoring_sandbox.ScoringSandbox("math")
    try:
        with caplog.at_level(logging.WARNING, logger="soar_agent.sandbox"):
            assert sandbox.score([("1", "1", 1), ("1", "2", 1)]) == [Outcome(1.0), Outcome(0.0)]
        assert "SCORING SANDBOX IS WEAKER THAN DESIGNED" in caplog.text
        status = _status(sandbox.pid)
        assert status["Uid"].split()[0] == str(os.getuid()) and status["NoNewPrivs"].strip() == "1"
        if plan.netns:
            assert os.readlink(f"/proc/{sandbox.pid}/ns/net") != os.readlink("/proc/self/ns/net")
    finally:
        sandbox.stop()


# ----------------------------------------------------------------------- second round (issue)
# An answer that got to run code despite the guard and the compile gate (both in-process, neither a
# boundary on its own): a job shipped into the helper for these tests only plays that answer.

_LEAK = '''
def _leak(count, seconds):
    import os, time
    try:  # disarm the guard as in tests/test_sandbox.py (DISARM), without compiling anything at run time
        pid = os.fork()
        if pid == 0:
            os._exit(0)
    except PermissionError as error:
        tb = error.__traceback__
        while tb.tb_next is not None:
            tb = tb.tb_next
        tb.tb_frame.f_locals['classify'].__code__ = _allow_all().__code__
    middle = os.fork()
    if middle == 0:
        os.setsid()
        for _ in range(count):
            if os.fork() == 0:
                os.closerange(0, 1024)
                time.sleep(seconds)
                os._exit(0)
        os._exit(0)
    os.waitpid(middle, 0)
    return 1.0
'''


def _allow_all_source() -> str:
    """A stand-in for the guard's classifier with its free variables, allowing everything."""
    import inspect

    from soar_agent.sandbox import install_guard

    def find(code, name):
        for constant in code.co_consts:
            if hasattr(constant, "co_name"):
                if constant.co_name == name:
                    return constant
                found = find(constant, name)
                if found is not None:
                    return found
        return None

    names = find(compile(inspect.getsource(install_guard), "guard", "exec"), "classify").co_freevars
    return ("def _allow_all():\n" + "".join(f"    {name} = None\n" for name in names)
            + "    def classify(event, args):\n        " + ", ".join(names) + "\n        return None\n"
            + "    return classify\n")


@pytest.fixture
def leaking_job(monkeypatch):
    real_source = scoring_sandbox._zygote_source

    def source(*args):
        text = real_source(*args)
        leaking = text.replace("_zygote_main()\n", _allow_all_source() + _LEAK
                               + "_JOBS['leak'] = (_leak, _no_warm_up)\n_zygote_main()\n")
        assert leaking != text
        return leaking

    monkeypatch.setattr(scoring_sandbox, "_zygote_source", source)
    monkeypatch.setitem(scoring_sandbox.JOBS, "leak", ((), "_leak", "_no_warm_up"))
    sandbox = scoring_sandbox.ScoringSandbox("leak")
    yield sandbox
    sandbox.stop()


def _helper_processes(workdir: str) -> list[int]:
    from tests.test_sandbox import sandboxed_processes

    return sandboxed_processes(workdir)


def test_what_an_answer_leaves_behind_dies_with_its_batch(leaking_job):
    """Grandchildren of an answer's child in a session of their own: dead once the batch is answered, and
    nothing of the helper is left after stop()."""
    from tests.test_sandbox import kill_leftovers, needs_root_kernel_layers

    needs_root_kernel_layers()
    sandbox = leaking_job
    workdir = None
    try:
        outcomes = sandbox.score([(3, 30), (2, 30)], workers=2)
        workdir = sandbox._workdir
        helper = set(_helper_processes(workdir))
        assert outcomes == [Outcome(None, "blocked")] * 2 or outcomes == [Outcome(1.0)] * 2, outcomes
        leftovers = helper - _helper_side(sandbox.pid)
        assert leftovers == set(), leftovers
        sandbox.stop()
        assert _helper_processes(workdir) == []
    finally:
        if workdir is not None:
            kill_leftovers(workdir)


def _helper_side(pid: int | None) -> set[int]:
    """The helper's own processes: the one we started and, in a PID namespace, the helper inside it."""
    if pid is None:
        return set()
    own = {pid}
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as handle:
            own |= {int(child) for child in handle.read().split()}
    except OSError:
        pass
    return own
