"""Nested-ReFT (soar_agent/rl/nested.py): layer skipping against a hand-run forward pass, the choice of
skipped layers, the three corrections against hand-computed weights, exact RLOO at skip ratio 0, KV-cached
generation with skipped layers, and short training runs on a tiny random 6-layer model."""

import copy
import math
import random

import pytest
import torch

from soar_agent.config import ConfigError, RunConfig, StudentSection, apply_overrides
from soar_agent.engine import HFEngine, kv_cache_name
from soar_agent.models import TinyShape, add_lora, build_tiny_model
from soar_agent.rl import nested, sequence_logprobs, train_student, trainer
from soar_agent.tasks import arith
from tests.test_rl import _problems, even_character_share


@pytest.fixture(scope="module")
def deep_tiny(char_tokenizer):
    """Six decoder layers (four skippable), small enough for a test."""
    shape = TinyShape(hidden_size=32, intermediate_size=64, num_hidden_layers=6, num_attention_heads=2,
                      max_position_embeddings=256)
    model = build_tiny_model(char_tokenizer, shape, seed=5)
    model.eval()
    return model, char_tokenizer


def _rows(tokenizer):
    prompts = [tokenizer(arith.student_prompt("3+4"))["input_ids"],
               tokenizer(arith.student_prompt("(12-7)*3+100-2"))["input_ids"]]
    completions = [tokenizer("1. **add** 3+4=7", add_special_tokens=False)["input_ids"],
                   tokenizer("Answer: 113", add_special_tokens=False)["input_ids"]]
    return prompts, completions


def _by_hand(model, ids: list[int], kept: list[int]) -> torch.Tensor:
    """Log-softmax of one unpadded row run through the embedding, the `kept` layers in order, the final norm
    and the head, each module called directly."""
    inner = model.model
    input_ids = torch.tensor([ids])
    positions = torch.arange(len(ids))[None]
    hidden = inner.embed_tokens(input_ids)
    rotary = inner.rotary_emb(hidden, positions)
    for index in kept:
        hidden = inner.layers[index](hidden, attention_mask=None, position_ids=positions,
                                     position_embeddings=rotary)  # no mask: one row, causal attention
    return torch.log_softmax(model.lm_head(inner.norm(hidden))[0], dim=-1)  # (L, V)


def test_skipped_forward_equals_the_kept_layers_run_by_hand(deep_tiny):
    model, tokenizer = deep_tiny
    prompts, completions = _rows(tokenizer)
    layers = list(model.model.layers)
    originals = {p.data_ptr() for p in model.parameters()}
    with torch.no_grad():
        full, mask, _ = sequence_logprobs(model, prompts, completions, tokenizer.pad_token_id)
        with nested.skipping(model, (2, 4)):
            assert len(model.model.layers) == 4
            assert {p.data_ptr() for p in model.parameters()} <= originals, "no weight may be copied"
            skipped, _, _ = sequence_logprobs(model, prompts, completions, tokenizer.pad_token_id)  # batched, padded
        for row, (prompt, completion) in enumerate(zip(prompts, completions)):
            log_probs = _by_hand(model, prompt + completion, kept=[0, 1, 3, 5])
            expected = log_probs[torch.arange(len(prompt) - 1, len(prompt) + len(completion) - 1),
                                 torch.tensor(completion)]
            assert torch.allclose(skipped[row, :len(completion)], expected, atol=1e-5)
        assert not torch.allclose(skipped[mask], full[mask], atol=1e-3), "skipping must change the model"
        assert list(model.model.layers) == layers, "every layer is back after the block"
        again, _, _ = sequence_logprobs(model, prompts, completions, tokenizer.pad_token_id)
    assert torch.equal(again, full)


def test_layers_come_back_after_an_error(deep_tiny):
    model, _ = deep_tiny
    layers = list(model.model.layers)
    with pytest.raises(RuntimeError, match="boom"):
        with nested.skipping(model, (1,)):
            raise RuntimeError("boom")
    assert list(model.model.layers) == layers


