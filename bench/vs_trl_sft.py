"""Our supervised (SFT) step against TRL's SFTTrainer, on the shipped model, in one run.

What the `sft-rlvr` backend's supervised phase does in the product's final training (`rl/sft.py:train_sft`):
batches of batch_prompts x group_size (64) arith expert solutions, prompt + expert completion + EOS, loss on
the completion tokens only (mean NLL per completion token over the whole batch), `student.micro_batch` (8)
rows per forward/backward pass with the gradients accumulated, AdamW (weight decay 0), grad-norm clip
`student.grad_clip`, learning rate `student.sft_lr` warmed up linearly over the first SFT_WARMUP_SHARE of the
steps then constant, float32 on the CPU, dropout off. TRL's SFTTrainer gets the same: a prompt-completion
dataset of the same strings (it tokenizes prompt + completion itself and adds the EOS: the bench asserts its
token ids and loss positions are ours, row for row), completion_only_loss, per_device_train_batch_size =
micro-batch with gradient_accumulation_steps = batch / micro-batch (its loss is normalised by the tokens of
the whole accumulated batch, so one optimizer step sees the same loss and gradient as ours), the same rows in
the same order per step (sequential sampler over our stream's order), the same AdamW settings, clip and
learning rate, our warmup exactly (step s at lr * min(1, (s+1)/warmup); HF's constant_with_warmup starts at
lr 0, one step behind), float32, no gradient checkpointing, no bf16, max_length = the longest prompt +
student.max_new_tokens (nothing truncated). Each side keeps its own AdamW implementation (ours
torch.optim.AdamW, TRL its default adamw_torch_fused) and its own micro-batches (ours: the step's rows sorted
by length, so each pass pads to a similar length; TRL: the rows in order): how each trains is what is timed.
Both load the shipped model as the product does (`load_model("default", "float32")`), one torch thread each.

Before training, both losses are computed on the first step's rows with the base weights and must agree to
1e-5 (the same loss definition); the bench stops if they do not. Then `--rounds` rounds, each training both
arms on `--rows` fresh expert rows (one pass, `--batch` rows per step) in alternating order (ours, TRL; then
TRL, ours; ...) so the machine's load hits both. Printed per arm (means over rounds): rows/s of the training
loop (setup apart: tokenizing, building the trainer), seconds per step, the train loss on the first and last
steps (the same rows for both arms), and the held-out NLL (`--eval-rows` expert rows of other problems, our
loss on both) of the base weights, of the weights after the last step finished within `--seconds` of
training (equal wall time) and after all `--rows` rows (equal rows). Then ours / TRL for rows/s.

    pip install -c constraints-cpu.txt '.[bench]'                       # trl, datasets
    OMP_NUM_THREADS=1 python bench/vs_trl_sft.py                        # 2,880 rows (45 steps of 64) x 2 rounds
    OMP_NUM_THREADS=1 python bench/vs_trl_sft.py --rows 640 --rounds 1 --seconds 10   # a quick look

The arms see the same rows in the same order and take the same update, so their losses at equal rows should
agree (to float noise, ~1e-4); a gap there means the two setups differ, not that one learns better. The loss
at equal wall time is where speed shows.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import os
import random
import statistics
import tempfile
import time
from unittest import mock

os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")  # TRL pings the Hub when a trainer is built

import torch  # noqa: E402

from soar_agent.config import RunConfig, apply_overrides  # noqa: E402
from soar_agent.models import clone_model, load_model, load_tokenizer  # noqa: E402
from soar_agent.rl import sft  # noqa: E402
from soar_agent.rl.train import (Rollout, pad_token_id, policy_step, problem_stream, select_rows,  # noqa: E402
                                 sequence_logprobs)
from soar_agent.tasks import generate_problems, get_domain  # noqa: E402

ARMS = ("ours", "trl")
LOSS_TOLERANCE = 1e-5


def parse_levels(text: str) -> list[int]:
    """"1-8" or "3,4,5" -> the list of levels."""
    if "-" in text:
        low, high = (int(x) for x in text.split("-"))
        return list(range(low, high + 1))
    return [int(x) for x in text.split(",")]


def expert_pool(tokenizer, domain, count: int, levels: list[int], seed: int, max_new_tokens: int,
                exclude: frozenset = frozenset()) -> Rollout:
    """`count` expert rows as the product builds them (`sft.writable_experts`: prompt ids, expert completion ids
    + EOS, none longer than max_new_tokens) of fresh generator problems at `levels` (in turn), none of whose
    questions is in `exclude`."""
    rng, rows, seen = random.Random(seed), None, set(exclude)
    while rows is None or len(rows.problems) < count:
        problems = [p for p in generate_problems(domain, [levels[i % len(levels)] for i in range(count)], rng)
                    if p.question not in seen]
        seen.update(p.question for p in problems)
        more = sft.writable_experts(tokenizer, domain, problems, max_new_tokens)
        if not more.problems:
            raise SystemExit(f"no expert solution of levels {levels} fits {max_new_tokens} tokens")
        rows = more if rows is None else Rollout(*(a + b for a, b in zip(
            (rows.problems, rows.prompt_ids, rows.completion_ids, rows.old_logprobs, rows.texts),
            (more.problems, more.prompt_ids, more.completion_ids, more.old_logprobs, more.texts))), 1, 0, 0.0)
    return select_rows(rows, list(range(count)))


def stream_order(rows: int, steps: int, batch: int, seed: int) -> list[int]:
    """The row indices `train_sft(seed=seed)` draws, step after step (its problem_stream over row indices)."""
    return list(itertools.islice(problem_stream(list(range(rows)), random.Random(seed)), steps * batch))


def student_cfg(cfg, batch: int, micro_batch: int, lr: float):
    """The [student] section with `batch` rows per supervised step (sft_rows = batch_prompts x group_size)."""
    if cfg.loss_aggregation != "token":
        raise SystemExit("TRL's SFT loss is the mean over the batch's completion tokens: needs "
                         "student.loss_aggregation = token")
    return dataclasses.replace(cfg, batch_prompts=batch, group_size=1, micro_batch=micro_batch, sft_lr=lr)


def warmup_steps(steps: int) -> int:
    return max(1, round(sft.SFT_WARMUP_SHARE * steps))  # as train_sft


def state(model) -> dict:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def heldout_nll(model, rows: Rollout, pad_id: int, micro_batch: int = 16) -> float:
    """Mean NLL per completion token over `rows` (our loss: `sequence_logprobs`, token aggregation)."""
    was_training = model.training
    model.eval()
    total, tokens = 0.0, 0
    order = sorted(range(len(rows.completion_ids)), key=lambda i: len(rows.prompt_ids[i]) + len(rows.completion_ids[i]))
    with torch.no_grad():
        for begin in range(0, len(order), micro_batch):
            part = select_rows(rows, order[begin:begin + micro_batch])
            logprobs, mask, _ = sequence_logprobs(model, part.prompt_ids, part.completion_ids, pad_id)
            total -= float(logprobs[mask].sum())
            tokens += int(mask.sum())
    model.train(was_training)
    return total / tokens


# ---------------------------------------------------------------------------------------------- ours


def ours_arm(baseline, tokenizer, domain, experts: Rollout, cfg, steps: int, seed: int, seconds: float) -> dict:
    """The product's `train_sft` on `experts` (tokenized again here, as the product does per training: setup).
    Returns per-step {t, loss} (t: training-loop seconds), setup seconds, and the weights after the last step
    finished within `seconds` and after the last step."""
    started = time.perf_counter()
    rows = sft.writable_experts(tokenizer, domain, experts.problems, cfg.max_new_tokens)
    assert rows.completion_ids == experts.completion_ids  # the pool is writable by construction
    captured: dict = {}
    original = sft.new_student

    def capture(model, section):
        student, optimizer = original(model, section)
        captured["student"] = student
        return student, optimizer

    records: list[dict] = []
    clock = {"loop": 0.0}
    at_horizon = {"state": state(baseline), "steps": 0, "t": 0.0}

    def log(record: dict) -> None:
        clock["loop"] += record["seconds"]  # the step's own time: this callback's snapshot is not in it
        records.append({"t": clock["loop"], "loss": record["loss"]})
        if clock["loop"] <= seconds:
            at_horizon.update(state=state(captured["student"]), steps=len(records), t=clock["loop"])

    with mock.patch.object(sft, "new_student", capture):
        sft.train_sft(baseline, tokenizer, rows.problems, domain, cfg, steps, seed=seed, log=log, experts=rows)
    wall = time.perf_counter() - started
    return {"records": records, "setup": wall - clock["loop"], "horizon": at_horizon,
            "final": state(captured["student"])}


# ---------------------------------------------------------------------------------------------- TRL


def trl_dataset(domain, experts: Rollout, order: list[int]):
    """The rows in training order as TRL's prompt-completion dataset (strings; TRL tokenizes and adds the EOS)."""
    from datasets import Dataset, disable_progress_bars

    disable_progress_bars()  # a bar per preparation pass would drown the table
    return Dataset.from_dict({"prompt": [domain.student_prompt(experts.problems[i].question) for i in order],
                              "completion": [domain.expert_completion(experts.problems[i]) for i in order]})


