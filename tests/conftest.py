"""Shared fixtures: a tiny randomly initialised Llama with the embedded tokenizer, built in-process, and
small arith hard sets."""

import json
import random

import pytest


@pytest.fixture(autouse=True)
def no_evaluation_cache(monkeypatch):
    """The cross-run cache of base-model evaluations and timings (soar_agent/evalcache.py) is off in tests, so
    that no test reads another's (or the user's ~/.cache); the cache's own tests point SOAR_CACHE_DIR at a
    temporary directory."""
    monkeypatch.setenv("SOAR_CACHE_DIR", "")


@pytest.fixture(scope="session")
def char_tokenizer():
    from soar_agent.models import build_char_tokenizer

    return build_char_tokenizer()


@pytest.fixture(scope="session")
def random_tiny_dir(tmp_path_factory, char_tokenizer):
    """A saved HF directory holding a very small random model (seconds to build)."""
    from soar_agent.models import TinyShape, build_tiny_model, save_checkpoint

    model = build_tiny_model(char_tokenizer, TinyShape(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                                       num_attention_heads=2, max_position_embeddings=256), seed=3)
    return save_checkpoint(model, char_tokenizer, tmp_path_factory.mktemp("models") / "random-tiny")


@pytest.fixture
def random_tiny(random_tiny_dir):
    from soar_agent.models import load_model, load_tokenizer

    return load_model(random_tiny_dir), load_tokenizer(random_tiny_dir)


@pytest.fixture
def hard_files(tmp_path):
    """--set overrides for an arith hard-train (8 problems) and hard-test (4) of level 6, in tmp_path."""
    from soar_agent.mining import write_jsonl
    from soar_agent.tasks import arith, generate_problems

    rng = random.Random(5)
    write_jsonl(generate_problems(arith, [6] * 8, rng), tmp_path / "train.jsonl")
    write_jsonl(generate_problems(arith, [6] * 4, rng), tmp_path / "test.jsonl")
    return [f"domain.hard_train={json.dumps(str(tmp_path / 'train.jsonl'))}",
            f"domain.hard_test={json.dumps(str(tmp_path / 'test.jsonl'))}"]
