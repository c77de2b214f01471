"""The compiled CountDown solver against the pure-Python reference, problem generation
and problem loading."""
import ast
import json
import random
import re
import warnings
from collections import Counter
from fractions import Fraction
from math import prod

import pytest

from verilens import _core
from verilens.countdown.problems import Problem, generate_problems, load_problems, problem_split
from verilens.countdown.solver import solve, solve_many, solve_ref
from verilens.errors import VerilensError


def exact_value(expr: str) -> Fraction:
    """Value of a solver answer with exact rationals (independent of the package)."""
    ops = {ast.Add: lambda a, b: a + b, ast.Sub: lambda a, b: a - b,
           ast.Mult: lambda a, b: a * b, ast.Div: lambda a, b: a / b}

    def ev(node):
        if isinstance(node, ast.Constant) and type(node.value) is int:
            return Fraction(node.value)
        if isinstance(node, ast.BinOp) and type(node.op) in ops:
            return ops[type(node.op)](ev(node.left), ev(node.right))
        raise AssertionError(f"unexpected node {ast.dump(node)} in {expr!r}")

    return ev(ast.parse(expr, mode="eval").body)


def assert_solution(expr, nums, target):
    assert isinstance(expr, str)
    assert Counter(int(x) for x in re.findall(r"\d+", expr)) == Counter(nums), (expr, nums)
    assert exact_value(expr) == target, (expr, nums, target)


def unreachable_target(nums):
    # no +-*/ expression over positive integers can exceed prod(n + 1)
    return prod(n + 1 for n in nums) + 1


def random_problems(seed, count, k_range, hi_choices):
    rng = random.Random(seed)
    out = []
    for _ in range(count):
        k = rng.randint(*k_range)
        hi = rng.choice(hi_choices)
        nums = [rng.randint(1, hi) for _ in range(k)]
        r = rng.random()
        if r < 0.15:
            target = unreachable_target(nums)
        elif r < 0.3:
            target = rng.randint(-hi, 0)
        else:
            target = rng.randint(1, max(2, 2 * hi))
        out.append((nums, target))
    return out


# --------------------------------------------------------------------------- solve


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_compiled_equals_reference_1_to_4_numbers(seed):
    problems = random_problems(1000 + seed, 120, (1, 4), [3, 10, 30, 99, 1000])
    n_found = n_none = 0
    for nums, target in problems:
        got, ref = solve(nums, target), solve_ref(nums, target)
        assert got == ref, (nums, target)
        if got is None:
            n_none += 1
        else:
            n_found += 1
            assert_solution(got, nums, target)
    # the draw covers both outcomes, many times each
    assert n_found >= 20 and n_none >= 20, (n_found, n_none)


def test_compiled_equals_reference_5_numbers():
    rng = random.Random(5)
    problems = []
    for _ in range(4):  # solvable: a value of a random expression over the numbers
        nums = [rng.randint(1, 12) for _ in range(5)]
        problems.append((nums, sum(nums[:3]) - nums[3] + nums[4]))
    problems.append(([rng.randint(1, 99) for _ in range(5)], rng.randint(1, 200)))
    for _ in range(2):  # unsolvable: a full search in both
        nums = [rng.randint(1, 9) for _ in range(5)]
        problems.append((nums, unreachable_target(nums)))
    for nums, target in problems:
        got, ref = solve(nums, target), solve_ref(nums, target)
        assert got == ref, (nums, target)
        if target <= 200:
            assert_solution(got, nums, target)
        else:
            assert got is None


def test_small_known_cases():
    assert solve([2, 2], 5) is None and solve_ref([2, 2], 5) is None  # 4, 0, 1, 4 only
    assert solve([], 0) is None and solve_ref([], 0) is None
    assert solve([7], 7) == solve_ref([7], 7) == "7"
    assert solve([7], 8) is None
    for nums, target in [([4, 2], 2), ([3, 6], 2), ([1, 2, 3], 0), ([5, 5, 5, 5], 26), ([8, 3, 8, 3], 24)]:
        got = solve(nums, target)
        assert got == solve_ref(nums, target)
        assert_solution(got, nums, target)


def test_solution_needs_fractions():
    # 8 / (3 - 8 / 3) = 24: only reachable through a non-integer intermediate
    got = solve([8, 3, 8, 3], 24)
    assert got == solve_ref([8, 3, 8, 3], 24)
    assert_solution(got, [8, 3, 8, 3], 24)
    # the only way: 8 / (3 - 8/3); no integer-only expression reaches 24
    assert "/" in got


