"""CountDown problems: generation (every problem solvable) and loading the public set."""
from __future__ import annotations

import json
import math
import operator
import random
import zlib
from dataclasses import dataclass
from pathlib import Path

from ..errors import VerilensError


# The task's limits. The public set has 3-4 numbers below 100 and targets below 1000; the
# limits leave room for harder problems while keeping every cost bounded: the solver's
# search grows with the count of numbers (6 unsolvable numbers: seconds in the compiled
# core, far longer once values leave int64), and the trace parser refuses literals longer
# than any value a problem's numbers can produce (trace.MAX_LITERAL_DIGITS).
MAX_NUMBERS = 6
MAX_DIGITS = 30


def _describe(x) -> str:
    """A short description of a value for an error message (repr of a 10**5000 int raises)."""
    if isinstance(x, int) and not isinstance(x, bool) and abs(x) >= 10**MAX_DIGITS:
        return f"an integer of more than {MAX_DIGITS} digits"
    text = repr(x)
    return text if len(text) <= 60 else text[:57] + "..."


def _task_integer(x, what: str) -> int:
    """`x` as an int, if it is an integer of at most MAX_DIGITS digits; else VerilensError.
    Floats, strings and booleans are refused, never rounded or read as 1/0."""
    if isinstance(x, bool):
        raise VerilensError(f"{what} must be an integer, got the boolean {x}")
    try:
        v = operator.index(x)
    except TypeError:
        raise VerilensError(f"{what} must be an integer, got {_describe(x)}") from None
    if abs(v) >= 10**MAX_DIGITS:
        raise VerilensError(f"{what} has more than {MAX_DIGITS} digits; CountDown numbers are at most "
                            f"{MAX_DIGITS} digits long")
    return v


@dataclass(frozen=True)
class Problem:
    """`nums`: 1 to MAX_NUMBERS integers; `target`: an integer; all of at most MAX_DIGITS digits."""

    nums: tuple[int, ...]
    target: int

    def __init__(self, nums, target):
        if isinstance(nums, (str, bytes, dict)) or not hasattr(nums, "__iter__"):
            raise VerilensError(f"nums must be a list of integers, got {_describe(nums)}")
        nums = list(nums)
        if not 1 <= len(nums) <= MAX_NUMBERS:
            raise VerilensError(f"a problem has 1 to {MAX_NUMBERS} numbers, got {len(nums)}")
        object.__setattr__(self, "nums", tuple(_task_integer(n, "each number") for n in nums))
        object.__setattr__(self, "target", _task_integer(target, "the target"))

    def to_dict(self) -> dict:
        return {"nums": list(self.nums), "target": self.target}


def generate_problems(
    n: int,
    seed: int = 0,
    min_count: int = 3,
    max_count: int = 4,
    max_number: int = 99,
    max_target: int = 99,
    split: str | None = None,
) -> list[Problem]:
    """`n` solvable problems, deterministic for `seed`.

    Numbers are uniform in [1, max_number], targets uniform in [1, max_target], with 3 or
    4 numbers: close to the public Countdown-Tasks-3to4 set. Draws without a solution
    are rejected (checked by the compiled solver). `split` ("train" or "test") keeps
    only problems of that side of `problem_split`."""
    from .solver import solve_many

    if n < 0:
        raise VerilensError(f"n must be >= 0, got {n}")
    if not 1 <= min_count <= max_count <= MAX_NUMBERS:
        raise VerilensError(f"need 1 <= min_count <= max_count <= {MAX_NUMBERS}, got {min_count}, {max_count}")
    if split not in (None, "train", "test"):
        raise VerilensError(f"split must be None, 'train' or 'test', got {split!r}")
    if not (1 <= max_number < 10**MAX_DIGITS and 1 <= max_target < 10**MAX_DIGITS):
        raise VerilensError(f"need 1 <= max_number, max_target < 10**{MAX_DIGITS}, got {max_number}, {max_target}")
    rng = random.Random(seed)
    out: list[Problem] = []
    seen: set[Problem] = set()
    draws = 0
    while len(out) < n:
        # draw a chunk, solve it in parallel in the compiled core, keep in draw order
        chunk = []
        size = max(64, 2 * (n - len(out)))
        for _ in range(size):
            k = rng.randint(min_count, max_count)
            p = Problem([rng.randint(1, max_number) for _ in range(k)], rng.randint(1, max_target))
            if p not in seen and (split is None or problem_split(p) == split):
                chunk.append(p)
        draws += size  # count every draw: filtered ones too, or a split/range with no
        # admissible problem would loop forever
        if draws > 1000 * (n + 10):
            raise VerilensError("could not draw enough solvable problems; widen the ranges")
        for p, sol in zip(chunk, solve_many([(p.nums, p.target) for p in chunk])):
            if sol is not None and p not in seen and len(out) < n:
                seen.add(p)
                out.append(p)
    return out


def problem_split(problem: Problem) -> str:
    """"test" for a fixed 10 % of all problems (by a stable hash), else "train".

    countdown-tiny trains only on "train" problems, so `verilens eval` on "test"
    problems measures problems never seen in training."""
    key = ",".join(map(str, problem.nums)) + ":" + str(problem.target)
    return "test" if zlib.crc32(key.encode()) % 10 == 0 else "train"


