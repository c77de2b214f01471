"""Parsing the mode-collapsed chain of thought, the synthetic traces, prompts and the
character-to-token mapping of the verification marker."""
import random
import re
import string
from fractions import Fraction
from types import SimpleNamespace

import pytest

from verilens.countdown import (
    Problem, char_to_token, generate_problems, parse_trace, prompt, reward, write_trace,
)
from verilens.errors import VerilensError

# PAPER.md section 2, verbatim
PUBLISHED = """<think> We have the numbers 12, 90, 60, and 67. We need to use all of them to make an equation that equals 49. Let's try different combinations:
- 90 - 67 - 60 + 12 = -15 (not 49)
- 67 + 60 + 12 - 90 = 49 (this works)
So, the equation that equals 49 is 67 + 60 + 12 - 90. </think>
<answer> (67 + 60 + 12) - 90 </answer>"""


def check_offsets(text, attempts):
    for a in attempts:
        assert text[a.start:a.start + len(a.line)] == a.line
        assert a.start == 0 or text[a.start - 1] == "\n"
        if a.marker is not None:
            assert a.start <= a.marker < a.start + len(a.line)
            assert "(" in text[a.marker:a.marker + 2]


def check_markers(text, attempts):
    """Every verdict marker is the " (" that opens the verdict."""
    check_offsets(text, attempts)
    for a in attempts:
        assert text[a.marker:a.marker + 2] == " (", (a.line, a.marker)
        rest = text[a.marker + 2:]
        assert rest.startswith("this works" if a.verdict == "valid" else "not")


# --------------------------------------------------------------------------- parse_trace


def test_published_example():
    att = parse_trace(PUBLISHED, 49)
    assert len(att) == 2
    first, second = att
    assert first.expression == "90 - 67 - 60 + 12"
    assert first.segments == ["-15"]
    assert first.claimed == -15
    assert first.verdict == "invalid"
    assert first.value == 90 - 67 - 60 + 12  # -25: the model's own slip
    assert first.arithmetic_ok is False
    assert first.hits_target is False and not first.is_correct
    assert second.expression == "67 + 60 + 12 - 90"
    assert second.segments == ["49"]
    assert second.claimed == 49 and second.value == 49
    assert second.verdict == "valid"
    assert second.arithmetic_ok and second.hits_target and second.is_correct
    for a in att:
        assert a.uses_numbers([12, 90, 60, 67])
        assert not a.uses_numbers([12, 90, 60])
    check_markers(PUBLISHED, att)
    assert first.marker == PUBLISHED.index(" (not 49)")
    assert second.marker == PUBLISHED.index(" (this works)")


def test_chained_line():
    text = "- 68 - 11 + 5 = 57 + 5 = 62 (this works)"
    (a,) = parse_trace(text, 62)
    assert a.expression == "68 - 11 + 5"
    assert a.segments == ["57 + 5", "62"]
    assert a.claimed == 62
    assert a.verdict == "valid"
    assert a.arithmetic_ok and a.hits_target
    assert a.marker == text.index(" (this")
    # the same chain with a wrong middle step
    (b,) = parse_trace("- 68 - 11 + 5 = 58 + 5 = 62 (this works)", 62)
    assert b.segments == ["58 + 5", "62"] and b.claimed == 62 and b.arithmetic_ok is False


def test_negative_values():
    (a,) = parse_trace("- 12 - 90 = -78 (not 49)", 49)
    assert a.claimed == -78 and a.value == -78 and a.arithmetic_ok and a.verdict == "invalid"
    (b,) = parse_trace("- 12 - 90 + 60 - 67 = -85 (not 49)", 49)
    assert b.claimed == -85 and b.arithmetic_ok
    (c,) = parse_trace("- 3 - 52 = -49 (this works)", -49)
    assert c.hits_target and c.verdict == "valid" and c.arithmetic_ok


@pytest.mark.parametrize("line,target,claimed,ok", [
    ("- 90 / 12 - 22 = -14.5 (not 49)", 49, Fraction(-29, 2), True),
    ("- 7 / 2 = 7/2 (not 3)", 3, Fraction(7, 2), True),
    ("- 7 / 2 = 3.5 (not 3)", 3, Fraction(7, 2), True),
    ("- 10 / 3 = 3.33 (not 49)", 49, Fraction(333, 100), True),  # right to the places written
    ("- 10 / 3 = 3.3 (not 49)", 49, Fraction(33, 10), True),
    ("- 10 / 3 = 3.4 (not 49)", 49, Fraction(34, 10), False),
    ("- 10 / 3 = 3 (not 49)", 49, Fraction(3), False),  # an integer claims exactness
    ("- 10 / 4 = 2.5 (not 49)", 49, Fraction(5, 2), True),
    ("- 1 - 10 / 4 = -1.5 (not 49)", 49, Fraction(-3, 2), True),
    ("- 10 / 4 = 2.6 (not 49)", 49, Fraction(13, 5), False),
])
def test_decimals_and_fractions(line, target, claimed, ok):
    (a,) = parse_trace(line, target)
    assert a.claimed == pytest.approx(float(claimed))
    assert a.arithmetic_ok is ok
    assert a.verdict == "invalid"
    assert a.hits_target is False


