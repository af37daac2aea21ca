"""`soar export`: a run's checkpoint as a plain Hugging Face model directory (LoRA merged, safetensors)
with its tokenizer and a README model card holding the run's configuration and evaluation history."""

from __future__ import annotations

import copy
import json
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


_ROLE_WORDS = {"baseline": "the promoted student", "pq": "the SOAR-PQ student (the final training)",
               "teacher": "the teacher", "student": "a student"}
_ANSWER_FORMAT = {"math": "its reasoning, then the final answer inside `\\boxed{...}`",
                  "code": "a single ```python fenced code block defining what the tests call"}
_BUILTIN_ANSWER = "numbered steps, then a last line `Answer: <answer>`"
PROJECT_LICENSE = "apache-2.0"  # pyproject.toml's; the embedded tiny model is the project's own


def public_path(value: str | os.PathLike, run_dir: Path | None = None) -> str:
    """A path as an export may show it: relative to the run directory when it lies inside it, else its last
    component when it is absolute (an absolute local path says nothing to whoever downloads the model)."""
    text = str(value)
    if not (os.path.isabs(text) or text.startswith("~")):
        return text
    if run_dir is not None and _within(_real(text), _real(run_dir)):
        return str(_real(text).relative_to(_real(run_dir))) or "."
    return Path(text).name or text


def public_config(config: RunConfig) -> RunConfig:
    """A copy of the config whose absolute paths (model, data files) are reduced to their file names."""
    import dataclasses

    out = copy.deepcopy(config)
    for section in dataclasses.fields(out):
        values = getattr(out, section.name)
        for field in dataclasses.fields(values):
            value = getattr(values, field.name)
            if isinstance(value, str) and (os.path.isabs(value) or value.startswith("~")):
                setattr(values, field.name, public_path(value))
    return out


def hub_id(model_path: str) -> str | None:
    """The Hugging Face Hub id of a base model, where its path says it (the hub cache's
    models--ORG--NAME/snapshots/REV layout); None otherwise (a local directory, the embedded model)."""
    for part in Path(str(model_path)).parts:
        match = re.fullmatch(r"models--([A-Za-z0-9][\w.-]*)--([\w.-]+)", part)
        if match:
            return f"{match.group(1)}/{match.group(2)}"
    return None


def _base_license(model_path: str) -> str | None:
    """The `license:` of the base model's own model card front matter, when it has one."""
    try:
        from soar_agent.models import resolve_model_path

        text = (resolve_model_path(model_path) / "README.md").read_text(errors="replace")[:20000]
    except Exception:
        return None
    front = re.match(r"---\n(.*?)\n---", text, re.DOTALL)
    found = re.search(r"^license:\s*['\"]?([\w.+-]+)", front.group(1), re.MULTILINE) if front else None
    return found.group(1) if found else None


def describe_base(config: RunConfig) -> str:
    path = config.model.path
    if path == "default":
        return "the tiny model shipped with soar-agent (`default`)"
    return f"`{hub_id(path)}`" if hub_id(path) else f"a local model directory named `{public_path(path)}`"


def describe_checkpoint(checkpoint: dict | None, config: RunConfig, run_dir: Path | None = None,
                        local: bool = False) -> str:
    """What an export holds, in words: role, teacher step and path (relative to the run directory, or the
    stored path when `local`: for the user's terminal, never for the model card), or the base model."""
    if checkpoint is None:
        base = f" ({config.model.path})" if local else ""
        return f"the base model{base} unchanged: this run has no trained checkpoint yet"
    step = f" of teacher step {checkpoint['teacher_step']}" if checkpoint.get("teacher_step") is not None else ""
    role = _ROLE_WORDS.get(checkpoint["role"], checkpoint["role"])
    path = checkpoint["path"] if local else public_path(checkpoint["path"], run_dir)
    return f"checkpoint {checkpoint['id']}, {role}{step} (role {checkpoint['role']}, {path})"


def prompt_format(config: RunConfig, tokenizer, checkpoint: dict | None) -> tuple[str, str, str | None]:
    """(prompt template with `{question}`, what the model answers with, a worked example or None) for the
    exported model: the student prompt of the run's domain (through the tokenizer's chat template when the
    run used it), or the teacher's prompt for a teacher checkpoint."""
    import random

    from soar_agent.tasks import get_domain, teacher_prompt
    from soar_agent.tasks.base import builtin_student_prompt
    from soar_agent.tasks.chat import for_model

    name = config.domain.name
    try:
        domain = for_model(get_domain(name), tokenizer, config.model.chat_template)
    except Exception:  # a gym domain without reasoning-gym installed: its prompt is the built-in one
        domain = None
    if checkpoint is not None and checkpoint["role"] == "teacher":
        return (teacher_prompt(domain) if domain is not None else "",
                "one new problem as `<question>...</question><answer>...</answer>`", None)
    prompt = domain.student_prompt("{question}") if domain is not None else builtin_student_prompt("{question}")
    answer = _ANSWER_FORMAT.get(name, _BUILTIN_ANSWER)
    example = None
    if domain is not None and hasattr(domain, "generate") and hasattr(domain, "expert_completion"):
        try:
            problem = domain.generate(domain.LEVELS[min(1, len(domain.LEVELS) - 1)], random.Random(0))
            example = domain.student_prompt(problem.question) + domain.expert_completion(problem)
        except Exception:
            example = None
    return prompt, answer, example