def test_solve_many_agrees_with_solve():
    problems = random_problems(77, 150, (1, 4), [5, 20, 99])
    problems += [([4 * 10**18, 4 * 10**18, 3], 3), ([10**19, 2], 10**19 + 2), ([2, 2], 5)]
    many = solve_many(problems)
    assert len(many) == len(problems)
    assert many == [solve(n, t) for n, t in problems]
    assert solve_many([]) == []
    # inputs as Problems' tuples work too
    ps = generate_problems(20, seed=3)
    assert solve_many([(p.nums, p.target) for p in ps]) == [solve_ref(p.nums, p.target) for p in ps]


def test_int64_overflow_falls_back_to_reference():
    nums, target = [4 * 10**18, 4 * 10**18, 3], 3
    # the compiled search itself overflows here (4e18 + 4e18 fits, times 3 does not) ...
    with pytest.raises(ValueError):
        _core.countdown_solve(nums, target)
    # ... and the public function redoes it exactly
    got = solve(nums, target)
    assert got == solve_ref(nums, target)
    assert_solution(got, nums, target)
    assert solve_many([(nums, target)]) == [got]


@pytest.mark.parametrize("nums,target", [
    ([10**18, 10**18, 10**18], 3 * 10**18),
    ([10**18, 10**18], 10**36),  # target and product beyond int64
    ([10**19, 7], 10**19 - 7),  # an input beyond int64
    ([2**62, 4], 2**64),
    ([10**18, 3], 10**18 + 4),  # unsolvable
])
def test_huge_numbers_match_reference(nums, target):
    got = solve(nums, target)
    assert got == solve_ref(nums, target)
    if got is not None:
        assert_solution(got, nums, target)
    assert solve_many([(nums, target)]) == [got]


# --------------------------------------------------------------------------- generate


def test_generate_is_deterministic_per_seed():
    a = generate_problems(40, seed=11)
    assert a == generate_problems(40, seed=11)
    assert a != generate_problems(40, seed=12)
    assert all(isinstance(p, Problem) for p in a)
    assert generate_problems(0, seed=11) == []


def test_generated_problems_are_solvable_and_in_range():
    ps = generate_problems(120, seed=4, min_count=2, max_count=5, max_number=20, max_target=50)
    assert len(ps) == 120
    assert len(set(ps)) == 120  # no duplicates
    assert Counter(len(p.nums) for p in ps).keys() == {2, 3, 4, 5}
    for p in ps:
        assert 2 <= len(p.nums) <= 5
        assert all(1 <= n <= 20 for n in p.nums)
        assert 1 <= p.target <= 50
    for p in ps:
        if len(p.nums) <= 4:  # the reference is slow on 5 numbers: check those compiled
            sol = solve_ref(p.nums, p.target)
        else:
            sol = solve(p.nums, p.target)
        assert sol is not None, p
        assert_solution(sol, p.nums, p.target)


def test_default_generation_is_3_to_4_numbers_below_100():
    ps = generate_problems(200, seed=0)
    assert {len(p.nums) for p in ps} == {3, 4}
    assert all(1 <= n <= 99 for p in ps for n in p.nums)
    assert all(1 <= p.target <= 99 for p in ps)
    assert all(s is not None for s in solve_many([(p.nums, p.target) for p in ps]))


def test_split_partition():
    test = generate_problems(60, seed=2, split="test")
    train = generate_problems(60, seed=2, split="train")
    assert all(problem_split(p) == "test" for p in test)
    assert all(problem_split(p) == "train" for p in train)
    assert not set(test) & set(train)
    # about 10 % of all problems are "test"
    everything = generate_problems(1000, seed=9)
    frac = sum(problem_split(p) == "test" for p in everything) / len(everything)
    assert 0.05 < frac < 0.15, frac
    # stable: a function of the problem only
    assert [problem_split(p) for p in everything[:50]] == [
        problem_split(Problem(list(p.nums), p.target)) for p in everything[:50]]


@pytest.mark.parametrize("kwargs", [
    dict(n=-1),
    dict(n=3, min_count=0),
    dict(n=3, min_count=4, max_count=3),
    dict(n=3, split="validation"),
    dict(n=3, max_number=0),
    dict(n=3, max_target=0),
])
def test_generate_bad_arguments(kwargs):
    with pytest.raises(VerilensError):
        generate_problems(**kwargs)