def trl_trainer(model, tokenizer, dataset, cfg, steps: int, batch: int, micro_batch: int, seed: int, max_length: int,
                callbacks=(), output_dir: str = "/tmp/soar-vs-trl-sft"):
    """SFTTrainer with our settings; its per-step loss (sum of its micro-batches' losses, each already divided by
    the step's completion tokens) lands in `trainer.step_loss`."""
    from torch.optim.lr_scheduler import LambdaLR
    from transformers.trainer_callback import PrinterCallback
    from trl import SFTConfig, SFTTrainer

    if batch % micro_batch:
        raise SystemExit(f"--batch {batch} must be a multiple of --micro-batch {micro_batch} for TRL's accumulation")
    warmup = warmup_steps(steps)

    class Trainer(SFTTrainer):
        step_loss = 0.0

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            loss = super().compute_loss(model, inputs, return_outputs=return_outputs,
                                        num_items_in_batch=num_items_in_batch)
            self.step_loss += float((loss[0] if return_outputs else loss).detach())
            return loss

        def create_scheduler(self, num_training_steps, optimizer=None):  # our warmup, exactly
            if self.lr_scheduler is None:
                self.lr_scheduler = LambdaLR(optimizer or self.optimizer, lambda s: min(1.0, (s + 1) / warmup))
            return self.lr_scheduler

    args = SFTConfig(output_dir=output_dir, use_cpu=True, bf16=False, fp16=False, activation_checkpointing=False,
                     report_to="none", save_strategy="no", logging_strategy="no", disable_tqdm=True,
                     log_level="error", seed=seed, max_steps=steps, learning_rate=cfg.sft_lr, weight_decay=0.0,
                     adam_beta1=0.9, adam_beta2=0.999, adam_epsilon=1e-8, max_grad_norm=cfg.grad_clip,
                     per_device_train_batch_size=micro_batch, gradient_accumulation_steps=batch // micro_batch,
                     train_sampling_strategy="sequential", shuffle_dataset=False, dataloader_num_workers=0,
                     completion_only_loss=True, packing=False, padding_free=False, max_length=max_length,
                     loss_type="nll")
    assert not (args.activation_checkpointing or args.gradient_checkpointing or args.bf16)  # SFTConfig's defaults
    trainer = Trainer(model=model, args=args, train_dataset=dataset, processing_class=tokenizer,
                      callbacks=list(callbacks))
    trainer.remove_callback(PrinterCallback)
    return trainer


