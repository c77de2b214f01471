"""Synthetic chains of thought in the exact mode-collapsed format (PAPER.md section 2).

A trace is a few failed attempts (random expressions over the problem's numbers, with
near misses and deliberate arithmetic slips), then a correct one from the solver, the
closing "So, the equation ..." line and the <answer> block. The verdict of every
attempt follows `claimed == target` only, never the attempt's position, so a model
trained on these must compare its claimed value with the target to verify."""
from __future__ import annotations

import random
from fractions import Fraction

from ..errors import VerilensError
from .arith import evaluate_tree, parse
from .problems import Problem
from .solver import format_expr, solve

# How many failed attempts come before the correct one (weights for 0, 1, 2, 3, 4): most
# traces have several, and by the fifth attempt the search is over (a small model can
# count that far; with a longer tail countdown-tiny never learned when to stop).
ATTEMPT_WEIGHTS = [2, 5, 8, 8, 6]
# Operators of failed attempts: mostly + and -, as in the published traces.
OP_WEIGHTS = [0.35, 0.35, 0.15, 0.15]
# Attempt lines in a verdict drill (`drill_trace`): min, max.
DRILL_LINES = (6, 12)


def format_number(x: Fraction) -> str:
    """Integers as is; other values as a decimal with at most two places."""
    if x.denominator == 1:
        return str(x.numerator)
    s = f"{float(x):.2f}".rstrip("0").rstrip(".")
    return "0" if s == "-0" else s


def random_tree(nums, rng: random.Random):
    """A random expression tree using every number once (random order, ops, bracketing)."""
    items = list(nums)
    rng.shuffle(items)
    trees = list(items)
    while len(trees) > 1:
        i = rng.randrange(len(trees) - 1)
        op = rng.choices("+-*/", weights=OP_WEIGHTS)[0]
        if op == "/" and _value(trees[i + 1]) == 0:
            op = "+"
        trees[i : i + 2] = [(op, trees[i], trees[i + 1])]
    return trees[0]


def _value(tree) -> Fraction:
    return Fraction(evaluate_tree(_frac(tree)))


def _frac(tree):
    if not isinstance(tree, tuple):
        return Fraction(tree)
    return (tree[0], _frac(tree[1]), _frac(tree[2]))


def chain_steps(tree) -> list[str]:
    """The intermediate lines of a chained attempt: reduce the leftmost innermost
    operation one at a time (`68 - 11 + 5` -> ["57 + 5", "62"]). Values must stay
    integral along the way; otherwise no chain."""
    steps = []
    while isinstance(tree, tuple):
        tree = _reduce_one(tree)
        if tree is None:
            return []
        steps.append(format_expr(tree))
    return steps


def _reduce_one(tree):
    op, a, b = tree
    if isinstance(a, tuple):
        ra = _reduce_one(a)
        return None if ra is None else (op, ra, b)
    if isinstance(b, tuple):
        rb = _reduce_one(b)
        return None if rb is None else (op, a, rb)
    v = _value(tree)
    if v.denominator != 1 or v < 0:
        return None  # keep chains to natural numbers: they print as plain leaves
    return int(v)


def _numbers_phrase(nums) -> str:
    nums = [str(n) for n in nums]
    if len(nums) == 1:
        return nums[0]
    if len(nums) == 2:
        return f"{nums[0]} and {nums[1]}"
    return ", ".join(nums[:-1]) + ", and " + nums[-1]


def _attempt_line(expr: str, segments: list[str], target: int, valid: bool) -> str:
    verdict = "(this works)" if valid else f"(not {target})"
    return "- " + " = ".join([expr] + segments) + " " + verdict