def test_fraction_claim_hitting_target():
    (a,) = parse_trace("- 7 / 2 = 7/2 (this works)", Fraction(7, 2))
    assert a.hits_target and a.arithmetic_ok


def test_wrong_arithmetic_keeps_verdict():
    (a,) = parse_trace("- 2 + 2 = 5 (not 49)", 49)
    assert a.arithmetic_ok is False and a.verdict == "invalid" and a.claimed == 5 and a.value == 4
    (b,) = parse_trace("- 20 + 20 = 49 (this works)", 49)
    assert b.arithmetic_ok is False and b.verdict == "valid" and b.hits_target and not b.is_correct


def test_missing_or_unknown_verdict():
    (a,) = parse_trace("- 2 + 2 = 4", 49)
    assert a.verdict is None and a.marker is None and a.claimed == 4 and a.arithmetic_ok
    (b,) = parse_trace("- 2 + 2 = 4 (maybe)", 49)
    assert b.verdict is None


@pytest.mark.parametrize("verdict,expected", [
    ("(not 49)", "invalid"), ("(not equal to 49)", "invalid"), ("(Not 49)", "invalid"),
    ("(this works)", "valid"), ("(This works!)", "valid"), ("(this works, 49)", "valid"),
])
def test_verdict_words(verdict, expected):
    text = f"intro\n- 67 + 60 + 12 - 90 = 49 {verdict}\nend"
    (a,) = parse_trace(text, 49)
    assert a.verdict == expected
    assert text[a.marker:a.marker + 2] == " ("
    assert a.marker == text.index(" (")


def test_non_attempt_lines_are_skipped():
    text = ("We have 1 + 1 = 2 (this works)\n"     # no bullet
            "- no equals sign here (not 49)\n"      # no "="
            "-2 + 2 = 4 (not 49)\n"                  # no space after the bullet
            "- = 4 (not 49)\n"                       # no expression
            "  * 3 + 4 = 7 (not 49)\n"               # an indented "*" bullet is an attempt
            "- 3 + 4 = 7 (not 49)")
    att = parse_trace(text, 49)
    assert [a.expression for a in att] == ["3 + 4", "3 + 4"]
    check_markers(text, att)


def test_marker_offsets_in_multi_line_text():
    text = "Let's try:\r\n- 1 + 2 = 3 (not 4)\r\n\n- 1 * 2 = 2 (not 4)\n- 2 + 2 = 4 (this works)"
    att = parse_trace(text, 4)
    assert [a.verdict for a in att] == ["invalid", "invalid", "valid"]
    check_markers(text, att)


@pytest.mark.parametrize("value", [None, 42, b"- 1 + 1 = 2 (not 3)", ["- 1 + 1 = 2 (not 3)"]])
def test_non_string_text(value):
    assert parse_trace(value, 3) == []


def test_strange_targets_do_not_raise():
    for target in [None, "abc", float("nan"), float("inf"), -float("inf"), 10**400, [49]]:
        att = parse_trace(PUBLISHED, target)
        assert [a.verdict for a in att] == ["invalid", "valid"]  # the attempts are still read
        assert not any(a.hits_target for a in att)
    assert parse_trace(PUBLISHED, 49.0)[1].hits_target


def _mutate(text, rng):
    chars = list(text)
    for _ in range(rng.randint(1, 12)):
        op = rng.random()
        pos = rng.randrange(len(chars) + 1)
        if op < 0.3:
            chars.insert(pos, rng.choice("()-=+*/.0123456789 \n" + "\u00a0\u0663(("))
        elif op < 0.55 and chars:
            del chars[min(pos, len(chars) - 1)]
        elif op < 0.8 and chars:
            chars[min(pos, len(chars) - 1)] = rng.choice(string.printable)
        else:
            k = rng.randint(1, 40)
            chars[pos:pos] = chars[max(0, pos - k):pos]  # duplicate a stretch
    return "".join(chars)