def check_trl_rows(trainer, experts: Rollout, order: list[int]) -> None:
    """TRL's tokenized rows must be ours: prompt + completion (+ EOS) ids, the loss on the completion only."""
    data = trainer.train_dataset
    if "labels" not in data.column_names:  # TRL before labels were built at dataset preparation (1.16 builds them)
        raise SystemExit(f"TRL's prepared dataset has no labels column ({data.column_names}): written against TRL 1.16")
    if len(data) != len(order):
        raise SystemExit(f"TRL kept {len(data)} of {len(order)} rows")
    for position, i in enumerate(order):
        row = data[position]
        prompt, completion = experts.prompt_ids[i], experts.completion_ids[i]
        labels = [-100] * len(prompt) + completion
        if row["input_ids"] != prompt + completion or row["labels"] != labels:
            raise SystemExit(f"TRL's row {position} differs from ours: {row['input_ids']} / {row['labels']} against "
                             f"{prompt + completion} / {labels}")


def trl_step_loss(trainer, rows: int, micro_batch: int) -> float:
    """TRL's loss (its compute_loss, normalised as in training) on its first `rows` rows, no gradient."""
    examples = [{"input_ids": trainer.train_dataset[i]["input_ids"], "labels": trainer.train_dataset[i]["labels"]}
                for i in range(rows)]
    batches = [trainer.data_collator(examples[b:b + micro_batch]) for b in range(0, rows, micro_batch)]
    items = torch.tensor(sum(int((b["labels"][:, 1:] != -100).sum()) for b in batches))  # the step's loss tokens
    total = 0.0
    with torch.no_grad():
        for b in batches:
            total += float(trainer.compute_loss(trainer.model, trainer._prepare_inputs(b), num_items_in_batch=items))
    return total


