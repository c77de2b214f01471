"""Parsing the mode-collapsed chain of thought into attempts (PAPER.md section 2).

    - 90 - 67 - 60 + 12 = -15 (not 49)
    - 68 - 11 + 5 = 57 + 5 = 62 (this works)

Each line that starts with a "- " bullet and contains "=" is an attempt. Malformed
lines are skipped; `parse_trace` never raises on arbitrary text, and its time is linear in
the text's length: a line longer than MAX_LINE_CHARS is not read as an attempt, and no
number longer than arith.MAX_LITERAL_DIGITS is converted."""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from fractions import Fraction

from .arith import MAX_LITERAL_DIGITS, evaluate

# A line longer than this is not an attempt. The longest attempt line the task can make
# (MAX_NUMBERS numbers of MAX_DIGITS digits, chained step by step, as write_trace writes
# them) is under 1,500 characters; a longer line is a degenerate generation (one character
# repeated, a runaway number), and reading it as arithmetic would cost time for nothing.
MAX_LINE_CHARS = 2000

_BULLET_RE = re.compile(r"^[ \t]*[-*•][ \t]+")
# Candidate lines (a bullet at the start), found by the regex engine in one pass: a
# Python loop over every line costs a microsecond a line, 13 s on ten million newlines.
_BULLET_LINE_RE = re.compile(r"^[ \t]*[-*•][ \t][^\n]*", re.M)
# The claimed value right before the verdict: an integer, a decimal or a fraction a/b, at
# the end of the text. Matched on the reversed text from its start: a search for the
# pattern anchored at the end ("...\s*$") would retry from every digit of a long run of
# digits (quadratic time).
_CLAIM_REV_RE = re.compile(r"\s*((?:\d+\s*/\s*)?(?:\d+\.)?\d+\s?-?)")


@dataclass
class Attempt:
    """One attempt line. Offsets are character offsets into the parsed text."""

    expression: str
    segments: list[str]
    claimed: float | None
    verdict: str | None  # "valid" for "(this works)", "invalid" for "(not ...", else None
    arithmetic_ok: bool
    hits_target: bool
    marker: int | None  # offset of the " (" that opens the verdict
    value: float | None = None  # the expression's true value
    line: str = ""
    start: int = 0  # offset of the line
    verdict_text: str | None = field(default=None, repr=False)

    @property
    def is_correct(self) -> bool:
        """The arithmetic is right and reaches the target."""
        return self.arithmetic_ok and self.hits_target

    def uses_numbers(self, nums) -> bool:
        """The expression uses exactly the problem's numbers, each once."""
        return sorted(int(n) for n in re.findall(r"\d+", self.expression)) == sorted(int(n) for n in nums)


def _claim(text: str) -> str | None:
    """The claimed value at the end of `text` (an integer, a decimal or a fraction a/b,
    maybe signed), or None."""
    m = _CLAIM_REV_RE.match(text[::-1])
    return m.group(1)[::-1] if m else None


def _number(text: str) -> Fraction | None:
    text = text.replace(" ", "")
    if sum(c.isdigit() for c in text) > MAX_LITERAL_DIGITS:
        return None
    try:
        if "/" in text:
            a, b = text.split("/")
            return Fraction(a) / Fraction(b)
        return Fraction(text)
    except (ValueError, ZeroDivisionError):
        return None


def _close(seg_text: str, seg_value: Fraction, value: Fraction) -> bool:
    """A segment matches the true value exactly, or to the decimals it was written with."""
    if seg_value == value:
        return True
    m = re.fullmatch(r"\s*-?\d+\.(\d+)\s*", seg_text)
    return bool(m) and abs(seg_value - value) <= Fraction(1, 2 * 10 ** len(m.group(1)))


def _as_number(x: Fraction | None):
    if x is None:
        return None
    return int(x) if x.denominator == 1 else float(x)


def _parse_line(line: str, start: int, target) -> Attempt | None:
    bullet = _BULLET_RE.match(line)
    if not bullet or "=" not in line:
        return None
    body_start = bullet.end()
    body = line[body_start:]
    parts = body.split("=")
    expression = parts[0].strip()
    if not expression:
        return None
    last = parts[-1]
    # the verdict opens with " (" after the last "="
    paren = last.find("(")
    marker = None
    verdict = verdict_text = None
    claim_text = last
    if paren >= 0:
        claim_text = last[:paren]
        rel = body_start + len(body) - len(last) + paren  # offset of "(" within the line
        marker = start + rel - 1 if rel > 0 and line[rel - 1] == " " else start + rel
        verdict_text = last[paren + 1 :].strip()
        low = verdict_text.lower()
        if low.startswith("this works"):
            verdict = "valid"
        elif low.startswith("not"):
            verdict = "invalid"
    segments = [p.strip() for p in parts[1:-1]] + [claim_text.strip()]
    claim = _claim(claim_text)
    claimed = _number(claim) if claim is not None else None
    value = evaluate(expression)
    arithmetic_ok = value is not None and all(
        (v := evaluate(s)) is not None and _close(s, v, value) for s in segments
    )
    try:
        hits = claimed is not None and claimed == Fraction(target)
    except (TypeError, ValueError, ArithmeticError):  # Fraction(inf) is an OverflowError
        hits = False
    return Attempt(
        expression=expression,
        segments=segments,
        claimed=_as_number(claimed),
        verdict=verdict,
        arithmetic_ok=bool(arithmetic_ok),
        hits_target=bool(hits),
        marker=marker,
        value=_as_number(value),
        line=line,
        start=start,
        verdict_text=verdict_text,
    )


def parse_trace(text, target) -> list[Attempt]:
    """All attempts in `text`, in order. Never raises; non-attempt lines are skipped."""
    if not isinstance(text, str):
        return []
    attempts = []
    for m in _BULLET_LINE_RE.finditer(text):
        line = m.group()
        if len(line) > MAX_LINE_CHARS or "=" not in line:
            continue
        try:
            a = _parse_line(line, m.start(), target)
        except Exception:  # defensive: arbitrary text must never raise
            a = None
        if a is not None:
            attempts.append(a)
    return attempts


def char_to_token(tokenizer, text: str, char_offset: int, add_special_tokens: bool = False) -> int:
    """Index of the token of `tokenizer.encode(text)` that covers character `char_offset`
    (for the marker " (", the " (" token). Works for fast tokenizers (offset mapping) and
    slow ones (by decoding prefixes)."""
    if not 0 <= char_offset < len(text):
        raise IndexError(f"char offset {char_offset} outside text of length {len(text)}")
    try:
        enc = tokenizer(text, return_offsets_mapping=True, add_special_tokens=add_special_tokens)
        offsets = enc["offset_mapping"]
        for i, (s, e) in enumerate(offsets):
            if e > char_offset and e > s:
                return i
    except (NotImplementedError, TypeError, KeyError):
        pass
    ids = tokenizer.encode(text, add_special_tokens=add_special_tokens)
    lo, hi = 0, len(ids) - 1
    while lo < hi:  # first i with len(decode(ids[:i+1])) > char_offset
        mid = (lo + hi) // 2
        if len(tokenizer.decode(ids[: mid + 1])) > char_offset:
            hi = mid
        else:
            lo = mid + 1
    return lo
