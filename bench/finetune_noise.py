"""Why student RL does not lift the shipped model: every fine-tuning update costs more than it teaches.

Eight updates through the student's own loss (`policy_step`) from a fresh optimizer, on batches of 16
expert solutions of arith levels 3-5, with advantages either all 1 (supervised fine-tuning on the
expert: pure signal) or standard-normal (pure noise, what an RL batch without signal does). Prints the
per-token NLL and entropy of 32 *held-out* expert solutions before and after, per optimizer.

    python bench/finetune_noise.py
"""

from __future__ import annotations

import math
import random

import torch

from soar_agent.config import StudentSection
from soar_agent.models import clone_model, load_model, load_tokenizer
from soar_agent.rl.train import Rollout, policy_step, sequence_logprobs
from soar_agent.tasks import generate_problems, get_domain

OPTIMIZERS = {
    "adamw lr 1e-4": lambda params: torch.optim.AdamW(params, lr=1e-4, weight_decay=0.0),
    "adamw lr 3e-5": lambda params: torch.optim.AdamW(params, lr=3e-5, weight_decay=0.0),
    "adamw lr 1e-4 betas (0.9, 0.9)": lambda params: torch.optim.AdamW(params, lr=1e-4, betas=(0.9, 0.9),
                                                                       weight_decay=0.0),
    "sgd lr 0.3": lambda params: torch.optim.SGD(params, lr=0.3),
    "sgd lr 0.1 momentum 0.9": lambda params: torch.optim.SGD(params, lr=0.1, momentum=0.9),
}


def main() -> None:
    domain, tokenizer, base = get_domain("arith"), load_tokenizer("default"), load_model("default")
    cfg = StudentSection(kl_coef=0.0)
    train = generate_problems(domain, [3, 4, 5] * 50, random.Random(0))
    held_out = generate_problems(domain, [3, 4] * 16, random.Random(5))

    def expert_batch(problems) -> Rollout:
        prompts = [tokenizer(domain.student_prompt(p.question))["input_ids"] for p in problems]
        completions = [tokenizer(domain.expert_completion(p), add_special_tokens=False)["input_ids"]
                       + [tokenizer.eos_token_id] for p in problems]
        return Rollout(problems, prompts, completions, [[math.nan] * len(c) for c in completions],
                       [""] * len(problems), 1, 0, 1.0)

    probe = expert_batch(held_out)

    def nll_entropy(model) -> tuple[float, float]:
        with torch.no_grad():
            logprobs, mask, entropy = sequence_logprobs(model, probe.prompt_ids, probe.completion_ids,
                                                        tokenizer.pad_token_id)
        return (-logprobs.sum() / mask.sum()).item(), (entropy.sum() / mask.sum()).item()

    print(f"{'optimizer':32s} {'advantages':>10s} {'held-out NLL':>13s} {'entropy':>8s}")
    print(f"{'(base model)':32s} {'':>10s} {nll_entropy(base)[0]:13.4f} {nll_entropy(base)[1]:8.4f}")
    for name, make in OPTIMIZERS.items():
        for kind in ("expert", "noise"):
            model = clone_model(base)
            model.eval()
            optimizer = make([p for p in model.parameters() if p.requires_grad])
            noise = torch.Generator().manual_seed(0)
            for step in range(8):
                batch = expert_batch(train[step * 16:(step + 1) * 16])
                advantages = torch.ones(16) if kind == "expert" else torch.randn(16, generator=noise)
                policy_step(model, optimizer, batch, advantages, cfg, tokenizer.pad_token_id)
            nll, entropy = nll_entropy(model)
            print(f"{name:32s} {kind:>10s} {nll:13.4f} {entropy:8.4f}", flush=True)


if __name__ == "__main__":
    main()
