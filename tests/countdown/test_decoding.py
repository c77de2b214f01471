"""The format rules of greedy decoding, "a verdict ends its line" and "an attempt is not
written twice" (countdown.decoding), on the real vocabularies of countdown-tiny (")\\n" is one
token, numbers in pieces) and SmolLM2 (")" and "\\n", one digit a token), and in generation:
the same tokens on both of HookedModel.generate's paths, no change to a generation that keeps
the format, and the run-on it exists for. The loop rule 2 exists for is countdown-smol's
(tests/models/test_countdown_smol.py)."""
import re

import pytest
import torch
import transformers as T

import verilens
from verilens.countdown import generate_problems, prompt
from verilens.countdown.decoding import FormatRules
from verilens.models.evaluate import generate
from verilens.models.loading import builtin_path


RUN_ON = re.compile(r"\((?:this works|not [^()\n]*)\)(?!\n|$)")  # a verdict with more after it on its line


@pytest.fixture(scope="module")
def tiny():
    return verilens.load("countdown-tiny")


def _banned(rule, tokenizer, text):
    ids = torch.tensor([tokenizer(text, add_special_tokens=False)["input_ids"]])
    scores = torch.randn(1, len(tokenizer))
    out = rule(ids, scores.clone())
    return {tokenizer.decode([i]) for i in (out[0] == float("-inf")).nonzero()[:, 0].tolist()}, out, scores


@pytest.mark.parametrize("vocab", ["countdown-tiny", "smollm2"])
def test_what_the_rule_bans(vocab, request):
    path = builtin_path("countdown-tiny") if vocab == "countdown-tiny" else request.getfixturevalue("smollm2_dir")
    tok = T.AutoTokenizer.from_pretrained(path)
    rule = FormatRules(tok)
    one_token = ")\n" in {tok.decode([i]) for i in range(len(tok))}
    assert one_token == (vocab == "countdown-tiny")
    for verdict in (" (not 82", " (this works"):
        banned, _, _ = _banned(rule, tok, "- 40 + 29 - 63 = 10" + verdict)
        assert banned and all(t.startswith(")") for t in banned)  # only closing tokens are touched
        assert not any(t.startswith(")\n") for t in banned)
        assert (")" in banned) == one_token  # the bare ")" only where ")\n" is the model's own close
    if not one_token:
        for closed in ("= 10 (not 82)", "= 82 (this works)"):
            banned, out, _ = _banned(rule, tok, closed)
            allowed = {tok.decode([i]) for i in (out[0] > float("-inf")).nonzero()[:, 0].tolist()}
            assert allowed and all(t.startswith("\n") or t == tok.eos_token for t in allowed)
    for free in ("- 40 + 29 - 63 = 10", "So, the equation (this", "(note 82", "(not 82)\n-"):
        banned, out, scores = _banned(rule, tok, free)
        assert not banned and torch.equal(out, scores)


@pytest.mark.parametrize("vocab", ["countdown-tiny", "smollm2"])
def test_what_the_no_repeat_rule_bans(vocab, request):
    path = builtin_path("countdown-tiny") if vocab == "countdown-tiny" else request.getfixturevalue("smollm2_dir")
    tok = T.AutoTokenizer.from_pretrained(path)
    rule = FormatRules(tok)
    tried = "Let's try:\n- 40 - 5 - (85 - 3) = 34 - 2 = 30 (not 70)\n"
    # the line repeats the attempt up to its claim: the old claim cannot start, the target can
    banned, _, _ = _banned(rule, tok, tried + "- 40 - 5 - (85 - 3) = 34 - 2 = ")
    assert banned and all("30".startswith(t) or t.startswith("30") for t in banned), banned
    assert not any(t.startswith("7") for t in banned)
    # a claim that starts like the target is allowed to start, and not to end as the old one
    earlier = "Let's try:\n- 40 - 5 = 35 (not 3)\n- 40 - 5 = "
    banned, _, _ = _banned(rule, tok, earlier)
    assert "3" not in banned
    banned, out, _ = _banned(rule, tok, earlier + "35")
    allowed = {tok.decode([i]) for i in (out[0] > float("-inf")).nonzero()[:, 0].tolist()}
    assert allowed and all(t[:1].isdigit() for t in allowed)  # only a longer number: "35" was rejected
    # untouched: another expression, other steps, the correction itself, the first attempt
    for free in (tried + "- 40 - 5 - (85 - 2) = ", tried + "- 40 - 5 - (85 - 3) = 34 - 3 = ",
                 tried + "- 40 - 5 - (85 - 3) = 34 - 2 = 7", "Let's try:\n- 40 - 5 - (85 - 3) = 34 - 2 = "):
        banned, out, scores = _banned(rule, tok, free)
        assert not banned and torch.equal(out, scores), free


def test_both_generate_paths_agree(tiny):
    """Hugging Face's loop (no stop string) and verilens' own (a stop string) give the same
    tokens under the rule."""
    prompts = [prompt(p) for p in generate_problems(6, seed=5, split="test")]
    rule = FormatRules(tiny.tokenizer)
    hf = tiny.generate(prompts, max_new_tokens=200, logits_processor=rule)
    ours = tiny.generate(prompts, max_new_tokens=200, logits_processor=rule, stop="never written")
    assert torch.equal(hf.tokens, ours.tokens)


def _repeats(text):
    """Whether a line goes on from an earlier attempt's expression and steps with a value that
    starts like that attempt's claim: an attempt written twice, or (rarely) a step that starts
    like the rejected claim, which rule 2 cuts too."""
    lines = [line for line in text.split("\n") if line.startswith("- ")]
    for i, line in enumerate(lines):
        for old in lines[:i]:
            if " (" in old and " = " in old:
                head = old.rsplit(" (", 1)[0]
                at = head.rindex(" = ") + 3
                if line.startswith(head[: at + 1]):
                    return True
    return False


def test_format_kept_unchanged_and_run_on_ended(tiny):
    """Generations that keep the format are the same token for token with and without the
    rules; where greedy ran on after a verdict, under the rules every verdict ends its line,
    and where it wrote an attempt again, the rules' generation writes none twice."""
    problems = generate_problems(100, seed=0, split="test")  # without the rules: 3 run on, 51 repeat
    prompts = [prompt(p) for p in problems]
    free = generate(tiny, prompts, progress=False, format_rules=False)
    ruled = generate(tiny, prompts, progress=False)
    run_on = repeated = 0
    for f, r in zip(free, ruled):
        heads = [line.rsplit(" (", 1)[0] for line in r.split("\n") if line.startswith("- ") and " (" in line]
        assert len(heads) == len(set(heads)), r
        if RUN_ON.search(f) or _repeats(f):
            run_on += bool(RUN_ON.search(f))
            repeated += _repeats(f)
            assert not RUN_ON.search(r), r
        else:
            assert r == f
    assert run_on > 0 and repeated > 0  # the cases the rules are for are in this sample
