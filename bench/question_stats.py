"""What kind of questions an arith run's teacher wrote, against the generator's at the same levels (issue 7).

For each curriculum dataset of the run (every teacher step's datasets, with their reward), the teacher's
questions and as many generator problems drawn one per teacher question at its level (`arith.generate`,
seed 0: the baseline in the same run), side by side: the share of distinct questions, the mean level, the
mean largest operand and the share of questions with an operand above the level's `arith.operand_max`, the
share of operands above 13 (`operand_max(PRETRAINED_OPERAND_LEVEL)` = `operand_max(4)`: the shipped model's
teacher learned to write questions of levels 1-4, and level 5's at a lower weight), the share of `*` and `-` among operators and of subtractions of a
compound expression (`a-(b+c)`) among operations, distinct shapes (the question with its numbers blanked) per
question (comparable between sources of the same size), parentheses per question and characters per question; then the same for the run's hard-train and
hard-test. The teacher's questions are parsed by `arith.parse` (the domain's own bounded parser, never eval).

    python bench/question_stats.py runs/def-s1

Measured (bench/README.md, "What the reward's selection is worth" and "What is left per question"): with the
range rule the long datasets came out close to the generator's kind at their levels; what still differs is
the operands above 13 (about a sixth of the generator's share) and fewer `a-(b+c)` and distinct shapes.
"""

from __future__ import annotations

import argparse
import random
import re
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from soar_agent.pretrain import LEVEL_WEIGHTS  # noqa: E402
from soar_agent.store import Store  # noqa: E402
from soar_agent.tasks import arith  # noqa: E402

# The highest level the shipped model was pretrained on in full (teacher items included): the operands its
# teacher learned to write reach arith.operand_max of this level.
PRETRAINED_OPERAND_LEVEL = max(level for level, weight in LEVEL_WEIGHTS.items() if weight >= 1.0)


def nodes(tree) -> list:
    """Every node of an arith tree: its numbers (arith.Num) and its operations (arith.BinOp)."""
    return [tree] if isinstance(tree, arith.Num) else [tree] + nodes(tree.left) + nodes(tree.right)


def question_stats(questions: list[str], levels: list[int]) -> dict:
    """The columns above for questions at their levels (every question a valid arith expression)."""
    tree_nodes = [nodes(arith.parse(question)) for question in questions]
    numbers = [[node.value for node in tree if isinstance(node, arith.Num)] for tree in tree_nodes]
    largest = [max(values) for values in numbers]
    operands = [value for values in numbers for value in values]
    operations = [node for tree in tree_nodes for node in tree if isinstance(node, arith.BinOp)]
    ops = [node.op for node in operations]
    return {"n": len(questions), "distinct": len(set(questions)) / len(questions),
            "level": statistics.mean(levels), "largest operand": statistics.mean(largest),
            "above operand_max": sum(n > arith.operand_max(level) for n, level in zip(largest, levels)) / len(questions),
            "operands > 13": sum(n > arith.operand_max(PRETRAINED_OPERAND_LEVEL) for n in operands) / len(operands),
            "*": ops.count("*") / max(1, len(ops)), "-": ops.count("-") / max(1, len(ops)),
            "a-(..)": sum(node.op == "-" and isinstance(node.right, arith.BinOp) for node in operations)
            / max(1, len(ops)),
            "shapes": len({re.sub(r"\d+", "n", question) for question in questions}) / len(questions),
            "parentheses": statistics.mean(q.count("(") for q in questions),
            "chars": statistics.mean(len(q) for q in questions)}


def print_stats(who: str, stats: dict) -> None:
    print(f"  {who:<10} " + "  ".join(f"{key} {value:.3g}" if isinstance(value, float) else f"{key} {value}"
                                      for key, value in stats.items()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dir", type=Path, help="a finished or running arith run's directory (holding soar.db)")
    args = parser.parse_args()
    database = args.run_dir / "soar.db"
    if not database.exists():
        sys.exit(f"{database}: no such store")
    rng = random.Random(0)
    with Store.open(database, readonly=True) as store:
        run = store.require_run()
        for dataset in store.datasets(run["id"], kind="curriculum"):
            rows = [row for row in store.dataset_problems(dataset["id"]) if row["domain"] == "arith" and row["level"]]
            if not rows:
                continue
            questions, levels = [row["question"] for row in rows], [row["level"] for row in rows]
            generated = [arith.generate(level, rng).question for level in levels]
            reward = "none" if dataset["reward"] is None else f"{dataset['reward']:+.4f}"
            print(f"step {dataset['teacher_step']} {dataset['name']} reward {reward}")
            for who, stats in (("teacher", question_stats(questions, levels)),
                               ("generator", question_stats(generated, levels))):
                print_stats(who, stats)
        for kind in ("hard-train", "hard-test"):
            rows = [row for dataset in store.datasets(run["id"], kind=kind)
                    for row in store.dataset_problems(dataset["id"]) if row["domain"] == "arith" and row["level"]]
            if rows:
                print_stats(kind, question_stats([row["question"] for row in rows], [row["level"] for row in rows]))


if __name__ == "__main__":
    main()
