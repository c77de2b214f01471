"""Outcome classification (PAPER.md section 6) and the intervention protocol."""
import pytest

import verilens
from verilens.analysis.outcomes import (accepted_rate, activation_drop, classify, outcome_table, run_condition,
                                       run_conditions)
from verilens.analysis.traces import Trace, correct_contexts, verdict_sites, wrong_contexts
from verilens.countdown import Problem, prompt, write_trace
from verilens.hooks import interventions as iv


@pytest.mark.parametrize("text, kind", [
    ("this works)\nSo, the equation that equals 49 is 67 + 60 + 12 - 90. </think>", "fail"),
    ("not 49)\n- 90 - 67 - 60 + 12 = -15 (not 49)\n- 12 * 4 = 48 (not 49)\n", "success"),
    ("not 49)\n- 1.5 / (2 - 3) = -1.5 (not 49)", "success"),
    ("not 49)\nSo, the equation that equals 49 is 67 + 60. </think>", "mix"),
    ("not 49)\n<answer> 67 + 60 + 12 - 90 </answer>", "mix"),
    ("not 49)\n- 67 + 60 + 12 - 90 = 49 (this works)", "fail"),
    ("not 49). Wait, that is wrong", "mix"),
    ("", "mix"),
    ("hello there", "mix"),
    ("THIS WORKS", "fail"),
])
def test_classify(text, kind):
    assert classify(text) == kind


def test_classify_partial_for_general_models():
    text = "not 49). Wait, 67 + 60 + 12 - 90 = 49. That works."
    assert classify(text, partial=True) == "partial"
    assert classify(text) == "mix"
    assert classify("this works", partial=True) == "fail"
    assert classify("not 49)\n- 1 + 2 = 3 (not 49)", partial=True) == "success"


def test_outcome_table_counts():
    t = outcome_table(["success", "fail", "fail", "mix"])
    assert t["counts"] == {"success": 1, "mix": 1, "fail": 2} and t["n"] == 4
    assert t["fail"] == 0.5 and abs(sum(t[k] for k in ("success", "mix", "fail")) - 1) < 1e-12
    assert "partial" in outcome_table(["partial", "fail"])
    assert accepted_rate(["this works)", "not 3)"]) == 0.5
    # a later attempt accepted after "not" is not this attempt accepted (verilens' rule); the
    # authors' "fail" is "this works" anywhere
    later = "not 49)\n- 67 + 60 + 12 - 90 = 49 (this works)"
    assert accepted_rate([later, "This works)"]) == 0.5 and accepted_rate([later], "authors") == 1.0


@pytest.fixture(scope="module")
def tiny():
    return verilens.load("countdown-tiny")


def _traces(n=6):
    out = []
    for i in range(n):
        p = Problem([3, 5, 7, 11], 26)
        out.append(Trace(p, prompt(p), write_trace(p, i, max_failed=3)))
    return out


def test_sites_and_contexts_from_synthetic_traces(tiny):
    traces = _traces()
    sites = verdict_sites(tiny, traces)
    ids = [tiny.tokenizer(t.text)["input_ids"] for t in traces]
    paren = tiny.tokenizer.convert_tokens_to_ids(tiny.tokenizer.tokenize(" ("))[0]
    for s in sites:
        assert ids[s.trace][s.token] == paren
        nxt = tiny.tokenizer.decode([ids[s.trace][s.token + 1]])
        assert nxt == ("this" if s.label == 1 else "not")
    kept = {s.trace for s in sites}
    assert all(len({a.verdict for a in traces[i].attempts}) == 2 for i in kept)
    for c, target in correct_contexts(traces):
        assert target == 26 and c.rstrip().endswith("26") and not c.endswith(" (")
    for c, _ in wrong_contexts(traces):
        assert not c.rstrip().endswith("= 26")


def test_protocol_on_the_builtin_model(tiny):
    """On the model's own accepted attempts (cut before " ("), the plain continuation
    accepts again; zeroing every head at the " (" step only changes the verdict, not the
    " (" itself (generated one step before the trigger fires)."""
    from verilens.analysis.traces import generate_traces
    from verilens.countdown import generate_problems

    traces = generate_traces(tiny, generate_problems(8, seed=3, split="test"), max_new_tokens=300, progress=False)
    ctx = [c for c, _ in correct_contexts(traces)][:4]
    assert len(ctx) >= 2
    base, conts = run_condition(tiny, ctx, [], max_new_tokens=6)
    assert all(c.startswith(" (") for c in conts)
    assert base["fail"] >= 0.75 and base["n"] == len(ctx)
    allheads = [(l, h) for l in range(tiny.cfg.n_layers) for h in range(tiny.cfg.n_heads)]
    ablated, conts2 = run_condition(tiny, ctx, [iv.ablate_heads(allheads)], max_new_tokens=6)
    assert all(c.startswith(" (") for c in conts2)
    assert conts2 != conts


