"""TinyZero's CountDown reward (PAPER.md section 1), made safe for hostile text.

Identical scores to TinyZero's `compute_score` on every input that its `eval` can
handle, with two deliberate differences: nothing is ever passed to `eval` (the answer is
parsed by Python's own parser, `ast.parse`, which executes nothing, so exactly the texts
`eval` accepts are accepted: same literals, whitespace, nesting limits; the tree is then
evaluated without recursion, with Python's own int/float operators), and `**` is
rejected (format score 0.1) so `9**9**9**9` cannot hang the process.

Time is linear in the text's length for any text: the answer is found with plain string
searches (TinyZero's lazy regex retries from every "<answer>" of a line without a closing
tag: quadratic), an answer whose count of numbers differs from the problem's is refused
before any number is converted, and a number of more than MAX_INT_DIGITS digits is never
converted (Python's default limit, which TinyZero's int() meets with a ValueError: the same
score, independent of sys.set_int_max_str_digits). With the problem's few numbers fixed,
what remains for Python's parser is operators, brackets and spaces, which it reads in
linear time and nests at most 200 deep.
"""
from __future__ import annotations

import ast
import itertools
import operator
import re

FORMAT_SCORE = 0.1
SCORE = 1.0
MAX_INT_DIGITS = 4300
_DIGITS_RE = re.compile(r"\d+")
_ALLOWED_RE = re.compile(r"^[\d+\-*/().\s]+$")


def extract_solution(solution_str: str) -> str | None:
    """The last <answer>...</answer> on the last line of the assistant's text, stripped."""
    if "Assistant:" in solution_str:
        text = solution_str.split("Assistant:", 1)[1]
    elif "<|im_start|>assistant" in solution_str:
        text = solution_str.split("<|im_start|>assistant", 1)[1]
    else:
        return None
    line = text[text.rfind("\n") + 1 :]
    # the last of the non-overlapping, leftmost, shortest matches of <answer>(.*?)</answer>
    answer, pos = None, 0
    while (i := line.find("<answer>", pos)) >= 0 and (j := line.find("</answer>", i + 8)) >= 0:
        answer, pos = line[i + 8 : j], j + 9
    return None if answer is None else answer.strip()


def validate_equation(equation: str, nums) -> bool:
    """The integers in the equation are exactly the given numbers, as a multiset."""
    nums = list(nums)
    # one more than the problem's count is enough to refuse: no list of millions of numbers
    found = [m.group() for m in itertools.islice(_DIGITS_RE.finditer(equation), len(nums) + 1)]
    if len(found) != len(nums) or any(len(n) > MAX_INT_DIGITS for n in found):
        return False  # TinyZero: unequal lists; int() of over 4300 digits raises, False
    try:
        return sorted(int(n) for n in found) == sorted(int(n) for n in nums)
    except ValueError:
        return False


_BINOPS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul,
           ast.Div: operator.truediv, ast.FloorDiv: operator.floordiv}
_UNOPS = {ast.UAdd: operator.pos, ast.USub: operator.neg}


def _evaluate_ast(node):
    """Post-order evaluation with an explicit stack (CPython accepts ~3000 levels)."""
    stack, values = [(node, False)], []
    while stack:
        n, ready = stack.pop()
        if isinstance(n, ast.Constant) and type(n.value) in (int, float):
            values.append(n.value)
        elif isinstance(n, ast.UnaryOp) and type(n.op) in _UNOPS:
            if ready:
                values.append(_UNOPS[type(n.op)](values.pop()))
            else:
                stack += [(n, True), (n.operand, False)]
        elif isinstance(n, ast.BinOp) and type(n.op) in _BINOPS:
            if ready:
                b = values.pop()
                values.append(_BINOPS[type(n.op)](values.pop(), b))
            else:
                stack += [(n, True), (n.right, False), (n.left, False)]
        else:  # tuples, calls, Ellipsis, **: not a number for TinyZero either
            raise ValueError("not an arithmetic expression")
    return values[0]


def evaluate_equation(equation: str):
    """The value of a whitelisted arithmetic expression with Python's int/float semantics,
    or None if it is not one: bad characters, `**`, a syntax error or division by zero."""
    if not _ALLOWED_RE.match(equation) or "**" in equation:
        return None
    try:
        # eval() strips leading spaces and tabs of a source string; ast.parse does not
        return _evaluate_ast(ast.parse(equation.lstrip(" \t"), mode="eval").body)
    except Exception:  # SyntaxError, ZeroDivisionError, OverflowError, RecursionError, ...
        return None


def reward(solution_str: str, nums, target, format_score: float = FORMAT_SCORE, score: float = SCORE) -> float:
    """0.0 without an answer; `format_score` (0.1) for a wrong one; `score` (1.0) if it
    uses the numbers exactly once and equals the target within 1e-5."""
    if not isinstance(solution_str, str):
        return 0.0
    equation = extract_solution(solution_str)
    if equation is None:
        return 0.0
    if not validate_equation(equation, nums):
        return format_score
    value = evaluate_equation(equation)
    if value is None:
        return format_score
    try:
        return score if abs(value - target) < 1e-5 else format_score
    except OverflowError:
        return format_score
