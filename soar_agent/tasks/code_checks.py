"""How the `code` domain checks a solution so that the solution cannot fake a pass.

The solution runs in the sandbox; the verdict is reached here, in the parent. Each test assert is split
(with ``ast``, in the parent) into *probes*, the parts that need the solution (``add(1, 2)``), and a
*skeleton* the parent evaluates itself (``P0 == 3``). The sandboxed child runs the solution, then the
tests' setup statements and the probes, and sends back each probe's value as a plain-data literal (only
exact builtin types: bool, int, float, complex, str, bytes, None, list, tuple, dict, set). The parent
decodes them with ``ast.literal_eval`` and evaluates the skeletons on those builtins, so:

* a returned object whose ``__eq__``/``__bool__`` lies is no value at all (not plain data: the probe
  fails), and no comparison ever runs a method the solution defined;
* the expected values never enter the child, and there is no secret there: a solution that prints,
  exits early or writes records of its own can at best claim values it could also have returned;
* the parent needs one record per probe, in order, and exit status 0.

Asserts whose expected side the parent cannot compute (``assert f(x) == y`` with ``y`` set by the test
code, asserts inside loops or ``try``) are refused when the problems are loaded, with the reason.
"""

from __future__ import annotations

import ast
import builtins
import inspect
import json
import math
from dataclasses import dataclass


class UncheckableTest(ValueError):
    """Test code this harness cannot check by value; the message is one line."""


# Functions the parent may apply to decoded plain values: pure, and bounded by the size of their input
# (no ``range``/``pow``: a solution-chosen number must not make the parent loop or allocate for long).
_PARENT_FUNCTIONS = {name: getattr(builtins, name) for name in (
    "abs", "all", "any", "bool", "bytes", "chr", "complex", "dict", "divmod", "enumerate", "float", "frozenset",
    "int", "isinstance", "len", "list", "max", "min", "ord", "repr", "reversed", "round", "set", "sorted", "str",
    "sum", "tuple", "type", "zip")}
_MATH = ("isclose", "sqrt", "floor", "ceil", "fabs", "isnan", "isinf", "isfinite", "pi", "e", "inf", "nan",
         "log", "log2", "log10", "exp", "trunc", "gcd", "fsum", "prod")
# operators that can blow up with a solution-chosen operand run in the sandbox instead
_HEAVY_OPERATORS = (ast.Pow, ast.Mult, ast.LShift, ast.MatMult)
_CONTAINERS = (ast.Tuple, ast.List, ast.Set, ast.Dict)
_STRUCTURE = _CONTAINERS + (ast.UnaryOp, ast.BinOp, ast.BoolOp, ast.Compare, ast.IfExp, ast.Subscript, ast.Slice)
_PLACEHOLDER = "_soar_p"


@dataclass(frozen=True)
class Plan:
    steps: tuple  # for the child, in order: ("exec", source) | ("probe", source)
    checks: tuple[str, ...]  # skeletons over _soar_p[i], evaluated by the parent
    names: tuple[str, ...]  # names the tests read; taken from the solution when it defines them
    candidate: str | None  # the parameter of `def check(candidate)`, bound to the entry point
    entry_point: str | None

    @property
    def probes(self) -> int:
        return sum(step[0] == "probe" for step in self.steps)


def plan_tests(tests: list[str], entry_point: str | None, solution_names: frozenset[str] = frozenset()) -> Plan:
    """Split ``tests`` into child steps and parent checks. ``solution_names``: names the solution defines at
    its top level; they shadow builtins the parent would otherwise compute itself (``def max(...)``)."""
    source = "\n".join(tests)
    try:
        module = ast.parse(source)
    except SyntaxError as error:
        raise UncheckableTest(f"tests do not parse: {error.msg} (line {error.lineno})") from None
    assigned = {node.id for node in ast.walk(module) if isinstance(node, ast.Name) and not isinstance(node.ctx, ast.Load)}
    assigned |= {node.name for node in ast.walk(module) if isinstance(node, (ast.FunctionDef, ast.ClassDef))}
    assigned |= {(alias.asname or alias.name).split(".")[0] for node in ast.walk(module)
                 if isinstance(node, (ast.Import, ast.ImportFrom)) for alias in node.names}
    names = sorted({node.id for node in ast.walk(module) if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Load)})
    splitter = _Splitter(frozenset(solution_names) | (assigned - {"math"}))
    steps: list[tuple] = []
    checks: list[str] = []
    candidate = None
    body = []
    check_body = None
    for statement in module.body:
        if isinstance(statement, ast.FunctionDef) and statement.name == "check":
            if entry_point is None:
                raise UncheckableTest("tests define check(candidate) but the row has no entry_point")
            if len(statement.args.args) != 1:
                raise UncheckableTest("check() must take exactly one argument, the candidate function")
            candidate = statement.args.args[0].arg
            check_body = statement.body
            continue
        body.append(statement)
    # like the HumanEval harness: check(entry_point) runs after everything else
    for statement in body + (check_body or []):
        if isinstance(statement, ast.Assert):
            skeleton = splitter.split(statement.test, steps)
            checks.append(ast.unparse(skeleton))
            continue
        nested = next((node for node in ast.walk(statement) if isinstance(node, ast.Assert)), None)
        if nested is not None:
            raise UncheckableTest(f"assert inside {type(statement).__name__.lower()} (line {nested.lineno}) cannot be "
                                  "checked by value: asserts must be top-level statements")
        steps.append(("exec", ast.unparse(statement)))
    return Plan(tuple(steps), tuple(checks), tuple(names), candidate, entry_point)


