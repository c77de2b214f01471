"""verilens' reward against TinyZero's own rule (the oracle below), and hostile text."""
import random
import re
import subprocess
import sys
import warnings
from collections import Counter

import pytest

from verilens.countdown import generate_problems, prompt, reward, solve
from verilens.countdown.problems import Problem

# --------------------------------------------------------------------------------------
# The oracle: TinyZero's verl/utils/reward_score/countdown.py (Jiayi-Pan/TinyZero), as
# published, except that the random debug printing (do_print) is left out: it prints only.


def tz_extract_solution(solution_str):
    """Extract the equation from the solution string."""
    # Remove everything before the first "Assistant:"
    if "Assistant:" in solution_str:
        solution_str = solution_str.split("Assistant:", 1)[1]
    elif "<|im_start|>assistant" in solution_str:
        solution_str = solution_str.split("<|im_start|>assistant", 1)[1]
    else:
        return None
    solution_str = solution_str.split('\n')[-1]

    answer_pattern = r'<answer>(.*?)</answer>'
    match = re.finditer(answer_pattern, solution_str)
    matches = list(match)
    if matches:
        final_answer = matches[-1].group(1).strip()
    else:
        final_answer = None
    return final_answer


def tz_validate_equation(equation_str, available_numbers):
    """Validate that equation only uses available numbers and each number once."""
    try:
        # Extract all numbers from the equation
        numbers_in_eq = [int(n) for n in re.findall(r'\d+', equation_str)]

        # Check if all numbers in equation are available
        available_numbers = sorted(available_numbers)
        numbers_in_eq = sorted(numbers_in_eq)

        # Each number should be used exactly once
        return numbers_in_eq == available_numbers
    except:  # noqa: E722
        return False


def tz_evaluate_equation(equation_str):
    """Safely evaluate the arithmetic equation using eval() with precautions."""
    try:
        # Define a regex pattern that only allows numbers, operators, parentheses, and whitespace
        allowed_pattern = r'^[\d+\-*/().\s]+$'
        if not re.match(allowed_pattern, equation_str):
            raise ValueError("Invalid characters in equation.")

        # Evaluate the equation with restricted globals and locals
        result = eval(equation_str, {"__builtins__": None}, {})
        return result
    except Exception:
        return None


def tz_compute_score(solution_str, ground_truth, method='strict', format_score=0.1, score=1.):
    target = ground_truth['target']
    numbers = ground_truth['numbers']

    equation = tz_extract_solution(solution_str=solution_str)

    if equation is None:
        return 0

    # Validate equation uses correct numbers
    if not tz_validate_equation(equation, numbers):
        return format_score

    # Evaluate equation
    try:
        result = tz_evaluate_equation(equation)
        if result is None:
            return format_score

        if abs(result - target) < 1e-5:  # Account for floating point precision
            return score
        else:
            return format_score
    except:  # noqa: E722
        return format_score


def oracle_is_safe(text):
    """Where TinyZero's eval may run: no power operator (verilens deliberately scores
    `**` as 0.1, TinyZero would evaluate it and could hang on 9**9**9**9)."""
    eq = tz_extract_solution(text)
    return eq is None or "**" not in eq


def oracle(text, nums, target):
    with warnings.catch_warnings():  # eval's SyntaxWarning on "(3)(4)"
        warnings.simplefilter("ignore", SyntaxWarning)
        return tz_compute_score(text, {"target": target, "numbers": list(nums)})


def check_against_oracle(text, nums, target):
    assert oracle_is_safe(text)
    got = reward(text, nums, target)
    want = oracle(text, nums, target)
    assert got == want, (text, nums, target, got, want)
    return got


# --------------------------------------------------------------------------------------
# Random texts: answers built mostly from the problem's own numbers so that the number
# check passes often and the arithmetic itself is compared.

OPS = ["+", "-", "*", "/", "//", " + ", " - ", " * ", " / ", "- -", "+-"]
JUNK = ["(", ")", " ", "  ", ".", "..", "0", "00", "07", ".5", "5.", "\t", "\x0c", "\x0b", "\r",
        "\u00a0", "\u0663", "x", "=", "^", "%", ",", "()", "e5", "1_0", "\u00bd", "*(", ")/("]