def test_fuzz_never_raises():
    rng = random.Random(99)
    problems = generate_problems(30, seed=7)
    seeds = [write_trace(p, i) for i, p in enumerate(problems)] + [PUBLISHED]
    n_attempts = 0
    for i in range(1500):
        if i % 3 == 0:
            text = "".join(rng.choice(string.printable) for _ in range(rng.randint(0, 200)))
            if rng.random() < 0.5:
                text = "- " + text
        else:
            text = _mutate(rng.choice(seeds), rng)
        target = rng.choice([49, 0, -3, 1.5, 10**30])
        att = parse_trace(text, target)
        assert isinstance(att, list)
        n_attempts += len(att)
        check_offsets(text, att)
        for a in att:
            assert a.verdict in (None, "valid", "invalid")
            assert isinstance(a.arithmetic_ok, bool) and isinstance(a.hits_target, bool)
    assert n_attempts > 500  # the mutations still parse often


def test_pathological_lines_do_not_raise():
    texts = [
        "- " + "(" * 5000 + "1" + ")" * 5000 + " = 1 (this works)",
        "- " + "-" * 5000 + "1 = 1 (not 2)",
        "- " + " + ".join(["1"] * 3000) + " = 3000 (this works)",
        "- 1 / 0 = 0 (not 49)",
        "- " + "9" * 5000 + " = " + "9" * 5000 + " (this works)",
        "- 1 = " + "=" * 1000 + " (not 2)",
        "- 1 + 1 = 2 = 2/0 = 1/ = (not 3)",
        "-\t1\t+\t1\t=\t2\t(not 3)",
        "- 1 + 1 = 2 ((((not 3)",
    ]
    for text in texts:
        att = parse_trace(text, 1)
        check_offsets(text, att)


# --------------------------------------------------------------------------- synthetic traces


@pytest.fixture(scope="module")
def traces():
    problems = generate_problems(150, seed=21)
    out = []
    for i, p in enumerate(problems):
        for s in range(2):
            t = write_trace(p, 1000 * i + s)
            out.append((p, t, parse_trace(t, p.target)))
    return out


def test_round_trip(traces):
    for p, text, att in traces:
        assert text.startswith(" We have the numbers ")
        assert len(att) >= 1
        # the verdict follows the claimed value only: the design rule of the synthetic traces
        for a in att:
            assert a.verdict == ("valid" if a.hits_target else "invalid"), a.line
            assert a.uses_numbers(p.nums), a.line
        assert att[-1].verdict == "valid"
        assert all(a.verdict == "invalid" for a in att[:-1])
        check_markers(text, att)
        last_line = text.split("\n")[-1]
        assert last_line == f"<answer> {att[-1].expression} </answer>"


def test_reward_of_synthetic_traces(traces):
    wrong = 0
    for p, text, att in traces:
        r = reward(prompt(p) + text, p.nums, p.target)
        if att[-1].arithmetic_ok:
            assert r == 1.0, text
        else:  # a slip that claimed the target: the answer is not the target
            assert att[-1].value != p.target
            assert r == 0.1
            wrong += 1
        assert reward(prompt(p, "qwen-instruct") + text, p.nums, p.target) == r
    assert wrong < len(traces) * 0.1


def test_write_trace_is_deterministic():
    p = Problem([12, 90, 60, 67], 49)
    assert write_trace(p, 5) == write_trace(p, 5)
    assert write_trace(p, random.Random(5)) == write_trace(p, 5)
    assert len({write_trace(p, s) for s in range(20)}) > 10


def test_max_failed():
    for i, p in enumerate(generate_problems(30, seed=2)):
        assert len(parse_trace(write_trace(p, i, max_failed=0), p.target)) == 1
        assert len(parse_trace(write_trace(p, i, max_failed=2), p.target)) <= 3


def test_unsolvable_problem_raises():
    with pytest.raises((ValueError, VerilensError)):
        write_trace(Problem([2, 2], 5), 0, max_failed=0)


def _stats(problems, **kw):
    n_chained = n_slips = n_failed = n_near = 0
    for i, p in enumerate(problems):
        att = parse_trace(write_trace(p, i, **kw), p.target)
        n_chained += sum(len(a.segments) > 1 for a in att)
        for a in att[:-1]:
            n_failed += 1
            n_slips += not a.arithmetic_ok
            n_near += abs(a.value - p.target) <= 5
    return dict(chained=n_chained, slips=n_slips / n_failed, near=n_near / n_failed, failed=n_failed)