def check_loadable(tests: list[str], entry_point: str | None) -> None:
    """Raise UncheckableTest unless the tests can be checked by value and call the solution at all (a
    solution function named like a builtin, ``def max``, counts: the solution's names shadow builtins)."""
    plan = plan_tests(tests, entry_point)
    if plan.probes == 0 and plan_tests(tests, entry_point, frozenset(_PARENT_FUNCTIONS) | {"math"}).probes == 0:
        raise UncheckableTest("the tests never call the solution")


class _Splitter:
    def __init__(self, shadowed: frozenset[str]):
        self.shadowed = shadowed

    def split(self, test: ast.expr, steps: list) -> ast.expr:
        """``test`` with every part the parent cannot compute replaced by ``_soar_p[i]``; the replaced
        parts are appended to ``steps`` as probes."""
        text = ast.unparse(test)
        skeleton = self._lift(test, steps)
        for node in ast.walk(skeleton):
            operands = None
            if isinstance(node, ast.Compare):
                operands = [node.left, *node.comparators]
            elif isinstance(node, ast.Call) and self._is_math(node.func, "isclose"):
                operands = node.args
            if operands and all(_has_probe(operand) for operand in operands):
                raise UncheckableTest(f"assert (line {test.lineno}) compares values computed in the sandbox "
                                      f"({text[:80]}); one side must be a constant")
        return skeleton

    def _lift(self, node: ast.AST, steps: list) -> ast.AST:
        if isinstance(node, ast.expr) and not self._parent_side(node):
            index = sum(step[0] == "probe" for step in steps)
            steps.append(("probe", ast.unparse(node)))
            return ast.Subscript(ast.Name(_PLACEHOLDER, ast.Load()), ast.Constant(index), ast.Load())
        if isinstance(node, ast.Attribute):  # math.<name>: nothing inside to compute
            return node
        for field, value in ast.iter_fields(node):
            if field == "func":
                continue
            if isinstance(value, ast.AST) and not isinstance(value, (ast.expr_context, ast.operator, ast.unaryop,
                                                                      ast.boolop, ast.cmpop)):
                setattr(node, field, self._lift(value, steps))
            elif isinstance(value, list):
                setattr(node, field, [self._lift(item, steps) if isinstance(item, (ast.expr, ast.keyword)) else item
                                      for item in value])
        return node

    def _is_math(self, node: ast.AST, name: str | None = None) -> bool:
        return (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "math"
                and "math" not in self.shadowed and node.attr in _MATH and (name is None or node.attr == name))

    def _parent_side(self, node: ast.expr) -> bool:
        """Whether the parent computes this node itself (its children may still be probes)."""
        if isinstance(node, ast.Constant):
            return True
        if isinstance(node, ast.Name):
            return node.id in _PARENT_FUNCTIONS and node.id not in self.shadowed
        if isinstance(node, ast.Attribute):
            return self._is_math(node)
        if isinstance(node, ast.Call):
            func_ok = self._is_math(node.func) or (isinstance(node.func, ast.Name) and self._parent_side(node.func))
            arguments = [*node.args, *(keyword.value for keyword in node.keywords)]
            return func_ok and all(keyword.arg is not None for keyword in node.keywords) and not any(
                isinstance(argument, (ast.Starred, ast.Lambda, ast.GeneratorExp)) for argument in arguments)
        if isinstance(node, ast.BinOp) and isinstance(node.op, _HEAVY_OPERATORS):
            return not (self._needs_probe(node.left) or self._needs_probe(node.right))
        if isinstance(node, _CONTAINERS):
            return not any(isinstance(element, ast.Starred) for element in getattr(node, "elts", []))
        return isinstance(node, _STRUCTURE)


    def _needs_probe(self, node: ast.AST) -> bool:
        """Whether computing ``node`` needs a value from the sandbox (mirrors :meth:`_lift`)."""
        if isinstance(node, ast.expr) and not self._parent_side(node):
            return True
        if isinstance(node, ast.Attribute):
            return False
        for field, value in ast.iter_fields(node):
            children = value if isinstance(value, list) else [value]
            if field != "func" and any(isinstance(child, (ast.expr, ast.keyword)) and self._needs_probe(child)
                                       for child in children):
                return True
        return False