def random_answer(nums, target, rng):
    r = rng.random()
    if r < 0.25:  # a real solution, maybe re-spaced / re-bracketed
        sol = solve(nums, target) or " + ".join(map(str, nums))
        if rng.random() < 0.5:
            sol = sol.replace(" ", rng.choice(["", " ", "  ", "\t"]))
        if rng.random() < 0.3:
            sol = "(" * (k := rng.randint(1, 3)) + sol + ")" * k
        return sol
    if r < 0.8:  # the numbers, shuffled, joined by random operators, brackets and junk
        items = list(nums)
        rng.shuffle(items)
        parts = []
        for i, n in enumerate(items):
            if rng.random() < 0.2:
                parts.append(rng.choice(["(", "-", "+", "(-"]))
            parts.append(str(n))
            if rng.random() < 0.15:
                parts.append(rng.choice(JUNK))
            if i < len(items) - 1:
                parts.append(rng.choice(OPS))
        s = "".join(parts)
        opens = s.count("(") - s.count(")")
        if opens > 0 and rng.random() < 0.8:
            s += ")" * opens
        return s
    # character soup of the whitelisted alphabet (and a little else)
    alphabet = "0123456789+-*/(). " + "\t"
    s = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 20)))
    if rng.random() < 0.1:
        s += rng.choice(JUNK)
    return s.replace("**", "*")


def random_text(nums, target, rng):
    answer = random_answer(nums, target, rng)
    block = f"<answer>{rng.choice(['', ' ', '  '])}{answer}{rng.choice(['', ' '])}</answer>"
    head = rng.choices([
        prompt(Problem(nums, target)),
        prompt(Problem(nums, target), "qwen-instruct"),
        "Assistant:", "<|im_start|>assistant", "", "User: hi\nAssistant: ok\n", "assistant:",
    ], weights=[6, 4, 2, 2, 1, 1, 1])[0]
    body = rng.choice(["", " We have the numbers.\n- 1 + 2 = 3 (not 5)\n", "</think>\n", "\n"])
    tail = rng.choices([
        block, block + " ", "x " + block, "<answer>1 + 1</answer> " + block,
        block + "\n", block + block.replace(answer, "1 + 1"), "<answer>" + answer, block + "\nThe end.",
    ], weights=[10, 2, 2, 2, 1, 1, 1, 1])[0]
    return head + body + tail


def test_random_texts_match_tinyzero():
    rng = random.Random(20261125)
    solvable = generate_problems(200, seed=5, min_count=2, max_count=4)
    outcomes = Counter()
    n = 0
    while n < 3000:
        if rng.random() < 0.7:
            p = rng.choice(solvable)
            nums, target = list(p.nums), p.target
        else:
            nums = [rng.randint(1, rng.choice([9, 99])) for _ in range(rng.randint(2, 4))]
            target = rng.randint(1, 99)
        text = random_text(nums, target, rng)
        if not oracle_is_safe(text):
            continue
        outcomes[check_against_oracle(text, nums, target)] += 1
        n += 1
    # every branch of the rule is exercised, many times
    assert outcomes[1.0] >= 150 and outcomes[0.1] >= 300 and outcomes[0] >= 150, outcomes


def test_prompt_plus_solution_scores_one_for_both_templates():
    rng = random.Random(3)
    for _ in range(40):
        nums = [rng.randint(1, 99) for _ in range(rng.randint(3, 4))]
        target = rng.randint(1, 99)
        sol = solve(nums, target)
        if sol is None:
            continue
        for template in ("base", "qwen-instruct"):
            text = prompt(Problem(nums, target), template) + " thinking </think>\n<answer> " + sol + " </answer>"
            assert check_against_oracle(text, nums, target) == 1.0


# --------------------------------------------------------------------------------------
# Edge cases, each stated from the rule (and checked against the oracle where it can run)

NUMS, TARGET = [12, 90, 60, 67], 49


def A(answer, pre="Assistant: Let me solve this step by step.\n<think> ... </think>\n"):
    return pre + f"<answer> {answer} </answer>"