def test_neuron_activation_at_the_verdict_step(tiny):
    """The mean GLU activation at the first " (" step of each continuation equals reading
    hook_post by hand on context + " ("; ablating those very neurons silences them (drop
    1); ablating heads at the " (" step changes it; conditions sharing a prefill equal
    conditions run one by one."""
    import torch

    ctx = [c for c, _ in correct_contexts(_traces())][:3]
    neurons = [(1, 5), (1, 40), (4, 7)]
    conditions = {"none": [], "silenced": [iv.ablate_neurons({1: [5, 40], 4: [7]})],
                  "heads": [iv.ablate_heads([(0, 0), (1, 2)])]}
    runs = run_conditions(tiny, ctx, conditions, max_new_tokens=6, batch_size=2, neurons=neurons)
    by_hand = []
    for c in ctx:
        _, cache = tiny.run_with_cache(c + " (", names_filter=["blocks.1.mlp.hook_post", "blocks.4.mlp.hook_post"])
        by_hand += [cache["blocks.1.mlp.hook_post"][0, -1, [5, 40]], cache["blocks.4.mlp.hook_post"][0, -1, [7]]]
    base = runs["none"][0]["neuron_activation"]
    assert abs(base - float(torch.cat(by_hand).mean())) < 1e-5
    assert activation_drop(base, runs["silenced"][0]["neuron_activation"]) == pytest.approx(1.0)
    assert runs["heads"][0]["neuron_activation"] != pytest.approx(base)
    for name, ivs in conditions.items():
        table, conts = run_condition(tiny, ctx, ivs, max_new_tokens=6, batch_size=3, neurons=neurons)
        assert conts == runs[name][1]
        assert table["neuron_activation"] == pytest.approx(runs[name][0]["neuron_activation"], abs=1e-5)
    assert run_condition(tiny, ctx, [], max_new_tokens=6)[0].get("neuron_activation") is None
    assert activation_drop(0.0, 1.0) == 0.0 and activation_drop(None, 1.0) is None


def test_generation_ends_once_the_outcome_is_decided(tiny):
    """A continuation ends at its first "this works" (a fail under both rules): every
    outcome, by both rules, and the verification neurons' activation are those of the full
    continuations (generated here without that stop), each continuation is the full one cut
    there, and with `partial` (where a correction may follow) nothing is cut."""
    from verilens.analysis.outcomes import DECIDED, STOPS, VERDICTS, accepts, classify_authors, continue_batch

    ctx = [c for c, _ in correct_contexts(_traces())][:4]
    heads = [(l, h) for l in range(tiny.cfg.n_layers) for h in range(0, tiny.cfg.n_heads, 2)]
    conditions = {"none": [], "heads": [iv.ablate_heads(heads)]}
    neurons = [(1, 5), (4, 7)]
    runs = run_conditions(tiny, ctx, conditions, max_new_tokens=40, batch_size=4, neurons=neurons)
    cut = 0
    for name, ivs in conditions.items():
        with tiny.intervene(*ivs, when=iv.at_token(" (")):
            full = tiny.generate(ctx, max_new_tokens=40, stop=STOPS).continuation
        table, conts = runs[name]
        for c, f in zip(conts, full):
            i = f.find(DECIDED)
            assert c == (f[: i + len(DECIDED)] if i >= 0 else f)
            cut += c != f
        assert [classify(c) for c in conts] == [classify(f) for f in full]
        assert [classify_authors(c) for c in conts] == [classify_authors(f) for f in full]
        whole = run_condition(tiny, ctx, ivs, max_new_tokens=40, batch_size=4, neurons=neurons, partial=True)
        assert whole[1] == full
        assert table["neuron_activation"] == pytest.approx(whole[0]["neuron_activation"], abs=1e-6)
        # steering's measure: the first verdict, and generation ends there
        (_, (first, _)), = continue_batch(tiny, ctx, {name: ivs}, 40, until="verdict")
        for c, f in zip(first, full):
            ends = [f.find(v) + len(v) for v in VERDICTS if v in f]
            assert c == (f[: min(ends)] if ends else f) and accepts(c) == accepts(f)
    assert cut > 0  # the stop fired (else this test would not test it)
    with pytest.raises(ValueError, match="until"):
        next(continue_batch(tiny, ctx, conditions, 4, until="outcomes"))