def _has_probe(node: ast.AST) -> bool:
    return any(isinstance(child, ast.Name) and child.id == _PLACEHOLDER for child in ast.walk(node))


# --------------------------------------------------------------------------------------------------
# The child (its source is shipped into the sandbox; self-contained)
# --------------------------------------------------------------------------------------------------


def _child_main(spec_text):
    """Run the solution, then the tests' steps; write one record per probe on a private descriptor.
    The ``_child_*`` helpers only build closures, before the solution runs: patching them later (they are
    globals of this program, which the solution can reach) changes nothing."""
    import builtins
    import json
    import os

    spec = json.loads(spec_text)
    del spec_text
    # everything used after the solution starts is bound now; the solution may patch modules later
    pristine = dict(builtins.__dict__)
    int_repr, BaseException_, exit_ = int.__repr__, BaseException, os._exit
    NotPlain, plain, guard = _child_plain_data()
    literal = _child_literal(NotPlain)
    emit, fail = _child_output()

    solution = {"__name__": "__main__", "__builtins__": builtins}
    try:
        exec(compile(spec["solution"], "solution.py", "exec"), solution)
    except BaseException_ as exc:  # SystemExit too: exiting before the tests is no pass
        fail("solution", exc)
    tests = {"__name__": "__soar_tests__", "__builtins__": pristine}
    try:
        for name in spec["names"]:
            if name in solution:
                tests[name] = guard(solution[name])
        if spec["candidate"] is not None:
            tests[spec["candidate"]] = guard(solution[spec["entry_point"]])
    except BaseException_ as exc:
        fail("solution names", exc)
    probe = 0
    for kind, source in spec["steps"]:
        try:
            if kind == "exec":
                exec(compile(source, "tests.py", "exec"), tests)
                continue
            value = literal(plain(eval(compile(source, "tests.py", "eval"), tests)))
        except BaseException_ as exc:
            fail("probe %d" % probe, exc)
        emit(int_repr(probe) + "\t" + value)
        probe += 1
    exit_(0)  # no atexit handlers, no finalizers the solution registered


def _child_plain_data():
    """``(NotPlain, plain, guard)``: ``plain(value)`` copies a value into exact builtin types (NotPlain
    when it is anything else), ``guard(thing)`` is what the tests see of a solution name. Bound before the
    solution runs."""
    _type, _callable = type, callable
    _int, _float, _complex, _str, _bytes, _bool = int, float, complex, str, bytes, bool
    _list, _tuple, _dict, _set, _frozenset, _none = list, tuple, dict, set, frozenset, type(None)
    list_append, dict_items = list.append, dict.items

    class NotPlain(Exception):
        pass

    def plain(value, depth=0):
        """An exact-builtin copy of ``value`` (so no method the solution defined survives), or NotPlain."""
        kind = _type(value)
        if depth > 100:
            raise NotPlain("nested too deeply")
        if kind is _int or kind is _float or kind is _complex or kind is _str or kind is _bytes or kind is _bool \
                or kind is _none:
            return value
        if kind is _list or kind is _tuple:
            items = []
            for item in value:
                list_append(items, plain(item, depth + 1))
            return items if kind is _list else _tuple(items)
        if kind is _set or kind is _frozenset:
            return _set([plain(item, depth + 1) for item in _list(value)])
        if kind is _dict:
            return {plain(key, depth + 1): plain(item, depth + 1) for key, item in dict_items(value)}
        raise NotPlain("not plain data: " + kind.__name__)

    def guard(thing):
        """What the tests see of a solution name: calls return plain copies, values are plain copies."""
        if not _callable(thing):
            return plain(thing)

        def called(*args, **kwargs):
            return plain(thing(*args, **kwargs))

        return called

    return NotPlain, plain, guard