def _percent(value) -> str:
    return f"{value:.1%}" if isinstance(value, (int, float)) else ""


def _figures(evaluations: list[dict]) -> list[str]:
    """greedy_acc, then the pass@k figures the evaluations hold, by k."""
    keys = {k for e in evaluations for k in e["summary"]}
    passes = sorted((k for k in keys if re.fullmatch(r"pass@[0-9]+", k)), key=lambda k: int(k[5:]))
    return (["greedy_acc"] if "greedy_acc" in keys else []) + passes


def _header(first: list[str], figures: list[str]) -> list[str]:
    names = first + ["greedy" if k == "greedy_acc" else k for k in figures]
    return ["| " + " | ".join(names) + " |", "|" + "---|" * len(names)]


def own_evaluations(store, run_id: int, checkpoint: dict | None) -> list[dict]:
    """The newest evaluation of each set that measured the exported weights themselves: the checkpoint's
    (a PQ student's hard-test-pq, a baseline's latest hard-test and easy), or for the base model those made
    before any promotion (teacher step 0, checkpoint id null)."""
    wanted = checkpoint["id"] if checkpoint is not None else None
    newest: dict[str, dict] = {}
    for evaluation in store.evaluations(run_id):
        if evaluation["checkpoint_id"] != wanted or (wanted is None and evaluation["set_name"].endswith("-pq")):
            continue
        newest[evaluation["set_name"]] = evaluation
    return list(newest.values())


def model_card(store, run_id: int, config: RunConfig, checkpoint: dict | None, tokenizer=None,
               max_new_tokens: int | None = None) -> str:
    """The export's README.md: Hub metadata (YAML front matter), what the checkpoint is, its prompt format
    and a usage snippet, its own evaluation, the run's evaluation history and configuration. No absolute
    local path appears in it."""
    lines = _card_heading(store.get_run(run_id), config, checkpoint, Path(store.path).parent)
    lines += _card_prompt_and_usage(config, tokenizer, checkpoint, max_new_tokens)
    lines += _card_own_evaluation(store, run_id, checkpoint)
    lines += _card_history(store.evaluations(run_id))
    lines += ["", "## Configuration", "", "The run's configuration (local paths reduced to their file names).", "",
              "```toml", dump_toml(public_config(config)).strip(), "```", ""]
    return "\n".join(lines)


def _card_heading(run: dict, config: RunConfig, checkpoint: dict | None, run_dir: Path) -> list[str]:
    """The card's Hub metadata (YAML front matter), title and what the checkpoint is."""
    name = config.domain.name
    base_id = hub_id(config.model.path)
    license_ = PROJECT_LICENSE if config.model.path == "default" else (_base_license(config.model.path) or "other")
    tags = ["soar-agent", "self-improvement", "text-generation", re.sub(r"[^a-z0-9-]+", "-", name.lower())]
    lines = ["---", f"license: {license_}", "library_name: transformers", "pipeline_tag: text-generation", "tags:",
             *[f"- {tag}" for tag in tags]]
    if base_id:
        lines.append(f"base_model: {base_id}")
    lines += ["---", "", f"# soar-agent export of run `{run['name']}`", "",
              f"A causal language model for the `{name}` domain, trained by soar-agent (mode `{run['mode']}`) from"
              f" {describe_base(config)}.", "", f"This directory holds {describe_checkpoint(checkpoint, config, run_dir)}.",
              ""]
    if license_ == "other":
        lines += ["The weights are derived from the base model: its license applies.", ""]
    return lines


def _card_prompt_and_usage(config: RunConfig, tokenizer, checkpoint: dict | None,
                           max_new_tokens: int | None) -> list[str]:
    """The card's exact prompt format (with an example when there is one) and a pipeline snippet using it."""
    prompt, answer, example = prompt_format(config, tokenizer, checkpoint) if tokenizer is not None else (
        "Problem: {question}\nSolution:\n", _BUILTIN_ANSWER, None)
    fence = "````"
    templated = bool(getattr(tokenizer, "chat_template", None)) and config.model.chat_template
    how = ("the run's prompt rendered through the tokenizer's chat template as one user turn plus the"
           " generation prompt; pass this text, not chat messages" if templated else "plain text, not chat messages")
    fill = ("Replace `{question}`" + (" (the prompt ends with a newline)" if prompt.endswith("\n") else "")
            if "{question}" in prompt else "Use it as it is")
    lines = ["## Prompt format", "",
             f"The model was trained on one exact prompt ({how}); other prompts (a bare question, another"
             f" format) give meaningless text. {fill}:",
             "", fence + "text", prompt.rstrip("\n"), fence, "", f"It answers with {answer}, then stops (EOS).", ""]
    if example:
        lines += ["An example of the format (a prompt and the expected completion):", "", fence + "text",
                  example, fence, ""]
    snippet_prompt = json.dumps(prompt.replace("{question}", "QUESTION"))
    lines += ["## Usage", "", "```python", "from transformers import pipeline", "",
              'generator = pipeline("text-generation", model="path/to/this/directory")',
              f"prompt = {snippet_prompt}" + ('.replace("QUESTION", "your question")' if "{question}" in prompt else ""),
              'print(generator(prompt, return_full_text=False)[0]["generated_text"])', "```", "",
              "`generation_config.json` makes this greedy, stopping at the end-of-sequence token"
              + (f" or after {max_new_tokens} new tokens" if max_new_tokens else "") + ".", ""]
    return lines


