"""A safe parser for the arithmetic CountDown text uses: numbers, + - * / // and brackets.

Never calls eval. One grammar, two number systems: Python's own int/float semantics
and exact Fractions (for parsing traces and checking their arithmetic). The reward does
not use this parser: it must accept exactly what TinyZero's eval accepts, so it parses
with Python's own parser (reward.py)."""
from __future__ import annotations

import re
from fractions import Fraction

from .problems import MAX_DIGITS, MAX_NUMBERS

_TOKEN_RE = re.compile(r"\s*(?:(\d+\.\d*|\.\d+|\d+)|(//|[-+*/()]))")
MAX_DEPTH = 100  # CPython's parser also refuses deeply nested brackets
# The longest number literal read. No value a problem's numbers can make is longer (their
# product has at most MAX_NUMBERS * MAX_DIGITS digits; the rest is room for decimals), and
# the cap keeps the exact arithmetic bounded: a 10,000-digit literal would cost quadratic
# time to convert, and Python refuses more than 4300 digits anyway.
MAX_LITERAL_DIGITS = MAX_NUMBERS * MAX_DIGITS + 20


class ArithError(ValueError):
    """Not a well-formed expression of the whitelisted grammar."""


def tokenize(s: str):
    pos, out, s = 0, [], s.rstrip()
    while pos < len(s):
        m = _TOKEN_RE.match(s, pos)
        if not m:
            raise ArithError(f"unexpected character at {pos}")
        num, op = m.groups()
        if num is not None:
            if len(num) > MAX_LITERAL_DIGITS + 1:  # + 1: the decimal point
                raise ArithError(f"a number of more than {MAX_LITERAL_DIGITS} digits")
            if "." not in num and len(num) > 1 and num[0] == "0" and num.strip("0"):
                raise ArithError("leading zeros")  # a SyntaxError in Python 3
            out.append(("num", num))
        else:
            out.append(("op", op))
        pos = m.end()
    return out


def _python_number(text):
    return float(text) if "." in text else int(text)


class _Parser:
    """expr := term (('+'|'-') term)*; term := unary (('*'|'/'|'//') unary)*;
    unary := ('+'|'-') unary | atom; atom := number | '(' expr ')'.

    Builds a tree: a number leaf, ("neg", x) or (op, left, right)."""

    def __init__(self, tokens, number):
        self.t, self.i, self.depth, self.number = tokens, 0, 0, number

    def peek(self):
        return self.t[self.i] if self.i < len(self.t) else (None, None)

    def take(self):
        tok = self.peek()
        self.i += 1
        return tok

    def enter(self):
        self.depth += 1
        if self.depth > MAX_DEPTH:
            raise ArithError("too deeply nested")

    def expr(self):
        v = self.term()
        while self.peek() in (("op", "+"), ("op", "-")):
            v = (self.take()[1], v, self.term())
        return v

    def term(self):
        v = self.unary()
        while self.peek() in (("op", "*"), ("op", "/"), ("op", "//")):
            v = (self.take()[1], v, self.unary())
        return v

    def unary(self):
        tok = self.peek()
        if tok in (("op", "+"), ("op", "-")):
            self.enter()
            self.take()
            v = self.unary()
            self.depth -= 1
            return v if tok[1] == "+" else ("neg", v)
        return self.atom()

    def atom(self):
        kind, val = self.take()
        if kind == "num":
            return self.number(val)
        if (kind, val) == ("op", "("):
            self.enter()
            v = self.expr()
            if self.take() != ("op", ")"):
                raise ArithError("unbalanced brackets")
            self.depth -= 1
            return v
        raise ArithError("expected a number or '('")


def parse(s: str, number=Fraction):
    """Parse `s` into a tree; raises ArithError."""
    tokens = tokenize(s)
    if not tokens:
        raise ArithError("empty expression")
    p = _Parser(tokens, number)
    tree = p.expr()
    if p.i != len(tokens):
        raise ArithError("trailing tokens")
    return tree


def evaluate_tree(tree):
    """Evaluate a tree; raises ZeroDivisionError / OverflowError like Python would."""
    if not isinstance(tree, tuple):
        return tree
    if tree[0] == "neg":
        return -evaluate_tree(tree[1])
    op, a, b = tree[0], evaluate_tree(tree[1]), evaluate_tree(tree[2])
    if op == "+":
        return a + b
    if op == "-":
        return a - b
    if op == "*":
        return a * b
    if b == 0:
        raise ZeroDivisionError
    return a / b if op == "/" else a // b


def evaluate(s: str, exact: bool = True):
    """The value of `s` (Fraction if exact, else Python int/float semantics), or None if
    it is not a valid expression or divides by zero."""
    try:
        return evaluate_tree(parse(s, Fraction if exact else _python_number))
    except (ValueError, ZeroDivisionError, OverflowError, RecursionError):  # ValueError: also ArithError;
        return None  # RecursionError: a chain "1 + 1 + ..." of ~1000 terms is a tree that deep