@pytest.mark.parametrize("num_layers", [2, 3, 4, 6, 12])
def test_first_and_last_layers_are_never_skipped(num_layers):
    rng = random.Random(0)
    for ratio in (0.0, 0.1, 0.25, 0.5, 0.75, 0.99):
        draws = {nested.choose_skipped(num_layers, ratio, rng) for _ in range(40)}
        expected = min(max(0, num_layers - 2), math.floor(ratio * num_layers + 0.5))
        for skipped in draws:
            assert 0 not in skipped and num_layers - 1 not in skipped
            assert len(set(skipped)) == len(skipped) == expected and list(skipped) == sorted(skipped)
        if 0 < expected < num_layers - 2:
            assert len(draws) > 1, "the skipped layers are drawn per batch, not fixed"
    first = [nested.choose_skipped(12, 0.5, random.Random(7)) for _ in range(2)]
    assert first[0] == first[1], "seeded"
    with pytest.raises(ValueError):
        nested.choose_skipped(12, 1.0, rng)


def test_skipping_refuses_the_first_and_last_layer(deep_tiny):
    model, _ = deep_tiny
    for bad in [(0,), (5,), (2, 5), (6,)]:
        with pytest.raises(ValueError, match="middle layers"):
            with nested.skipping(model, bad):
                pass
    assert len(model.model.layers) == 6


# ---------------------------------------------------------------- corrections

LOG_RATIO = torch.log(torch.tensor([[0.5, 3.0, 1.5], [4.0, 2.0, 1.0]]))
LOG_RATIO[1, 2] = 50.0  # padding: must not matter
MASK = torch.tensor([[1, 1, 1], [1, 1, 0]])


@pytest.mark.parametrize("correction, expected", [
    ("truncated", [[0.5, 2.0, 1.5], [2.0, 2.0, 0.0]]),  # min(rho, 2)
    ("retrace", [[0.45, 0.45 * 0.9, 0.45 * 0.9 * 0.9], [0.9, 0.81, 0.0]]),  # prod 0.9 * min(1, rho)
    # mean log rho: row 0 log(2.25) / 3 = 0.27 (inside 0.5), row 1 log(8) / 2 = 1.04 (outside)
    ("masked", [[1.0, 1.0, 1.0], [0.0, 0.0, 0.0]]),
])
def test_correction_weights_hand_computed(correction, expected):
    weights = nested.correction_weights(LOG_RATIO, MASK, correction, cap=2.0, trace_lambda=0.9, band=0.5)
    assert torch.allclose(weights, torch.tensor(expected), atol=1e-6)


def test_corrections_are_exactly_one_on_policy():
    zero = torch.zeros(2, 3)
    for correction in nested.CORRECTIONS:
        assert torch.equal(nested.correction_weights(zero, MASK, correction), MASK.float())


def test_effective_sample_size_hand_computed():
    weights = torch.tensor([[0.5, 2.0, 1.5], [2.0, 2.0, 9.0]])  # the 9.0 is padding
    expected = (0.5 + 2 + 1.5 + 2 + 2) ** 2 / (0.25 + 4 + 2.25 + 4 + 4) / 5
    assert nested.effective_sample_size(torch.log(weights), MASK) == pytest.approx(expected)
    assert nested.effective_sample_size(torch.zeros(2, 3), MASK) == pytest.approx(1.0)
    assert nested.effective_sample_size(torch.tensor([[1e4, 0.0, 0.0]]), torch.ones(1, 3)) == pytest.approx(1 / 3)
    assert nested.effective_sample_size(torch.full((2, 3), -math.inf), MASK) == 0.0


