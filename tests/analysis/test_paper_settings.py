"""`--paper-settings` against the authors' released code (issue 23), restated in
authors_reference.py: the outcome rule (on the continuations their notebook prints), the
probe's token, the previous-token heads' keys, their generation loop's stops and their
online probe training; each on countdown-tiny and, marked slow, on SmolLM2-135M."""
import json
from pathlib import Path

import pytest
import torch

import verilens
from authors_reference import (_get_occurrence_idxs, generate_hooked, postprocess_label, recorded_sites, run_label,
                               run_rates, target_density, train_online)
from verilens.analysis.outcomes import classify, classify_authors, outcome_table, run_conditions
from verilens.analysis.report import PUBLISHED_3B, RULE_NAMES
from verilens.hooks import interventions as iv

NOTEBOOK = json.loads((Path(__file__).parent / "data" / "authors_notebook_continuations.json").read_text())
CONDITIONS = NOTEBOOK["conditions"]

# Texts where the two rules, or the two modes of the authors' rule, part ways.
EDGE_TEXTS = [
    "", "  ", " (36)", " (not 36)\n- 1 + 2 = 3", " (Not 36)", " (NOT 36)", " (this works)", " (This works)",
    " (not 36)\n- 1 + 2 = 3 (this works)", " (not correct combination)\n- 70 - 58", " (correct, not)",
    " (not 77)\nSo, the equation that equals 77 is 38 + 31 + 8.", " (not 77)\nTherefore the equation is 1 + 2.",
    " (not 77)\n</think>\n<answer> 1 + 2 </answer>", " (not 77)\n</think>\n<answer", " (nothing)",
    " (cannot)", " (not 49). Wait, 67 + 60 + 12 - 90 = 49. That works.", " (not 49). That works.",
    " (not 49). Wait", " (wait)", "hello there", " (not 4²)", " (not ٣)", " (not 36, but close, let's try again)",
    " (not 36)\nSo the answer is 5", " <think> not", " (equals 36)",
]


@pytest.mark.parametrize("name", list(CONDITIONS))
def test_the_authors_rule_gives_the_published_table(name):
    """On the continuations their notebook prints, classify_authors labels every text as
    their run() printed it, and the rates are the published ones (PAPER.md section 6)."""
    conts = CONDITIONS[name]["continuations"]
    texts = [c["text"] for c in conts]
    labels = [classify_authors(t) for t in texts]
    assert labels == [c["printed"] for c in conts]
    table = outcome_table(labels)
    assert [round(100 * table[k], 1) for k in ("success", "mix", "fail")] == list(PUBLISHED_3B[name])
    assert list(run_rates(texts)) == CONDITIONS[name]["printed_rates"]  # the oracle reads the notebook alike


def test_verilens_rule_is_stricter_on_the_same_texts():
    """verilens' rule moves some of the authors' successes to mix, never the other way, and
    agrees with them on every fail: the default reports a lower bound of their rate."""
    for name, cond in CONDITIONS.items():
        texts = [c["text"] for c in cond["continuations"]]
        ours, theirs = [classify(t) for t in texts], [classify_authors(t) for t in texts]
        moved = {(a, b) for a, b in zip(theirs, ours) if a != b}
        assert moved <= {("success", "mix")}, name
        assert [a == "fail" for a in theirs] == [b == "fail" for b in ours], name
        if name == "top3_heads":  # the example: many of their successes hold words
            assert ours.count("success") < theirs.count("success")


@pytest.mark.parametrize("partial", [False, True])
def test_classify_authors_is_their_code(partial):
    """Every text, both modes: the package's rule equals the restatement of run() and, for
    general reasoning models, of postprocess_qwen_gens.py."""
    oracle = postprocess_label if partial else run_label
    texts = EDGE_TEXTS + [c["text"] for cond in CONDITIONS.values() for c in cond["continuations"]]
    assert [classify_authors(t, partial) for t in texts] == [oracle(t) for t in texts]
    # what tells the two modes apart (their postprocess folds Wait / That works in)
    assert classify_authors(" (not 49). Wait", partial=True) == "partial"
    assert classify_authors(" (not 49). Wait", partial=False) == "success"
    assert classify_authors(" (not 36, try again)", partial=True) == "unknown"
    assert classify_authors(" (This works)") == "unknown" and classify(" (This works)") == "fail"