def _failed_attempt(problem: Problem, rng: random.Random, p_slip: float, p_near: float, p_chain: float,
                    p_slip_target: float = 0.3):
    """(expression, segments, claimed, slip) of an attempt that does not reach the target,
    unless it slips (`p_slip`: the claimed value is wrong, see `_slip_claim`); a slip
    that claims the target gets "(this works)", as in the published traces."""
    target = Fraction(problem.target)
    for _ in range(50):
        cands = [random_tree(problem.nums, rng) for _ in range(8 if rng.random() < p_near else 1)]
        cands = [(t, _value(t)) for t in cands if _value_ok(t)]
        if not cands:
            continue
        cands = [c for c in cands if c[1] != target] or cands
        tree, value = min(cands, key=lambda c: abs(c[1] - target))
        if value == target:
            continue
        if value.denominator != 1 and (100 % value.denominator or rng.random() < 0.7):
            continue  # mostly whole numbers; decimals only when two places are exact
        if abs(value) > 999 and rng.random() < 0.9:
            continue  # like the published traces: few huge products
        expr = format_expr(tree)
        segments = []
        if rng.random() < p_chain:
            segments = chain_steps(tree)[:-1]
        claimed, slip = value, rng.random() < p_slip
        if slip:
            claimed = _slip_claim(problem, value, rng, p_slip_target)
        segments = segments + [format_number(claimed)]
        return expr, segments, claimed, slip
    return None


def _slip_claim(problem: Problem, value: Fraction, rng: random.Random, p_target: float = 0.3) -> Fraction:
    """A wrong claimed value, chosen to make the verdict hard to get without comparing
    every digit with the target: the target itself (with probability `p_target`), else
    values one digit away from it or with its digits swapped, one off, one of the
    problem's numbers, or a small slip."""
    t = problem.target
    r = rng.random()
    if r < p_target:
        return Fraction(t)  # a wrong computation that claims the target
    r = 0.3 + 0.7 * (r - p_target) / (1 - p_target)  # the rest of [0, 1) onto the other kinds, as before
    if r < 0.55:
        return Fraction(_digit_neighbour(t, rng))
    if r < 0.7:
        return Fraction(t + rng.choice([-1, 1]))
    if r < 0.85:
        return Fraction(rng.choice(problem.nums))
    return Fraction(round(value + rng.choice([-10, -5, -2, -1, 1, 2, 5, 10])))


def _digit_neighbour(t: int, rng: random.Random) -> int:
    """`t` with its digits swapped or one digit changed (69 -> 96, 64, 59); never `t`."""
    s = str(abs(t))
    if len(s) > 1 and s[0] != s[-1] and s[-1] != "0" and rng.random() < 0.3:
        s = s[::-1]
    else:
        i = rng.randrange(len(s))
        digits = [d for d in "0123456789" if d != s[i] and not (i == 0 and d == "0" and len(s) > 1)]
        s = s[:i] + rng.choice(digits) + s[i + 1 :]
    return int(s) if t >= 0 else -int(s)


def _opening(problem: Problem) -> str:
    return (
        f" We have the numbers {_numbers_phrase(problem.nums)}. We need to use all of them to make "
        f"an equation that equals {problem.target}. Let's try different combinations:"
    )


def _last_digit_changed(t: int, rng: random.Random) -> int:
    """`t` with its last digit replaced by another one (42 -> 47); never `t`."""
    last = abs(t) % 10
    v = abs(t) - last + rng.choice([d for d in range(10) if d != last])
    return v if t >= 0 else -v


def drill_trace(problem: Problem, rng: random.Random | int = 0, n_lines: tuple[int, int] = DRILL_LINES,
                p_last: float = 0.5):
    """A verdict drill: the trace's opening, then `n_lines` attempt lines over the problem's
    numbers whose claimed values are, half and half, the target and a wrong value one digit
    away from it: with probability `p_last` the target with its last digit changed (42 -> 47),
    else another digit changed or the digits swapped (42 -> 72, 24). Each verdict follows
    claimed == target. No closing lines.

    Returns (text, untrained spans): only the verdicts and the rest of their lines carry
    loss. Why drills: a claim that differs from the target in its last digit only is told
    apart by comparing two digits, an XOR-like interaction that no loss rewards until both
    digits reach the verdict position; normal traces have too few such claims for a small
    model to find it (issue 3's notes). The other wrong claims keep the first digit compared:
    with last-digit changes alone the model stops comparing it."""
    if not isinstance(rng, random.Random):
        rng = random.Random(rng)
    t = problem.target
    text = _opening(problem)
    untrained = [(0, len(text))]
    for _ in range(rng.randint(*n_lines)):
        tree = random_tree(problem.nums, rng)
        while not _value_ok(tree):
            tree = random_tree(problem.nums, rng)
        if rng.random() < 0.5:
            claimed = t
        else:
            claimed = _last_digit_changed(t, rng) if rng.random() < p_last else _digit_neighbour(t, rng)
        line = _attempt_line(format_expr(tree), [str(claimed)], t, valid=claimed == t)
        start = len(text)
        text += "\n" + line
        untrained.append((start, start + 1 + line.rindex(" (") + 2))  # up to and with the " ("
    return text, untrained