@pytest.mark.parametrize("correction", nested.CORRECTIONS)
def test_the_surrogate_weights_each_token_and_reports_the_batch(correction):
    """d loss / d new = -w_t * A / (real tokens) on policy (r = 1), w from the behaviour log-probs."""
    old = torch.tensor([[-1.0, -2.0, -0.5], [-0.3, -1.2, -4.0]])
    behaviour = (old - LOG_RATIO).tolist()
    behaviour = [behaviour[0], behaviour[1][:2]]  # rows are as long as their completions
    new = old.clone().requires_grad_(True)
    advantages = torch.tensor([1.0, -2.0])
    surrogate = nested.CorrectedSurrogate(behaviour, correction, cap=2.0, trace_lambda=0.9, band=0.5)
    loss, stats = surrogate(range(0, 2))(new, old, advantages, MASK, 0.2, 0.2, "token")
    loss.backward()
    weights = nested.correction_weights(LOG_RATIO, MASK, correction, cap=2.0, trace_lambda=0.9, band=0.5)
    assert torch.allclose(new.grad, -weights * advantages[:, None] / 5, atol=1e-6)
    assert stats["ratio_mean"] == pytest.approx(1.0) and stats["clip_fraction"] == 0
    report = surrogate.stats()
    real = weights[MASK.bool()]
    assert report["is_weight_mean"] == pytest.approx(real.mean().item(), abs=1e-6)
    assert report["is_ess"] == pytest.approx(nested.effective_sample_size(torch.log(weights), MASK), abs=1e-6)
    assert report["log_ratio_mean"] == pytest.approx(LOG_RATIO[MASK.bool()].mean().item(), abs=1e-5)
    assert report["masked_fraction"] == (0.5 if correction == "masked" else 0.0)


def test_the_surrogate_takes_the_rows_of_each_micro_batch():
    old = torch.tensor([[-1.0, -2.0], [-0.5, -0.5]])
    behaviour = [[-1.0, -2.0], [-0.5 - math.log(3.0), -0.5]]  # row 1, token 0: rho = 3
    surrogate = nested.CorrectedSurrogate(behaviour, "truncated", cap=2.0, trace_lambda=1.0, band=0.5)
    new = old[1:].clone().requires_grad_(True)
    loss, _ = surrogate(range(1, 2))(new, old[1:], torch.tensor([1.0]), torch.ones(1, 2), 0.2, 0.2, "token")
    loss.backward()
    assert torch.allclose(new.grad, torch.tensor([[-2.0 / 2, -1.0 / 2]]))


# ---------------------------------------------------------------- generation and training


def test_generation_with_skipped_layers_uses_the_kv_cache_correctly(deep_tiny):
    model, tokenizer = deep_tiny
    prompts = [arith.student_prompt("3+4"), arith.student_prompt("(12-7)*3+100-2")]
    engine = HFEngine(model, tokenizer)
    with nested.skipping(model, (1, 3)):
        # the kept layers write their own cache slots: 0, 2, 4, 5 hold keys, 1 and 3 stay empty
        ids = torch.tensor([tokenizer(prompts[0])["input_ids"]])
        with torch.no_grad():
            cache = getattr(model(input_ids=ids, use_cache=True), kv_cache_name())
        assert [cache.layers[i].get_seq_length() for i in range(6)] == [ids.shape[1] if i in (0, 2, 4, 5) else 0
                                                                          for i in range(6)]
        sampled = engine.generate(prompts, n=3, temperature=1.0, max_new_tokens=12, seed=4)
        greedy = engine.generate(prompts[:1], n=1, temperature=0.0, max_new_tokens=12)[0][0]
        prompt_ids = [tokenizer(p)["input_ids"] for p in prompts for _ in range(3)]
        completion_ids = [c.token_ids for row in sampled for c in row]
        with torch.no_grad():
            skipped, mask, _ = sequence_logprobs(model, prompt_ids, completion_ids, tokenizer.pad_token_id)
            # greedy decoding without a cache, one full forward pass per token
            row = tokenizer(prompts[0])["input_ids"]
            for _ in range(len(greedy.token_ids)):
                row = row + [int(model(input_ids=torch.tensor([row])).logits[0, -1].argmax())]
    assert row[-len(greedy.token_ids):] == greedy.token_ids
    with torch.no_grad():
        full, _, _ = sequence_logprobs(model, prompt_ids, completion_ids, tokenizer.pad_token_id)
    recorded = [c.logprobs for row in sampled for c in row]
    assert sum(map(len, recorded)) > 0
    for index, expected in enumerate(recorded):  # the engine's cached log-probs are the skipped model's
        assert torch.allclose(skipped[index, :len(expected)], torch.tensor(expected), atol=1e-4)
    assert (skipped - full)[mask].abs().max() > 1e-3


