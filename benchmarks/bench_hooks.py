"""Hooked runtime overhead vs plain Hugging Face (issue 4, section 6).

SmolLM2-135M fp32 on CPU, batch 8 x 256 tokens:
- plain HF forward (baseline) vs a verilens forward that caches resid_post of every
  layer at 2 positions per sequence and ablates 3 heads (target: <= 1.10x);
- plain HF greedy generate, 64 tokens, batch 4, KV cache (baseline) vs verilens
  generate with a trigger intervention (target: <= 1.15x).
TransformerLens and nnsight are compared when installed (benchmark-only extras).

Run: python -m pytest benchmarks/bench_hooks.py --benchmark-only -q
(needs the SmolLM2 folder made by the test fixture: run tests/models first, or set
VERILENS_SMOLLM2 to a converted folder).
"""
import os
from pathlib import Path

import pytest
import torch

import verilens

BATCH, SEQ = 8, 256
HEADS = [(3, 1), (7, 4), (12, 2)]


def _smollm2_dir():
    env = os.environ.get("VERILENS_SMOLLM2")
    root = os.environ.get("VERILENS_TEST_CACHE", str(Path.home() / ".cache" / "verilens-tests"))
    path = Path(env) if env else Path(root) / "smollm2-135m"
    if not (path / "config.json").exists():
        pytest.skip(f"no converted SmolLM2 folder at {path}; run tests/models once")
    return path


@pytest.fixture(scope="module")
def model():
    torch.set_num_threads(os.cpu_count() or 1)
    return verilens.load(_smollm2_dir())


@pytest.fixture(scope="module")
def batch(model):
    g = torch.Generator().manual_seed(0)
    return torch.randint(100, model.cfg.d_vocab - 100, (BATCH, SEQ), generator=g)


def test_forward_plain_hf(benchmark, model, batch):
    benchmark.group = "forward 8x256"
    with torch.no_grad():
        benchmark(lambda: model.hf_model(input_ids=batch).logits)


def test_forward_verilens_cache_and_ablate(benchmark, model, batch):
    benchmark.group = "forward 8x256"
    names = [f"blocks.{l}.hook_resid_post" for l in range(model.cfg.n_layers)]
    pos = torch.tensor([[SEQ // 2, SEQ - 1]] * BATCH)

    def run():
        with model.intervene(verilens.ablate_heads(HEADS)):
            return model.run_with_cache(batch, names=names, positions=pos)

    benchmark(run)


def test_generate_plain_hf(benchmark, model, batch):
    benchmark.group = "generate 4x64"
    ids = batch[:4, :128]
    with torch.no_grad():
        benchmark.pedantic(lambda: model.hf_model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=64,
                                                           min_new_tokens=64, do_sample=False), rounds=3)


def test_generate_verilens_trigger(benchmark, model, batch):
    benchmark.group = "generate 4x64"
    ids = batch[:4, :128]
    trigger = verilens.at_token(" (")

    def run():
        with model.intervene(verilens.ablate_heads(HEADS), when=trigger):
            return model.generate(ids, max_new_tokens=64, stop_at_eos=False)

    benchmark.pedantic(run, rounds=3)