def trl_arm(tokenizer, domain, experts: Rollout, cfg, steps: int, seed: int, seconds: float, max_length: int) -> dict:
    """TRL's SFTTrainer on the same rows in the same order: returns as `ours_arm`."""
    from transformers import TrainerCallback

    started = time.perf_counter()
    model = load_model("default", "float32", device="cpu")
    base = state(model)
    order = stream_order(len(experts.problems), steps, cfg.batch_prompts, seed)
    records: list[dict] = []
    clock = {"t0": 0.0, "paused": 0.0, "setup": 0.0}
    at_horizon = {"state": base, "steps": 0, "t": 0.0}
    holder: dict = {}

    class Timer(TrainerCallback):
        def on_train_begin(self, *args, **kwargs):
            clock["t0"] = time.perf_counter()
            clock["setup"] = clock["t0"] - started

        def on_step_end(self, args, state_, control, model=None, **kwargs):
            now = time.perf_counter()
            t = now - clock["t0"] - clock["paused"]
            trainer = holder["trainer"]
            records.append({"t": t, "loss": trainer.step_loss})
            trainer.step_loss = 0.0
            if t <= seconds:
                at_horizon.update(state=state(model), steps=len(records), t=t)
            clock["paused"] += time.perf_counter() - now

    with tempfile.TemporaryDirectory(prefix="soar-vs-trl-sft-") as out:
        trainer = trl_trainer(model, tokenizer, trl_dataset(domain, experts, order), cfg, steps, cfg.batch_prompts,
                              cfg.micro_batch, seed, max_length, callbacks=[Timer()], output_dir=out)
        holder["trainer"] = trainer
        torch.set_num_threads(1)
        trainer.train()
    if len(records) != steps:
        raise SystemExit(f"TRL took {len(records)} optimizer steps, expected {steps}")
    return {"records": records, "setup": clock["setup"], "horizon": at_horizon, "final": state(trainer.model)}


# ---------------------------------------------------------------------------------------------- the bench


def check_losses(baseline, tokenizer, domain, experts: Rollout, cfg, steps: int, seed: int, max_length: int) -> dict:
    """Both losses on the first step's rows with the base weights: ours through `policy_step` (learning rate 0,
    so it reports the training loss and leaves the weights), TRL's through its compute_loss. They must agree
    to LOSS_TOLERANCE, and TRL's tokenized rows must be ours."""
    batch = cfg.batch_prompts
    order = stream_order(len(experts.problems), steps, batch, seed)
    model = load_model("default", "float32", device="cpu")
    ours_model = clone_model(baseline)
    with tempfile.TemporaryDirectory(prefix="soar-vs-trl-sft-") as out:
        trainer = trl_trainer(model, tokenizer, trl_dataset(domain, experts, order), cfg, steps, batch,
                              cfg.micro_batch, seed, max_length, output_dir=out)
        check_trl_rows(trainer, experts, order)
        theirs = trl_step_loss(trainer, batch, cfg.micro_batch)
    ours_model.eval()
    still = torch.optim.SGD([p for p in ours_model.parameters() if p.requires_grad], lr=0.0)
    supervised = dataclasses.replace(cfg, kl_coef=0.0)
    ours = policy_step(ours_model, still, select_rows(experts, order[:batch]), torch.ones(batch), supervised,
                       pad_token_id(tokenizer), surrogate=lambda chunk: sft.nll_loss)["loss"]
    result = {"ours": ours, "trl": theirs, "diff": abs(ours - theirs), "rows": batch}
    if not result["diff"] <= LOSS_TOLERANCE:
        raise SystemExit(f"the two losses differ on the same rows and weights: ours {ours:.8f}, TRL {theirs:.8f} "
                         f"(|diff| {result['diff']:.2e} > {LOSS_TOLERANCE:g}): the bench would compare different "
                         "losses")
    return result


