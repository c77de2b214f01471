"""Hooked runtime overhead vs plain Hugging Face, TransformerLens and nnsight (issue 4, section 6).

SmolLM2-135M fp32 on CPU, one process, side by side:
- forward, batch 8 x 256 tokens: plain HF (the baseline) vs the same forward that caches
  resid_post of every layer at 2 positions per sequence and zero-ablates 3 heads, in
  verilens (target <= 1.10x), TransformerLens (TransformerBridge, its current API) and nnsight;
- greedy generation of 64 tokens, batch 4, KV cache: plain HF generate vs generation
  with the 3 heads ablated on steps whose last input token is " (" (the paper's trigger),
  in verilens (target <= 1.15x), TransformerLens and nnsight.
TransformerLens and nnsight are benchmark-only extras (`pip install transformer_lens
nnsight -c <torch pin>`); their tests skip when they are missing. Each tool's output is
checked against verilens once before timing, so every timed row does the same work.

Run:  python -m pytest benchmarks/bench_hooks.py --benchmark-only -q
Peak memory (sampled RSS above the loaded model, one fresh process per workload):
      python benchmarks/bench_hooks.py peak
Paired (plain HF and verilens alternate, so the machine's drift hits both alike; the ratio
of each pair, median and quartiles):
      python benchmarks/bench_hooks.py paired [ROUNDS]
Needs the SmolLM2 folder made by the test fixture (run tests/models once) or VERILENS_SMOLLM2.

On a GPU: VERILENS_BENCH_DEVICE=cuda (bf16 unless VERILENS_BENCH_DTYPE says otherwise; each
timed call ends with a synchronize; on CUDA the runtime ablates heads through the fused
o_proj kernel). VERILENS_SMOLLM2=random builds SmolLM2-135M's architecture with random
weights instead of loading it (the device machine has no copy of the weights): the same
shapes, so the same work; greedy tokens differ, so the trigger fires at other steps.
"""
import importlib.util
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch

import verilens

