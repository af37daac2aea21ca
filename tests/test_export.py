"""`soar export` for someone who never read our code: the model card (Hub metadata, the prompt format, a
usage snippet, the exported checkpoint's own evaluation, no local path), a generation config that makes a
plain `transformers.pipeline` call work, the tokenizer's real context length, readable file modes, and the
command saying which checkpoint it wrote (or that it wrote the untrained base model)."""

import json
import os
import random
import re
import shutil
import stat
from pathlib import Path

import pytest

from soar_agent import cli
from soar_agent.agent import Agent
from soar_agent.config import load_config
from soar_agent.mining import write_jsonl
from soar_agent.models import EMBEDDED_MODEL_DIR
from soar_agent.tasks import arith, generate_problems

needs_embedded = pytest.mark.skipif(not (EMBEDDED_MODEL_DIR / "config.json").is_file(),
                                    reason="embedded model not built")


def make_run(tmp_path: Path, model: str = "default") -> Path:
    """A run created by the agent (store, hard sets), nothing trained."""
    rng = random.Random(3)
    write_jsonl(generate_problems(arith, [5] * 3, rng), tmp_path / "train.jsonl")
    write_jsonl(generate_problems(arith, [5] * 2, rng), tmp_path / "test.jsonl")
    config = load_config(None, [f"model.path={json.dumps(model)}",
                                f"domain.hard_train={json.dumps(str(tmp_path / 'train.jsonl'))}",
                                f"domain.hard_test={json.dumps(str(tmp_path / 'test.jsonl'))}"])
    run = tmp_path / "run"
    Agent.open(config, run, log=lambda m: None).store.close()
    return run


def section(card: str, title: str) -> str:
    return card.split(f"## {title}\n", 1)[1].split("\n## ", 1)[0]


@pytest.fixture
def umask_022():
    old = os.umask(0o022)
    yield
    os.umask(old)


@needs_embedded
def test_an_untrained_export_is_usable_from_its_card_alone(tmp_path, capsys, umask_022):
    run = make_run(tmp_path)
    out = tmp_path / "exported"
    assert cli.main(["export", str(run), "--out", str(out)]) == 0
    printed = capsys.readouterr().out.strip().splitlines()
    assert "base model" in printed[0] and "no trained checkpoint" in printed[0]  # said, not silently done
    assert printed[-1] == str(out)  # the last line stays the directory (scripts, the TUI read it)

    card = (out / "README.md").read_text()
    front = card.split("---\n")[1]  # YAML front matter: what the Hub reads
    assert card.startswith("---\n") and "license: apache-2.0" in front and "library_name: transformers" in front
    assert "tags:\n- soar-agent" in front and "- arith" in front
    assert "no trained checkpoint" in card
    for local in (str(tmp_path), str(EMBEDDED_MODEL_DIR), str(Path.cwd()), str(Path.home())):
        assert local not in card, local
    assert "hard_train = \"train.jsonl\"" in card  # the configuration is kept, its paths reduced to names
    # the one prompt that works, and a snippet using it
    formats = re.findall(r"````text\n(.*?)\n````", section(card, "Prompt format"), re.DOTALL)
    assert formats[0] == "Problem: {question}\nSolution:"
    assert 'pipeline("text-generation"' in section(card, "Usage")
    assert section(card, "Evaluation of this checkpoint").strip().startswith("None")

    assert json.loads((out / "tokenizer_config.json").read_text())["model_max_length"] == 512  # not 1e30
    generation = json.loads((out / "generation_config.json").read_text())
    assert generation["eos_token_id"] == 2 and generation["pad_token_id"] == 0
    assert 0 < generation["max_new_tokens"] < 512 and generation["do_sample"] is False
    assert stat.S_IMODE(out.stat().st_mode) == 0o755
    assert {p.name: stat.S_IMODE(p.stat().st_mode) for p in out.iterdir()} == dict.fromkeys(
        ["README.md", "config.json", "generation_config.json", "model.safetensors", "tokenizer.json",
         "tokenizer_config.json"], 0o644)

    # a plain pipeline call with the documented prompt answers in the domain's format and stops at EOS
    from transformers import pipeline

    generator = pipeline("text-generation", model=str(out))
    problem = arith.generate(2, random.Random(1))
    prompt = formats[0].replace("{question}", problem.question) + "\n"
    completion = generator(prompt, return_full_text=False)[0]["generated_text"]
    assert arith.extract_answer(completion) is not None, completion
    assert len(generator.tokenizer(completion)["input_ids"]) < generation["max_new_tokens"]


def test_the_card_shows_the_exported_checkpoints_own_evaluation(tmp_path, capsys, random_tiny_dir, umask_022):
    run = make_run(tmp_path, str(random_tiny_dir))
    agent = Agent.open(None, run, log=lambda m: None, existing_only=True)
    store, run_id = agent.store, agent.run_id
    ids = {}
    for name, role, step in (("baseline-step-2", "baseline", 2), ("baseline-step-3", "baseline", 3), ("pq", "pq", None)):
        shutil.copytree(random_tiny_dir, run / "checkpoints" / name)
        ids[name] = store.add_checkpoint(run_id=run_id, path=run / "checkpoints" / name, role=role, teacher_step=step)
        store.mark_checkpoint(ids[name], "complete")

    def evaluate(set_name, score, step=None, checkpoint=None):
        store.add_evaluation(run_id=run_id, set_name=set_name, results=[], samples_per_problem=4, temperature=1.0,
                             summary={"problems": 2, "pass@1": score, "pass@4": score + 0.1}, teacher_step=step,
                             checkpoint_id=checkpoint)

    evaluate("hard-test", 0.111, step=0)  # the base model's step-0 figure
    evaluate("hard-test", 0.222, step=2, checkpoint=ids["baseline-step-2"])
    evaluate("hard-test", 0.333, step=3, checkpoint=ids["baseline-step-2"])  # the same weights, evaluated again
    evaluate("hard-test-pq", 0.444, checkpoint=ids["pq"])
    store.close()

    def export(checkpoint: str) -> tuple[str, list[str]]:
        out = tmp_path / f"out-{checkpoint}"
        assert cli.main(["export", str(run), "--out", str(out), "--checkpoint", checkpoint]) == 0
        return (out / "README.md").read_text(), capsys.readouterr().out.strip().splitlines()

    card, printed = export("pq")
    own = section(card, "Evaluation of this checkpoint")
    assert "hard-test-pq" in own and "44.4%" in own and "11.1%" not in own
    assert printed[0] == f"exported checkpoint {ids['pq']}, the SOAR-PQ student (the final training)" \
                         f" (role pq, {run / 'checkpoints' / 'pq'})"
    assert "checkpoints/pq" in card and str(tmp_path) not in card

    card, printed = export(str(ids["baseline-step-2"]))
    own = section(card, "Evaluation of this checkpoint")
    assert "33.3%" in own and "22.2%" not in own and "11.1%" not in own  # its latest evaluation
    assert "teacher step 2" in printed[0] and "role baseline" in printed[0]
    assert "11.1%" in section(card, "Evaluation history of the run")  # the history is still there

    card, _ = export(str(ids["baseline-step-3"]))
    assert section(card, "Evaluation of this checkpoint").strip().startswith("None: ")  # said plainly
    assert "license: other" in card  # a local base model of unknown license: the base model's applies
