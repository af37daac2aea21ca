"""Generation engines behind one interface: `generate(prompts, n, temperature, max_new_tokens, stop)`.

`HFEngine` is a hand-written sampling loop over a Hugging Face model. `model.generate` keeps finished
rows in the batch until the longest one ends and gives no per-token log-probs of the sampled tokens
without extra passes; this loop batches prompts of similar length, reuses the KV cache, drops finished
rows (and their cache) at once, and records the log-prob of every sampled token. `bench/generation.py`
measures it against `model.generate`.

`VLLMEngine` wraps vLLM (GPU only, `pip install soar-agent[gpu]`), imported lazily.

Log-probs are those of the model's own distribution (temperature 1, before any sampling transform), as
vLLM reports by default: what the RL importance ratios need.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Callable


@functools.cache
def kv_cache_name() -> str:
    """The name of a causal LM's KV cache, as its forward argument and its output's field: transformers 5.24
    renamed `past_key_values` to `cache` (the old name warns on every call and goes in 5.40), and pyproject
    allows every 5.x."""
    from transformers.modeling_outputs import CausalLMOutputWithPast

    return "cache" if "cache" in CausalLMOutputWithPast.__dataclass_fields__ else "past_key_values"


@dataclass
class Completion:
    token_ids: list[int]
    text: str
    logprobs: list[float]
    finish_reason: str  # "stop" (EOS or a stop string) or "length"
    # the stop string that ended the completion (sampled, in token_ids, cut from text); None for EOS or length
    stop_text: str | None = None


@dataclass
class GenerationStats:
    """Counters a caller can read for tokens/s (reset by the caller when it wants a window)."""

    tokens: int = 0
    seconds: float = 0.0
    calls: int = 0

    @property
    def tokens_per_second(self) -> float:
        return self.tokens / self.seconds if self.seconds else 0.0


def _truncate_at_stop(text: str, stop: list[str]) -> tuple[str, bool]:
    cut = min((text.find(s) for s in stop if s in text), default=-1)
    return (text[:cut], True) if cut >= 0 else (text, False)


def prefill_rows(prompts: list[list[int]]) -> tuple[list[tuple[int, ...]], list[int]]:
    """The distinct prompts of a batch and, per row, the index of its prompt among them: the n samples of a
    prompt share its prefill, its cache rows copied to each (the teacher's one 135-token prompt, 256 rows a
    batch, made the prefill most of its sampling's compute; bench/teacher_step.py)."""
    slot: dict[tuple[int, ...], int] = {}
    rows = [slot.setdefault(tuple(prompt), len(slot)) for prompt in prompts]
    return list(slot), rows


@dataclass
class HFEngine:
    """Batched sampling over a transformers causal LM (CPU or one GPU)."""

    model: object
    tokenizer: object
    max_batch_size: int = 256
    stats: GenerationStats = field(default_factory=GenerationStats)
    on_rows: Callable[[int], None] | None = None  # told how many completions each finished batch held (progress)
    # called once per decoded token: a batch of 256 rows takes minutes on a CPU, and the agent's heartbeat and
    # commands (Agent.beat, throttled there) must not wait for it to end
    tick: Callable[[], None] | None = None

    def generate(self, prompts: list[str], n: int = 1, temperature: float = 1.0, max_new_tokens: int = 128,
                 stop: list[str] | None = None, seed: int | None = None) -> list[list[Completion]]:
        """n completions per prompt, in prompt order. temperature 0 = greedy."""
        import time

        import torch

        stop = [s for s in (stop or []) if s]
        # on the model's device: sampling there needs no copy of the (rows x vocabulary) probabilities
        device = next(self.model.parameters()).device
        generator = torch.Generator(device=device).manual_seed(seed) if seed is not None else None
        encoded = [self.tokenizer(prompt, add_special_tokens=True)["input_ids"] for prompt in prompts]
        rows = [(index, ids) for index, ids in enumerate(encoded) for _ in range(n)]
        # Sorting by prompt length keeps padding (wasted compute) small inside a batch.
        order = sorted(range(len(rows)), key=lambda row: len(rows[row][1]))
        results: list[list[Completion]] = [[] for _ in prompts]
        slots: list[Completion | None] = [None] * len(rows)
        started = time.perf_counter()
        was_training = self.model.training
        self.model.eval()
        try:
            with torch.inference_mode():
                for begin in range(0, len(order), self.max_batch_size):
                    batch = order[begin:begin + self.max_batch_size]
                    completions = self._generate_batch([rows[i][1] for i in batch], temperature, max_new_tokens,
                                                       stop, generator)
                    for row, completion in zip(batch, completions):
                        slots[row] = completion
                    if self.on_rows is not None:
                        self.on_rows(len(batch))
        finally:
            self.model.train(was_training)
        for (prompt_index, _), completion in zip(rows, slots):
            results[prompt_index].append(completion)
        self.stats.seconds += time.perf_counter() - started
        self.stats.tokens += sum(len(c.token_ids) for c in slots)
        self.stats.calls += 1
        return results

    def _generate_batch(self, prompts: list[list[int]], temperature: float, max_new_tokens: int,
                        stop: list[str], generator) -> list[Completion]:
        import torch

        device = next(self.model.parameters()).device
        eos_ids = self._eos_ids()
        kv = kv_cache_name()
        cache, logits, attention, next_position = self._prefill(prompts, device)

        active = list(range(len(prompts)))  # batch row -> original index
        tokens: list[list[int]] = [[] for _ in prompts]
        logprobs: list[list[float]] = [[] for _ in prompts]
        texts = [""] * len(prompts)
        finish = ["length"] * len(prompts)
        matched: list[str | None] = [None] * len(prompts)
        for _ in range(max_new_tokens):
            if self.tick is not None:
                self.tick()
            log_probs = torch.log_softmax(logits.float(), dim=-1)  # (B, V)
            if temperature == 0:
                chosen = log_probs.argmax(-1)
            else:
                probs = torch.softmax(logits.float() / temperature, dim=-1)
                chosen = torch.multinomial(probs, 1, generator=generator).squeeze(-1)
            chosen_logprob = log_probs.gather(-1, chosen[:, None]).squeeze(-1)
            keep = []
            for row, (token, logprob) in enumerate(zip(chosen.tolist(), chosen_logprob.tolist())):
                original = active[row]
                if token in eos_ids:
                    finish[original] = "stop"
                    continue
                tokens[original].append(token)
                logprobs[original].append(logprob)
                if stop:
                    texts[original] += self.tokenizer.decode([token])
                    hit = next((s for s in stop if s in texts[original][-len(s) - 8:]), None)
                    if hit is not None:
                        finish[original], matched[original] = "stop", hit
                        continue
                keep.append(row)
            if not keep:
                break
            if len(keep) < len(active):
                index = torch.tensor(keep, device=device)
                cache.batch_select_indices(index)
                attention, next_position, chosen = attention[index], next_position[index], chosen[index]
                active = [active[row] for row in keep]
            attention = torch.cat([attention, attention.new_ones(len(active), 1)], dim=1)
            output = self.model(input_ids=chosen[:, None], attention_mask=attention,
                                position_ids=next_position[:, None], use_cache=True, **{kv: cache})
            cache, logits = getattr(output, kv), output.logits[:, -1, :]
            next_position = next_position + 1
        return self._completions(tokens, logprobs, finish, matched, stop)

    def _prefill(self, prompts: list[list[int]], device):
        """One forward pass over the batch's distinct prompts, left-padded; each row gets its prompt's cache rows
        and last logits. Returns (cache, logits, attention mask, next position), one row per prompt given."""
        import torch

        pad = self.tokenizer.pad_token_id
        distinct, rows = prefill_rows(prompts)
        expand = torch.tensor(rows, device=device)
        width = max(len(p) for p in distinct)
        input_ids = torch.tensor([[pad] * (width - len(p)) + list(p) for p in distinct], device=device)  # (U, T)
        attention = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in distinct], device=device)
        positions = (attention.cumsum(-1) - 1).clamp(min=0)
        output = self.model(input_ids=input_ids, attention_mask=attention, position_ids=positions, use_cache=True)
        cache, logits = getattr(output, kv_cache_name()), output.logits[:, -1, :][expand]
        if len(distinct) < len(prompts):
            cache.batch_select_indices(expand)
        return cache, logits, attention[expand], positions[expand, -1] + 1  # next position: (B,)

    def _completions(self, tokens: list[list[int]], logprobs: list[list[float]], finish: list[str],
                     matched: list[str | None], stop: list[str]) -> list[Completion]:
        completions = []
        for index in range(len(tokens)):
            text = self.tokenizer.decode(tokens[index], skip_special_tokens=True)
            if stop:
                text, _ = _truncate_at_stop(text, stop)
            completions.append(Completion(tokens[index], text, logprobs[index], finish[index], matched[index]))
        return completions

    def load_weights(self, model) -> None:
        """Sample from `model`'s current weights from now on. An engine built on the trained model itself
        (the default inside a student) sees every update already; one that holds its own copy (another
        device or dtype, as vLLM does) gets the merged weights copied in."""
        if model is self.model:
            return
        import torch

        with torch.no_grad():
            self.model.load_state_dict(dict(merged_weights(model)), strict=True)

    def _eos_ids(self) -> set[int]:
        ids = {self.tokenizer.eos_token_id}
        configured = getattr(getattr(self.model, "generation_config", None), "eos_token_id", None)
        ids |= set(configured) if isinstance(configured, list) else {configured}
        return {i for i in ids if i is not None}


