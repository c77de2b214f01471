"""CountDown solver: compiled core vs the pure-Python reference (target: >= 20x).

Run (pyproject's addopts carry --benchmark-skip; --benchmark-only overrides it):

    python -m pytest benchmarks/bench_solver.py --benchmark-only -q -p no:cacheprovider

Each group times the same work both ways; pytest-benchmark prints, per column, the
ratio to the fastest entry of the group in parentheses.
"""
import pytest

from verilens.countdown import generate_problems, solve, solve_ref
from verilens.countdown.solver import solve_many

PROBLEMS_200 = [(list(p.nums), p.target) for p in generate_problems(200, seed=123)]
PROBLEMS_2000 = [(list(p.nums), p.target) for p in generate_problems(2000, seed=123)]


def solve_each(fn, problems):
    return [fn(nums, target) for nums, target in problems]


@pytest.mark.benchmark(group="solve: 200 problems, one by one")
def test_solve_200_python_reference(benchmark):
    benchmark.extra_info["problems"] = len(PROBLEMS_200)
    # about a second or more per round: a fixed number of rounds keeps the run short
    out = benchmark.pedantic(solve_each, args=(solve_ref, PROBLEMS_200), rounds=5, iterations=1)
    assert out == solve_each(solve, PROBLEMS_200)


@pytest.mark.benchmark(group="solve: 200 problems, one by one", min_rounds=10)
def test_solve_200_compiled(benchmark):
    benchmark.extra_info["problems"] = len(PROBLEMS_200)
    out = benchmark(solve_each, solve, PROBLEMS_200)
    assert all(s is not None for s in out)  # every generated problem is solvable


@pytest.mark.benchmark(group="solve_many: 2000 problems", min_rounds=10)
def test_solve_many_2000(benchmark):
    benchmark.extra_info["problems"] = len(PROBLEMS_2000)
    out = benchmark(solve_many, PROBLEMS_2000)
    assert len(out) == 2000 and all(s is not None for s in out)


@pytest.mark.benchmark(group="solve_many: 2000 problems", min_rounds=10)
def test_solve_2000_compiled_loop(benchmark):
    """Baseline for solve_many: the compiled `solve` called 2000 times from Python."""
    benchmark.extra_info["problems"] = len(PROBLEMS_2000)
    out = benchmark(solve_each, solve, PROBLEMS_2000)
    assert out == solve_many(PROBLEMS_2000)
