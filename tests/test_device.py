"""Device placement and micro-batching (issue 10 §3): model.device resolves and places models, sampling
runs on the model's device, and a micro-batched student loss gives the same loss, gradient and update as
one pass over the whole batch. CUDA paths are checked where a GPU exists (skipped here otherwise)."""

from __future__ import annotations

import copy
import math
import random

import pytest
import torch

from soar_agent.config import StudentSection, load_config
from soar_agent.engine import HFEngine
from soar_agent.models import ModelLoadError, load_model, resolve_device, _torch_dtype
from soar_agent.rl.advantages import rloo_advantages
from soar_agent.rl.train import Rollout, policy_step


def test_auto_device_and_dtype_follow_the_machine():
    device = resolve_device("auto")
    assert device.type == ("cuda" if torch.cuda.is_available() else "cpu")
    assert resolve_device("cpu") == torch.device("cpu")
    assert _torch_dtype("auto", torch.device("cpu")) == torch.float32  # bf16 only where a GPU supports it
    assert _torch_dtype("bfloat16") == torch.bfloat16
    if not torch.cuda.is_available():
        with pytest.raises(ModelLoadError, match="no CUDA GPU"):
            resolve_device("cuda")


def test_config_accepts_devices_and_refuses_others():
    assert load_config(None, ["model.device=cuda:1"]).model.device == "cuda:1"
    assert load_config(None, []).model.device == "auto"
    with pytest.raises(Exception, match="model.device"):
        load_config(None, ["model.device=tpu"])


def test_the_embedded_model_loads_on_the_resolved_device():
    model = load_model("default", "auto", device="auto")
    assert next(model.parameters()).device.type == resolve_device("auto").type
    assert next(model.parameters()).dtype == _torch_dtype("auto", resolve_device("auto"))


def batch_of(model, tokenizer, rows: int = 6, seed: int = 0) -> tuple[Rollout, torch.Tensor]:
    """A rollout batch with completions of different lengths (one empty) and mixed advantages."""
    rng = random.Random(seed)
    prompt_ids, completion_ids, old = [], [], []
    for row in range(rows):
        prompt_ids.append([rng.randrange(4, 40) for _ in range(rng.randint(2, 6))])
        completion = [rng.randrange(4, 40) for _ in range(0 if row == 2 else rng.randint(1, 9))]
        completion_ids.append(completion)
        old.append([-2.0 - 0.1 * i for i in range(len(completion))])  # off-policy: ratios != 1, the clip bites
    batch = Rollout([None] * rows, prompt_ids, completion_ids, old, [""] * rows, 3, 0, 0.0)
    advantages = rloo_advantages(torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 1.0]])).flatten()
    return batch, advantages


@pytest.mark.parametrize("aggregation", ["token", "sequence"])
@pytest.mark.parametrize("kl_coef", [0.0, 0.1])
def test_micro_batches_give_the_full_batch_loss_and_update(random_tiny, aggregation, kl_coef):  # noqa: F811
    model, tokenizer = random_tiny
    batch, advantages = batch_of(model, tokenizer)
    results = {}
    for micro_batch in (0, 1, 4):
        student = copy.deepcopy(model)
        reference = copy.deepcopy(model)
        cfg = StudentSection(micro_batch=micro_batch, loss_aggregation=aggregation, kl_coef=kl_coef, lr=1e-2,
                             grad_clip=1e9)
        optimizer = torch.optim.SGD([p for p in student.parameters() if p.requires_grad], lr=cfg.lr)
        stats = policy_step(student, optimizer, batch, advantages, cfg, tokenizer.pad_token_id, reference)
        results[micro_batch] = (stats, [p.detach().clone() for p in student.parameters()])
    whole, _ = results[0]
    assert whole["updated"] and whole["clip_fraction"] > 0
    for micro_batch in (1, 4):
        stats, params = results[micro_batch]
        for key in ("loss", "kl", "entropy", "clip_fraction", "ratio_mean", "grad_norm"):
            assert stats[key] == pytest.approx(whole[key], rel=1e-5, abs=1e-7), key
        for a, b in zip(params, results[0][1]):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)
    moved = sum((a - b).abs().sum().item() for a, b in zip(results[0][1], model.parameters()))
    assert moved > 0 and math.isfinite(moved)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_models_and_sampling_run_on_the_gpu(random_tiny):
    model, tokenizer = random_tiny
    model = copy.deepcopy(model).to("cuda")
    engine = HFEngine(model, tokenizer)  # the seeded generator lives on the GPU with the probabilities
    out = engine.generate(["ab"], n=2, temperature=1.0, max_new_tokens=4, seed=1)
    again = engine.generate(["ab"], n=2, temperature=1.0, max_new_tokens=4, seed=1)
    assert len(out[0]) == 2 and [c.token_ids for c in out[0]] == [c.token_ids for c in again[0]]


