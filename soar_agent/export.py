"""`soar export`: a run's checkpoint as a plain Hugging Face model directory (LoRA merged, safetensors)
with its tokenizer and a README model card holding the run's configuration and evaluation history."""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

from soar_agent.config import RunConfig, dump_toml

AUTO_EXPORT = re.compile(r"export-([0-9]+)")  # the name Agent.export gives the end-of-run exports


class ExportTargetError(ValueError):
    """An --out directory that a model save (export, pretrain-tiny) must not replace; the message is one line
    naming it."""


def _real(path) -> Path:
    return Path(os.path.realpath(Path(path).expanduser()))


def _within(path: Path, root: Path) -> bool:
    return path == root or root in path.parents


def check_target(out: Path, run_dir: Path, sources: list[Path], force: bool) -> None:
    """Refuse an export's --out whose replacement would lose data: never the run (its store and
    checkpoints), then check_model_target's rule."""
    target, run = _real(out), _real(run_dir)
    if _within(run, target):
        raise ExportTargetError(f"--out {out}: contains the run directory {run_dir}; choose another directory")
    if _within(target, run / "checkpoints"):
        raise ExportTargetError(f"--out {out}: inside the run's checkpoints; choose another directory")
    if target.parent == run and target.name.startswith("soar.db"):
        raise ExportTargetError(f"--out {out}: is the run's store; choose another directory")
    check_model_target(out, sources, force, what="the model being exported")


def check_model_target(out: Path, sources: list[Path], force: bool, what: str) -> None:
    """Refuse an --out whose replacement would lose data. Saving renames over the target, so the old
    directory and everything under it is deleted: never allow that for the current directory or one above it
    (`--out .` would delete the project) or for the weights being read (`sources`, named `what`), and for
    anything else non-empty only with --force."""
    target = _real(out)
    if _within(_real(Path.cwd()), target):
        raise ExportTargetError(f"--out {out}: contains the current directory; choose another directory")
    for source in sources:
        if _within(_real(source), target):
            raise ExportTargetError(f"--out {out}: holds {what} ({source}); choose another directory")
    if target.exists() and not target.is_dir():
        raise ExportTargetError(f"--out {out}: exists and is not a directory")
    if target.is_dir() and any(target.iterdir()) and not force:
        raise ExportTargetError(f"--out {out}: exists and is not empty; pass --force to replace it")


def prune_exports(exports_dir: Path, keep: int) -> list[Path]:
    """Delete all but the newest `keep` end-of-run exports (export-<time>); exports made on request
    (other names) are the user's and stay. Returns the deleted directories."""
    found = sorted((int(m.group(1)), d) for d in (exports_dir.iterdir() if exports_dir.is_dir() else [])
                   if d.is_dir() and (m := AUTO_EXPORT.fullmatch(d.name)))
    doomed = [d for _, d in found[:-keep]] if keep > 0 else []
    for directory in doomed:
        shutil.rmtree(directory, ignore_errors=True)
    return doomed


def resolve_checkpoint(store, run_id: int, which: str, best: dict | None) -> dict | None:
    """`best` (the highest estimated improvement on hard-train: Agent.best_checkpoint), `latest` (newest
    baseline), `pq` (the PQ student: the final training of `soar run`, or `soar eval-pq`) or a checkpoint id; None = base model."""
    alive = store.checkpoints(run_id, role="baseline", status="complete")
    if which == "best":
        return best or (alive[-1] if alive else None)
    if which == "latest":
        return alive[-1] if alive else None
    if which == "pq":
        trained = store.checkpoints(run_id, role="pq", status="complete")
        if not trained:
            raise ValueError("--checkpoint pq: this run has no SOAR-PQ student yet (a run trains it when its budget ends; soar eval-pq trains it now)")
        return trained[-1]
    if not (which.isascii() and which.isdigit() and len(which) <= 18):
        raise ValueError(f"--checkpoint: expected best, latest, pq or a checkpoint id, got {which!r}")
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
                      log=print, force: bool = False) -> Path:
    from soar_agent.models import load_model, load_tokenizer, resolve_model_path, save_checkpoint

    checkpoint = resolve_checkpoint(store, run_id, which, best)
    source = checkpoint["path"] if checkpoint else config.model.path
    model_dirs = [Path(checkpoint["path"])] if checkpoint else []
    model_dirs.append(resolve_model_path(config.model.path))  # the tokenizer comes from the base model
    check_target(Path(out), Path(store.path).parent, model_dirs, force)
    model, tokenizer = load_model(source, config.model.dtype), load_tokenizer(config.model.path)
    target = save_checkpoint(model, tokenizer, out, merge_lora=True)
    (target / "README.md").write_text(model_card(store, run_id, config, checkpoint))
    store.log_event(run_id=run_id, level="info", kind="export", message=f"exported {source} to {target}")
    return target