@dataclass
class VLLMEngine:
    """vLLM behind the same interface (GPU; needs the `gpu` extra). `load_weights` pushes freshly trained
    weights into the running engine and resets the prefix cache so no stale weights generate."""

    model_path: str
    dtype: str = "bfloat16"
    gpu_memory_utilization: float = 0.5
    stats: GenerationStats = field(default_factory=GenerationStats)
    _llm: object = None

    def __post_init__(self):
        import os

        # load_weights reaches the model through the engine core, which must run in this process
        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
        try:
            from vllm import LLM
        except ImportError as error:
            raise RuntimeError("engine 'vllm' needs the gpu extra: pip install 'soar-agent[gpu]'") from error
        self._llm = LLM(model=str(self.model_path), dtype=self.dtype,
                        gpu_memory_utilization=self.gpu_memory_utilization, enable_prefix_caching=True)

    def generate(self, prompts: list[str], n: int = 1, temperature: float = 1.0, max_new_tokens: int = 128,
                 stop: list[str] | None = None, seed: int | None = None) -> list[list[Completion]]:
        import time

        from vllm import SamplingParams

        params = SamplingParams(n=n, temperature=temperature, max_tokens=max_new_tokens, stop=stop or None,
                                logprobs=0, seed=seed)
        started = time.perf_counter()
        outputs = self._llm.generate(prompts, params, use_tqdm=False)
        results = []
        for output in outputs:
            row = []
            for sample in output.outputs:
                logprobs = [entry[token].logprob for token, entry in zip(sample.token_ids, sample.logprobs or [])]
                row.append(Completion(list(sample.token_ids), sample.text, logprobs,
                                      "length" if sample.finish_reason == "length" else "stop",
                                      sample.stop_reason if isinstance(sample.stop_reason, str) else None))
            results.append(row)
        self.stats.seconds += time.perf_counter() - started
        self.stats.tokens += sum(len(c.token_ids) for row in results for c in row)
        self.stats.calls += 1
        return results

    def load_weights(self, model) -> None:
        """Push `model`'s weights (LoRA merged in) into the engine's model and drop the prefix cache, whose
        entries were computed with the old weights (the pattern TRL's vLLM colocate mode uses)."""
        worker = self._llm.llm_engine.model_executor.driver_worker.worker.model_runner.model
        worker.load_weights(merged_weights(model))
        self._llm.reset_prefix_cache()