def _cfg(**overrides):
    base = dict(batch_prompts=2, group_size=4, max_new_tokens=8, lr=1e-2, kl_coef=0.05, steps=2,
                backend="nested", nested_skip_ratio=0.5)
    return StudentSection(**{**base, **overrides})


@pytest.mark.parametrize("correction, aggregation, temperature", [
    ("truncated", "token", 1.0), ("retrace", "sequence", 0.7), ("masked", "token", 1.0)])
def test_skip_ratio_zero_reproduces_the_rloo_update_exactly(deep_tiny, correction, aggregation, temperature):
    model, tokenizer = deep_tiny
    common = dict(nested_skip_ratio=0.0, nested_correction=correction, loss_aggregation=aggregation,
                  temperature=temperature)
    rloo, rloo_metrics = train_student(model, tokenizer, _problems(), arith, _cfg(backend="rloo", **common),
                                       reward_fn=even_character_share, seed=3)
    ours, metrics = nested.train_nested(model, tokenizer, _problems(), arith, _cfg(**common),
                                        reward_fn=even_character_share, seed=3)
    assert metrics.updates == rloo_metrics.updates == 2
    assert any(not torch.equal(a, b) for a, b in zip(ours.parameters(), model.parameters()))
    for (name, a), b in zip(ours.named_parameters(), rloo.parameters()):
        assert torch.equal(a, b), f"{name} differs from the RLOO update"
    assert [r["skipped_layers"] for r in metrics.per_step] == [[], []]
    assert all(r["is_ess"] == pytest.approx(1.0) and r["log_ratio_mean"] == 0.0 for r in metrics.per_step)
    skipping, _ = nested.train_nested(model, tokenizer, _problems(), arith,
                                      _cfg(**{**common, "nested_skip_ratio": 0.3}), reward_fn=even_character_share,
                                      seed=3)
    assert any(not torch.equal(a, b) for a, b in zip(skipping.parameters(), rloo.parameters()))


def test_the_weights_compare_the_full_student_with_the_rollout_model(deep_tiny):
    """A step's figures come from pi_full / pi_behaviour on its own batch at the sampling temperature (EOS
    included): recomputed here from the baseline (the student at the first rollout) with and without the
    step's skipped layers."""
    model, tokenizer = deep_tiny
    batches = []
    _, metrics = nested.train_nested(model, tokenizer, _problems(), arith, _cfg(steps=1, temperature=0.7),
                                     reward_fn=even_character_share, seed=2, on_rollout=lambda b, s: batches.append(b))
    (record,), (batch,) = metrics.per_step, batches
    with torch.no_grad():
        full, mask, _ = sequence_logprobs(model, batch.prompt_ids, batch.completion_ids, tokenizer.pad_token_id, 0.7)
        with nested.skipping(model, record["skipped_layers"]):
            behaviour, _, _ = sequence_logprobs(model, batch.prompt_ids, batch.completion_ids,
                                                tokenizer.pad_token_id, 0.7)
    log_ratio = (full - behaviour)[mask]
    assert log_ratio.abs().max() > 1e-3
    assert record["log_ratio_mean"] == pytest.approx(log_ratio.mean().item(), abs=1e-5)
    assert record["is_weight_mean"] == pytest.approx(log_ratio.exp().clamp(max=2.0).mean().item(), abs=1e-5)
    assert record["is_ess_raw"] == pytest.approx(nested.effective_sample_size(log_ratio, torch.ones_like(log_ratio)),
                                                 abs=1e-6)