def run_bench(rows: int, batch: int, micro_batch: int, rounds: int, seconds: float, eval_rows: int = 256,
              levels: list[int] | None = None, seed: int = 0, lr: float | None = None, overrides=(),
              progress=print) -> dict:
    """The bench's core: the loss check, then `rounds` alternating rounds of both arms. Returns the settings,
    the check, the held-out NLL of the base weights and per arm its rounds' results."""
    torch.set_num_threads(1)
    section = apply_overrides(RunConfig(), list(overrides)).student
    cfg = student_cfg(section, batch, micro_batch, section.sft_lr if lr is None else lr)
    steps = rows // batch
    if steps < 1:
        raise SystemExit(f"--rows {rows} is less than one step of --batch {batch}")
    rows = steps * batch
    levels = levels or list(range(1, 9))
    domain, tokenizer = get_domain("arith"), load_tokenizer("default")
    baseline = load_model("default", "float32", device="cpu")
    pad_id = pad_token_id(tokenizer)
    heldout = expert_pool(tokenizer, domain, eval_rows, levels, seed + 1_000_003, cfg.max_new_tokens)
    pools = [expert_pool(tokenizer, domain, rows, levels, seed + r, cfg.max_new_tokens,
                         exclude=frozenset(p.question for p in heldout.problems)) for r in range(rounds)]
    longest_prompt = max(len(p) for pool in pools for p in pool.prompt_ids)
    max_length = longest_prompt + cfg.max_new_tokens
    check = check_losses(baseline, tokenizer, domain, pools[0], cfg, steps, seed, max_length)
    progress(f"loss check, {check['rows']} rows, base weights: ours {check['ours']:.8f}  TRL {check['trl']:.8f}  "
             f"|diff| {check['diff']:.1e} <= {LOSS_TOLERANCE:g}", flush=True)
    base_nll = heldout_nll(baseline, heldout, pad_id)
    evaluator = load_model("default", "float32", device="cpu")
    results: dict[str, list[dict]] = {arm: [] for arm in ARMS}
    for r in range(rounds):
        for arm in (ARMS if r % 2 == 0 else ARMS[::-1]):
            torch.set_num_threads(1)
            if arm == "ours":
                run = ours_arm(baseline, tokenizer, domain, pools[r], cfg, steps, seed + r, seconds)
            else:
                run = trl_arm(tokenizer, domain, pools[r], cfg, steps, seed + r, seconds, max_length)
            losses = {}
            for key, weights in (("at_seconds", run["horizon"]["state"]), ("at_rows", run["final"])):
                evaluator.load_state_dict(weights)
                losses[key] = heldout_nll(evaluator, heldout, pad_id)
            seconds_taken = run["records"][-1]["t"]
            results[arm].append({"rows_per_s": rows / seconds_taken, "s_per_step": seconds_taken / steps,
                                 "seconds": seconds_taken, "setup": run["setup"],
                                 "losses": [rec["loss"] for rec in run["records"]],
                                 "steps_at_seconds": run["horizon"]["steps"], **losses})
            progress(f"  round {r + 1} {arm:<4}: {seconds_taken:6.1f} s for {rows} rows ({rows / seconds_taken:.1f} "
                     f"rows/s), {run['horizon']['steps']} steps within {seconds:g} s, held-out NLL "
                     f"{losses['at_seconds']:.4f} there, {losses['at_rows']:.4f} after all rows", flush=True)
    return {"rows": rows, "steps": steps, "batch": batch, "micro_batch": micro_batch, "rounds": rounds,
            "seconds": seconds, "lr": cfg.sft_lr, "warmup": warmup_steps(steps), "grad_clip": cfg.grad_clip,
            "max_new_tokens": cfg.max_new_tokens, "levels": levels, "eval_rows": eval_rows, "check": check,
            "base_nll": base_nll, "arms": results}