@pytest.mark.parametrize("text,expected", [
    (A("67 + 60 + 12 - 90"), 1.0),
    (A("(67 + 60 + 12) - 90"), 1.0),
    (A("67+60+12-90"), 1.0),
    (A("67 + 60 + 12 - 91"), 0.1),          # wrong numbers
    (A("67 + 60 + 12"), 0.1),               # a number missing
    (A("67 + 60 + 12 - 90 + 12 - 12"), 0.1),  # numbers reused
    (A("90 - 67 - 60 + 12"), 0.1),          # right numbers, wrong value
    ("Assistant: I give up.", 0.0),          # no answer
    ("Assistant: <answer></answer>", 0.1),  # empty answer is still an answer
    ("<think></think>\n<answer> 67 + 60 + 12 - 90 </answer>", 0.0),  # no "Assistant:"
    (A("67 + 60 + 12 - 90") + "\nThat's it.", 0.0),  # answer not on the last line
    (A("67 + 60 + 12 - 90") + "\n", 0.0),    # even an empty last line
    ("Assistant: <answer> 1 + 1 </answer> <answer> 67 + 60 + 12 - 90 </answer>", 1.0),  # last one
    ("Assistant: <answer> 67 + 60 + 12 - 90 </answer> <answer> 1 + 1 </answer>", 0.1),
    ("<|im_start|>assistant\nLet me solve this step by step.\n<think> x </think>\n"
     "<answer> 67 + 60 + 12 - 90 </answer>", 1.0),   # qwen-instruct
    ("Assistant: a\n<|im_start|>assistant\n<answer> 67 + 60 + 12 - 90 </answer>", 1.0),
    (A("67 + 60 + 12 - 90 = 49"), 0.1),     # "=" is not allowed
    (A("67 + 60 + 12 - 90 + 0 * (12)"), 0.1),
    (A("67 + 60 + 12 - 90 / (60 - 60)"), 0.1),
])
def test_edge_cases(text, expected):
    assert reward(text, NUMS, TARGET) == expected
    assert check_against_oracle(text, NUMS, TARGET) == expected


def test_division_by_zero_is_format_score():
    assert check_against_oracle(A("5 / (3 - 3)"), [5, 3, 3], 5) == 0.1
    assert check_against_oracle(A("5 // (3 - 3)"), [5, 3, 3], 5) == 0.1
    assert check_against_oracle(A("(3 - 3) / (5 - 5)"), [3, 3, 5, 5], 0) == 0.1


def test_floor_division_as_python():
    assert check_against_oracle(A("7 // 2"), [7, 2], 3) == 1.0
    assert check_against_oracle(A("7 / 2"), [7, 2], 3) == 0.1
    assert check_against_oracle(A("-7 // 2"), [7, 2], -4) == 1.0


def test_power_is_rejected():
    assert reward(A("2 ** 3"), [2, 3], 8) == 0.1  # TinyZero's eval would say 1.0
    assert reward(A("2 * 3"), [2, 3], 6) == 1.0


