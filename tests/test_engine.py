"""The hand-written HF sampling loop against transformers' own generate and a fresh forward pass."""

import contextlib

import torch

from soar_agent.engine import HFEngine

PROMPTS = ["Problem: 3+4\nSolution:\n", "a", "Problem: (12-7)*3+100-2\nSolution:\n", "print(b)"]


def test_greedy_matches_transformers_generate_with_mixed_lengths(random_tiny):
    model, tokenizer = random_tiny
    engine = HFEngine(model, tokenizer, max_batch_size=3)  # forces two batches and padding
    ours = engine.generate(PROMPTS, n=1, temperature=0, max_new_tokens=20)
    for prompt, (completion,) in zip(PROMPTS, ours):
        ids = tokenizer(prompt, return_tensors="pt").input_ids
        reference = model.generate(ids, max_new_tokens=20, do_sample=False, pad_token_id=tokenizer.pad_token_id,
                                   eos_token_id=tokenizer.eos_token_id)[0, ids.shape[1]:].tolist()
        if tokenizer.eos_token_id in reference:
            reference = reference[:reference.index(tokenizer.eos_token_id)]
        assert completion.token_ids == reference
        assert completion.text == tokenizer.decode(reference, skip_special_tokens=True)


@contextlib.contextmanager
def forward_input_shapes(model):
    """The shape of `input_ids` in each forward pass of `model` inside the block."""
    shapes = []
    hook = model.register_forward_pre_hook(lambda _, args, kwargs: shapes.append(kwargs["input_ids"].shape),
                                           with_kwargs=True)
    try:
        yield shapes
    finally:
        hook.remove()


def test_samples_of_a_prompt_share_its_prefill_and_continue_as_alone(random_tiny):
    model, tokenizer = random_tiny
    engine = HFEngine(model, tokenizer, max_batch_size=64)
    with forward_input_shapes(model) as widths:
        shared = engine.generate(PROMPTS, n=3, temperature=0, max_new_tokens=20)
    assert widths[0][0] == len(PROMPTS)  # one prefill row per distinct prompt, not per sample
    assert all(shape[1] == 1 for shape in widths[1:])
    alone = engine.generate(PROMPTS, n=1, temperature=0, max_new_tokens=20)
    for (reference,), row in zip(alone, shared):
        assert [c.token_ids for c in row] == [reference.token_ids] * 3
        for completion in row:
            assert torch.allclose(torch.tensor(completion.logprobs), torch.tensor(reference.logprobs), atol=1e-5)


def test_logprobs_are_those_of_the_model(random_tiny):
    model, tokenizer = random_tiny
    engine = HFEngine(model, tokenizer)
    (row,) = engine.generate([PROMPTS[0]], n=3, temperature=1.0, max_new_tokens=12, seed=5)
    assert len(row) == 3
    prompt_ids = tokenizer(PROMPTS[0]).input_ids
    for completion in row:
        assert len(completion.logprobs) == len(completion.token_ids)
        ids = torch.tensor([prompt_ids + completion.token_ids])
        with torch.no_grad():
            logits = model(ids).logits[0, len(prompt_ids) - 1:-1]
        expected = torch.log_softmax(logits, -1).gather(-1, torch.tensor(completion.token_ids)[:, None]).squeeze(-1)
        assert torch.allclose(torch.tensor(completion.logprobs), expected, atol=1e-4)


def test_seed_reproducible_and_rows_finish_independently(random_tiny):
    model, tokenizer = random_tiny
    engine = HFEngine(model, tokenizer)
    first = engine.generate(PROMPTS, n=4, temperature=1.0, max_new_tokens=30, seed=11)
    second = engine.generate(PROMPTS, n=4, temperature=1.0, max_new_tokens=30, seed=11)
    assert [[c.token_ids for c in row] for row in first] == [[c.token_ids for c in row] for row in second]
    lengths = {len(c.token_ids) for row in first for c in row}
    assert all(len(c.token_ids) <= 30 for row in first for c in row)
    assert all(c.finish_reason == ("length" if len(c.token_ids) == 30 else "stop") for row in first for c in row)
    assert engine.stats.tokens == 2 * sum(len(c.token_ids) for row in first for c in row)
    assert len(lengths) >= 1


def test_stop_strings_cut_the_text(random_tiny):
    model, tokenizer = random_tiny
    engine = HFEngine(model, tokenizer)
    free = engine.generate([PROMPTS[0]], n=1, temperature=0, max_new_tokens=30)[0][0].text
    assert len(free) >= 4, "random model should emit a few characters"
    stop = free[2:4]
    (completion,) = engine.generate([PROMPTS[0]], n=1, temperature=0, max_new_tokens=30, stop=[stop])[0]
    assert completion.finish_reason == "stop"
    assert completion.text == free[:free.index(stop)]


def test_vllm_is_optional_and_imported_lazily():
    import importlib.util
    import subprocess
    import sys

    code = "import sys, soar_agent.engine, soar_agent.cli; assert 'vllm' not in sys.modules"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0
    if importlib.util.find_spec("vllm") is None:
        import pytest

        from soar_agent.engine import make_engine

        with pytest.raises(RuntimeError, match=r"pip install 'soar-agent\[gpu\]'"):
            make_engine("vllm", None, None, "/nonexistent")


def test_the_kv_cache_goes_by_the_name_the_installed_transformers_uses(random_tiny):
    """transformers 5.24 renamed `past_key_values` to `cache` and removes the old name in 5.40 (pyproject allows
    every 5.x): sampling and the teacher update's shared-prompt pass must use the installed name, not warn in
    the console and break on a later release."""
    import warnings

    from soar_agent.rl.train import _shared_prompt_logits

    model, tokenizer = random_tiny
    prompt = tokenizer(PROMPTS[0])["input_ids"]
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*past_key_values", category=FutureWarning)
        sampled = HFEngine(model, tokenizer).generate(PROMPTS[:2], n=2, temperature=1.0, max_new_tokens=6, seed=3)
        logits = _shared_prompt_logits(model, prompt, [[5, 6, 7], [8, 9, 10]], torch.ones(2, 3),
                                       tokenizer.pad_token_id)
    assert [len(rows) for rows in sampled] == [2, 2] and logits.shape[:2] == (2, 3)
    with torch.no_grad():
        alone = model(input_ids=torch.tensor([prompt + [5, 6, 7]])).logits[0, len(prompt) - 1:-1]
    assert torch.allclose(logits[0], alone, atol=1e-4)  # the cache passed under that name is the one used
