"""Instruct models: when the tokenizer carries a chat template, student, teacher and evaluation prompts go
through it (one user turn + the generation prompt, BOS not doubled); without one, or with
model.chat_template = false, the built-in format is used unchanged."""

import pytest

from soar_agent import cli
from soar_agent.agent import Agent
from soar_agent.config import load_config
from soar_agent.engine import HFEngine
from soar_agent.models import TinyShape, build_char_tokenizer, build_tiny_model, load_tokenizer, save_checkpoint
from soar_agent.tasks import arith, teacher_prompt
from soar_agent.tasks.chat import ChatDomain, for_model

# A template in the style of instruct models, including a BOS it writes itself.
TEMPLATE = ("{{ bos_token }}{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }}\n{% endfor %}"
            "{% if add_generation_prompt %}[assistant] {% endif %}")


@pytest.fixture(scope="module")
def chat_model_dir(tmp_path_factory):
    tokenizer = build_char_tokenizer()
    tokenizer.chat_template = TEMPLATE
    model = build_tiny_model(tokenizer, TinyShape(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                                  num_attention_heads=2, max_position_embeddings=256), seed=3)
    return save_checkpoint(model, tokenizer, tmp_path_factory.mktemp("models") / "chat-tiny")


def test_prompts_go_through_the_template_and_bos_is_not_doubled(chat_model_dir):
    tokenizer = load_tokenizer(chat_model_dir)
    assert tokenizer.chat_template == TEMPLATE  # saved and loaded with the model
    domain = for_model(arith, tokenizer)
    assert isinstance(domain, ChatDomain) and domain.NAME == "arith" and domain.LEVELS == arith.LEVELS
    prompt = domain.student_prompt("What is 1+2?")
    assert prompt == "[user] Problem: What is 1+2?\nSolution:\n\n[assistant] "
    ids = tokenizer(prompt)["input_ids"]
    assert ids.count(tokenizer.bos_token_id) == 1 and ids[0] == tokenizer.bos_token_id
    assert teacher_prompt(domain).startswith("[user] Topics: ") and teacher_prompt(domain).endswith("[assistant] ")
    # scoring is the domain's own
    problem = arith.make_problem("1+2")
    assert domain.verify(problem, domain.extract_answer("1. **add** 1+2=3\nAnswer: 3"))


def test_no_template_or_switched_off_keeps_the_built_in_format(chat_model_dir, random_tiny_dir):
    assert for_model(arith, load_tokenizer(random_tiny_dir)) is arith
    assert for_model(arith, load_tokenizer(chat_model_dir), use_template=False) is arith
    assert teacher_prompt(arith).startswith("Topics: ")


def test_the_loop_and_soar_eval_use_the_template(chat_model_dir, tmp_path, hard_files, monkeypatch):  # noqa: F811
    config = load_config(None, hard_files + [f'model.path="{chat_model_dir}"'])
    agent = Agent.open(config, tmp_path / "run", log=lambda m: None)
    assert agent.domain.student_prompt("What is 1+2?").startswith("[user] Problem:")
    plain = load_config(None, hard_files + [f'model.path="{chat_model_dir}"', "model.chat_template=false"])
    assert Agent.open(plain, tmp_path / "run-plain", log=lambda m: None).domain is arith

    seen: list[str] = []
    original = HFEngine.generate

    def spy(self, prompts, *args, **kwargs):
        seen.extend(prompts)
        return original(self, prompts, *args, **kwargs)

    monkeypatch.setattr(HFEngine, "generate", spy)
    assert cli.main(["eval", "--model", str(chat_model_dir), "--domain", "arith", "--levels", "1",
                     "--per-level", "2", "--max-new-tokens", "4", "--json"]) == 0
    assert len(seen) == 4 and all(  # greedy, then the samples
        p.startswith("[user] Problem: ") and p.endswith("[assistant] ") for p in seen)
