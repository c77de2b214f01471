"""`verilens train`: deterministic for a seed, and a resumed run equals an uninterrupted one."""
import dataclasses
import json

import pytest
import torch
from safetensors.torch import load_file

from verilens.errors import VerilensError
from verilens.models.tiny import TinySpec
from verilens.models.train import train

SMALL = TinySpec(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1,
                 intermediate_size=64, n_problems=300, tokenizer_corpus=150, batch_size=4, steps=6, warmup=2)
# with verdict drills from step 0 (their loss is on few, heavily weighted tokens: no loss-goes-down test)
DRILLED = dataclasses.replace(SMALL, p_drill=0.25, p_pinned_drill=0.25)
LAYERDROP = dataclasses.replace(SMALL, layer_drop=0.5, layer_drop_from=1)


def _weights(path):
    return load_file(str(path / "model.safetensors"))


@pytest.fixture(scope="module")
def full_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("full")
    return out, train(out, SMALL, checkpoint_every=3, progress=False)


@pytest.mark.parametrize("spec", [SMALL, DRILLED, LAYERDROP], ids=["plain", "drills", "layerdrop"])
def test_resume_equals_uninterrupted(spec, full_run, tmp_path):
    final = full_run[1] if spec is SMALL else train(tmp_path / "full", spec, checkpoint_every=3, progress=False)
    out = tmp_path / "resumed"
    assert train(out, spec, checkpoint_every=2, progress=False, until_step=4) is None
    assert json.loads((out / "log.json").read_text())[-1]["step"] == 4
    resumed = train(out, spec, checkpoint_every=2, progress=False)
    a, b = _weights(final), _weights(resumed)
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0)


def test_layerdrop_skips_layers(tmp_path):
    """A layer dropped on every step gets no gradient (weight decay included); the others train."""
    spec = dataclasses.replace(SMALL, layer_drop=1.0, layer_drop_from=1)
    out = tmp_path / "ld"
    train(out, spec, checkpoint_every=2, progress=False, until_step=2)
    early = torch.load(out / "checkpoint.pt", weights_only=False)["model"]
    train(out, spec, checkpoint_every=2, progress=False)
    late = torch.load(out / "checkpoint.pt", weights_only=False)["model"]
    layer1 = [k for k in early if k.startswith("model.layers.1.")]
    layer0 = [k for k in early if k.startswith("model.layers.0.") and k.endswith("weight")]
    assert layer1 and layer0
    for k in layer1:
        torch.testing.assert_close(early[k], late[k], rtol=0, atol=0)
    assert all(not torch.equal(early[k], late[k]) for k in layer0)


def test_loss_goes_down_and_model_loads(full_run):
    import verilens

    out, final = full_run
    log = json.loads((out / "log.json").read_text())
    assert [e["step"] for e in log] == list(range(1, SMALL.steps + 1))
    assert log[-1]["loss"] < log[0]["loss"]
    m = verilens.load(final)
    assert m.hf_model.config.num_hidden_layers == 2
    assert m.hf_model.dtype == torch.float32


def test_different_settings_refused(full_run):
    out, _ = full_run
    with pytest.raises(VerilensError, match="different settings"):
        train(out, TinySpec(seed=1), progress=False)


def test_loss_weights_of_a_training_example(small_tokenizer):
    """Prompt: no loss; slipped claims: no loss; the verdict token after " (": verdict_weight;
    a " (" inside an expression does not make its next token a verdict."""
    import random

    from verilens.countdown import generate_problems
    from verilens.models.tiny import encode_example, training_texts

    tok = small_tokenizer
    rng = random.Random(0)
    seen_slip = seen_bracket = False
    for p_text, response, slips in training_texts(generate_problems(40, seed=4), rng, p_chain=0.3, p_slip=0.6):
        ids, w = encode_example(tok, p_text, response, verdict_weight=7.0, slips=slips)
        n_prompt = len(tok.encode(p_text, add_special_tokens=False))
        assert len(ids) == len(w) and set(w[:n_prompt]) == {0.0}
        enc = tok(response, add_special_tokens=False, return_offsets_mapping=True)
        for k, (a, b) in enumerate(enc["offset_mapping"]):
            i = n_prompt + k
            in_slip = any(a < e and s < b for s, e in slips)
            prev = tok.decode([ids[i - 1]])
            if prev == " (" and tok.decode([ids[i]]) in ("this", "not"):
                assert w[i] == 7.0
            elif in_slip:
                assert w[i] == 0.0
                seen_slip = True
            else:
                assert w[i] == 1.0, (tok.decode(ids[i - 3:i + 1]), w[i])
                seen_bracket |= prev == " ("
        for s, e in slips:  # every slip span is a number right before its verdict
            assert response[e:e + 2] == " (" and response[s:e].lstrip("-").replace(".", "").isdigit()
        assert w[-1] == 1.0  # the EOS
    assert seen_slip and seen_bracket


def test_spec_examples_drills(small_tokenizer):
    """Drills come in the spec's shares, pinned ones on targets ending in PINNED_DIGIT, with
    loss on the verdicts (and the rest of their lines) only and no EOS; with drills off the
    examples are exactly the normal traces drawn from the same rng (older recipes reproduce)."""
    import random

    from verilens.countdown import generate_problems, parse_trace
    from verilens.models.tiny import PINNED_DIGIT, encode_example, spec_examples, training_texts

    tok = small_tokenizer
    eos = tok.eos_token_id
    problems = generate_problems(120, seed=5)
    pinned = [p for p in problems if p.target % 10 == PINNED_DIGIT]
    spec = TinySpec(p_drill=0.3, p_pinned_drill=0.2, verdict_weight=7.0)

    off = spec_examples(tok, spec, problems, pinned, random.Random(1), drills=False)
    rng = random.Random(1)
    assert off == [encode_example(tok, a, b, 7.0, s) for a, b, s in
                   training_texts(problems, rng, spec.p_chain, spec.p_slip, spec.p_final_slip, spec.p_near,
                                  spec.p_slip_target)]

    on = spec_examples(tok, spec, problems, pinned, random.Random(1), drills=True)
    drills = [(ids, w) for ids, w in on if ids[-1] != eos]
    assert 0.35 < len(drills) / len(on) < 0.65
    for ids, w in drills:
        toks = [tok.decode([i]) for i in ids]
        for k, (t, x) in enumerate(zip(toks, w)):
            if x == 7.0:
                assert toks[k - 1] == " (" and t in ("this", "not")
            elif x == 1.0:  # after a verdict, before the line ends
                line = "".join(toks[:k + 1]).rsplit("\n", 1)[1]
                assert " (this" in line or " (not" in line
            else:
                assert x == 0.0
        assert w.count(7.0) >= 6

    only_pinned = spec_examples(tok, TinySpec(p_pinned_drill=1.0), problems[:20], pinned, random.Random(2), drills=True)
    for ids, _ in only_pinned:
        text = tok.decode(ids)
        target = int(text.split("equals ")[1].split(".")[0])
        assert target % 10 == PINNED_DIGIT
        for a in parse_trace(text.split("<think>", 1)[1], target):  # "ends in 2" decides every verdict
            assert a.hits_target == a.segments[-1].endswith(str(PINNED_DIGIT))