class _LongNumber:
    """A JSON number of more than MAX_DIGITS digits, kept as text: read as an int, a
    5000-digit number would raise in json itself and a 400-digit one would overflow float."""

    def __init__(self, text):
        self.text = text

    def __repr__(self):
        return f"a number of {len(self.text.lstrip('-'))} digits"


def _json_int(text: str):
    return int(text) if len(text.lstrip("-")) <= MAX_DIGITS else _LongNumber(text)


def _json_loads(text: str):
    # NaN and Infinity are not JSON (Python's json reads them as floats): a bad value, not a number
    return json.loads(text, parse_int=_json_int, parse_constant=_NotJSONNumber)


class _NotJSONNumber:
    def __init__(self, name):
        self.name = name

    def __repr__(self):
        return self.name


def _rows_from_file(path: Path):
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        try:
            import pyarrow.parquet as pq
        except ImportError as e:
            raise VerilensError("reading parquet needs pyarrow: pip install pyarrow") from e
        try:
            return pq.read_table(path).to_pylist()
        except Exception as e:  # pyarrow.lib.ArrowInvalid and friends
            raise VerilensError(f"{path}: cannot read parquet ({e})") from e
    if suffix not in (".json", ".jsonl"):
        raise VerilensError(f"{path}: unsupported file type {suffix!r} (use .parquet, .json or .jsonl)")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise VerilensError(f"cannot read problems file {path}: {e}") from e
    if suffix == ".jsonl":
        rows = []
        for lineno, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                rows.append(_json_loads(line))
            except (ValueError, RecursionError):  # JSONDecodeError is a ValueError; [[[[... is a RecursionError
                rows.append(_BadRow(f"line {lineno}: not JSON"))
        return rows
    if not text.strip():
        raise VerilensError(f"{path} is empty; a problems file holds rows with 'nums' (a list of integers) and "
                            "'target'")
    try:
        data = _json_loads(text)
    except (ValueError, RecursionError) as e:
        raise VerilensError(f"{path}: not valid JSON ({str(e)[:200]})") from e
    if not isinstance(data, (dict, list)):
        raise VerilensError(f"{path}: expected a list of rows or a column object, got {type(data).__name__}")
    if isinstance(data, dict):  # {"nums": [...], "target": [...]} column layout
        if "nums" in data and "target" in data and isinstance(data["nums"], list) and isinstance(data["target"], list):
            return [{"nums": a, "target": b} for a, b in zip(data["nums"], data["target"])]
        raise VerilensError(f"{path}: JSON object without 'nums' and 'target' lists")
    return data


class _BadRow:
    def __init__(self, why):
        self.why = why


def _row_value(x, what: str) -> int:
    """A number of a problems file as an int: an integer (12) or an integral float (12.0, as
    parquet and pandas write integer columns with gaps); never a boolean, text, NaN or inf."""
    if isinstance(x, float):
        if not math.isfinite(x) or x != int(x):
            raise VerilensError(f"{what} must be an integer, got {x!r}")
        x = int(x)
    return _task_integer(x, what)


def load_problems(path, on_bad_row: str = "skip", limit: int | None = None) -> list[Problem]:
    """Read problems (fields `nums`, `target`) from a local parquet, JSON or JSONL file,
    such as the public Countdown-Tasks-3to4 set.

    Rows that are not problems (missing fields, booleans, text, NaN/Infinity, non-integers,
    numbers of more than MAX_DIGITS digits, more than MAX_NUMBERS numbers) are reported by
    row number (1-based) and skipped (`on_bad_row="skip"`, a warning) or stop the load
    (`on_bad_row="error"`). A file without a single problem is an error."""
    import warnings

    if on_bad_row not in ("skip", "error"):
        raise VerilensError("on_bad_row must be 'skip' or 'error'")
    path = Path(path)
    if not path.exists():
        raise VerilensError(f"problems file not found: {path}")
    if not path.is_file():
        raise VerilensError(f"{path} is not a file; pass a .parquet, .json or .jsonl problems file")
    rows = _rows_from_file(path)
    problems, bad = [], []
    for i, row in enumerate(rows, 1):
        why = None
        if isinstance(row, _BadRow):
            why = row.why
        elif not isinstance(row, dict) or "nums" not in row or "target" not in row:
            why = "missing 'nums' or 'target'"
        elif not isinstance(row["nums"], (list, tuple)):  # "12" would otherwise read as [1, 2]
            why = f"nums must be a list of integers, got {_describe(row['nums'])}"
        else:
            try:
                problem = Problem([_row_value(x, "each number") for x in row["nums"]],
                                  _row_value(row["target"], "the target"))
            except VerilensError as e:
                why = str(e)
        if why is not None:
            bad.append(f"row {i}: {why}")
            continue
        problems.append(problem)
        if limit is not None and len(problems) >= limit:
            break
    if bad:
        msg = f"{path}: {len(bad)} bad row(s): " + "; ".join(bad[:10]) + (" ..." if len(bad) > 10 else "")
        if on_bad_row == "error" or not problems:
            raise VerilensError(msg + ("" if problems else "; no usable problem left: fix the file"))
        warnings.warn(msg + " (skipped)", stacklevel=2)
    if not problems:
        raise VerilensError(f"{path} holds no problems; each row needs 'nums' (a list of integers) and 'target'")
    return problems
