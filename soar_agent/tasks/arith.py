"""The `arith` domain: multi-step integer arithmetic solved one reduction per step.

Owns the generator (difficulty = number of operations and operand size), a safe parser and exact
evaluator for model-written expressions (a hand-written recursive-descent parser: the product must never
`eval` or `sympify` untrusted text, and the tiny grammar needs nothing more), the expert step-by-step
solution in SRL's numbered-step format, the student prompt and strict answer extraction.

Grammar: integers, `+ - *` (left associative, `*` binds tighter), parentheses. No unary minus, no
division, no powers: `**` is rejected with a reason.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass

from soar_agent.tasks.base import (Problem, RejectedItem, builtin_expert_completion, builtin_student_prompt,
                                   check_integer_answer, extract_integer_answer, verify_exact)

NAME = "arith"
LEVELS = tuple(range(1, 9))
# Levels just past the shipped model's edge (see README: greedy profile), where hard sets are mined.
EDGE_LEVELS = (5, 6)
TOPICS = "integer arithmetic: addition, subtraction, multiplication, parentheses, order of operations"

MAX_QUESTION_CHARS = 120
MAX_DEPTH = 12
MAX_ABS_VALUE = 10**6
# The generator keeps every intermediate in this range so each step is a small, learnable operation.
GEN_RANGE = (0, 999)

_TOKEN = re.compile(r"\s*(?:([0-9]+)|(\*\*|[-+*()]))")  # [0-9]: \d and int() accept any script's digits
_OP_TITLE = {"+": "add", "-": "sub", "*": "mul"}


@dataclass(frozen=True)
class Num:
    value: int


@dataclass(frozen=True)
class BinOp:
    op: str
    left: "Node"
    right: "Node"


Node = Num | BinOp


# ---------------------------------------------------------------- parsing (untrusted text)


def parse(text: str, max_chars: int | None = MAX_QUESTION_CHARS) -> Node:
    """Parse an expression or raise RejectedItem with a one-line reason. Bounded in length (`max_chars`; None:
    a data file's row, bounded by its line), depth and magnitude so hostile input (`__import__(...)`,
    `9**9**9`, 10k nested parentheses) is rejected cheaply."""
    if max_chars is not None and len(text) > max_chars:
        raise RejectedItem(f"expression longer than {max_chars} characters")
    tokens: list[str] = []
    pos = 0
    stripped = text.rstrip()
    while pos < len(stripped):
        match = _TOKEN.match(stripped, pos)
        if not match:
            raise RejectedItem(f"unexpected character {stripped[pos:].strip()[:1]!r} at position {pos}")
        token = match.group(1) or match.group(2)
        if token == "**":
            raise RejectedItem("powers (**) are not part of the arith grammar")
        if match.group(1) and len(token) > 6:
            raise RejectedItem("number with more than 6 digits")
        tokens.append(token)
        pos = match.end()
    if not tokens:
        raise RejectedItem("empty expression")
    node, index = _parse_sum(tokens, 0, 0)
    if index != len(tokens):
        raise RejectedItem(f"unexpected {tokens[index]!r} after a complete expression")
    return node


def _parse_sum(tokens: list[str], index: int, depth: int) -> tuple[Node, int]:
    node, index = _parse_product(tokens, index, depth)
    while index < len(tokens) and tokens[index] in "+-":
        op = tokens[index]
        right, index = _parse_product(tokens, index + 1, depth)
        node = BinOp(op, node, right)
    return node, index


def _parse_product(tokens: list[str], index: int, depth: int) -> tuple[Node, int]:
    node, index = _parse_atom(tokens, index, depth)
    while index < len(tokens) and tokens[index] == "*":
        right, index = _parse_atom(tokens, index + 1, depth)
        node = BinOp("*", node, right)
    return node, index


def _parse_atom(tokens: list[str], index: int, depth: int) -> tuple[Node, int]:
    if index >= len(tokens):
        raise RejectedItem("expression ends early")
    token = tokens[index]
    if token == "(":
        if depth >= MAX_DEPTH:
            raise RejectedItem(f"parentheses nested deeper than {MAX_DEPTH}")
        node, index = _parse_sum(tokens, index + 1, depth + 1)
        if index >= len(tokens) or tokens[index] != ")":
            raise RejectedItem("unbalanced parentheses")
        return node, index + 1
    if token.isdigit():
        return Num(int(token)), index + 1
    raise RejectedItem(f"unexpected {token!r}")


def _apply(op: str, left: int, right: int) -> int:
    return left + right if op == "+" else left - right if op == "-" else left * right


def evaluate(node: Node) -> int:
    """Exact integer value; raises RejectedItem when any intermediate leaves +-MAX_ABS_VALUE."""
    if isinstance(node, Num):
        return node.value
    value = _apply(node.op, evaluate(node.left), evaluate(node.right))
    if abs(value) > MAX_ABS_VALUE:
        raise RejectedItem(f"intermediate value beyond {MAX_ABS_VALUE}")
    return value


# ---------------------------------------------------------------- printing and expert steps

_PRECEDENCE = {"+": 1, "-": 1, "*": 2}


def to_text(node: Node) -> str:
    """Canonical text with the minimal parentheses (no spaces: shorter sequences for the tiny model)."""
    if isinstance(node, Num):
        return str(node.value)
    left, right = to_text(node.left), to_text(node.right)
    prec = _PRECEDENCE[node.op]
    if isinstance(node.left, BinOp) and _PRECEDENCE[node.left.op] < prec:
        left = f"({left})"
    if isinstance(node.right, BinOp) and _PRECEDENCE[node.right.op] <= prec:
        right = f"({right})"
    return f"{left}{node.op}{right}"


def _reduce_first(node: Node) -> tuple[Node, str]:
    """Reduce the leftmost operation whose operands are both numbers; return the new tree and the step."""
    assert isinstance(node, BinOp)
    if isinstance(node.left, Num) and isinstance(node.right, Num):
        value = evaluate(node)
        return Num(value), f"**{_OP_TITLE[node.op]}** {node.left.value}{node.op}{node.right.value}={value}"
    if isinstance(node.left, BinOp):
        left, step = _reduce_first(node.left)
        return BinOp(node.op, left, node.right), step
    right, step = _reduce_first(node.right)
    return BinOp(node.op, node.left, right), step


def solution_steps(node: Node) -> tuple[str, ...]:
    """One reduction per step; each step ends with the remaining expression so the next step only needs
    local information (this is what makes longer problems learnable stepping stones)."""
    steps = []
    while isinstance(node, BinOp):
        node, step = _reduce_first(node)
        steps.append(step if isinstance(node, Num) else f"{step}, {to_text(node)}")
    return tuple(steps)


# ---------------------------------------------------------------- generator


def operand_max(level: int) -> int:
    return 5 + 2 * level


def _random_tree(n_ops: int, rng: random.Random, level: int) -> Node:
    if n_ops == 0:
        return Num(rng.randint(1, operand_max(level)))
    left_ops = rng.randint(0, n_ops - 1)
    op = rng.choice("+-*")
    return BinOp(op, _random_tree(left_ops, rng, level), _random_tree(n_ops - 1 - left_ops, rng, level))


def _value_in_range(node: Node) -> int:
    """The expression's value, each number and intermediate checked in one bottom-up pass; RejectedItem with
    the first way it leaves the domain's problem space (innermost first): a number or intermediate result
    outside GEN_RANGE, or a multi-digit times multi-digit product. The value follows a colon, so that
    teacher.rejection_kind counts a step's rejections by kind."""
    if isinstance(node, Num):
        if not GEN_RANGE[0] <= node.value <= GEN_RANGE[1]:
            raise RejectedItem(f"number outside {GEN_RANGE[0]}..{GEN_RANGE[1]}: {node.value}")
        return node.value
    left, right = _value_in_range(node.left), _value_in_range(node.right)
    if node.op == "*" and left >= 10 and right >= 10:
        raise RejectedItem(f"multi-digit times multi-digit product: {left}*{right}")
    value = _apply(node.op, left, right)
    if not GEN_RANGE[0] <= value <= GEN_RANGE[1]:
        raise RejectedItem(f"intermediate result outside {GEN_RANGE[0]}..{GEN_RANGE[1]}: {value}")
    return value


