"""The `program` domain: predict what a tiny straight-line program prints.

Programs use single-letter variables, `+ - *` on at most two operands, small fixed `for` loops with a
one-line body, and end with one `print`. Ground truth comes from running the program in the sandbox
(`soar_agent.sandbox`); the hand-written tracer here produces the expert step-by-step solution (one
executed assignment per step) and is checked against the sandbox, never trusted alone.

Model-written programs are first parsed against this grammar line by line (regexes, no `ast`/`eval`):
anything outside it is rejected with a reason before anything runs.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass

from soar_agent import sandbox
from soar_agent.tasks.base import (Problem, RejectedItem, builtin_expert_completion, builtin_student_prompt,
                                   check_integer_answer, extract_integer_answer, verify_exact)

NAME = "program"
LEVELS = tuple(range(1, 9))
# Levels just past the shipped model's edge (see README: greedy profile), where hard sets are mined.
EDGE_LEVELS = (5, 6, 7)
TOPICS = "tracing python programs: variables, assignments, arithmetic, for loops, print"

VARIABLES = "abcde"
MAX_LINES = 16
MAX_LOOP = 4
GEN_RANGE = (0, 999)

_OPERAND = r"([a-e]|[0-9]{1,3})"  # [0-9]: \d would admit non-ASCII digits that int() reads
_ASSIGN = re.compile(rf"^([a-e])={_OPERAND}(?:([-+*]){_OPERAND})?$")
_LOOP = re.compile(r"^for i in range\(([0-9])\):$")
_BODY_INDENT = "    "
_PRINT = re.compile(r"^print\(([a-e])\)$")


@dataclass(frozen=True)
class Assign:
    target: str
    left: str
    op: str | None = None
    right: str | None = None

    def text(self) -> str:
        return f"{self.target}={self.left}" + (f"{self.op}{self.right}" if self.op else "")


@dataclass(frozen=True)
class Loop:
    times: int
    body: Assign


Statement = Assign | Loop


@dataclass(frozen=True)
class Program:
    statements: tuple[Statement, ...]
    printed: str

    def text(self) -> str:
        lines = []
        for statement in self.statements:
            if isinstance(statement, Loop):
                lines += [f"for i in range({statement.times}):", _BODY_INDENT + statement.body.text()]
            else:
                lines.append(statement.text())
        return "\n".join(lines + [f"print({self.printed})"])


# ---------------------------------------------------------------- parsing (untrusted text)


def parse(text: str) -> Program:
    lines = text.strip("\n").split("\n")
    if len(lines) > MAX_LINES:
        raise RejectedItem(f"program longer than {MAX_LINES} lines")
    if len(lines) < 2:
        raise RejectedItem("a program needs at least one assignment and a print")
    defined: set[str] = set()
    statements: list[Statement] = []
    index = 0
    while index < len(lines) - 1:
        line = lines[index]
        loop = _LOOP.match(line)
        if loop:
            times = int(loop.group(1))
            if not 1 <= times <= MAX_LOOP:
                raise RejectedItem(f"line {index + 1}: loop count must be 1..{MAX_LOOP}")
            if index + 1 >= len(lines) - 1 or not lines[index + 1].startswith(_BODY_INDENT):
                raise RejectedItem(f"line {index + 1}: a loop needs one indented body line")
            body = _parse_assign(lines[index + 1][len(_BODY_INDENT):], index + 2, defined)
            statements.append(Loop(times, body))
            index += 2
            continue
        statements.append(_parse_assign(line, index + 1, defined))
        index += 1
    printed = _PRINT.match(lines[-1])
    if not printed:
        raise RejectedItem("the last line must be print(<variable>)")
    if printed.group(1) not in defined:
        raise RejectedItem(f"print of undefined variable {printed.group(1)!r}")
    return Program(tuple(statements), printed.group(1))


def _parse_assign(line: str, line_no: int, defined: set[str]) -> Assign:
    match = _ASSIGN.match(line)
    if not match:
        raise RejectedItem(f"line {line_no}: not an assignment of the form x=y or x=y+z: {line[:40]!r}")
    target, left, op, right = match.groups()
    for operand in (left, right):
        if operand and operand.isalpha() and operand not in defined:
            raise RejectedItem(f"line {line_no}: variable {operand!r} used before assignment")
    defined.add(target)
    return Assign(target, left, op, right)


# ---------------------------------------------------------------- tracing (expert solution)


def _value(operand: str, env: dict[str, int]) -> int:
    return env[operand] if operand.isalpha() else int(operand)


def _execute(assign: Assign, env: dict[str, int]) -> str:
    left = _value(assign.left, env)
    if assign.op is None:
        env[assign.target] = left
        return f"{assign.target}={left}"
    right = _value(assign.right, env)
    result = left + right if assign.op == "+" else left - right if assign.op == "-" else left * right
    env[assign.target] = result
    return f"{assign.text()}={left}{assign.op}{right}={result}"


def trace(program: Program) -> tuple[tuple[str, ...], int, list[tuple[int, int, int | None]]]:
    """Expert steps, the printed value, and (left, right, result) of every operation for range checks."""
    env: dict[str, int] = {}
    steps: list[str] = []
    operations: list[tuple[int, int, int | None]] = []
    for statement in program.statements:
        runs = [(statement.body, "loop")] * statement.times if isinstance(
            statement, Loop) else [(statement, "set" if statement.op is None else "calc")]
        for assign, title in runs:
            before = dict(env)
            steps.append(f"**{title}** {_execute(assign, env)}")
            if assign.op:
                operations.append((_value(assign.left, before), _value(assign.right, before), env[assign.target]))
    return tuple(steps), env[program.printed], operations


# ---------------------------------------------------------------- generator


def _random_operand(defined: list[str], rng: random.Random, level: int) -> str:
    if defined and rng.random() < 0.7:
        return rng.choice(defined)
    return str(rng.randint(1, 3 + level))


def _random_program(level: int, rng: random.Random) -> Program:
    """`level + 1` statements over up to min(2 + level//2, 5) variables; loops appear from level 3."""
    names = VARIABLES[: min(2 + level // 2, len(VARIABLES))]
    defined: list[str] = []
    statements: list[Statement] = []
    for index in range(level + 1):
        if index == 0:
            target = names[0]
            statements.append(Assign(target, str(rng.randint(1, 3 + level))))
            defined.append(target)
            continue
        target = rng.choice(names)
        if level >= 3 and rng.random() < 0.2:
            op = rng.choice("+-*")
            body = Assign(target if target in defined else defined[0], target if target in defined else defined[0],
                          op, _random_operand(defined, rng, level))
            statements.append(Loop(rng.randint(2, 3), body))
            continue
        op = rng.choice("+-*")
        statements.append(Assign(target, _random_operand(defined, rng, level), op, _random_operand(defined, rng, level)))
        if target not in defined:
            defined.append(target)
    last = statements[-1]
    printed = last.body.target if isinstance(last, Loop) else last.target
    return Program(tuple(statements), printed)


def _acceptable(program: Program) -> bool:
    """Values stay small, no multi-digit products, and no zeros anywhere: a zero collapses the rest of
    the trace (0*x, x-x) and makes the printed value guessable without tracing."""
    _, value, operations = trace(program)
    if value < 2:
        return False
    for left, right, result in operations:
        if not 1 <= result <= GEN_RANGE[1]:
            return False
        if left >= 10 and right >= 10 and result == left * right:
            return False
    return True


def _generate_unchecked(level: int, rng: random.Random) -> Program:
    if level < 1:
        raise ValueError(f"program level must be >= 1, got {level}")
    while True:
        program = _random_program(level, rng)
        if _acceptable(program):
            return program


def generate_many(levels: list[int], rng: random.Random) -> list[Problem]:
    """Problems for the given levels; answers come from ONE sandboxed batch run and must match the
    tracer (a mismatch means the tracer is wrong, which is a bug worth stopping for)."""
    programs = [_generate_unchecked(level, rng) for level in levels]
    results = sandbox.run_python_batch([program.text() for program in programs])
    problems = []
    for program, level, result in zip(programs, levels, results):
        if not result.ok:
            raise RuntimeError(f"sandbox failed on a generated program ({result.reason}):\n{program.text()}")
        steps, value, _ = trace(program)
        if result.stdout.strip() != str(value):
            raise RuntimeError(f"tracer disagrees with the sandbox ({value} vs {result.stdout!r}):\n{program.text()}")
        problems.append(Problem(program.text(), result.stdout.strip(), NAME, level, steps))
    return problems


def generate(level: int, rng: random.Random) -> Problem:
    return generate_many([level], rng)[0]


def make_problem(question: str, level: int | None = None) -> Problem:
    """Validate a (model-written) program against the grammar, run it in the sandbox for the answer."""
    program = parse(question)
    result = sandbox.run_python(program.text())
    if not result.ok:
        raise RejectedItem(f"program failed in the sandbox: {result.reason}")
    steps, value, _ = trace(program)
    answer = result.stdout.strip()
    if answer != str(value):
        raise RejectedItem(f"sandbox output {answer[:20]!r} is not the traced value {value}")
    return Problem(program.text(), answer, NAME, level, steps)


def solve(question: str) -> str:
    return make_problem(question).answer


def check_row(question: str, answer: str) -> None:
    """A data file's row (a hard set, --data): RejectedItem unless the question is a program of the domain's
    grammar and the answer an integer as a student's answer line gives it ("7": never "7.0", "07" or "two",
    which no completion can match, so the row would silently score 0)."""
    try:
        parse(question)
    except RejectedItem as error:
        raise RejectedItem(f"field 'question': not a program of the {NAME} domain ({error})") from None
    check_integer_answer(answer)


def difficulty(question: str) -> int:
    return len(parse(question).statements) - 1


# ---------------------------------------------------------------- student interface (shared by the built-in domains)

student_prompt, expert_completion = builtin_student_prompt, builtin_expert_completion
extract_answer, verify = extract_integer_answer, verify_exact