def _child_literal(not_plain):
    """``literal(value)``: a plain value as Python source that ``ast.literal_eval`` reads back exactly
    (``not_plain``, the NotPlain of plain(), for a nan). Bound before the solution runs."""
    _type, _len = type, len
    _int, _float, _complex, _str, _bytes, _bool = int, float, complex, str, bytes, bool
    _list, _tuple, _set, _none = list, tuple, set, type(None)
    int_repr, float_repr, complex_repr = int.__repr__, float.__repr__, complex.__repr__
    str_repr, bytes_repr, join, dict_items = str.__repr__, bytes.__repr__, str.join, dict.items
    inf = float("inf")

    def literal(value):
        """``value`` (already plain) as a Python literal that ``ast.literal_eval`` reads back exactly."""
        kind = _type(value)
        if kind is _bool or kind is _none:
            return "True" if value is True else "False" if value is False else "None"
        if kind is _int:
            return int_repr(value)
        if kind is _float:
            if value != value:
                raise not_plain("nan has no literal")
            return "1e999" if value == inf else "-1e999" if value == -inf else float_repr(value)
        if kind is _complex:
            return complex_repr(value)
        if kind is _str:
            return str_repr(value)
        if kind is _bytes:
            return bytes_repr(value)
        if kind is _list:
            return "[" + join(", ", [literal(item) for item in value]) + "]"
        if kind is _tuple:
            inner = join(", ", [literal(item) for item in value])
            return "(" + inner + ("," if _len(value) == 1 else "") + ")"
        if kind is _set:
            return "{" + join(", ", [literal(item) for item in value]) + "}" if value else "set()"
        return "{" + join(", ", [literal(key) + ": " + literal(item) for key, item in dict_items(value)]) + "}"

    return literal


def _child_output():
    """``(emit, fail)``: records go out on a private duplicate of stdout (``emit(line)``); fd 1 itself, the
    solution's prints, goes nowhere. ``fail(where, exc)`` reports a failure and exits. Bound before the
    solution runs."""
    import os

    _type, write, encode_text, exit_ = type, os.write, str.encode, os._exit
    out = os.dup(1)
    null = os.open(os.devnull, os.O_WRONLY)
    os.dup2(null, 1)
    os.close(null)

    def emit(line):
        data = encode_text(line + "\n", "utf-8", "backslashreplace")
        while data:
            data = data[write(out, data):]

    def fail(where, exc):
        emit("!" + where + ": " + _type(exc).__name__)
        exit_(1)

    return emit, fail


# _child_main and the helpers it calls: the program shipped into the sandbox
_CHILD_FUNCTIONS = (_child_main, _child_plain_data, _child_literal, _child_output)


def child_program(plan: Plan, solution: str) -> str:
    spec = {"solution": solution, "steps": [list(step) for step in plan.steps], "names": list(plan.names),
            "candidate": plan.candidate, "entry_point": plan.entry_point}
    sources = "\n".join(inspect.getsource(func) for func in _CHILD_FUNCTIONS)
    return f"{sources}\n_child_main({json.dumps(spec)!r})\n"


# --------------------------------------------------------------------------------------------------
# The parent's verdict
# --------------------------------------------------------------------------------------------------


def decode_records(stdout: str, count: int) -> list | None:
    """The probe values, or None unless ``stdout`` is exactly ``count`` records 0..count-1."""
    lines = stdout.split("\n")
    if lines[-1] != "" or len(lines) != count + 1:
        return None
    values = []
    for expected, line in enumerate(lines[:-1]):
        index, _, text = line.partition("\t")
        if index != str(expected):
            return None
        try:
            values.append(ast.literal_eval(text))
        except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
            return None
    return values


def passes(plan: Plan, values: list) -> bool:
    """Whether every check holds on the decoded values (builtins only: nothing of the solution's runs here)."""
    namespace = {"__builtins__": {}, **_PARENT_FUNCTIONS, "math": math, _PLACEHOLDER: values}
    for check in plan.checks:
        try:
            if not eval(compile(check, "<check>", "eval"), dict(namespace)):
                return False
        except Exception:  # a type error on plain data is a failed assert, as in the original test
            return False
    return True


def solution_names(solution: str) -> frozenset[str]:
    """Names the solution defines at its top level ({} when it does not parse: it will fail anyway)."""
    try:
        module = ast.parse(solution)
    except (SyntaxError, ValueError):
        return frozenset()
    names = set()
    for node in module.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names |= {(alias.asname or alias.name).split(".")[0] for alias in node.names}
        else:
            names |= {child.id for child in ast.walk(node) if isinstance(child, ast.Name)
                      and isinstance(child.ctx, ast.Store)}
    return frozenset(names)
