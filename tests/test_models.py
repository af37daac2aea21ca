"""Model loading (offline, LoRA), cheap copies and atomic checkpoint saves."""

import os

import pytest
import torch

from soar_agent.models import (EMBEDDED_MODEL_DIR, ModelLoadError, clone_model, count_parameters, load_model,
                               load_tokenizer, save_checkpoint)


def test_embedded_model_is_small_and_loads_offline(monkeypatch):
    if not (EMBEDDED_MODEL_DIR / "config.json").is_file():
        pytest.skip("embedded model not built")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    size = sum(f.stat().st_size for f in EMBEDDED_MODEL_DIR.iterdir())
    assert size <= 20 * 1024 * 1024
    model, tokenizer = load_model("default"), load_tokenizer("default")
    assert 100_000 < count_parameters(model) < 5_000_000
    assert tokenizer.decode(tokenizer("<question>1+2</question>", add_special_tokens=False).input_ids) == \
        "<question>1+2</question>"


def test_missing_and_invalid_directories_give_one_line_errors(tmp_path):
    with pytest.raises(ModelLoadError, match="does not exist"):
        load_model(tmp_path / "missing")
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(ModelLoadError) as error:
        load_model(tmp_path)
    assert str(tmp_path) in str(error.value) and "\n" not in str(error.value)


def test_clone_is_independent(random_tiny):
    model, _ = random_tiny
    copy = clone_model(model)
    with torch.no_grad():
        next(copy.parameters()).add_(1.0)
    assert not torch.equal(next(copy.parameters()), next(model.parameters()))


def test_lora_round_trip_and_merged_save(random_tiny_dir, tmp_path):
    model = load_model(random_tiny_dir, lora=True, lora_rank=4, lora_alpha=8)
    trainable = [name for name, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in name for name in trainable)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.add_(0.05)
    tokenizer = load_tokenizer(random_tiny_dir)
    ids = tokenizer("Problem: 1+2", return_tensors="pt").input_ids
    with torch.no_grad():
        expected = model(ids).logits
    adapter = save_checkpoint(model, tokenizer, tmp_path / "adapter")
    assert (adapter / "adapter_config.json").is_file()
    reloaded = load_model(adapter)
    merged_dir = save_checkpoint(reloaded, tokenizer, tmp_path / "merged", merge_lora=True)
    assert not (merged_dir / "adapter_config.json").exists()
    merged = load_model(merged_dir)
    with torch.no_grad():
        assert torch.allclose(reloaded(ids).logits, expected, atol=1e-5)
        assert torch.allclose(merged(ids).logits, expected, atol=1e-4)
    assert any("lora_" in name for name, _ in reloaded.named_parameters())  # merging copied, not mutated


def test_failed_save_leaves_the_previous_checkpoint_intact(random_tiny, tmp_path, monkeypatch):
    model, tokenizer = random_tiny
    target = save_checkpoint(model, tokenizer, tmp_path / "ckpt")
    before = {f.name: f.read_bytes() for f in target.iterdir()}

    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(type(tokenizer), "save_pretrained", disk_full)
    with torch.no_grad():
        next(model.parameters()).add_(1.0)
    with pytest.raises(OSError, match="No space"):
        save_checkpoint(model, tokenizer, target)
    assert {f.name: f.read_bytes() for f in target.iterdir()} == before
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt"]  # no staging directory left behind
