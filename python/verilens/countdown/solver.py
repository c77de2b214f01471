"""Exhaustive CountDown solver.

`solve` runs in the compiled core (csrc/countdown_solver.cpp); `solve_ref` is the
pure-Python reference with the same search order, so both return the same string.

Search order (both implementations follow it exactly): keep a list of (value, expr)
items; pick an ordered pair (i, j), i != j, of items; for op in "+", "-", "*", "/"
(skipping "+" and "*" when i > j, since they commute, and "/" by zero) replace the
pair by (items[i] op items[j]) appended after the remaining items in their order;
recurse until one item is left and compare it with the target exactly (rationals).
The first expression found is returned, printed with the fewest parentheses.
"""
from __future__ import annotations

from fractions import Fraction

OPS = "+-*/"
_PREC = {"+": 1, "-": 1, "*": 2, "/": 2}


def format_expr(tree) -> str:
    """Print an expression tree (int leaf or (op, left, right)) with minimal parentheses."""
    if not isinstance(tree, tuple):
        return str(tree)
    op, left, right = tree
    ls, rs = format_expr(left), format_expr(right)
    if isinstance(left, tuple) and _PREC[left[0]] < _PREC[op]:
        ls = f"({ls})"
    if isinstance(right, tuple) and (
        _PREC[right[0]] < _PREC[op] or (_PREC[right[0]] == _PREC[op] and op in "-/")
    ):
        rs = f"({rs})"
    return f"{ls} {op} {rs}"


def _search(items, target):
    if len(items) == 1:
        return items[0][1] if items[0][0] == target else None
    n = len(items)
    for i in range(n):
        for j in range(n):
            if i == j:
                continue
            (va, ea), (vb, eb) = items[i], items[j]
            rest = [items[k] for k in range(n) if k != i and k != j]
            for op in OPS:
                if op in "+*" and i > j:
                    continue
                if op == "/" and vb == 0:
                    continue
                v = va + vb if op == "+" else va - vb if op == "-" else va * vb if op == "*" else va / vb
                found = _search(rest + [(v, (op, ea, eb))], target)
                if found is not None:
                    return found
    return None


def solve_tree_ref(nums, target):
    """The expression tree of the first solution in search order, or None."""
    if not nums:
        return None
    return _search([(Fraction(n), int(n)) for n in nums], Fraction(target))


def solve_ref(nums, target) -> str | None:
    """Pure-Python reference solver: a solution string using every number once, or None."""
    tree = solve_tree_ref(list(nums), target)
    return None if tree is None else format_expr(tree)


def solve(nums, target) -> str | None:
    """A solution using every number exactly once (+ - * / and brackets), or None.

    Runs in the compiled core; exact: if an intermediate value would leave int64 it
    redoes the search with the arbitrary-precision reference."""
    nums = [int(n) for n in nums]
    try:
        return _core().countdown_solve(nums, int(target))
    except (ValueError, OverflowError, TypeError):  # int64 overflow (input or intermediate)
        return solve_ref(nums, target)


def solve_many(problems) -> list[str | None]:
    """`solve` for many (nums, target) pairs at once, in parallel in the compiled core."""
    problems = [([int(n) for n in nums], int(t)) for nums, t in problems]
    try:
        out = _core().countdown_solve_many([p[0] for p in problems], [p[1] for p in problems])
    except (OverflowError, TypeError):
        return [solve(*p) for p in problems]
    return [solve_ref(*p) if s == "!overflow" else s for s, p in zip(out, problems)]


def _core():
    from .. import _core as core  # the compiled extension; built by pip install

    return core
