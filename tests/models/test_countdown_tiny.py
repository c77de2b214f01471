"""The built-in model: shipped files, Qwen tokenizer conventions, and the eval bar."""
import json

import pytest
import torch

import verilens
from verilens.countdown import generate_problems, parse_trace, prompt
from verilens.models import builtin_path
from verilens.models.evaluate import evaluate, generate


@pytest.fixture(scope="module")
def tiny():
    return verilens.load("countdown-tiny")


def test_shipped_files_are_small_and_qwen2():
    path = builtin_path("countdown-tiny")
    size = sum(f.stat().st_size for f in path.iterdir())
    assert size < 12 * 2**20
    cfg = json.loads((path / "config.json").read_text())
    assert cfg["model_type"] == "qwen2" and cfg["num_key_value_heads"] < cfg["num_attention_heads"]


def test_tokenizer_conventions(tiny):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(builtin_path("countdown-tiny"))
    for s in [" (", "not", "this"] + [str(d) for d in range(10)]:
        assert len(tok.encode(s, add_special_tokens=False)) == 1, s
    line = "- 90 - 67 - 60 + 12 = -15 (not 49)"
    toks = tok.convert_ids_to_tokens(tok.encode(line, add_special_tokens=False))
    assert "Ġ(" in toks and "not" in toks
    assert tok.decode(tok.encode(line, add_special_tokens=False)) == line
    # multi-digit numbers are split into single digits, as in Qwen
    assert [tok.decode([i]) for i in tok.encode("1234", add_special_tokens=False)] == ["1", "2", "3", "4"]
    assert tiny.cfg.d_vocab >= len(tok)


def test_save_load_round_trip(tiny, tmp_path):
    from verilens.models.train import save_model

    save_model(tiny.hf_model, tiny.tokenizer, tmp_path / "copy")
    again = verilens.load(tmp_path / "copy")
    ids = tiny.to_tokens(prompt(generate_problems(1, seed=2)[0]))
    torch.testing.assert_close(tiny(ids), again(ids), rtol=0, atol=0)


@pytest.mark.slow
def test_eval_bar_on_unseen_problems(tiny):
    m = evaluate(tiny, n=500, seed=123, progress=False)
    assert m["parse_rate"] >= 0.99
    assert m["verdict_agreement"] >= 0.99
    assert m["n_valid_verdicts"] > 0 and m["n_invalid_verdicts"] > 0
    assert m["both_verdicts_rate"] >= 0.5  # most generations fail before they succeed
    for pos, v in m["verdict_agreement_by_position"].items():
        if v["attempts"] >= 20:
            assert v["agreement"] >= 0.95, (pos, v)
    for kind, v in m["forced_verdicts"].items():  # the verdict follows the comparison, also on wrong claims
        assert v["accuracy"] >= 0.95, (kind, v)


def test_generations_parse_with_markers_on_paren_tokens(tiny):
    ps = generate_problems(4, seed=9, split="test")
    gens = generate(tiny, [prompt(p) for p in ps], progress=False)
    from verilens.countdown import char_to_token

    for p, g in zip(ps, gens):
        for a in parse_trace(g, p.target):
            if a.marker is not None:
                i = char_to_token(tiny.tokenizer, g, a.marker)
                assert tiny.tokenizer.decode(tiny.tokenizer.encode(g, add_special_tokens=False)[i]) == " ("


def test_forced_verdicts_read_the_verdict_token_after_each_marker(tiny):
    """forced_verdicts scores the logits at the " (" of every attempt of the synthetic
    traces: recompute one trace by hand and compare."""
    import random

    from verilens.countdown.synth import trace_and_slips
    from verilens.models.evaluate import forced_verdicts

    ps = generate_problems(6, seed=4, split="test")
    got = forced_verdicts(tiny.hf_model, tiny.tokenizer, ps, seed=11)
    rng, ok, seen = random.Random(11), {}, {}
    this, not_ = tiny.tokenizer.convert_tokens_to_ids(["this", "not"])
    for p in ps:
        text, _ = trace_and_slips(p, rng, p_slip=0.5, p_final_slip=0.3)
        ids = tiny.to_tokens(prompt(p) + text)
        logits = tiny(ids)[0]
        for a in parse_trace(text, p.target):
            i = len(tiny.tokenizer.encode(prompt(p) + text[: a.marker], add_special_tokens=False))
            assert tiny.to_string(ids[0, i]) == " ("
            kind = "honest" if a.claimed == a.value else ("target_claims_wrong" if a.hits_target else "other_claims_wrong")
            seen[kind] = seen.get(kind, 0) + 1
            ok[kind] = ok.get(kind, 0) + (bool(logits[i, this] > logits[i, not_]) == a.hits_target)
    assert sum(seen.values()) > 10
    for kind, v in got.items():
        assert v["attempts"] == seen.get(kind, 0)
        if seen.get(kind):
            assert v["accuracy"] == pytest.approx(ok[kind] / seen[kind])
