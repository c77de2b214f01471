"""The analysis on Qwen2's real vocabulary (the tokenizer of the Qwen2.5-3B CountDown
checkpoints and the DeepSeek-R1-Distill-Qwen models), with a small random-weight Qwen2
model: what depends on how the tokenizer cuts a trace. Qwen2 reads numbers digit by digit
and writes ")\\n" as one token, unlike countdown-tiny's own tokenizer."""
import pytest
import torch

from verilens.analysis import attribution, heads, outcomes
from verilens.analysis.traces import Trace, correct_contexts, verdict_sites, wrong_contexts
from verilens.countdown import Problem, icl_prompt, prompt, write_trace
from verilens.hooks import HookedModel
from verilens.hooks import interventions as iv


@pytest.fixture(scope="module")
def qmodel(qwen2_tokenizer):
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    cfg = Qwen2Config(vocab_size=len(qwen2_tokenizer), hidden_size=64, intermediate_size=96, num_hidden_layers=3,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096,
                      eos_token_id=151643, pad_token_id=151643, bos_token_id=151643)
    return HookedModel(Qwen2ForCausalLM(cfg).eval(), qwen2_tokenizer, "random-qwen2-vocab")


def test_the_vocabulary_is_qwen2s(qwen2_tokenizer):
    tok = qwen2_tokenizer
    ranks = tok.tiktoken_ranks
    assert tok.encode("Hello world") == [ranks[b"Hello"], ranks[b" world"]] == [9707, 1879]
    assert tok.encode(" (") == [320] and tok.convert_tokens_to_ids("<|im_start|>") == 151644
    assert [tok.decode([i]) for i in tok.encode(" = 49 (not")] == [" =", " ", "4", "9", " (", "not"]
    p = Problem([3, 5, 7, 11], 26)
    text = prompt(p, "qwen-instruct") + write_trace(p, 0)
    assert tok.decode(tok.encode(text)) == text


def _traces(template):
    out = []
    for i in range(6):
        p = Problem([3, 5, 7, 11], 26)
        pr = icl_prompt(p, shots=2) if template == "icl" else prompt(p, template)
        out.append(Trace(p, pr, write_trace(p, i, max_failed=3)))
    return out


@pytest.mark.parametrize("template", ["base", "qwen-instruct", "icl"])
def test_sites_and_target_tokens_on_qwen2_tokens(qmodel, template):
    """Every verdict site is the " (" token and the next token is the verdict; the target's
    tokens (digit by digit) are found in the last problem's turn only."""
    tok = qmodel.tokenizer
    traces = _traces(template)
    sites = verdict_sites(qmodel, traces)
    assert sites
    for s in sites:
        ids = tok(traces[s.trace].text)["input_ids"]
        assert tok.decode([ids[s.token]]) == " ("
        assert tok.decode([ids[s.token + 1]]) == ("this" if s.label == 1 else "not")
    for c, target in correct_contexts(traces):
        keys = heads.target_key_positions(qmodel, c, target)
        ids = tok(c)["input_ids"]
        assert [tok.decode([ids[k]]) for k in keys] == ["2", "6"] * (len(keys) // 2) and keys
        turn = c.rfind("Using the numbers")
        first = tok(c, return_offsets_mapping=True)["offset_mapping"][keys[0]][0]
        assert first > turn  # not in the solved examples of an in-context prompt


def test_protocol_runs_on_qwen2_tokens(qmodel):
    """The interventions, the head densities and the verdict attribution run on Qwen2's
    tokens; a condition's continuations are the same from the shared prefill as one by one."""
    traces = _traces("qwen-instruct")
    ctx = [c for c, _ in correct_contexts(traces)][:3]
    targets = [t for _, t in correct_contexts(traces)][:3]
    dens = heads.target_attention_density(qmodel, ctx, targets, batch_size=2)
    assert dens.shape == (3, 4) and (dens >= 0).all() and (dens <= 1 + 1e-5).all()
    conditions = {"none": [], "heads": [iv.ablate_heads([(1, 0), (2, 3)])]}
    runs = outcomes.run_conditions(qmodel, ctx, conditions, max_new_tokens=8, batch_size=2, neurons=[(1, 3)])
    for name, ivs in conditions.items():
        table, conts = runs[name]
        assert table["n"] == 3 and conts == outcomes.run_condition(qmodel, ctx, ivs, max_new_tokens=8)[1]
    at = attribution.verdict_attribution(qmodel, ctx)
    assert len(at["heads"]) == 3 and torch.isfinite(torch.tensor(at["logit_diff"]))
    assert wrong_contexts(traces)