def test_an_engine_with_its_own_weights_samples_from_the_trained_student(random_tiny):
    """The vLLM pattern on CPU: the rollout engine holds a separate copy of the model; train_student pushes
    the student's weights into it before the first rollout and after every update."""
    from soar_agent.rl.train import train_student
    from soar_agent.tasks import arith, generate_problems

    model, tokenizer = random_tiny
    engine_copy = copy.deepcopy(model)
    with torch.no_grad():
        for parameter in engine_copy.parameters():
            parameter.add_(1.0)  # stale weights: sampling from them would differ
    engine = HFEngine(engine_copy, tokenizer)
    pushes = []
    real_load = engine.load_weights
    engine.load_weights = lambda m: (pushes.append(1), real_load(m))
    problems = generate_problems(arith, [1] * 4, random.Random(0))

    def varied_reward(problems, completions):  # a signal on every group, so every step updates
        return [float(i % 2) for i in range(len(completions))]

    cfg = StudentSection(batch_prompts=2, group_size=2, max_new_tokens=8, lr=1e-2)
    student, metrics = train_student(model, tokenizer, problems, arith, cfg, steps=2, reward_fn=varied_reward,
                                     seed=1, engine=engine)
    assert metrics.updates == 2 and len(pushes) == 1 + 2  # before the first rollout, after each update
    for a, b in zip(student.state_dict().values(), engine_copy.state_dict().values()):
        assert torch.equal(a, b)
    own = HFEngine(student, tokenizer).generate(["1+1"], n=2, temperature=1.0, max_new_tokens=6, seed=3)
    pushed = engine.generate(["1+1"], n=2, temperature=1.0, max_new_tokens=6, seed=3)
    assert [c.token_ids for c in own[0]] == [c.token_ids for c in pushed[0]]


def test_lora_weights_are_pushed_merged_and_the_adapter_survives(random_tiny):
    from soar_agent.engine import merged_weights
    from soar_agent.models import add_lora

    model, tokenizer = random_tiny
    plain = copy.deepcopy(model)
    lora = add_lora(copy.deepcopy(model), rank=2, alpha=4)
    with torch.no_grad():
        for name, parameter in lora.named_parameters():
            if "lora_B" in name:
                parameter.normal_(0, 0.5)  # a trained adapter (B starts at zero)
    before = {k: v.clone() for k, v in lora.state_dict().items()}
    engine = HFEngine(plain, tokenizer)
    engine.load_weights(lora)  # strict load: every name must be a plain Hugging Face parameter name
    after = lora.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # the adapter model is not touched
    ids = torch.tensor([[5, 6, 7, 8]])
    with torch.no_grad():
        torch.testing.assert_close(plain(input_ids=ids).logits, lora(input_ids=ids).logits, rtol=1e-4, atol=1e-4)
    assert [name for name, _ in merged_weights(model)] == list(model.state_dict())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="vLLM needs a CUDA GPU")
def test_vllm_samples_from_pushed_weights(random_tiny_dir, random_tiny):
    pytest.importorskip("vllm")
    from soar_agent.engine import VLLMEngine

    model, tokenizer = random_tiny
    engine = VLLMEngine(str(random_tiny_dir), dtype="float32", gpu_memory_utilization=0.2)
    before = engine.generate(["1+1"], n=1, temperature=0.0, max_new_tokens=8)[0][0].token_ids
    changed = copy.deepcopy(model)
    with torch.no_grad():
        changed.lm_head.weight.normal_(0, 5.0)
    engine.load_weights(changed)
    after = engine.generate(["1+1"], n=1, temperature=0.0, max_new_tokens=8)[0][0].token_ids
    expected = HFEngine(changed.to("cuda"), tokenizer).generate(["1+1"], n=1, temperature=0.0,
                                                                 max_new_tokens=8)[0][0].token_ids
    assert after == expected != before