def test_power_tower_returns_promptly():
    # in a child process, so that a regression cannot hang the test run
    code = ("from verilens.countdown import reward; "
            "print(reward('Assistant: <answer> 9**9**9**9 </answer>', [9, 9, 9, 9], 1), "
            "reward('Assistant: <answer> (9**9)**(9**9) </answer>', [9, 9, 9, 9], 1))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["0.1", "0.1"]


def test_huge_numbers():
    big = 10**40
    assert check_against_oracle(A(f"{big} + {big}"), [big, big], 2 * big) == 1.0
    assert check_against_oracle(A(f"{big} * {big}"), [big, big], big * big) == 1.0
    assert check_against_oracle(A(f"{big} / 3"), [big, 3], 1) == 0.1
    # an integer too large for a float in a true division: OverflowError -> 0.1
    huge = 10**400
    assert check_against_oracle(A(f"{huge} / 3"), [huge, 3], 1) == 0.1
    # a float result against an int target too large for a float
    assert check_against_oracle(A("1 / 2"), [1, 2], huge) == 0.1
    # more digits than int() converts (4300 by default in Python >= 3.11): no crash
    digits = "7" * 5000
    assert reward(A(digits), [7], 7) == 0.1
    assert reward(A(f"{digits} - {digits}"), [7, 7], 0) == 0.1
    assert check_against_oracle(A(digits), [7], 7) == 0.1
    # a long float literal
    ones = "1" * 400
    assert check_against_oracle(A(ones + ".0 - 1"), [int(ones), 0, 1], 0) == 0.1  # inf - 1


@pytest.mark.parametrize("answer,nums,target", [
    ("\u0663 + \u0664", [3, 4], 7),        # Arabic-Indic digits: \d matches, Python's parser does not
    ("3\u00a0+ 4", [3, 4], 7),             # no-break space
    ("3 +\x0b4", [3, 4], 7),               # vertical tab
    ("3 +\x0c4", [3, 4], 7),               # form feed: Python source whitespace
    ("3 +\r4", [3, 4], 7),
    ("\u00bd + 4", [4], 4.5),
    ("3 + 4 \U0001F600", [3, 4], 7),
    ("\x00 3 + 4", [3, 4], 7),
    ("3 + 4\u200b", [3, 4], 7),
    ("()", [], 0),
    ("...", [], 0),
    ("(3)(4)", [3, 4], 12),
    ("3 (4)", [3, 4], 12),
    ("03 + 4", [3, 4], 7),                 # leading zero: a SyntaxError in Python 3
    ("00 + 7", [0, 7], 7),                 # but 00 is a valid literal
    ("3. + 4.", [3, 4], 7),
    ("3.0 + 4", [3, 0, 4], 7),
    ("+3 - -4", [3, 4], 7),
    ("- - - 3 + 10", [3, 10], 7),
    ("3 + 4)", [3, 4], 7),
    ("((3 + 4)", [3, 4], 7),
    ("3 4", [3, 4], 7),
])
def test_unicode_and_garbage(answer, nums, target):
    text = "Assistant: <answer>" + answer + "</answer>"
    got = check_against_oracle(text, nums, target)
    assert got in (0.0, 0.1, 1.0)


def test_garbage_text_never_raises():
    rng = random.Random(8)
    pieces = ["Assistant:", "<answer>", "</answer>", "\n", "<|im_start|>assistant", "1", "(", ")",
              "**", "9", "/", "0", " ", "\u0663", "\U0001F600", "\x00", "\ud800", "*", "-"]
    for _ in range(500):
        text = "".join(rng.choice(pieces) for _ in range(rng.randint(0, 30)))
        got = reward(text, [9, 1], 9)
        assert got in (0.0, 0.1, 1.0)
        if oracle_is_safe(text):
            assert got == oracle(text, [9, 1], 9), text


@pytest.mark.parametrize("value", [None, 42, 4.2, b"Assistant: <answer> 1 + 2 </answer>", ["Assistant:"]])
def test_non_string_input(value):
    assert reward(value, [1, 2], 3) == 0.0


@pytest.mark.parametrize("depth", [1, 50, 99, 100, 101, 150, 199, 200, 201, 250, 1000, 10000])
def test_deep_brackets(depth):
    text = A("(" * depth + "1" + ")" * depth)
    got = reward(text, [1], 1)  # must not raise (RecursionError or otherwise)
    assert got == oracle(text, [1], 1)
    assert got == (1.0 if depth <= 200 else 0.1)  # CPython's parser allows 200 levels


@pytest.mark.parametrize("depth", [2, 100, 101, 500, 1000, 2000, 5000, 50000])
def test_long_unary_and_binary_chains(depth):
    neg = A("-" * depth + "1")
    assert reward(neg, [1], 1) == oracle(neg, [1], 1)
    spaced = A("- " * depth + "1")
    assert reward(spaced, [1], 1) == oracle(spaced, [1], 1)
    chain = A(" + ".join(["1"] * depth))
    assert reward(chain, [1] * depth, depth) == oracle(chain, [1] * depth, depth)


def test_tolerance_1e_minus_5():
    # values that only floats make close to the target
    assert check_against_oracle(A("1000001 / 1000000"), [1000001, 1000000], 1) == 1.0  # |diff| = 1e-6
    assert check_against_oracle(A("100001 / 100000"), [100001, 100000], 1) == 0.1  # 1e-5, not <
    assert check_against_oracle(A("101 / 100"), [101, 100], 1) == 0.1
    assert check_against_oracle(A("1 / 49 * 49"), [1, 49, 49], 1) == 1.0  # 0.9999999999999999
    assert check_against_oracle(A("(8 / (3 - 8 / 3))"), [8, 3, 8, 3], 24) == 1.0  # 23.99999999999999x
    assert check_against_oracle(A("7 / 2"), [7, 2], 3.5) == 1.0


def test_custom_scores():
    assert reward(A("67 + 60 + 12 - 90"), NUMS, TARGET, format_score=0.0, score=2.0) == 2.0
    assert reward(A("90 - 67 - 60 + 12"), NUMS, TARGET, format_score=-1.0) == -1.0
    assert reward("Assistant: none", NUMS, TARGET, format_score=-1.0) == 0.0
