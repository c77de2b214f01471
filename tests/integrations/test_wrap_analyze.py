"""`verilens analyze` end to end through verilens.wrap (issue 19, part 1): countdown-tiny
loaded by plain Hugging Face, by TransformerLens' TransformerBridge and by nnsight, wrapped,
gives report.json's numbers of verilens.load on the same folder (fp32, <= 1e-5). SmolLM2
cannot stand in here: it finds no accepted attempt to analyse (it is not a CountDown model)."""
import math
import warnings

import pytest
import torch

import verilens
from verilens.analysis.pipeline import Settings, analyze
from verilens.models.loading import builtin_path

pytestmark = pytest.mark.slow  # one small analysis per tool, ~1 min each here

SETTINGS = dict(n=40, n_contexts=8, random_seeds=2, max_new_tokens=300, batch_size=40, intervention_tokens=30,
                steer_alphas=[1.0])
NOT_NUMBERS = {"seconds", "settings", "versions", "model", "out"}  # wall times, paths, the model's name


def _analysis(model, out):
    return analyze(model, out, Settings(**SETTINGS), progress=False, log=lambda m: None)


def _tool(kind, path):
    import transformers as T

    hf = T.AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if kind == "bridge":
            from transformer_lens.model_bridge import TransformerBridge

            return TransformerBridge.boot_transformers(str(path), hf_model=hf)
        if kind == "nnsight":
            import nnsight

            return nnsight.LanguageModel(hf, tokenizer=T.AutoTokenizer.from_pretrained(path))
    return hf


def _compare(got, want, path=""):
    """Every number of `want` in `got`, to 1e-5; every other leaf equal."""
    if isinstance(want, dict):
        assert got.keys() == want.keys(), path
        for k in want:
            if k not in NOT_NUMBERS:
                _compare(got[k], want[k], f"{path}/{k}")
    elif isinstance(want, (list, tuple)):
        assert len(got) == len(want), path
        for i, (g, w) in enumerate(zip(got, want)):
            _compare(g, w, f"{path}[{i}]")
    elif isinstance(want, float) and not isinstance(got, bool):
        assert math.isclose(got, want, rel_tol=1e-5, abs_tol=1e-5) or (math.isnan(got) and math.isnan(want)), path
    else:
        assert got == want, path


@pytest.fixture(scope="module")
def loaded_report(tmp_path_factory):
    return _analysis(verilens.load("countdown-tiny"), tmp_path_factory.mktemp("load") / "run")


@pytest.mark.parametrize("kind", ["hf", "bridge", "nnsight"])
def test_analyze_through_wrap_equals_load(kind, loaded_report, tmp_path):
    if kind != "hf":
        pytest.importorskip({"bridge": "transformer_lens", "nnsight": "nnsight"}[kind])
    model = verilens.wrap(_tool(kind, builtin_path("countdown-tiny")))
    report = _analysis(model, tmp_path / "run")
    assert report["traces"]["sites"] > 0 and report["interventions"]["top3_heads"]["n"] > 0
    _compare(report, loaded_report)