def test_attempt_kinds_occur():
    problems = generate_problems(150, seed=33)
    default = _stats(problems)
    assert default["failed"] > 300
    assert default["chained"] >= 20
    assert 0.02 < default["slips"] < 0.3  # p_slip = 0.1
    none = _stats(problems, p_slip=0.0, p_chain=0.0, p_near=0.0)
    assert none["chained"] == 0 and none["slips"] == 0.0
    always = _stats(problems, p_slip=1.0, p_chain=1.0, p_near=1.0)
    assert always["slips"] > 0.5
    # near misses: the closest of several candidates lands near the target more often
    assert always["near"] > 2 * none["near"]
    assert none["near"] <= default["near"] <= always["near"]


# --------------------------------------------------------------------------- prompts

BASE = """A conversation between User and Assistant. The user asks a question, and the Assistant solves it. The assistant first thinks about the reasoning process in the mind and then provides the user with the answer.
User: Using the numbers {nums}, create an equation that equals {target}. You can use basic arithmetic operations (+, -, *, /) and each number can only be used once. Show your work in <think> </think> tags. And return the final answer in <answer> </answer> tags, for example <answer> (1 + 2) / 3 </answer>.
Assistant: Let me solve this step by step.
<think>"""


def test_base_prompt_verbatim():
    p = Problem([12, 90, 60, 67], 49)
    assert prompt(p) == BASE.format(nums=[12, 90, 60, 67], target=49)
    assert prompt(p, "base").startswith("A conversation between User and Assistant.")
    assert prompt(p).endswith("\nAssistant: Let me solve this step by step.\n<think>")
    assert "Using the numbers [12, 90, 60, 67], create an equation that equals 49." in prompt(p)


def test_qwen_instruct_prompt():
    p = SimpleNamespace(nums=(3, 5, 7), target=22)  # anything with .nums and .target
    text = prompt(p, "qwen-instruct")
    assert text.startswith("<|im_start|>system\n")
    assert text.endswith("<|im_end|>\n<|im_start|>assistant\nLet me solve this step by step.\n<think>")
    user = BASE.split("User: ")[1].split("\n")[0].format(nums=[3, 5, 7], target=22)
    assert "<|im_start|>user\n" in text and user + "<|im_end|>" in text
    assert text.count("<|im_start|>") == 3 and text.count("<|im_end|>") == 2
    assert "Assistant:" not in text


def test_unknown_template():
    with pytest.raises(VerilensError):
        prompt(Problem([1, 2], 3), "chatml")


# --------------------------------------------------------------------------- char_to_token


@pytest.fixture(scope="module")
def tokenizer():
    pytest.importorskip("transformers")
    from verilens.models.tokenizer import train_tokenizer

    problems = generate_problems(150, seed=8)
    texts = [prompt(p) + write_trace(p, i) for i, p in enumerate(problems)]
    texts += [prompt(p, "qwen-instruct") + write_trace(p, 500 + i) for i, p in enumerate(problems)]
    return train_tokenizer(texts, vocab_size=512)


class EncodeDecodeOnly:
    """A tokenizer without offsets: only encode/decode (the slow path)."""

    def __init__(self, tok):
        self._tok = tok

    def encode(self, text, add_special_tokens=False):
        return self._tok.encode(text, add_special_tokens=add_special_tokens)

    def decode(self, ids):
        return self._tok.decode(ids)


def _marker_texts():
    problems = generate_problems(12, seed=44)  # different problems from the tokenizer corpus
    out = [(prompt(Problem([12, 90, 60, 67], 49)) + PUBLISHED[len("<think>"):], 49)]
    for i, p in enumerate(problems):
        out.append((prompt(p) + write_trace(p, 77 + i), p.target))
    return out


def test_char_to_token_marker_fast(tokenizer):
    n = 0
    for text, target in _marker_texts():
        ids = tokenizer.encode(text, add_special_tokens=False)
        for a in parse_trace(text, target):
            i = char_to_token(tokenizer, text, a.marker)
            assert tokenizer.decode([ids[i]]) == " ("
            assert tokenizer.decode([ids[i + 1]]) == ("this" if a.verdict == "valid" else "not")
            # the last digit of the claimed value is the token right before
            assert re.fullmatch(r"\d", tokenizer.decode([ids[i - 1]]))
            # the "(" character belongs to the same token
            assert char_to_token(tokenizer, text, a.marker + 1) == i
            n += 1
    assert n >= 12


