"""`--paper-settings` against the authors' released code (issue 23), restated in
authors_reference.py: the outcome rule (on the continuations their notebook prints), the
probe's token, the previous-token heads' keys, their generation loop's stops and their
online probe training; each on countdown-tiny and, marked slow, on SmolLM2-135M."""
import json
from pathlib import Path

import pytest

import verilens
from authors_reference import generate_hooked, postprocess_label, run_label, run_rates
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


def _their_loop_on_model(model, heads, max_new_tokens):
    """run_conditions(stop="authors") gives, token for token, the continuations of the
    authors' generation loop (full recompute, hooks on " (" steps, first-token stops)."""
    ctx = _contexts(model)[:4]
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
    assert stopped > 0  # their stop rule fired somewhere (else this test would not test it)


def test_both_rules_on_tiny(tiny):
    _rules_on_model(tiny, [(1, 4), (1, 5), (2, 1)])


def test_their_generation_loop_on_tiny(tiny):
    # countdown-tiny has no ">\n\n" token: the first token of its encoding is ">\n", so their
    # loop (and --paper-settings) ends an accepted attempt's continuation at "</think>\n"
    _their_loop_on_model(tiny, [(1, 4), (1, 5), (2, 1)], 40)


@pytest.mark.slow
def test_both_rules_on_smollm2(smollm2_dir):
    smol = verilens.load(smollm2_dir)
    _rules_on_model(smol, [(3, 1), (10, 4), (20, 7)])


@pytest.mark.slow
def test_their_generation_loop_on_smollm2(smollm2_dir):
    smol = verilens.load(smollm2_dir)
    _their_loop_on_model(smol, [(3, 1), (10, 4), (20, 7)], 30)