def _card_own_evaluation(store, run_id: int, checkpoint: dict | None) -> list[str]:
    own = own_evaluations(store, run_id, checkpoint)
    lines = ["## Evaluation of this checkpoint", ""]
    if own:
        figures = _figures(own)
        lines += _header(["set", "teacher step", "problems"], figures)
        for e in own:
            s = e["summary"]
            step = "" if e["teacher_step"] is None else e["teacher_step"]
            lines.append(f"| {e['set_name']} | {step} | {s.get('problems', '')} | "
                         + " | ".join(_percent(s.get(k)) for k in figures) + " |")
        lines.append("")
    else:
        lines += ["None: the run's store holds no evaluation of these weights. `soar eval --model DIR` measures"
                  " them.", ""]
    return lines


def _card_history(history: list[dict]) -> list[str]:
    lines = ["## Evaluation history of the run", ""]
    if history:
        lines += ["Every evaluation the run made, of the model it had at that time (the checkpoint column; empty ="
                  " the base model), not necessarily this one.", "",
                  *_header(["teacher step", "set", "checkpoint"], _figures(history))]
    else:
        lines.append("No evaluation yet.")
    for evaluation in history:
        s = evaluation["summary"]
        step = "" if evaluation["teacher_step"] is None else evaluation["teacher_step"]
        lines.append(f"| {step} | {evaluation['set_name']} | {evaluation['checkpoint_id'] or ''} | "
                     + " | ".join(_percent(s.get(k)) for k in _figures(history)) + " |")
    return lines


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _publish_modes(target: Path) -> None:
    """Make an export readable like any downloaded model (0644 files, 0755 directories, less what the umask
    takes away): the atomic save stages it in a private temporary directory (0700) and safetensors writes
    its weights 0600."""
    mask = _umask()
    for path in [target, *target.rglob("*")]:
        if not path.is_symlink():
            os.chmod(path, (0o755 if path.is_dir() else 0o644) & ~mask)


def write_generation_config(target: Path, tokenizer, max_new_tokens: int) -> None:
    """generation_config.json: greedy, stop at the tokenizer's EOS, pad with its pad token, at most
    `max_new_tokens` new tokens: what a plain `pipeline("text-generation", model=DIR)` call then does."""
    from transformers import GenerationConfig

    try:
        generation = GenerationConfig.from_pretrained(target, local_files_only=True)
    except Exception:
        generation = GenerationConfig()
    eos = tokenizer.eos_token_id
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos
    generation.update(eos_token_id=eos, pad_token_id=pad, bos_token_id=tokenizer.bos_token_id,
                      max_new_tokens=max_new_tokens, do_sample=False)
    for sampling in ("temperature", "top_p", "top_k"):  # greedy: sampling settings would only draw warnings
        setattr(generation, sampling, None)
    generation.save_pretrained(target)


def export_checkpoint(store, run_id: int, config: RunConfig, which: str, out: Path, best: dict | None,
                      log=print, force: bool = False) -> Path:
    from soar_agent.models import context_length, load_model, load_tokenizer, resolve_model_path, save_checkpoint

    checkpoint = resolve_checkpoint(store, run_id, which, best)
    source = checkpoint["path"] if checkpoint else config.model.path
    model_dirs = [Path(checkpoint["path"])] if checkpoint else []
    model_dirs.append(resolve_model_path(config.model.path))  # the tokenizer comes from the base model
    check_target(Path(out), Path(store.path).parent, model_dirs, force)
    model, tokenizer = load_model(source, config.model.dtype), load_tokenizer(config.model.path)
    context = context_length(source, tokenizer)
    if context:  # the saved tokenizer would otherwise claim an unlimited context (1e30)
        tokenizer.model_max_length = context
    teacher = checkpoint is not None and checkpoint["role"] == "teacher"
    budget = config.teacher.max_new_tokens if teacher else config.eval.max_new_tokens  # what the run used
    max_new_tokens = max(1, min(budget, context - 1)) if context else budget
    target = save_checkpoint(model, tokenizer, out, merge_lora=True)
    write_generation_config(target, tokenizer, max_new_tokens)
    (target / "README.md").write_text(model_card(store, run_id, config, checkpoint, tokenizer, max_new_tokens))
    _publish_modes(target)
    what = describe_checkpoint(checkpoint, config, local=True)
    log(f"exported {what}")
    store.log_event(run_id=run_id, level="info", kind="export", message=f"exported {what} to {target}")
    return target
