"""Untrusted text with non-ASCII digits (issue 8 §6): `int()` reads "٧" as 7, so every pattern that feeds it
must match [0-9] only, or a model scores (and a teacher writes problems) in digits the format forbids."""

import pytest

from soar_agent.tasks import arith, program
from soar_agent.tasks.base import RejectedItem

FOREIGN_SEVENS = ["٧", "۷", "７", "߇", "७"]  # Arabic-Indic, Persian, fullwidth, NKo, Devanagari


@pytest.mark.parametrize("domain", [arith, program])
@pytest.mark.parametrize("seven", FOREIGN_SEVENS)
def test_answer_line_in_non_ascii_digits_scores_nothing(domain, seven):
    problem = arith.make_problem("3+4")
    assert domain.extract_answer(f"Answer: {seven}") is None
    assert domain.extract_answer(f"Answer: -1{seven}") is None
    assert not arith.verify(problem, domain.extract_answer(f"1. **add** 3+4=7\nAnswer: {seven}"))
    assert domain.extract_answer("Answer: 7") == "7"  # the ASCII answer still counts


@pytest.mark.parametrize("seven", FOREIGN_SEVENS)
def test_model_written_problems_in_non_ascii_digits_are_rejected(seven):
    with pytest.raises(RejectedItem):
        arith.make_problem(f"{seven}+1")
    with pytest.raises(RejectedItem):
        program.make_problem(f"a={seven}\nprint(a)")
    with pytest.raises(RejectedItem):
        program.make_problem(f"a=1\nfor i in range({seven}):\n    a=a+1\nprint(a)")


def test_checkpoint_id_in_non_ascii_digits_is_not_an_id(tmp_path):
    from soar_agent.export import resolve_checkpoint
    from soar_agent.store import Store

    with Store(tmp_path / "soar.db") as store:
        run = store.create_run(name="r", mode="soar")
        store.add_checkpoint(run_id=run, path=tmp_path / "c", role="baseline", status="complete")
        assert resolve_checkpoint(store, run, "1", None)["id"] == 1
        with pytest.raises(ValueError, match="expected best, latest, pq or a checkpoint id"):
            resolve_checkpoint(store, run, "١", None)  # Arabic-Indic one: int() would read it as 1