def report(result: dict) -> None:
    arms, rounds = result["arms"], result["rounds"]
    window = max(1, result["steps"] // 4)
    mean = statistics.fmean

    def row(arm: str) -> dict:
        runs = arms[arm]
        seconds = sum(r["seconds"] for r in runs)
        return {"rows/s": result["rows"] * len(runs) / seconds, "lo": min(r["rows_per_s"] for r in runs),
                "hi": max(r["rows_per_s"] for r in runs), "s/step": seconds / (result["steps"] * len(runs)),
                "setup": mean(r["setup"] for r in runs),
                "first": mean(mean(r["losses"][:window]) for r in runs),
                "last": mean(mean(r["losses"][-window:]) for r in runs),
                "steps@": mean(r["steps_at_seconds"] for r in runs),
                "at_seconds": mean(r["at_seconds"] for r in runs), "at_rows": mean(r["at_rows"] for r in runs)}

    table = {arm: row(arm) for arm in ARMS}
    at = f"at {result['seconds']:g} s"
    print(f"\nmeans over {rounds} round(s); train loss = mean NLL per completion token over the first / last "
          f"{window} step(s) (the same rows for both arms); held-out = {result['eval_rows']} expert rows of other "
          f"problems, base {result['base_nll']:.4f}")
    print(f"{'arm':<5} {'rows/s':>7} {'(min-max)':>13} {'s/step':>7} {'setup s':>8} {'train loss first':>17} "
          f"{'last':>7} {'held-out ' + at:>16} {'(steps)':>8} {'after ' + str(result['rows']) + ' rows':>16}")
    for arm, r in table.items():
        print(f"{arm:<5} {r['rows/s']:7.1f} {r['lo']:6.1f}-{r['hi']:<6.1f} {r['s/step']:7.2f} {r['setup']:8.1f} "
              f"{r['first']:17.4f} {r['last']:7.4f} {r['at_seconds']:16.4f} {r['steps@']:8.1f} {r['at_rows']:16.4f}")
    ours, trl = table["ours"], table["trl"]
    drift = max(abs(a - b) for x, y in zip(arms["ours"], arms["trl"]) for a, b in zip(x["losses"], y["losses"]))
    print(f"\nours / TRL: rows/s {ours['rows/s'] / trl['rows/s']:.2f}x (all rounds' rows over all rounds' seconds)")
    print(f"held-out NLL {at}: ours {ours['at_seconds']:.4f}, TRL {trl['at_seconds']:.4f} (lower is better: speed "
          f"shows here); after {result['rows']} rows: ours {ours['at_rows']:.4f}, TRL {trl['at_rows']:.4f} "
          f"(same rows, same update: should agree)")
    print(f"largest |ours - TRL| train loss on the same step: {drift:.1e}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    defaults = RunConfig().student
    parser.add_argument("--rows", type=int, default=2880, help="expert rows per arm per round, one pass (2,880: the "
                        "45 supervised steps of 64 of a 50-step sft-rlvr student)")
    parser.add_argument("--batch", type=int, default=defaults.batch_prompts * defaults.group_size,
                        help="rows per optimizer step (the product: batch_prompts x group_size)")
    parser.add_argument("--micro-batch", type=int, default=defaults.micro_batch,
                        help="rows per forward/backward pass (ours: student.micro_batch; TRL: "
                             "per_device_train_batch_size, batch / micro-batch accumulation steps)")
    parser.add_argument("--rounds", type=int, default=2, help="rounds, each training both arms in alternating order")
    parser.add_argument("--seconds", type=float, default=30.0,
                        help="training seconds at which the held-out losses are compared (equal wall time)")
    parser.add_argument("--eval-rows", type=int, default=256, help="held-out expert rows")
    parser.add_argument("--levels", default="1-8", help="arith levels of the problems, e.g. 1-8 or 3,4,5")
    parser.add_argument("--lr", type=float, default=None, help="learning rate (default student.sft_lr)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="[student] override, e.g. "
                        "student.grad_clip=0.5")
    args = parser.parse_args()
    levels = parse_levels(args.levels)
    steps = args.rows // args.batch
    section = apply_overrides(RunConfig(), args.set).student
    lr = section.sft_lr if args.lr is None else args.lr
    print(f"{steps * args.batch} arith L{levels[0]}-{levels[-1]} expert rows per arm per round: {steps} steps of "
          f"{args.batch} rows, micro-batch {args.micro_batch}; lr {lr:g} warmed up over {warmup_steps(steps)} "
          f"step(s), then constant; AdamW, clip {section.grad_clip:g}, max {section.max_new_tokens} completion tokens; "
          f"CPU float32, torch threads 1; {args.rounds} round(s)", flush=True)
    result = run_bench(args.rows, args.batch, args.micro_batch, args.rounds, args.seconds, args.eval_rows, levels,
                       args.seed, args.lr, args.set)
    report(result)


if __name__ == "__main__":
    main()