@pytest.mark.parametrize("correction", nested.CORRECTIONS)
def test_trainer_nested_trains_every_parameter_end_to_end(deep_tiny, correction):
    model, tokenizer = deep_tiny
    assert trainer("nested") is nested.train_nested
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    records = []
    student, metrics = trainer("nested")(model, tokenizer, _problems(), arith, _cfg(nested_correction=correction,
                                         steps=3), reward_fn=even_character_share, seed=1, log=records.append)
    assert all(torch.equal(p, before[name]) for name, p in model.named_parameters()), "the baseline must not change"
    assert metrics.steps == 3 and records == metrics.per_step and metrics.tokens_per_second > 0
    for record in records:
        assert len(record["skipped_layers"]) == 3 and not {0, 5} & set(record["skipped_layers"])
        assert 0 < record["is_ess_raw"] <= 1 and 0 <= record["is_ess"] <= 1 + 1e-9
        assert record["is_ess_raw"] < 0.9999, "rollouts come from the skipped model"
    assert len({tuple(r["skipped_layers"]) for r in records}) > 1, "drawn per batch"
    if correction != "masked":  # the masked correction may drop every completion of a random model's step
        assert metrics.updates == 3
        changed = {name for name, p in student.named_parameters() if not torch.equal(p, before[name])}
        assert changed == set(before), "the update trains the full student, skipped layers included"


def test_a_lora_student_skips_layers_and_trains_only_its_adapter(deep_tiny):
    model, tokenizer = deep_tiny
    lora = add_lora(copy.deepcopy(model), rank=4, alpha=8)
    prompts, completions = _rows(tokenizer)
    with torch.no_grad():
        full, mask, _ = sequence_logprobs(lora, prompts, completions, tokenizer.pad_token_id)
        with nested.skipping(lora, (1, 2, 3)):
            assert len(nested.decoder_layers(lora)[1]) == 3
            skipped, _, _ = sequence_logprobs(lora, prompts, completions, tokenizer.pad_token_id)
    assert len(nested.decoder_layers(lora)[1]) == 6 and not torch.allclose(skipped[mask], full[mask], atol=1e-3)
    trainable = {name for name, p in lora.named_parameters() if p.requires_grad}
    before = {name: p.detach().clone() for name, p in lora.named_parameters()}
    student, metrics = nested.train_nested(lora, tokenizer, _problems(), arith, _cfg(steps=3),
                                           reward_fn=even_character_share)
    changed = {name for name, p in student.named_parameters() if not torch.equal(p, before[name])}
    assert metrics.updates == 3 and changed == trainable  # lora_A moves once lora_B (zero at init) has


def test_reward_rises_on_a_tiny_task_with_skipped_layers(deep_tiny):
    """The learning check: Nested-ReFT (a third of the layers skipped, truncated IS) raises the reward of a
    task the random model learns in seconds. Fails if the weighted update's sign or alignment is wrong."""
    model, tokenizer = deep_tiny
    records = []
    cfg = StudentSection(batch_prompts=4, group_size=8, max_new_tokens=8, lr=3e-3, steps=30, backend="nested",
                         nested_skip_ratio=0.34)
    nested.train_nested(model, tokenizer, _problems(), arith, cfg, reward_fn=even_character_share, seed=0,
                        log=records.append)
    rewards = [r["reward_mean"] for r in records]
    first, last = sum(rewards[:5]) / 5, sum(rewards[-5:]) / 5
    assert last > first + 0.25, f"reward did not rise: first 5 steps {first:.3f}, last 5 {last:.3f}"


def test_config_bounds():
    cfg = apply_overrides(RunConfig(), ["student.backend=nested", "student.nested_correction=retrace",
                                        "student.nested_skip_ratio=0.5"])
    assert cfg.student.backend == "nested" and cfg.student.nested_correction == "retrace"
    for bad in ["student.nested_skip_ratio=1.0", "student.nested_skip_ratio=-0.1", "student.nested_correction=clip",
                "student.nested_is_cap=0.5", "student.nested_trace_lambda=0", "student.nested_mask_band=0"]:
        with pytest.raises(ConfigError):
            apply_overrides(RunConfig(), [bad])