def test_char_to_token_slow_path_agrees(tokenizer):
    slow = EncodeDecodeOnly(tokenizer)
    assert not callable(slow)
    for text, target in _marker_texts()[:4]:
        ids = slow.encode(text)
        for a in parse_trace(text, target):
            i = char_to_token(slow, text, a.marker)
            assert i == char_to_token(tokenizer, text, a.marker)
            assert slow.decode([ids[i]]) == " ("
    # every character maps to the same token both ways
    text = _marker_texts()[0][0]
    rng = random.Random(1)
    for off in [0, len(text) - 1] + [rng.randrange(len(text)) for _ in range(30)]:
        assert char_to_token(slow, text, off) == char_to_token(tokenizer, text, off)


def test_char_to_token_out_of_range(tokenizer):
    with pytest.raises(IndexError):
        char_to_token(tokenizer, "- 1 + 1 = 2 (not 3)", 100)
    with pytest.raises(IndexError):
        char_to_token(tokenizer, "abc", -1)
    with pytest.raises(IndexError):
        char_to_token(EncodeDecodeOnly(tokenizer), "abc", 3)


# --------------------------------------------------------------------------- in-context prompts


def test_icl_prompt():
    from verilens.countdown import icl_prompt

    p = Problem([12, 90, 60, 67], 49)
    text = icl_prompt(p, shots=3, seed=1)
    assert text == icl_prompt(p, shots=3, seed=1) and text != icl_prompt(p, shots=3, seed=2)
    assert text.endswith(prompt(p).split("\n", 1)[1])  # ends with the problem's own turn, "...<think>"
    assert text.startswith(prompt(p).split("\n", 1)[0])  # the base template's header, once
    assert text.count("\n<answer> ") == 3 == text.count("(this works)")
    for shot in text.split("step by step.\n<think>")[1:-1]:  # every example parses, and its answer earns reward 1
        body = shot.split("\n\nUser:")[0]
        atts = parse_trace(body, int(body.split("equals ")[1].split(".")[0]))
        assert atts and atts[-1].verdict == "valid" and atts[-1].is_correct
        assert all(a.arithmetic_ok for a in atts)
    assert icl_prompt(p, shots=0) == prompt(p)
    with pytest.raises(VerilensError):
        icl_prompt(p, shots=-1)


def test_p_slip_target_sets_how_often_a_wrong_claim_is_the_target():
    problems = generate_problems(60, seed=13)
    for share in (0.0, 0.5, 1.0):
        hits = wrong = 0
        for i, p in enumerate(problems):
            for a in parse_trace(write_trace(p, i, p_slip=1.0, p_slip_target=share), p.target):
                if a.claimed != a.value:  # a slipped claim
                    wrong += 1
                    hits += a.hits_target
                    assert (a.verdict == "valid") == a.hits_target  # the verdict follows the claim
        assert wrong > 20
        if share in (0.0, 1.0):
            assert hits / wrong == share
        else:
            assert 0.35 < hits / wrong < 0.65


@pytest.mark.parametrize("p_last", [1.0, 0.5])
def test_drill_trace(p_last):
    """Claims are the target or one digit away from it (with p_last=1: only the last digit
    changed), about half each; verdicts follow claimed == target; only the verdicts and the
    rest of their lines are left out of the untrained spans; deterministic for a seed."""
    from verilens.countdown.synth import DRILL_LINES, drill_trace

    hits = n = last = 0
    for i, p in enumerate(generate_problems(40, seed=17) + [Problem([3, 4, 5], 7), Problem([9, 10, 1], 90)]):
        text, untrained = drill_trace(p, i, p_last=p_last)
        assert (text, untrained) == drill_trace(p, random.Random(i), p_last=p_last)
        assert text.startswith(" We have the numbers") and "<answer>" not in text
        atts = parse_trace(text, p.target)
        assert DRILL_LINES[0] <= len(atts) <= DRILL_LINES[1]
        check_markers(text, atts)
        t = str(p.target)
        for a in atts:
            c = a.segments[-1]
            assert a.verdict == ("valid" if a.hits_target else "invalid")
            n += 1
            hits += a.hits_target
            if c != t:
                assert len(c) == len(t) and (sum(x != y for x, y in zip(c, t)) == 1 or c == t[::-1]), (c, t)
                last += c[:-1] == t[:-1]
        trained = [k for k in range(len(text)) if not any(s <= k < e for s, e in untrained)]
        verdict_chars = [k for a in atts for k in range(a.marker + 2, a.start + len(a.line))]
        assert trained == verdict_chars
    assert 0.4 < hits / n < 0.6
    if p_last == 1.0:
        assert last == n - hits
    else:
        assert 0.5 < last / (n - hits) < 0.85  # the rest change the first digit or swap the two
