"""Fault tests for `verilens train` (issue 24): killed (SIGKILL) or interrupted (SIGINT) at a
random point and run again, it ends with the weights of an uninterrupted run; damaged run
files are named in a clear error or rebuilt, never read as data."""
import os
import random
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file

from verilens.errors import VerilensError
from verilens.models.tiny import TinySpec
from verilens.models.train import train

SPEC = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1, intermediate_size=64,
            n_problems=300, tokenizer_corpus=150, batch_size=4, steps=12, warmup=2)
DRIVER = f"""
import sys
from verilens.models.tiny import TinySpec
from verilens.models.train import train
train(sys.argv[1], TinySpec(**{SPEC!r}), checkpoint_every=1, progress=False)
"""
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}


def weights(out):
    return load_file(str(out / "model" / "model.safetensors"))


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    out = tmp_path_factory.mktemp("train") / "full"
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-c", DRIVER, str(out)], env=ENV, check=True, capture_output=True, timeout=900)
    return out, time.perf_counter() - t0


@pytest.mark.slow  # 30-60 s on a shared 2-core machine
@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGINT])
def test_stopped_then_rerun_equals_uninterrupted(uninterrupted, tmp_path, sig):
    full, wall = uninterrupted
    out = tmp_path / "run"
    p = subprocess.Popen([sys.executable, "-c", DRIVER, str(out)], env=ENV, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE)
    time.sleep(random.Random(sig.value).uniform(0.3, 0.9) * wall)
    p.send_signal(sig)
    p.communicate(timeout=300)
    train(out, TinySpec(**SPEC), checkpoint_every=1, progress=False)
    want, got = weights(full), weights(out)
    assert want.keys() == got.keys() and all(torch.equal(want[k], got[k]) for k in want)


def test_damaged_run_files(uninterrupted, tmp_path):
    full, _ = uninterrupted
    out = tmp_path / "run"
    shutil.copytree(full, out)
    shutil.rmtree(out / "model")
    ckpt = out / "checkpoint.pt"
    good = ckpt.read_bytes()
    ckpt.write_bytes(good[: len(good) // 2])  # a raw PytorchStreamReader error before issue 24
    with pytest.raises(VerilensError, match="checkpoint.pt is damaged .* delete it to train from step 0"):
        train(out, TinySpec(**SPEC), checkpoint_every=1, progress=False)
    ckpt.write_bytes(good)
    tok = out / "tokenizer" / "tokenizer.json"
    tok.write_text(tok.read_text()[:500])  # the tokenizer is rebuilt from the seed, identically
    with pytest.warns(UserWarning, match="cannot be read.*training the tokenizer again"):
        train(out, TinySpec(**SPEC), checkpoint_every=1, progress=False)
    want, got = weights(full), weights(out)
    assert all(torch.equal(want[k], got[k]) for k in want)
    (out / "spec.json").write_text('{"seed": ')
    with pytest.raises(VerilensError, match="spec.json is damaged"):
        train(out, TinySpec(**SPEC), checkpoint_every=1, progress=False)
