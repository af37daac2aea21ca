"""Loading, copying and saving causal LMs: any local Hugging Face directory, offline, with optional LoRA.

Also builds the embedded default's character-level tokenizer and tiny Llama config (the weights are
trained by `soar_agent.pretrain` and shipped in `soar_agent/data/tiny-llama`).
"""

from __future__ import annotations

import copy
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from soar_agent.diskfull import DiskFull, is_disk_full

EMBEDDED_MODEL_DIR = Path(__file__).parent / "data" / "tiny-llama"

# Structural tags of the teacher/SRL formats get one token each: shorter sequences for the tiny model.
TAG_TOKENS = ["<question>", "</question>", "<answer>", "</answer>", "<think>", "</think>", "**"]
SPECIAL_TOKENS = ["<pad>", "<s>", "</s>", "<unk>"]
CHARACTERS = ["\n"] + [chr(code) for code in range(32, 127)]


class ModelLoadError(RuntimeError):
    """A model directory that cannot be loaded; the message is one line naming the path."""


def resolve_device(name: str = "auto"):
    """model.device as a torch.device: auto = the first CUDA GPU when torch sees one, else the CPU."""
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ModelLoadError(f"model.device = {name!r}, but torch sees no CUDA GPU (use auto or cpu)")
    return device


def _torch_dtype(name: str, device=None):
    """model.dtype as a torch dtype: auto = bfloat16 on a GPU that supports it, else float32 (CPU bf16
    matmuls are slow and the tiny model is trained in float32)."""
    import torch

    if name == "auto":
        device = device or resolve_device("auto")
        return torch.bfloat16 if device.type == "cuda" and torch.cuda.is_bf16_supported() else torch.float32
    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[name]


def resolve_model_path(path: str | os.PathLike) -> Path:
    """`default` is the embedded model; anything else must be an existing local HF directory."""
    if str(path) == "default":
        return EMBEDDED_MODEL_DIR
    resolved = Path(path).expanduser()
    if not resolved.is_dir():
        raise ModelLoadError(f"{resolved}: model directory does not exist")
    if not (resolved / "config.json").is_file() and not (resolved / "adapter_config.json").is_file():
        raise ModelLoadError(f"{resolved}: not a Hugging Face model directory (no config.json)")
    return resolved


# config.json keys that hold a causal LM's context in tokens, by model family (Llama/Qwen/Mistral, GPT-2, ...)
_CONTEXT_KEYS = ("max_position_embeddings", "n_positions", "n_ctx", "max_sequence_length", "seq_length")


def context_length(path: str | os.PathLike, tokenizer=None) -> int | None:
    """The model's context in tokens (prompt plus completion): the position limit in its config.json (the
    base model's for a saved adapter), else the tokenizer's model_max_length when that is a real limit;
    None when neither says."""
    import json

    directory = resolve_model_path(path)
    limits = []
    for _ in range(2):  # an adapter directory names its base model
        try:
            config = json.loads((directory / "config.json").read_text())
        except (OSError, ValueError):
            config = None
        if isinstance(config, dict):
            for section in (config, config.get("text_config")):
                if isinstance(section, dict):
                    limits += [section[key] for key in _CONTEXT_KEYS if type(section.get(key)) is int and section[key] > 0]
            break
        try:
            adapter = json.loads((directory / "adapter_config.json").read_text())
            directory = Path(adapter["base_model_name_or_path"])
        except (OSError, ValueError, KeyError, TypeError):
            break
    declared = getattr(tokenizer, "model_max_length", None)
    if not limits and type(declared) is int and 0 < declared < 10**7:  # 1e30 means "no limit"
        limits.append(declared)
    return min(limits) if limits else None


