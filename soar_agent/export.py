"""`soar export`: a run's checkpoint as a plain Hugging Face model directory (LoRA merged, safetensors)
with its tokenizer and a README model card holding the run's configuration and evaluation history."""

from __future__ import annotations

from pathlib import Path

from soar_agent.config import RunConfig, dump_toml


def resolve_checkpoint(store, run_id: int, which: str, best: dict | None) -> dict | None:
    """`best` (highest hard-test pass@k), `latest` (newest baseline) or a checkpoint id; None = base model."""
    alive = store.checkpoints(run_id, role="baseline", status="complete")
    if which == "best":
        return best or (alive[-1] if alive else None)
    if which == "latest":
        return alive[-1] if alive else None
    if not which.isdigit():
        raise ValueError(f"--checkpoint: expected best, latest or a checkpoint id, got {which!r}")
    found = [c for c in store.checkpoints(run_id) if c["id"] == int(which)]
    if not found or found[0]["status"] != "complete":
        raise ValueError(f"--checkpoint {which}: no such complete checkpoint in this run")
    return found[0]


def model_card(store, run_id: int, config: RunConfig, checkpoint: dict | None) -> str:
    run = store.get_run(run_id)
    lines = [f"# soar-agent export of run `{run['name']}`", "",
             f"Mode `{run['mode']}`, base model `{config.model.path}`, domain `{config.domain.name}`.",
             f"Checkpoint: {'base model (no promotion yet)' if checkpoint is None else checkpoint['path']}"
             + (f" (teacher step {checkpoint['teacher_step']})" if checkpoint else ""), "",
             "## Evaluation history", "", "| teacher step | set | greedy | pass@1 | pass@8 | pass@32 |",
             "|---|---|---|---|---|---|"]
    for evaluation in store.evaluations(run_id):
        s = evaluation["summary"]
        cells = [f"{s[k]:.3f}" if k in s else "" for k in ("greedy_acc", "pass@1", "pass@8", "pass@32")]
        lines.append(f"| {evaluation['teacher_step']} | {evaluation['set_name']} | " + " | ".join(cells) + " |")
    lines += ["", "## Configuration", "", "```toml", dump_toml(config).strip(), "```", ""]
    return "\n".join(lines)


def export_checkpoint(store, run_id: int, config: RunConfig, which: str, out: Path, best: dict | None,
                      log=print) -> Path:
    from soar_agent.models import load_model, load_tokenizer, save_checkpoint

    checkpoint = resolve_checkpoint(store, run_id, which, best)
    source = checkpoint["path"] if checkpoint else config.model.path
    model, tokenizer = load_model(source, config.model.dtype), load_tokenizer(config.model.path)
    target = save_checkpoint(model, tokenizer, out, merge_lora=True)
    (target / "README.md").write_text(model_card(store, run_id, config, checkpoint))
    store.log_event(run_id=run_id, level="info", kind="export", message=f"exported {source} to {target}")
    return target
