"""The format rule of greedy decoding, "a verdict ends its line" (countdown.decoding), on the
real vocabularies of countdown-tiny (")\\n" is one token) and SmolLM2 (")" and "\\n"), and in
generation: the same tokens on both of HookedModel.generate's paths, no change to a
generation that keeps the format, and the run-on it exists for."""
import re

import pytest
import torch
import transformers as T

import verilens
from verilens.countdown import generate_problems, prompt
from verilens.countdown.decoding import VerdictEndsLine
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
    rule = VerdictEndsLine(tok)
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


def test_both_generate_paths_agree(tiny):
    """Hugging Face's loop (no stop string) and verilens' own (a stop string) give the same
    tokens under the rule."""
    prompts = [prompt(p) for p in generate_problems(6, seed=5, split="test")]
    rule = VerdictEndsLine(tiny.tokenizer)
    hf = tiny.generate(prompts, max_new_tokens=200, logits_processor=rule)
    ours = tiny.generate(prompts, max_new_tokens=200, logits_processor=rule, stop="never written")
    assert torch.equal(hf.tokens, ours.tokens)


def test_format_kept_unchanged_and_run_on_ended(tiny):
    """Generations that keep the format are the same token for token with and without the
    rule; where greedy ran on after a verdict, under the rule every verdict ends its line."""
    problems = generate_problems(100, seed=0, split="test")  # 3 run on without the rule
    prompts = [prompt(p) for p in problems]
    free = generate(tiny, prompts, progress=False, verdict_ends_line=False)
    ruled = generate(tiny, prompts, progress=False)
    run_on = 0
    for f, r in zip(free, ruled):
        if RUN_ON.search(f):
            run_on += 1
            assert not RUN_ON.search(r), r
        else:
            assert r == f
    assert run_on > 0  # the case the rule is for is in this sample