def _value_ok(tree) -> bool:
    try:
        _value(tree)
        return True
    except ZeroDivisionError:
        return False


def write_trace(
    problem: Problem,
    rng: random.Random | int = 0,
    max_failed: int | None = None,
    p_slip: float = 0.1,
    p_near: float = 0.3,
    p_chain: float = 0.2,
    p_final_slip: float = 0.0,
    p_slip_target: float = 0.3,
) -> str:
    """The model's response to `prompt(problem)`: starts with " We have the numbers"
    (the prompt ends in "<think>") and ends with the <answer> line."""
    return trace_and_slips(problem, rng, max_failed, p_slip, p_near, p_chain, p_final_slip, p_slip_target)[0]


def trace_and_slips(
    problem: Problem,
    rng: random.Random | int = 0,
    max_failed: int | None = None,
    p_slip: float = 0.1,
    p_near: float = 0.3,
    p_chain: float = 0.2,
    p_final_slip: float = 0.0,
    p_slip_target: float = 0.3,
) -> tuple[str, list[tuple[int, int]]]:
    """`write_trace`'s text and the character spans of its slipped claimed values.

    Training puts no loss on those spans: the model sees wrong claims (the target, near
    misses) and learns the verdict that follows them, without learning to make them.
    `p_final_slip`: the chance that the solution is first written with a wrong claimed
    value (so "(not ...)", and the search goes on), then again correctly: the line that
    ends the search is then not recognisable before its claimed value is. `p_slip_target`:
    the share of wrong claimed values that claim the target."""
    if not isinstance(rng, random.Random):
        rng = random.Random(rng)
    t = problem.target
    text = _opening(problem)
    slips = []
    weights = ATTEMPT_WEIGHTS[: (max_failed + 1) if max_failed is not None else None]
    n_failed = rng.choices(range(len(weights)), weights=weights)[0]
    final_expr = None
    for _ in range(n_failed):
        att = _failed_attempt(problem, rng, p_slip, p_near, p_chain, p_slip_target)
        if att is None:
            continue
        expr, segments, claimed, slip = att
        line = _attempt_line(expr, segments, t, valid=claimed == t)
        if slip:
            end = len(text) + 1 + len(line) - len(line.rsplit(" (", 1)[1]) - 2
            slips.append((end - len(segments[-1]), end))
        text += "\n" + line
        if claimed == t:  # a slip that claims the target ends the search, wrongly
            final_expr = expr
            break
    if final_expr is None:
        nums = list(problem.nums)
        rng.shuffle(nums)  # a different solution each time, where there are several
        solution = solve(nums, t)
        if solution is None:
            raise VerilensError(f"{problem} has no solution; a trace needs a solvable problem")
        tree = parse(solution, number=int)
        segments = chain_steps(tree)[:-1] if rng.random() < p_chain else []
        if p_final_slip and rng.random() < p_final_slip:  # no draw when off: older recipes reproduce
            claimed = _slip_claim(problem, Fraction(t), rng)
            while claimed == t:
                claimed = _slip_claim(problem, Fraction(t), rng)
            line = _attempt_line(solution, segments + [format_number(claimed)], t, valid=False)
            end = len(text) + 1 + line.rindex(" (")
            slips.append((end - len(format_number(claimed)), end))
            text += "\n" + line
        text += "\n" + _attempt_line(solution, segments + [str(t)], t, valid=True)
        final_expr = solution
    text += f"\nSo, the equation that equals {t} is {final_expr}. </think>"
    text += f"\n<answer> {final_expr} </answer>"
    return text, slips