def _both_rules_hold(table, conts, partial=False):
    assert table["by_rule"]["verilens"] == outcome_table([classify(c, partial) for c in conts])
    oracle = postprocess_label if partial else run_label
    assert table["by_rule"]["authors"] == outcome_table([oracle(c) for c in conts])
    assert {k: table[k] for k in table["by_rule"][table["rule"]]} == table["by_rule"][table["rule"]]


@pytest.fixture(scope="module")
def tiny():
    return verilens.load("countdown-tiny")


@pytest.fixture(scope="module")
def smol(smollm2_dir):
    return verilens.load(smollm2_dir)


def _contexts(model, n=6, seed=3):
    from verilens.analysis.traces import Trace, correct_contexts
    from verilens.countdown import generate_problems, prompt, write_trace

    traces = [Trace(p, prompt(p), write_trace(p, i, max_failed=2)) for i, p in enumerate(generate_problems(n, seed))]
    return [c for c, _ in correct_contexts(traces)]


def _rules_on_model(model, heads):
    """Real continuations of a model, both rules in every table, the run's rule first, and
    both side by side in report.html's table."""
    from verilens.analysis.report import _table_html

    ctx = _contexts(model)[:4]
    conds = {"none": [], "heads": [iv.ablate_heads(heads)]}
    for rule, stop, partial in (("verilens", "text", False), ("authors", "authors", False),
                                ("authors", "authors", True)):
        runs = run_conditions(model, ctx, conds, max_new_tokens=30, batch_size=4, partial=partial, rule=rule,
                              stop=stop)
        for table, conts in runs.values():
            assert table["rule"] == rule and table["n"] == len(ctx)
            _both_rules_hold(table, conts, partial)
        page = _table_html({"interventions": {k: t for k, (t, _) in runs.items()}, "settings": {"top_k_heads": 3}})
        assert page.count("<tr>") == 3 and "verilens' rule" in page and "the authors' rule" in page
        assert f"{RULE_NAMES[rule]} (this run)" in page
        for r in ("verilens", "authors"):
            t = runs["heads"][0]["by_rule"][r]
            assert " / ".join(f"{100 * t[k]:.1f}" for k in ("success", "mix", "fail")) in page


def _their_loop_on_model(model, heads, max_new_tokens, must_stop=True, suffix="", n_contexts=4):
    """run_conditions(stop="authors") gives, token for token, the continuations of the
    authors' generation loop (full recompute, hooks on " (" steps, first-token stops)."""
    ctx = [c + suffix for c in _contexts(model)[:n_contexts]]
    ids, mask = model.tokenize(ctx)

    def forward(x, m, hooked):
        if not hooked:
            return model(x, attention_mask=m)
        with model.intervene(iv.ablate_heads(heads)):
            return model(x, attention_mask=m)

    conds = {"none": [], "heads": [iv.ablate_heads(heads)]}
    runs = run_conditions(model, ctx, conds, max_new_tokens=max_new_tokens, batch_size=4, stop="authors")
    stopped = 0
    for name, (_, conts) in runs.items():
        out = generate_hooked(lambda x, m, h: forward(x, m, h and name == "heads"), ids, mask, max_new_tokens,
                              model.tokenizer)
        theirs = model.tokenizer.batch_decode(out[:, ids.shape[1]:], skip_special_tokens=True)
        assert conts == theirs, name
        stopped += sum(len(model.tokenizer.encode(c, add_special_tokens=False)) < max_new_tokens for c in conts)
    if must_stop:  # their stop rule fired somewhere (else this test would not test it)
        assert stopped > 0


