"""Synthetic chains of thought in the exact mode-collapsed format (PAPER.md section 2).

A trace is a few failed attempts (random expressions over the problem's numbers, with
near misses and deliberate arithmetic slips), then a correct one from the solver, the
closing "So, the equation ..." line and the <answer> block. The verdict of every
attempt follows `claimed == target` only, never the attempt's position, so a model
trained on these must compare its claimed value with the target to verify."""
from __future__ import annotations

import random
from fractions import Fraction

from .arith import evaluate_tree, parse
from .problems import Problem
from .solver import format_expr, solve

# How many failed attempts come before the correct one (weights for 0, 1, 2, ...).
ATTEMPT_WEIGHTS = [3, 8, 10, 10, 9, 7, 5, 3, 2]
# Operators of failed attempts: mostly + and -, as in the published traces.
OP_WEIGHTS = [0.35, 0.35, 0.15, 0.15]


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


def _failed_attempt(problem: Problem, rng: random.Random, p_slip: float, p_near: float, p_chain: float):
    """(line, claimed) of an attempt that does not reach the target (or, rarely, a slip
    that claims the target: then the verdict says it works, as in published traces)."""
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
        claimed = value
        if rng.random() < p_slip:  # an arithmetic slip; near misses and numbers of the problem
            r = rng.random()
            if r < 0.35:
                claimed = target + rng.choice([-1, 1])
            elif r < 0.6:
                claimed = Fraction(rng.choice(problem.nums))
            elif r < 0.65:
                claimed = target  # a wrong computation that claims the target
            else:
                claimed = value + rng.choice([-10, -5, -2, -1, 1, 2, 5, 10])
            claimed = Fraction(round(claimed))
        segments = segments + [format_number(claimed)]
        return expr, segments, claimed
    return None


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
) -> str:
    """The model's response to `prompt(problem)`: starts with " We have the numbers"
    (the prompt ends in "<think>") and ends with the <answer> line."""
    if not isinstance(rng, random.Random):
        rng = random.Random(rng)
    t = problem.target
    lines = [
        f" We have the numbers {_numbers_phrase(problem.nums)}. We need to use all of them to make "
        f"an equation that equals {t}. Let's try different combinations:"
    ]
    weights = ATTEMPT_WEIGHTS[: (max_failed + 1) if max_failed is not None else None]
    n_failed = rng.choices(range(len(weights)), weights=weights)[0]
    final_expr = None
    for _ in range(n_failed):
        att = _failed_attempt(problem, rng, p_slip, p_near, p_chain)
        if att is None:
            continue
        expr, segments, claimed = att
        if claimed == t:  # a slip that claims the target ends the search, wrongly
            lines.append(_attempt_line(expr, segments, t, valid=True))
            final_expr = expr
            break
        lines.append(_attempt_line(expr, segments, t, valid=False))
    if final_expr is None:
        nums = list(problem.nums)
        rng.shuffle(nums)  # a different solution each time, where there are several
        solution = solve(nums, t)
        if solution is None:
            raise ValueError(f"{problem} has no solution")
        tree = parse(solution, number=int)
        segments = chain_steps(tree)[:-1] if rng.random() < p_chain else []
        lines.append(_attempt_line(solution, segments + [str(t)], t, valid=True))
        final_expr = solution
    lines.append(f"So, the equation that equals {t} is {final_expr}. </think>")
    lines.append(f"<answer> {final_expr} </answer>")
    return "\n".join(lines)
