"""Hostile input to the task code (issue 24): parse_trace, reward, load_problems and the
trace synthesiser never raise anything but VerilensError, take time linear in the input's
length, and the synthesiser's traces round-trip through the parser."""
import json
import time
import warnings

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from verilens.countdown import Problem, load_problems, parse_trace, prompt, reward, solve, write_trace
from verilens.countdown.arith import MAX_LITERAL_DIGITS
from verilens.countdown.problems import MAX_DIGITS, MAX_NUMBERS
from verilens.countdown.trace import MAX_LINE_CHARS
from verilens.errors import VerilensError

# Time budget for one call: fixed overhead plus a cost per character, generous enough for
# a loaded 2-core machine, far below what a quadratic path takes at the lengths used here.
PER_CHAR_S = 20e-6


def budget(n_chars):
    return 0.5 + PER_CHAR_S * n_chars


def timed(f, *args):
    t0 = time.perf_counter()
    out = f(*args)
    return out, time.perf_counter() - t0


# Pieces that make attempt-like, answer-like and degenerate text more often than st.text().
PIECES = ["- ", "-", "=", " = ", "(", ")", " (not 49)", " (this works)", "\n", " ", "\t", "+", "*", "/", "//", ".",
          "49", "7", "0", "12", "90", "1" * 50, "9" * 300, "<answer>", "</answer>", "Assistant:",
          "<|im_start|>assistant", "**", "\u0663", "\u00a0", "•", "x", "\x00"]
texts = st.one_of(st.text(max_size=300),
                  st.lists(st.sampled_from(PIECES), max_size=120).map("".join))


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(text=texts, target=st.one_of(st.integers(-10**40, 10**40), st.floats(allow_nan=True), st.none(), st.text(max_size=5)))
def test_parse_trace_any_text(text, target):
    att, dt = timed(parse_trace, text, target)
    assert dt < budget(len(text))
    for a in att:
        assert text[a.start:a.start + len(a.line)] == a.line
        assert a.start == 0 or text[a.start - 1] == "\n"
        assert len(a.line) <= MAX_LINE_CHARS
        assert a.verdict in (None, "valid", "invalid")
        assert isinstance(a.arithmetic_ok, bool) and isinstance(a.hits_target, bool)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(text=texts, nums=st.lists(st.integers(0, 100), min_size=1, max_size=4), target=st.integers(-100, 1000))
def test_reward_any_text(text, nums, target):
    for t in (text, "Assistant: " + text, "Assistant: <answer>" + text + "</answer>"):
        r, dt = timed(reward, t, nums, target)
        assert r in (0.0, 0.1, 1.0)
        assert dt < budget(len(t))