def test_both_rules_on_tiny(tiny):
    _rules_on_model(tiny, [(1, 4), (1, 5), (2, 1)])


def test_their_generation_loop_on_tiny(tiny):
    # countdown-tiny has no ">\n\n" token: the first token of its encoding is ">\n", so their
    # loop (and --paper-settings) ends an accepted attempt's continuation at "</think>\n"
    _their_loop_on_model(tiny, [(1, 4), (1, 5), (2, 1)], 40)


@pytest.mark.slow
def test_both_rules_on_smollm2(smol):
    _rules_on_model(smol, [(3, 1), (10, 4), (20, 7)])


@pytest.mark.slow
def test_their_generation_loop_on_smollm2(smol):
    # SmolLM2 is not trained on CountDown: it writes no newline within these tokens, so their
    # stops never fire here (countdown-tiny's test covers them), and it may never write " (":
    # the contexts end with " (" so the first step is a hooked one in both loops. Their full
    # recompute every step costs ~4 min at 4 contexts x 30 tokens here, ~70 s at 4 x 16: two
    # contexts (263 and 246 tokens, so the batch is padded) x 16 tokens keep CI's budget.
    _their_loop_on_model(smol, [(3, 1), (10, 4), (20, 7)], 16, must_stop=False, suffix=" (", n_contexts=2)


# ------------------------------------------------------------------ 3. previous-token head keys


def _boundary_clean(model, ctx, target):
    """The target never touches another digit before the attempts: their token match and
    verilens' digit-boundary match find the same occurrences."""
    import re

    head = ctx[: ctx.find(" Let's try different")]
    return len(re.findall(str(target), head)) == len(re.findall(rf"(?<!\d){target}(?!\d)", head))


def _density_on_model(model, n=12):
    from verilens.analysis.heads import target_attention_density
    from verilens.analysis.traces import Trace, correct_contexts
    from verilens.countdown import generate_problems, prompt, write_trace

    traces = [Trace(p, prompt(p), write_trace(p, i, max_failed=2)) for i, p in enumerate(generate_problems(n, 7))]
    pairs = [(c, t) for c, t in correct_contexts(traces) if _boundary_clean(model, c, t)][:6]
    assert len(pairs) >= 3 and any(t >= 10 for _, t in pairs)  # multi-token targets, where the keys differ
    ctx, tg = [c for c, _ in pairs], [t for _, t in pairs]
    names = [f"blocks.{l}.attn.hook_pattern" for l in range(model.cfg.n_layers)]
    patterns, ids = [], []
    for c in ctx:  # one at a time, unpadded: the oracle's own indexing
        x = model.tokenizer(c, return_tensors="pt")["input_ids"][0]
        _, cache = model.run_with_cache(c, names_filter=names, positions="last")
        patterns.append(torch.stack([cache[n][0, :, 0] for n in names]))  # [layers, heads, seq]
        ids.append(x)
    theirs = target_density(patterns, ids, tg, model.tokenizer)
    ours = target_attention_density(model, ctx, tg, batch_size=4, keys="last")  # batched, left-padded
    torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-5)
    every = target_attention_density(model, ctx, tg, batch_size=4)  # verilens' default: every token
    assert (every >= ours - 1e-6).all() and (every - ours).abs().max() > 1e-3


def test_head_keys_are_theirs_on_tiny(tiny):
    _density_on_model(tiny)


@pytest.mark.slow
def test_head_keys_are_theirs_on_smollm2(smol):
    _density_on_model(smol)


