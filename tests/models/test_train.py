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