def range_violation(node: Node) -> str | None:
    """Why an expression leaves the domain's problem space (_value_in_range), or None."""
    try:
        _value_in_range(node)
    except RejectedItem as error:
        return str(error)
    return None


def in_generator_range(question: str) -> bool:
    """Whether a (possibly model-written) question stays where the generator's problems live (RejectedItem if
    it does not parse)."""
    return range_violation(parse(question)) is None


def generate(level: int, rng: random.Random, operand_level: int | None = None) -> Problem:
    """A problem with `level` operations; operands grow with the level (operand_max), or are drawn as at
    `operand_level` (bench/teacher_data.py's @generator-small: the generator's questions with small operands)."""
    if level < 1:
        raise ValueError(f"arith level must be >= 1, got {level}")
    while True:
        tree = _random_tree(level, rng, level if operand_level is None else operand_level)
        if range_violation(tree) is None:
            return make_problem(to_text(tree), level=level)


def make_problem(question: str, level: int | None = None) -> Problem:
    """Build a verified Problem from (possibly model-written) question text; RejectedItem if invalid or outside
    the domain's problem space (range_violation): the problems the generator, the hard sets and their
    expert steps live in, each step a small operation. The teacher writes through here. Measured on the
    shipped model (bench/teacher_data.py, bench/README.md "What the teacher writes"; hard-test pass@32, base
    0.028): 800 steps on a SOAR run's 20,160 rewarded teacher questions reached 0.271, on generator problems
    of the same levels 0.477; half of those questions left this space (more with each teacher update), and
    800 steps on that half alone reached 0.215, on the other half 0.393."""
    tree = parse(question)
    if isinstance(tree, Num):
        raise RejectedItem("a bare number is not a problem")
    answer = _value_in_range(tree)  # before the steps: a question outside the space costs no reductions
    return Problem(question=to_text(tree), answer=str(answer), domain=NAME, level=level, steps=solution_steps(tree))


def solve(question: str) -> str:
    """The exact answer of a model-written question (RejectedItem if it does not parse)."""
    return str(evaluate(parse(question)))


def check_row(question: str, answer: str) -> None:
    """A data file's row (a hard set, --data): RejectedItem unless the question is an expression of the arith
    grammar (of any length: a prompt too long for the model is refused or skipped later, naming the model's
    context) and the answer an integer as a student's answer line gives it ("7": never "7.0", "07" or "two",
    which no completion can match, so the row would silently score 0)."""
    try:
        parse(question, max_chars=None)
    except RejectedItem as error:
        raise RejectedItem(f"field 'question': not an arith expression ({error})") from None
    check_integer_answer(answer)


def difficulty(question: str) -> int:
    """Number of operations: the generator's level for a parsed question."""
    return len(solution_steps(parse(question)))


# ---------------------------------------------------------------- student interface (shared by the built-in domains)

student_prompt, expert_completion = builtin_student_prompt, builtin_expert_completion
extract_answer, verify = extract_integer_answer, verify_exact