# Degenerate inputs: one character (or a short unit) repeated, as a looping generation
# writes, or one runaway number. Each maker gives a text of about n characters.
DEGENERATE = {
    "newlines": lambda n: "\n" * n,
    "open brackets": lambda n: "- " + "(" * n,
    "nested brackets": lambda n: "- " + "(" * (n // 2) + "1" + ")" * (n // 2) + " = 1 (this works)",
    "long claim": lambda n: "- 1 + 2 = " + "7" * n + " x (not 3)",
    "long number": lambda n: "- " + "7" * n + " = 7 (not 3)",
    "answer tags": lambda n: "Assistant: " + "<answer>" * (n // 8),
    "answer digits": lambda n: "Assistant: <answer>" + "1 " * (n // 2) + "</answer>",
    "answer products": lambda n: "Assistant: <answer>" + "9*" * (n // 2) + "9</answer>",
    "answer minus": lambda n: "Assistant: <answer>" + "-" * n + "1 + 2</answer>",
    "attempt lines": lambda n: "- 1 + 2 = 3 (not 4)\n" * (n // 20),
    "long lines": lambda n: ("- " + "1/" * 1500 + "1 = 1 (not 2)\n") * max(1, n // 3020),
}


def _best_time(f, text, reps=3):
    return min(timed(f, text)[1] for _ in range(reps))


@pytest.mark.parametrize("kind", sorted(DEGENERATE))
def test_time_is_linear_in_length(kind):
    """8x the text costs at most ~8x the time (quadratic: 64x), and stays within budget."""
    make = DEGENERATE[kind]
    small, large = make(25_000), make(200_000)
    for f in (lambda t: parse_trace(t, 3), lambda t: reward(t, [1, 2], 3)):
        t_small, t_large = _best_time(f, small), _best_time(f, large)
        assert t_large < budget(len(large))
        assert t_large < 24 * t_small + 0.05, (kind, t_small, t_large)


def test_ten_megabyte_answers_return_promptly():
    for text in ("Assistant: " + "<answer>" * 1_250_000, "Assistant: <answer>" + "7" * 10**7 + "</answer>",
                 "Assistant: <answer>" + "(" * 10**7, "Assistant: <answer>1 +" + " " * 10**7 + "2</answer>"):
        r, dt = timed(reward, text, [1, 2], 3)
        assert r in (0.0, 0.1, 1.0)
        assert dt < 3.0, dt
    assert reward("Assistant: <answer>1 +" + " " * 10**6 + "2</answer>", [1, 2], 3) == 1.0  # spaces are allowed


def test_caps_are_stated_rules():
    # a line longer than MAX_LINE_CHARS is not an attempt, whatever it holds
    line = "- 1 + 2 = 3 (not 4)"
    assert len(parse_trace(line + " " * (MAX_LINE_CHARS - len(line)), 4)) == 1
    assert parse_trace(line + " " * (MAX_LINE_CHARS - len(line) + 1), 4) == []
    # a claimed value longer than MAX_LITERAL_DIGITS is no number (claimed None), not a slow one
    (a,) = parse_trace("- 1 + 2 = " + "7" * (MAX_LITERAL_DIGITS + 1) + " (not 3)", 3)
    assert a.claimed is None and a.verdict == "invalid" and not a.arithmetic_ok
    (b,) = parse_trace("- 1 + 2 = " + "7" * MAX_LITERAL_DIGITS + " (not 3)", 3)
    assert b.claimed == int("7" * MAX_LITERAL_DIGITS)
    # reward: an answer number of more than 4300 digits is wrong, as for TinyZero's int()
    assert reward("Assistant: <answer>" + "1" + "0" * 4300 + " - 1</answer>", [10**4300, 1], 10**4300 - 1) == 0.1
    assert reward("Assistant: <answer>" + "1" + "0" * 4299 + " - 1</answer>", [10**4299, 1], 10**4299 - 1) == 1.0


# --------------------------------------------------------------------------- the synthesiser


problems_st = st.builds(Problem, st.lists(st.integers(1, 10**6), min_size=1, max_size=4), st.integers(-10**6, 10**7))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(problem=problems_st, seed=st.integers(0, 2**32))
def test_write_trace_round_trips(problem, seed):
    try:
        text = write_trace(problem, seed)
    except VerilensError:
        assert solve(problem.nums, problem.target) is None  # only an unsolvable problem is refused
        return
    att, dt = timed(parse_trace, text, problem.target)
    assert dt < budget(len(text))
    assert att and att[-1].verdict == "valid"
    for a in att:
        assert a.verdict == ("valid" if a.hits_target else "invalid"), a.line
        assert a.uses_numbers(problem.nums), a.line
        assert text[a.marker:a.marker + 2] == " ("
    assert text.split("\n")[-1] == f"<answer> {att[-1].expression} </answer>"
    r = reward(prompt(problem) + text, problem.nums, problem.target)
    assert r == (1.0 if att[-1].arithmetic_ok else 0.1)


def test_write_trace_at_the_task_limits():
    """The largest problems the task allows make attempt lines the parser still reads."""
    big = 10**MAX_DIGITS - 1
    p = Problem([big, big - 2, big - 4, 7, 3, 2][:MAX_NUMBERS], big - 2)
    for seed in range(2):
        text = write_trace(p, seed, p_chain=1.0)
        lines = [l for l in text.split("\n") if l.startswith("- ")]
        att = parse_trace(text, p.target)
        assert len(att) == len(lines) and att[-1].verdict == "valid"
        assert max(map(len, lines)) <= MAX_LINE_CHARS


@pytest.mark.parametrize("nums,target,match", [
    ([True, 2], 3, "boolean"),
    ([1.0, 2], 3, "integer"),
    ([1, 2], "3", "integer"),
    ([], 3, "1 to"),
    (list(range(1, MAX_NUMBERS + 2)), 3, "1 to"),
    ([10**MAX_DIGITS], 3, "digits"),
    ([1, 2], -10**MAX_DIGITS, "digits"),
    ("12", 3, "list"),
])
def test_problem_refuses_what_the_task_does_not_allow(nums, target, match):
    with pytest.raises(VerilensError, match=match):
        Problem(nums, target)


# --------------------------------------------------------------------------- problems files


@pytest.mark.parametrize("content,match", [
    ("", "is empty"),
    ("[]", "holds no problems"),
    ("{}", "without 'nums'"),
    ('[{"nums": [true, 2], "target": 3}]', "boolean"),
    ('[{"nums": [1, 2], "target": false}]', "boolean"),
    ('[{"nums": [1, 2], "target": Infinity}]', "Infinity"),
    ('[{"nums": [NaN, 2], "target": 3}]', "NaN"),
    ('[{"nums": [1, 2], "target": 1e400}]', "inf"),
    ('[{"nums": [1, 2], "target": ' + "9" * 400 + "}]", "400 digits"),
    ('[{"nums": [1, 2], "target": ' + "9" * 5000 + "}]", "5000 digits"),
    ('[{"nums": [1, 2], "target": 3.5}]', "integer"),
    ('[{"nums": ["1", 2], "target": 3}]', "integer"),
    ("[" * 100000, "not valid JSON"),
])
def test_hostile_problems_files(tmp_path, content, match):
    path = tmp_path / "p.json"
    path.write_text(content)
    with pytest.raises(VerilensError, match=match):
        load_problems(path)


def test_empty_jsonl_and_folder(tmp_path):
    empty = tmp_path / "p.jsonl"
    empty.write_text("\n\n")
    with pytest.raises(VerilensError, match="holds no problems"):
        load_problems(empty)
    folder = tmp_path / "dir.json"
    folder.mkdir()
    with pytest.raises(VerilensError, match="not a file"):
        load_problems(folder)
    binary = tmp_path / "b.json"
    binary.write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(VerilensError):
        load_problems(binary)


def test_bad_values_are_skipped_with_the_good_rows_kept(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text('{"nums": [1, 2], "target": 3}\n{"nums": [true, 2], "target": 3}\n'
                    '{"nums": [4.0, 5], "target": 9.0}\n{"nums": [1], "target": Infinity}\n')
    with pytest.warns(UserWarning, match="row 2: .*boolean.*row 4: .*Infinity"):
        assert load_problems(path) == [Problem([1, 2], 3), Problem([4, 5], 9)]


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-10**50, 10**50) | st.floats() | st.text(max_size=5),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.sampled_from(["nums", "target", "x"]), inner),
    max_leaves=20)
rows_st = st.lists(st.one_of(json_values, st.fixed_dictionaries({"nums": json_values, "target": json_values}),
                             st.fixed_dictionaries({"nums": st.lists(st.integers(-99, 99), max_size=7),
                                                    "target": st.integers(-99, 99)})), max_size=8)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rows=rows_st, jsonl=st.booleans())
def test_load_problems_any_rows(tmp_path, rows, jsonl):
    path = tmp_path / ("p.jsonl" if jsonl else "p.json")
    path.write_text("\n".join(json.dumps(r) for r in rows) if jsonl else json.dumps(rows))
    try:
        with warnings.catch_warnings():  # skipped rows warn; that is tested above
            warnings.simplefilter("ignore")
            got = load_problems(path)
    except VerilensError:
        return
    assert got
    for p in got:
        assert 1 <= len(p.nums) <= MAX_NUMBERS
        assert all(type(x) is int and abs(x) < 10**MAX_DIGITS for x in (*p.nums, p.target))
