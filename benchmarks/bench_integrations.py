"""verilens inside TransformerLens and nnsight (issue 19, part 4): the tool alone vs the same
tool's model through `verilens.wrap`, against plain Hugging Face, in one paired run.

SmolLM2-135M fp32 on CPU, the workloads of bench_hooks.py (same inputs, same checks):
- forward 8 x 256: cache resid_post of every layer at 2 positions + zero-ablate 3 heads;
- greedy generate 4 x 64 with the 3 heads ablated on steps whose last token is " (".
Arms: plain HF (the baseline: no caching, no ablation), TransformerLens' TransformerBridge with
its own hooks, nnsight with its own interventions, verilens.wrap(bridge), verilens.wrap(nnsight
LanguageModel). The arms run in a rotating order each round, so the machine's drift hits all
alike; each arm's per-round ratio to plain HF is reported (median and quartiles).
Goal: through verilens each tool's model is <= 1.05x plain HF and faster than the tool alone
where the tool is slower; memory no higher than the tool alone.

Run:  python benchmarks/bench_integrations.py paired [ROUNDS]
      python benchmarks/bench_integrations.py peak     (sampled RSS, one fresh process per arm)
Needs the SmolLM2 folder made by the test fixture (run tests/models once) or VERILENS_SMOLLM2.
"""
import statistics
import subprocess
import sys
import time
import warnings

import torch

import verilens
from bench_hooks import (NNsight, TL, _paren, hf_forward, hf_generate, inputs, load_smollm2, peak_above, smollm2_dir,
                         verilens_forward, verilens_generate)

ARMS = ["plain_hf", "tl", "nnsight", "wrap_tl", "wrap_nnsight"]


def build(arms):
    """{arm: (forward(ids), generate(gen))} over one loaded SmolLM2; wrapped arms share the
    tool's weights (verilens.wrap copies nothing)."""
    m = load_smollm2()
    fns = {"plain_hf": (lambda x: hf_forward(m, x), lambda g: hf_generate(m, g))}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if {"tl", "wrap_tl"} & set(arms):
            tl = TL(smollm2_dir(), m.cfg.d_head, _paren(m))
            fns["tl"] = (tl.forward, tl.generate)
            w = verilens.wrap(tl.bridge)
            fns["wrap_tl"] = (lambda x: verilens_forward(w, x), lambda g: verilens_generate(w, g))
        if {"nnsight", "wrap_nnsight"} & set(arms):
            nn = NNsight(m.hf_model, m.tokenizer, m.cfg.d_head, _paren(m))
            wn = verilens.wrap(nn.lm)
            fns["nnsight"] = (nn.forward, nn.generate)
            fns["wrap_nnsight"] = (lambda x: verilens_forward(wn, x), lambda g: verilens_generate(wn, g))
    return m, {a: fns[a] for a in arms}


def check(m, fns, ids, gen):
    """Every arm does the same work: activations and triggered-ablation tokens agree."""
    ref_logits, ref_resid = verilens_forward(m, ids[:2])
    ref_tokens = verilens_generate(m, gen[:2]).tokens
    for arm, (fwd, generate) in fns.items():
        if arm == "plain_hf":
            continue
        logits, resid = fwd(ids[:2])
        tol = 1e-2 if arm == "tl" else 1e-4  # the bridge runs eager attention, the rest SDPA
        assert (logits - ref_logits).abs().max() < tol and (resid - ref_resid).abs().max() < tol, arm
        if arm.startswith("wrap"):
            assert torch.equal(generate(gen[:2]).tokens, ref_tokens), arm


def paired(rounds: int):
    torch.set_num_threads(2)
    m, fns = build(ARMS)
    ids, gen = inputs(m.cfg.d_vocab)
    check(m, fns, ids, gen)
    for k, (kind, x) in enumerate((("forward", ids), ("generate", gen))):
        for fn in fns.values():
            fn[k](x)  # warm-up
        times = {a: [] for a in fns}
        for r in range(rounds):
            order = ARMS[r % len(ARMS):] + ARMS[:r % len(ARMS)]
            for a in order:
                t0 = time.perf_counter()
                fns[a][k](x)
                times[a].append(time.perf_counter() - t0)
        print(f"{kind}: plain HF median {statistics.median(times['plain_hf']):.3f} s ({rounds} rounds)")
        for a in ARMS[1:]:
            ratios = sorted(t / b for t, b in zip(times[a], times["plain_hf"]))
            q = statistics.quantiles(ratios, n=4) if len(ratios) > 1 else ratios * 3
            print(f"  {a:13s} median {statistics.median(times[a]):.3f} s; ratio to plain HF median "
                  f"{statistics.median(ratios):.3f} (quartiles {q[0]:.3f}-{q[2]:.3f})")


def _one(arm, kind):
    """One arm's peak RSS above the loaded models (after a warm-up run), in this process."""
    torch.set_num_threads(2)
    m, fns = build([arm])
    ids, gen = inputs(m.cfg.d_vocab)
    fn = fns[arm][0 if kind == "forward" else 1]
    x = ids if kind == "forward" else gen
    print(f"{arm} {kind}: {peak_above(lambda: fn(x)) / 2**20:.0f} MiB above the loaded model")


if __name__ == "__main__":
    if sys.argv[1:2] == ["paired"]:
        paired(int(sys.argv[2]) if len(sys.argv) > 2 else 7)
    elif sys.argv[1:2] == ["_one"]:
        _one(sys.argv[2], sys.argv[3])
    elif sys.argv[1:2] == ["peak"]:
        for kind in ("forward", "generate"):
            for arm in ARMS:
                r = subprocess.run([sys.executable, __file__, "_one", arm, kind], capture_output=True, text=True)
                print(r.stdout.strip().splitlines()[-1] if r.returncode == 0 else f"{arm} {kind}: failed\n"
                      f"{r.stderr[-2000:]}")
    else:
        print(__doc__)