def test_generate_impossible_request_raises_instead_of_hanging():
    # only one problem exists with these ranges: ask for two, and for its other split
    only = Problem([1], 1)
    other = "train" if problem_split(only) == "test" else "test"
    with pytest.raises(VerilensError):
        generate_problems(2, seed=0, min_count=1, max_count=1, max_number=1, max_target=1)
    with pytest.raises(VerilensError):
        generate_problems(1, seed=0, min_count=1, max_count=1, max_number=1, max_target=1, split=other)
    assert generate_problems(1, seed=0, min_count=1, max_count=1, max_number=1, max_target=1,
                             split=problem_split(only)) == [only]


# --------------------------------------------------------------------------- load

GOOD = [{"nums": [12, 90, 60, 67], "target": 49}, {"nums": [3, 5, 7], "target": 22},
        {"nums": [1, 2, 3, 4], "target": 10}]
EXPECTED = [Problem(r["nums"], r["target"]) for r in GOOD]


def test_load_parquet(tmp_path):
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    path = tmp_path / "p.parquet"
    pq.write_table(pa.table({"nums": [r["nums"] for r in GOOD], "target": [r["target"] for r in GOOD]}), path)
    assert load_problems(path) == EXPECTED
    assert load_problems(str(path), limit=2) == EXPECTED[:2]


def test_load_json_rows_and_columns(tmp_path):
    rows = tmp_path / "rows.json"
    rows.write_text(json.dumps(GOOD))
    assert load_problems(rows) == EXPECTED
    cols = tmp_path / "cols.json"
    cols.write_text(json.dumps({"nums": [r["nums"] for r in GOOD], "target": [r["target"] for r in GOOD]}))
    assert load_problems(cols) == EXPECTED
    other = tmp_path / "other.json"
    other.write_text(json.dumps({"numbers": [[1, 2]], "goal": [3]}))
    with pytest.raises(VerilensError):
        load_problems(other)


def test_load_jsonl(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in GOOD) + "\n\n")
    assert load_problems(path) == EXPECTED
    assert load_problems(path, limit=1) == EXPECTED[:1]


BAD_ROWS = [
    {"nums": [1, 2, 3]},                      # 2: no target
    {"target": 5},                            # 3: no nums
    {"nums": [1.5, 2], "target": 3},          # 4: non-integer number
    {"nums": [1, 2], "target": "abc"},        # 5: target not a number
    {"nums": [], "target": 3},                # 6: no numbers
    [1, 2, 3],                                # 7: not an object
    {"nums": "12", "target": 3},              # 8: a string is not a list of numbers
    {"nums": None, "target": 3},              # 9
]


def _rows_with_bad():
    return [GOOD[0]] + BAD_ROWS + [GOOD[1], GOOD[2]]


def test_bad_rows_are_reported_and_skipped(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(_rows_with_bad()))
    with pytest.warns(UserWarning) as rec:
        got = load_problems(path)
    assert got == EXPECTED
    msg = str(rec[0].message)
    for row in range(2, 2 + len(BAD_ROWS)):  # rows are numbered from 1
        assert f"row {row}:" in msg
    assert "row 1:" not in msg and f"row {2 + len(BAD_ROWS)}:" not in msg
    with pytest.raises(VerilensError, match="row 2"):
        load_problems(path, on_bad_row="error")


def test_bad_jsonl_line_reported(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps(GOOD[0]) + "\n{not json\n" + json.dumps(GOOD[1]) + "\n")
    with pytest.warns(UserWarning, match="row 2"):
        assert load_problems(path) == EXPECTED[:2]
    with pytest.raises(VerilensError, match="row 2"):
        load_problems(path, on_bad_row="error")


def test_clean_file_gives_no_warning(tmp_path):
    path = tmp_path / "ok.json"
    path.write_text(json.dumps(GOOD))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert load_problems(path) == EXPECTED


def test_load_errors(tmp_path):
    with pytest.raises(VerilensError):
        load_problems(tmp_path / "missing.parquet")
    with pytest.raises(VerilensError):
        load_problems(tmp_path / "missing.json")
    csv = tmp_path / "p.csv"
    csv.write_text("nums,target\n")
    with pytest.raises(VerilensError):
        load_problems(csv)
    ok = tmp_path / "ok.json"
    ok.write_text(json.dumps(GOOD))
    with pytest.raises(VerilensError):
        load_problems(ok, on_bad_row="ignore")
    broken = tmp_path / "broken.json"
    broken.write_text('[{"nums": [1, 2], "target": 3},')
    with pytest.raises(VerilensError):
        load_problems(broken)
    scalar = tmp_path / "scalar.json"
    scalar.write_text("42")
    with pytest.raises(VerilensError):
        load_problems(scalar)
    fake = tmp_path / "fake.parquet"
    fake.write_bytes(b"this is not a parquet file")
    with pytest.raises(VerilensError):
        load_problems(fake)
