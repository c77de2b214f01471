"""`verilens train`: deterministic for a seed, and a resumed run equals an uninterrupted one."""
import json

import pytest
import torch
from safetensors.torch import load_file

from verilens.errors import VerilensError
from verilens.models.tiny import TinySpec
from verilens.models.train import train

SMALL = TinySpec(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1,
                 intermediate_size=64, n_problems=300, tokenizer_corpus=150, batch_size=4, steps=6, warmup=2)


def _weights(path):
    return load_file(str(path / "model.safetensors"))


@pytest.fixture(scope="module")
def full_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("full")
    return out, train(out, SMALL, checkpoint_every=3, progress=False)


def test_resume_equals_uninterrupted(full_run, tmp_path):
    _, final = full_run
    assert train(tmp_path, SMALL, checkpoint_every=2, progress=False, until_step=4) is None
    assert json.loads((tmp_path / "log.json").read_text())[-1]["step"] == 4
    resumed = train(tmp_path, SMALL, checkpoint_every=2, progress=False)
    a, b = _weights(final), _weights(resumed)
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0)


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