def merged_weights(model) -> list[tuple[str, object]]:
    """The full weights of `model` as (Hugging Face parameter name, tensor) pairs, what an inference engine
    loads. For a peft LoRA model each adapted weight is W + its adapter's delta (peft's get_delta_weight),
    computed aside: merging in place and unmerging after, as TRL does, leaves W off by rounding on every
    push, which adds up over a night. Names lose peft's wrapping (base_model.model., .base_layer) and the
    adapter tensors are left out."""
    def plain(name: str) -> str:
        return name.removeprefix("base_model.model.").replace(".base_layer", "")

    if not hasattr(model, "peft_config"):
        return list(model.state_dict().items())
    import torch
    from peft.tuners.lora import LoraLayer

    state = {plain(name): tensor for name, tensor in model.state_dict().items() if "lora_" not in name}
    with torch.no_grad():
        for name, module in model.named_modules():
            if isinstance(module, LoraLayer):
                key = plain(name) + ".weight"
                for adapter in module.active_adapters:
                    if adapter in module.lora_A:
                        state[key] = state[key] + module.get_delta_weight(adapter)
    return list(state.items())


def make_engine(kind: str, model, tokenizer, model_path: str | None = None, dtype: str = "float32"):
    if kind == "hf":
        return HFEngine(model, tokenizer)
    if kind == "vllm":
        return VLLMEngine(str(model_path), dtype=dtype if dtype != "float32" else "bfloat16")
    raise ValueError(f"unknown engine {kind!r} (expected hf or vllm)")
