"""Student RL core: rollouts from the current weights, group advantages, the clipped surrogate.

Three seams for later backends, each a plain function: the rollout source (`train.rollout`), the reward
function (`train.reward_correct` and any `(problems, completions) -> list[float | None]`) and the loss
(`loss.clipped_surrogate`, `loss.k3_kl`).
"""

from soar_agent.rl.advantages import grpo_advantages, rloo_advantages
from soar_agent.rl.loss import aggregate, clipped_surrogate, k3_kl
from soar_agent.rl.train import (NonFiniteLoss, Rollout, StudentMetrics, policy_step, reward_correct, rollout,
                                 sequence_logprobs, train_student)
from soar_agent.rl.nested import train_nested
from soar_agent.rl.sft import train_sft_then_rlvr
from soar_agent.rl.srl import train_srl, train_srl_then_rlvr
from soar_agent.rl.srpo import train_srpo


def trainer(backend: str):
    """The training function of a `student.backend`; every one has train_student's signature and result."""
    from soar_agent.rl import nested, sft, srl, srpo, train  # looked up per call, so tests can wrap the functions

    return {"rloo": train.train_student, "grpo": train.train_student, "srl": srl.train_srl,
            "srl-rlvr": srl.train_srl_then_rlvr, "sft-rlvr": sft.train_sft_then_rlvr,
            "srpo": srpo.train_srpo,
            "nested": nested.train_nested}[backend]


__all__ = ["rloo_advantages", "grpo_advantages", "clipped_surrogate", "k3_kl", "aggregate", "NonFiniteLoss",
           "Rollout", "StudentMetrics", "policy_step", "reward_correct", "rollout", "sequence_logprobs",
           "train_student", "train_srl", "train_srl_then_rlvr", "train_sft_then_rlvr", "train_srpo", "train_nested",
           "trainer"]
