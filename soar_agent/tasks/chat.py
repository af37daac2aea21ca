"""Prompts for instruct models: a domain seen through a tokenizer's chat template.

`for_model(domain, tokenizer)` returns the domain unchanged when the tokenizer has no chat template (the
shipped model, base models), else a view of it whose student prompts (and, through `teacher_prompt`,
teacher prompts) are rendered as one user turn followed by the assistant's generation prompt. Everything
else (generation, scoring, levels) is the domain's own. Text appended to a rendered prompt (SRL's expert
steps) continues the assistant's turn, which is what the step-wise prompts mean.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


def render_chat(tokenizer, text: str) -> str:
    """`text` as a user turn plus the generation prompt. The callers tokenize prompts with the tokenizer's
    special tokens (BOS), so a BOS the template writes itself is dropped rather than doubled."""
    rendered = tokenizer.apply_chat_template([{"role": "user", "content": text}], tokenize=False,
                                             add_generation_prompt=True)
    bos = tokenizer.bos_token
    if bos and rendered.startswith(bos) and tokenizer("", add_special_tokens=True)["input_ids"][:1] == [
            tokenizer.bos_token_id]:
        rendered = rendered[len(bos):]
    return rendered


@dataclass(frozen=True)
class ChatDomain:
    """A domain whose prompts go through a chat template; any other attribute is the domain's."""

    domain: Any
    tokenizer: Any

    def __getattr__(self, name: str):
        if name in ("domain", "tokenizer"):  # not set yet (copy, pickle): no recursion
            raise AttributeError(name)
        return getattr(self.domain, name)

    def student_prompt(self, question: str) -> str:
        return render_chat(self.tokenizer, self.domain.student_prompt(question))

    def wrap_prompt(self, text: str) -> str:
        return render_chat(self.tokenizer, text)


def for_model(domain, tokenizer, use_template: bool = True):
    if not use_template or not getattr(tokenizer, "chat_template", None):
        return domain
    return ChatDomain(domain, tokenizer)