def test_head_keys_keep_digit_boundaries(tiny):
    """Where the target sits inside another number (4 in 14) their token match counts it;
    verilens does not, and otherwise keeps exactly their keys."""
    from verilens.analysis.heads import target_key_positions
    from verilens.countdown import Problem, prompt, write_trace

    p = Problem([14, 5, 3, 2], 4)  # 14 - 5 - 3 - 2; the 4 of 14 matches their token search
    text = prompt(p) + write_trace(p, 0, max_failed=1)
    ids = torch.tensor(tiny.tokenizer(text)["input_ids"])
    cut = _get_occurrence_idxs(ids, torch.tensor(tiny.tokenizer(" Let's try different", add_special_tokens=False)
                                                 ["input_ids"]))[0]
    theirs = set(_get_occurrence_idxs(ids[:cut], torch.tensor(tiny.tokenizer("4", add_special_tokens=False)
                                                              ["input_ids"])).tolist())
    ours = set(target_key_positions(tiny, text, 4, keys="last"))
    assert ours < theirs
    assert all(tiny.tokenizer.decode(ids[i - 1:i]).strip().isdigit() or tiny.tokenizer.decode(ids[i + 1:i + 2])
               .strip()[:1].isdigit() for i in theirs - ours)


# ------------------------------------------------------------------ 2. the probe's token


def _their_probe_token_on_model(model, n=4):
    """Their recording (hooks during generate(), indexed as src/probe.py does) holds, at
    each site, verilens' activation at the token BEFORE " (", not the one at " ("."""
    from dataclasses import replace

    from verilens.analysis.traces import Trace, site_activations, verdict_sites
    from verilens.countdown import generate_problems, prompt, write_trace

    probs = generate_problems(n, seed=5)
    traces = [Trace(p, prompt(p), write_trace(p, i, max_failed=2)) for i, p in enumerate(probs)]
    tok = model.tokenizer
    full = [tok(t.text)["input_ids"] for t in traces]
    plen = [len(tok(t.prompt)["input_ids"]) for t in traces]
    assert all(f[:k] == tok(t.prompt)["input_ids"] for f, k, t in zip(full, plen, traces))
    forced = [f[k:] + [tok.eos_token_id] for f, k in zip(full, plen)]
    M = max(map(len, forced))
    ids, mask = model.tokenize([t.prompt for t in traces])
    P = ids.shape[1]

    def allowed(b, x):  # greedy decoding forced along the synthetic trace (so every row has both verdicts)
        i = x.shape[0] - P
        return [forced[b][i] if i < len(forced[b]) else tok.eos_token_id]

    theirs, _ = recorded_sites(model.hf_model, ids, mask, M, tok, prefix_allowed_tokens_fn=allowed)
    sites = verdict_sites(model, traces)
    at = site_activations(model, traces, sites, progress=False)
    before = site_activations(model, traces, [replace(s, token=s.token - 1) for s in sites], progress=False)
    keys = [(s.trace, s.token - plen[s.trace]) for s in sites]
    assert set(keys) == set(theirs) and len(keys) >= 2 * n
    for j, key in enumerate(keys):
        torch.testing.assert_close(theirs[key].float(), before[j], rtol=1e-3, atol=1e-3)
        assert not torch.allclose(theirs[key].float(), at[j], rtol=1e-3, atol=1e-3)


def test_their_probe_token_on_tiny(tiny):
    _their_probe_token_on_model(tiny)


@pytest.mark.slow
def test_their_probe_token_on_smollm2(smol):
    _their_probe_token_on_model(smol)


# ------------------------------------------------------------------ 4. their online probe training