BATCH, SEQ = 8, 256
GEN_BATCH, GEN_PROMPT, GEN_NEW = 4, 128, 64
HEADS = [(3, 1), (7, 4), (12, 2)]
POSITIONS = [SEQ // 2, SEQ - 1]
DEVICE = os.environ.get("VERILENS_BENCH_DEVICE", "cpu")
DTYPE = getattr(torch, os.environ.get("VERILENS_BENCH_DTYPE", "bfloat16" if DEVICE == "cuda" else "float32"))
RANDOM = os.environ.get("VERILENS_SMOLLM2") == "random"
SMOLLM2_CONFIG = dict(hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
                      num_key_value_heads=3, head_dim=64, vocab_size=49152, max_position_embeddings=8192,
                      rms_norm_eps=1e-5, rope_parameters={"rope_type": "default", "rope_theta": 100000.0},
                      tie_word_embeddings=True, bos_token_id=1, eos_token_id=2, pad_token_id=2)


def load_smollm2():
    if not RANDOM:
        return verilens.load(smollm2_dir(), device=DEVICE, dtype=DTYPE)
    from transformers import LlamaConfig, LlamaForCausalLM

    from verilens.hooks import HookedModel

    torch.manual_seed(0)
    hf = LlamaForCausalLM(LlamaConfig(**SMOLLM2_CONFIG)).to(DEVICE, DTYPE).eval()
    # the workloads feed token ids; the tokenizer only resolves the " (" trigger
    return HookedModel(hf, verilens.load("countdown-tiny").tokenizer, "smollm2-135m-architecture-random")


def synced(fn):
    """On CUDA a timed call ends when the GPU is done."""
    if DEVICE != "cuda":
        return fn

    def run(*args):
        out = fn(*args)
        torch.cuda.synchronize()
        return out
    return run


def smollm2_dir() -> Path:
    env = os.environ.get("VERILENS_SMOLLM2")
    root = os.environ.get("VERILENS_TEST_CACHE", str(Path.home() / ".cache" / "verilens-tests"))
    path = Path(env) if env else Path(root) / "smollm2-135m"
    if not (path / "config.json").exists():
        pytest.skip(f"no converted SmolLM2 folder at {path}; run tests/models once")
    return path


def inputs(d_vocab):
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(100, d_vocab - 100, (BATCH, SEQ), generator=g)
    gen = ids[:GEN_BATCH, :GEN_PROMPT].clone()
    return ids, gen


# ----------------------------------------------------------------------------- workloads
# Each returns (logits, resid_post at POSITIONS [L, batch, 2, d]) or generated ids.

def hf_forward(m, ids):
    with torch.no_grad():
        return m.hf_model(input_ids=ids).logits


def verilens_forward(m, ids):
    # under no_grad like every other arm: a HookedModel records gradients when grad mode is on
    # (TransformerLens' behaviour, for backward hooks), which costs ~15 % here
    names = [f"blocks.{l}.hook_resid_post" for l in range(m.cfg.n_layers)]
    pos = torch.tensor([POSITIONS] * ids.shape[0])
    with torch.no_grad(), m.intervene(verilens.ablate_heads(HEADS)):
        logits, cache = m.run_with_cache(ids, names_filter=names, positions=pos)
    return logits, torch.stack([cache[n] for n in names])


def hf_generate(m, gen):
    with torch.no_grad():
        return m.hf_model.generate(gen, attention_mask=torch.ones_like(gen), max_new_tokens=GEN_NEW,
                                   min_new_tokens=GEN_NEW, do_sample=False)


def verilens_generate(m, gen):
    with m.intervene(verilens.ablate_heads(HEADS), when=verilens.at_token(" (")):
        return m.generate(gen, max_new_tokens=GEN_NEW, stop_at_eos=False)


class TL:
    """TransformerLens's TransformerBridge on the same checkpoint (eager attention)."""

    def __init__(self, path, d_head, paren):
        from transformer_lens.model_bridge import TransformerBridge

        self.bridge = TransformerBridge.boot_transformers(str(path), device="cpu", dtype=torch.float32)
        self.dh, self.paren, self.last = d_head, paren, None

    def _ablate(self, trigger):
        def fn(z, hook):  # z [b, p, H, d_head] (or flat heads)
            l = int(hook.name.split(".")[1])
            rows = (self.last == self.paren) if trigger else slice(None)
            flat = z.reshape(*z.shape[:2], -1)
            for hl, h in HEADS:
                if hl == l:
                    flat[rows, :, h * self.dh:(h + 1) * self.dh] = 0
            return flat.view_as(z)
        return [(f"blocks.{l}.attn.hook_z", fn) for l in sorted({l for l, _ in HEADS})]

    def forward(self, ids):
        names = [f"blocks.{l}.hook_resid_post" for l in range(self.bridge.cfg.n_layers)]
        with torch.no_grad(), self.bridge.hooks(fwd_hooks=self._ablate(False)):
            logits, cache = self.bridge.run_with_cache(ids, names_filter=lambda n: n in names)
        return logits, torch.stack([cache[n][:, POSITIONS] for n in names])

    def generate(self, gen):
        # Without its KV cache: with it (use_past_kv_cache=True), TransformerLens 4.3's bridge
        # generates wrong tokens on this Llama checkpoint under transformers 5.24 (the same
        # token repeated after the first step; HF, nnsight and verilens agree with each other).
        def track(x, hook):  # the tokens of this step, for the trigger
            self.last = x[:, -1]
        hooks = [("embed.hook_in", track)] + self._ablate(True)
        with torch.no_grad(), self.bridge.hooks(fwd_hooks=hooks):
            return self.bridge.generate(gen, max_new_tokens=GEN_NEW, do_sample=False, stop_at_eos=False,
                                        use_past_kv_cache=False, verbose=False)


class NNsight:
    """nnsight wrapping the same HF module object."""

    def __init__(self, hf_model, tokenizer, d_head, paren):
        from nnsight import LanguageModel

        self.lm, self.dh, self.paren = LanguageModel(hf_model, tokenizer=tokenizer), d_head, paren

    def forward(self, ids):
        saved = []
        layers = self.lm.model.layers
        with torch.no_grad(), self.lm.trace(ids):
            for l in range(len(layers)):
                for hl, h in HEADS:
                    if hl == l:
                        layers[l].self_attn.o_proj.input[:, :, h * self.dh:(h + 1) * self.dh] = 0
                out = layers[l].output
                out = out[0] if isinstance(out, tuple) else out
                saved.append(out[:, POSITIONS].save())
            logits = self.lm.lm_head.output.save()
        return logits, torch.stack(saved)

    def generate(self, gen):
        layers, paren, dh = self.lm.model.layers, self.paren, self.dh
        with torch.no_grad(), self.lm.generate(gen, max_new_tokens=GEN_NEW, min_new_tokens=GEN_NEW,
                                               do_sample=False) as tracer:
            for _ in tracer.iter[:GEN_NEW]:  # bounded: code after an open-ended loop never runs
                rows = self.lm.model.embed_tokens.input[:, -1] == paren
                for l, h in HEADS:
                    x = layers[l].self_attn.o_proj.input
                    x[rows, -1, h * dh:(h + 1) * dh] = 0
            out = tracer.result.save()
        return out


# ----------------------------------------------------------------------------- fixtures

@pytest.fixture(scope="module")
def model():
    torch.set_num_threads(os.cpu_count() or 1)
    return load_smollm2()


@pytest.fixture(scope="module")
def data(model):
    return tuple(x.to(model.device) for x in inputs(model.cfg.d_vocab))


def _paren(model):
    return model.tokenizer.encode(" (", add_special_tokens=False)[-1]


@pytest.fixture(scope="module")
def tl(model, data):
    if importlib.util.find_spec("transformer_lens") is None:
        pytest.skip("TransformerLens not installed (benchmark-only extra)")
    tool = TL(smollm2_dir(), model.cfg.d_head, _paren(model))
    ids, gen = data
    logits, resid = tool.forward(ids[:2])
    ref_logits, ref_resid = verilens_forward(model, ids[:2])
    # eager vs SDPA attention: fp32 drift of ~1e-4 on logits of this size
    assert (logits - ref_logits).abs().max() < 1e-2 and (resid - ref_resid).abs().max() < 1e-2
    return tool


@pytest.fixture(scope="module")
def nns(model, data):
    if importlib.util.find_spec("nnsight") is None:
        pytest.skip("nnsight not installed (benchmark-only extra)")
    tool = NNsight(model.hf_model, model.tokenizer, model.cfg.d_head, _paren(model))
    ids, gen = data
    logits, resid = tool.forward(ids[:2])
    ref_logits, ref_resid = verilens_forward(model, ids[:2])
    assert (logits - ref_logits).abs().max() < 1e-4 and (resid - ref_resid).abs().max() < 1e-4
    return tool


# ----------------------------------------------------------------------------- timed rows

TOOLS = ["plain_hf", "verilens", "transformerlens", "nnsight"]


def _workload(request, model, data, tool, kind):
    """(function, args) of one timed row; TL and nnsight come from their (skipping) fixtures."""
    ids = data[0] if kind == "forward" else data[1]
    if tool in ("transformerlens", "nnsight"):
        if RANDOM or DEVICE != "cpu":
            pytest.skip("TransformerLens and nnsight rows: the real checkpoint on CPU only")
        t = request.getfixturevalue("tl" if tool == "transformerlens" else "nns")
        return getattr(t, kind), (ids,)
    fn = {("plain_hf", "forward"): hf_forward, ("verilens", "forward"): verilens_forward,
          ("plain_hf", "generate"): hf_generate, ("verilens", "generate"): verilens_generate}[tool, kind]
    return synced(fn), (model, ids)


@pytest.mark.parametrize("tool", TOOLS)
def test_forward(benchmark, request, model, data, tool):
    benchmark.group = "forward 8x256: cache resid_post at 2 positions, ablate 3 heads"
    fn, args = _workload(request, model, data, tool, "forward")
    benchmark.pedantic(fn, args=args, rounds=5, warmup_rounds=1)


@pytest.mark.parametrize("tool", TOOLS)
def test_generate(benchmark, request, model, data, tool):
    benchmark.group = "generate 4x64 greedy, KV cache, trigger ablation"
    fn, args = _workload(request, model, data, tool, "generate")
    benchmark.pedantic(fn, args=args, rounds=3, warmup_rounds=1)


# ----------------------------------------------------------------------------- peak memory

def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _one(name):
    """Run one workload in this (fresh) process; print its sampled RSS peak above the
    RSS right before it (model loaded, inputs built, one warm-up run done)."""
    torch.set_num_threads(os.cpu_count() or 1)
    m = load_smollm2()
    ids, gen = inputs(m.cfg.d_vocab)
    tool, kind = name.split("_")
    if tool == "tl":
        t = TL(smollm2_dir(), m.cfg.d_head, _paren(m))
        run = (lambda: t.forward(ids)) if kind == "forward" else (lambda: t.generate(gen))
    elif tool == "nnsight":
        t = NNsight(m.hf_model, m.tokenizer, m.cfg.d_head, _paren(m))
        run = (lambda: t.forward(ids)) if kind == "forward" else (lambda: t.generate(gen))
    else:
        fn = {"hf_forward": hf_forward, "verilens_forward": verilens_forward,
              "hf_generate": hf_generate, "verilens_generate": verilens_generate}[name]
        run = lambda: fn(m, ids if kind == "forward" else gen)  # noqa: E731
    print(f"{name}: {peak_above(run) / 2**20:.0f} MiB above the loaded model")


def peak_above(run) -> int:
    """Bytes of sampled RSS peak of run() above the RSS right before it (after one warm-up run)."""
    run()
    base, peak, done = _rss(), [0], threading.Event()

    def sample():
        while not done.is_set():
            peak[0] = max(peak[0], _rss())
            time.sleep(0.001)
    th = threading.Thread(target=sample)
    th.start()
    run()
    done.set()
    th.join()
    return peak[0] - base


def paired(rounds: int):
    """Alternate plain HF and verilens on each workload; print the per-pair ratios."""
    import statistics

    torch.set_num_threads(os.cpu_count() or 1)
    m = load_smollm2()
    ids, gen = (x.to(m.device) for x in inputs(m.cfg.d_vocab))
    for kind, base, ours, x in (("forward", hf_forward, verilens_forward, ids),
                                ("generate", hf_generate, verilens_generate, gen)):
        base, ours = synced(base), synced(ours)
        base(m, x), ours(m, x)  # warm-up
        tb, to = [], []
        for r in range(rounds):
            for fn, times in ((base, tb), (ours, to)) if r % 2 == 0 else ((ours, to), (base, tb)):
                t0 = time.perf_counter()
                fn(m, x)
                times.append(time.perf_counter() - t0)
        ratios = sorted(o / b for o, b in zip(to, tb))
        q = statistics.quantiles(ratios, n=4)
        print(f"{kind}: plain HF median {statistics.median(tb):.3f} s, verilens {statistics.median(to):.3f} s; "
              f"per-pair ratio median {statistics.median(ratios):.3f} (quartiles {q[0]:.3f}-{q[2]:.3f}, "
              f"{rounds} pairs)")


if __name__ == "__main__":
    if sys.argv[1:2] == ["paired"]:
        paired(int(sys.argv[2]) if len(sys.argv) > 2 else 15)
    elif sys.argv[1:2] == ["_one"]:
        _one(sys.argv[2])
    elif sys.argv[1:2] == ["peak"]:
        for name in ("hf_forward", "verilens_forward", "tl_forward", "nnsight_forward",
                     "hf_generate", "verilens_generate", "tl_generate", "nnsight_generate"):
            tool = name.split("_")[0]
            if tool in ("tl", "nnsight") and importlib.util.find_spec(
                    {"tl": "transformer_lens", "nnsight": "nnsight"}[tool]) is None:
                print(f"{name}: skipped (not installed)")
                continue
            r = subprocess.run([sys.executable, __file__, "_one", name], capture_output=True, text=True)
            print(r.stdout.strip().splitlines()[-1] if r.returncode == 0 else f"{name}: failed\n{r.stderr[-2000:]}")
    else:
        print(__doc__)
