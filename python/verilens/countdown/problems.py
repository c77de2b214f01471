"""CountDown problems: generation (every problem solvable) and loading the public set."""
from __future__ import annotations

import json
import random
import zlib
from dataclasses import dataclass
from pathlib import Path

from ..errors import VerilensError


@dataclass(frozen=True)
class Problem:
    nums: tuple[int, ...]
    target: int

    def __init__(self, nums, target):
        object.__setattr__(self, "nums", tuple(int(n) for n in nums))
        object.__setattr__(self, "target", int(target))

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
    if not 1 <= min_count <= max_count:
        raise VerilensError(f"need 1 <= min_count <= max_count, got {min_count}, {max_count}")
    if split not in (None, "train", "test"):
        raise VerilensError(f"split must be None, 'train' or 'test', got {split!r}")
    if max_number < 1 or max_target < 1:
        raise VerilensError(f"need max_number >= 1 and max_target >= 1, got {max_number}, {max_target}")
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
    text = path.read_text()
    if suffix == ".jsonl":
        rows = []
        for lineno, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                rows.append(_BadRow(f"line {lineno}: not JSON"))
        return rows
    if suffix == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise VerilensError(f"{path}: not valid JSON ({e})") from e
        if not isinstance(data, (dict, list)):
            raise VerilensError(f"{path}: expected a list of rows or a column object, got {type(data).__name__}")
        if isinstance(data, dict):  # {"nums": [...], "target": [...]} column layout
            if "nums" in data and "target" in data:
                return [{"nums": a, "target": b} for a, b in zip(data["nums"], data["target"])]
            raise VerilensError(f"{path}: JSON object without 'nums' and 'target'")
        return data
    raise VerilensError(f"{path}: unsupported file type {suffix!r} (use .parquet, .json or .jsonl)")


class _BadRow:
    def __init__(self, why):
        self.why = why


def load_problems(path, on_bad_row: str = "skip", limit: int | None = None) -> list[Problem]:
    """Read problems (fields `nums`, `target`) from a local parquet, JSON or JSONL file,
    such as the public Countdown-Tasks-3to4 set.

    Rows that are not problems are reported by row number (1-based) and skipped
    (`on_bad_row="skip"`, a warning) or stop the load (`on_bad_row="error"`)."""
    import warnings

    if on_bad_row not in ("skip", "error"):
        raise VerilensError("on_bad_row must be 'skip' or 'error'")
    path = Path(path)
    if not path.exists():
        raise VerilensError(f"problems file not found: {path}")
    rows = _rows_from_file(path)
    problems, bad = [], []
    for i, row in enumerate(rows, 1):
        why = None
        if isinstance(row, _BadRow):
            why = row.why
        elif not isinstance(row, dict) or "nums" not in row or "target" not in row:
            why = "missing 'nums' or 'target'"
        else:
            try:
                if isinstance(row["nums"], (str, bytes, dict)):
                    raise TypeError  # "12" would otherwise read as [1, 2]
                nums = [int(x) for x in row["nums"]]
                target = int(row["target"])
                if any(float(x) != int(x) for x in row["nums"]) or float(row["target"]) != target:
                    raise ValueError
                if not nums:
                    raise ValueError
            except (TypeError, ValueError):
                why = f"bad values nums={row.get('nums')!r} target={row.get('target')!r}"
        if why is not None:
            bad.append(f"row {i}: {why}")
            continue
        problems.append(Problem(nums, target))
        if limit is not None and len(problems) >= limit:
            break
    if bad:
        msg = f"{path}: {len(bad)} bad row(s): " + "; ".join(bad[:10]) + (" ..." if len(bad) > 10 else "")
        if on_bad_row == "error":
            raise VerilensError(msg)
        warnings.warn(msg + " (skipped)", stacklevel=2)
    return problems