def _online_training_on_model(model, n=36):
    """probes.train_probes_online is their loop (one step per batch of prompts, batches
    without a site skipped, gradients never zeroed, evaluation every `eval_every` batch
    indices, patience on the layer-mean validation loss, the best probe kept), on the same
    prompts, split and initial weights; verilens' default trainer gives another probe."""
    from dataclasses import replace

    from verilens.analysis.probes import online_split, train_probes, train_probes_online
    from verilens.analysis.traces import Trace, site_activations, verdict_sites
    from verilens.countdown import generate_problems, prompt, write_trace

    # every third trace has no failed attempt, hence no site: some batches are skipped
    traces = [Trace(p, prompt(p), write_trace(p, i, max_failed=0 if i % 3 == 0 else 2))
              for i, p in enumerate(generate_problems(n, seed=9))]
    sites = verdict_sites(model, traces)
    acts = site_activations(model, traces, [replace(s, token=s.token - 1) for s in sites], progress=False)
    labels, prompt_of = torch.tensor([s.label for s in sites]), torch.tensor([s.trace for s in sites])
    kw = dict(batch_prompts=2, val_prompts=8, eval_every=3, patience=2, seed=1, lr=1e-2)
    L, d = model.cfg.n_layers, model.cfg.d_model
    W0 = torch.randn(L, d, 2, generator=torch.Generator().manual_seed(0)) / d ** 0.5
    ours = train_probes_online(acts, labels, prompt_of, n, init=W0, **kw)

    val, batches = online_split(n, 2, 8, seed=1)
    assert any(not torch.isin(prompt_of, torch.tensor(b)).any() for b in batches)  # a skipped batch

    def block(prompts):
        rows = [j for j, s in enumerate(sites) if s.trace in prompts]
        return (acts[rows].permute(1, 0, 2), labels[rows].tolist()) if rows else None

    W, acc = train_online(W0, [block(b) for b in batches], block(val), eval_interval=3, patience=2, lr=1e-2)
    torch.testing.assert_close(ours.W, W, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(torch.tensor(ours.val_accuracy), acc.float(), rtol=0, atol=1e-6)
    default = train_probes(acts, labels, prompt_of, seed=1, lr=1e-2, patience=2, eval_every=3, batch_generations=2)
    assert not torch.allclose(default.W, ours.W)


def test_online_probe_training_on_tiny(tiny):
    _online_training_on_model(tiny)


@pytest.mark.slow
def test_online_probe_training_on_smollm2(smol):
    _online_training_on_model(smol)


# ------------------------------------------------------------------ 5. the whole command


@pytest.mark.slow  # 384 traces of 200 tokens (their probe training's minimum): ~2 min here
def test_analyze_paper_settings_end_to_end(tmp_path):
    """`verilens analyze --paper-settings` as a user runs it, on countdown-tiny: the authors'
    lengths, layer fractions, probe token, online probe split and outcome rule all reach the
    report, and a probe trained in one step is said to be untrained."""
    import os
    import subprocess
    import sys

    out = tmp_path / "run"
    res = subprocess.run([sys.executable, "-m", "verilens", "analyze", "--model", "countdown-tiny", "--paper-settings",
                          "--n", "384", "--n-contexts", "3", "--random-seeds", "1", "--out", str(out)],
                         env={**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}, capture_output=True,
                         text=True, timeout=1200)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "the authors' probe training made 1 steps" in res.stderr  # 384 = 256 validation + one batch of 128
    r = json.loads((out / "report.json").read_text())
    s, L = r["settings"], r["model"]["n_layers"]
    assert s["paper_settings"] and s["max_new_tokens"] == 200 and s["intervention_tokens"] == 30
    assert s["glu_top_k"] == 50 and s["glu_top_n"] == 200 and s["steer_alphas"] == [20.0]
    assert s["glu_layers"] == list(range(L // 2, L)) and s["steer_layers"] == list(range(round(L * 24 / 36), L))
    assert r["probe_position"] == "before_marker" and r["probe_generations"] == {"train": 128, "val": 256}
    tok, recounted = verilens.load("countdown-tiny").tokenizer, 0
    for name, t in r["interventions"].items():
        assert t["rule"] == "authors", name
        assert all(t[k] == t["by_rule"]["authors"][k] for k in ("success", "mix", "fail")), name
        if "examples" in t and t["n"] == len(t["examples"]):  # every continuation shown: recount them
            labels = [classify_authors(c) for c in t["examples"]]
            assert all(t[k] == outcome_table(labels)[k] for k in ("success", "mix", "fail")), name
            assert all(len(tok.encode(c, add_special_tokens=False)) <= 30 for c in t["examples"]), name
            recounted += 1
    assert recounted >= 5  # none, the two GLU sets, the top heads, the previous-token heads