def build_char_tokenizer():
    """The embedded default's tokenizer: one token per printable ASCII character plus tag tokens.

    Built with the `tokenizers` library (WordLevel over single characters) and wrapped as a
    PreTrainedTokenizerFast, so it saves and loads like any HF tokenizer."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {token: index for index, token in enumerate(SPECIAL_TOKENS + CHARACTERS)}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    backend.decoder = decoders.Fuse()
    backend.add_special_tokens([AddedToken(token, special=True) for token in SPECIAL_TOKENS])
    backend.add_tokens([AddedToken(token, normalized=False, special=False) for token in TAG_TOKENS])
    backend.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A $B", special_tokens=[("<s>", vocab["<s>"])])
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, bos_token="<s>", eos_token="</s>", pad_token="<pad>", unk_token="<unk>",
        padding_side="left", clean_up_tokenization_spaces=False)


@dataclass(frozen=True)
class TinyShape:
    """Shape of the embedded default (about 0.9M parameters: trains in minutes on 2 CPU cores)."""

    hidden_size: int = 128
    intermediate_size: int = 384
    num_hidden_layers: int = 4
    num_attention_heads: int = 4
    max_position_embeddings: int = 512


def build_tiny_model(tokenizer, shape: TinyShape = TinyShape(), seed: int = 0):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=shape.hidden_size, intermediate_size=shape.intermediate_size,
        num_hidden_layers=shape.num_hidden_layers, num_attention_heads=shape.num_attention_heads,
        num_key_value_heads=shape.num_attention_heads, max_position_embeddings=shape.max_position_embeddings,
        tie_word_embeddings=True, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id, rope_theta=10000.0)
    torch.manual_seed(seed)
    return LlamaForCausalLM(config)


def load_tokenizer(path: str | os.PathLike):
    from transformers import AutoTokenizer

    directory = resolve_model_path(path)
    try:
        tokenizer = AutoTokenizer.from_pretrained(directory, local_files_only=True)
    except Exception as error:  # transformers raises many types; the user needs one line
        raise ModelLoadError(f"{directory}: cannot load tokenizer: {str(error).splitlines()[0]}") from error
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"
    return tokenizer


def load_model(path: str | os.PathLike, dtype: str = "float32", lora: bool = False, lora_rank: int = 16,
               lora_alpha: int = 32, lora_dropout: float = 0.0, device: str = "cpu"):
    """Load a local causal LM (never touching the network) onto `device` (model.device: auto, cpu, cuda,
    cuda:N); wrap it in a fresh LoRA adapter if asked.

    A directory holding a saved peft adapter (adapter_config.json) loads as base + adapter."""
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()  # a "Loading weights" bar on every student/checkpoint load is noise
    directory = resolve_model_path(path)
    target = resolve_device(device)
    try:
        if (directory / "adapter_config.json").is_file():
            from peft import AutoPeftModelForCausalLM

            return AutoPeftModelForCausalLM.from_pretrained(
                directory, torch_dtype=_torch_dtype(dtype, target), local_files_only=True, is_trainable=True
            ).to(target)
        model = AutoModelForCausalLM.from_pretrained(directory, dtype=_torch_dtype(dtype, target),
                                                     local_files_only=True).to(target)
    except ModelLoadError:
        raise
    except Exception as error:
        raise ModelLoadError(f"{directory}: cannot load model: {str(error).splitlines()[0]}") from error
    if lora:
        model = add_lora(model, lora_rank, lora_alpha, lora_dropout)
    return model


def add_lora(model, rank: int = 16, alpha: int = 32, dropout: float = 0.0):
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=dropout, target_modules="all-linear",
                        task_type="CAUSAL_LM")
    return get_peft_model(model, config)


def clone_model(model):
    """An independent copy for a teacher or student role. Tiny and LoRA models deep-copy cheaply; for
    big full-parameter models callers should reload from disk instead of holding many copies."""
    return copy.deepcopy(model)


def save_checkpoint(model, tokenizer, directory: str | os.PathLike, merge_lora: bool = False) -> Path:
    """Atomic save: write into a temporary sibling directory, fsync, then rename over the target, so a
    crash (or a full disk) mid-save never leaves a half-written checkpoint under the final name."""
    target = Path(directory)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        # merge_and_unload mutates, so merge a copy and leave the caller's adapter model intact
        to_save = clone_model(model).merge_and_unload() if merge_lora and hasattr(model, "merge_and_unload") else model
        to_save.save_pretrained(staging, safe_serialization=True)
        tokenizer.save_pretrained(staging)
        for file in staging.iterdir():
            with open(file, "rb") as handle:
                os.fsync(handle.fileno())
        if target.exists():
            retired = target.with_name(f".{target.name}.old")
            shutil.rmtree(retired, ignore_errors=True)
            os.rename(target, retired)
            os.rename(staging, target)
            shutil.rmtree(retired, ignore_errors=True)
        else:
            os.rename(staging, target)
    except BaseException as error:
        shutil.rmtree(staging, ignore_errors=True)
        if not isinstance(error, OSError) and is_disk_full(error):  # safetensors' SafetensorError
            raise DiskFull(target, "saving a checkpoint") from error
        raise
    return target


def save_torch(obj, path: str | os.PathLike, doing: str) -> None:
    """torch.save through a file object that Python writes: into a path, torch reports a full disk as a bare
    RuntimeError ("unexpected pos ..."), through Python's write as one raised while handling OSError ENOSPC,
    which is turned into DiskFull naming `path`; the partial file is removed."""
    import torch

    try:
        with open(path, "wb") as handle:
            torch.save(obj, handle)
    except Exception as error:
        if is_disk_full(error):
            if Path(path).is_file():  # never a device node such as /dev/full
                Path(path).unlink()
            raise DiskFull(path, doing) from error
        raise


def count_parameters(model) -> int:
    return sum(parameter.numel() for parameter in model.parameters())
