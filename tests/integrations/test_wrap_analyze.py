"""`verilens analyze` end to end through verilens.wrap (issue 19, part 1): a CountDown model
loaded by plain Hugging Face, by TransformerLens' TransformerBridge and by nnsight, wrapped,
gives report.json's numbers of verilens.load (fp32, <= 1e-5). countdown-tiny (a Qwen2 from
scratch) through all three; countdown-smol (SmolLM2-135M, a pretrained Llama, with its LoRA
delta merged, saved once as a Hugging Face folder) through TransformerLens' bridge: a second
family and pretrained weights end to end (~2 min an analysis here, so one tool; nnsight on
SmolLM2 is held to verilens.load's logits, caches and interventions in test_wrap.py).
SmolLM2 alone cannot stand in: it finds no accepted attempt to analyse."""
import math
import warnings

import pytest
import torch

import verilens
from verilens.analysis.pipeline import Settings, analyze
from verilens.models.loading import builtin_path

pytestmark = pytest.mark.slow  # one small analysis per tool, ~1 min each here

SETTINGS = {
    "countdown-tiny": dict(n=40, n_contexts=8, random_seeds=2, max_new_tokens=300, batch_size=40,
                           intervention_tokens=30, steer_alphas=[1.0]),
    # countdown-smol claims the target on its first or second attempt: short generations suffice
    "countdown-smol": dict(n=12, n_contexts=4, random_seeds=2, max_new_tokens=120, batch_size=12,
                           intervention_tokens=12, steer_alphas=[1.0]),
}
NOT_NUMBERS = {"seconds", "settings", "versions", "model", "out"}  # wall times, paths, the model's name


def _analysis(name, model, out, probe=None):
    return analyze(model, out, Settings(**SETTINGS[name]), probe_file=probe, progress=False, log=lambda m: None)


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
def tiny_report(tmp_path_factory):
    return _analysis("countdown-tiny", verilens.load("countdown-tiny"), tmp_path_factory.mktemp("load") / "run")


@pytest.fixture(scope="module")
def smol(tmp_path_factory, countdown_smol_fp32):
    """countdown-smol's report by verilens.load (in float32: its default is bfloat16, compared at
    1e-5 in fp32), its merged model saved as a Hugging Face folder, and a fixed random probe
    (probe training, ~45 s a run here, is compared through every tool on countdown-tiny; every
    other step reads the probe the same way)."""
    loaded = countdown_smol_fp32
    folder = tmp_path_factory.mktemp("smol-merged")
    loaded.hf_model.save_pretrained(folder)
    loaded.tokenizer.save_pretrained(folder)
    probe = folder / "probe.pt"
    c = loaded.cfg
    torch.save(torch.randn(c.n_layers, c.d_model, 2, generator=torch.Generator().manual_seed(0)), probe)
    return _analysis("countdown-smol", loaded, tmp_path_factory.mktemp("load") / "run", probe), folder, probe


def _check(name, kind, folder, want, out, probe=None):
    if kind != "hf":
        pytest.importorskip({"bridge": "transformer_lens", "nnsight": "nnsight"}[kind])
    report = _analysis(name, verilens.wrap(_tool(kind, folder)), out, probe)
    assert report["traces"]["sites"] > 0 and report["interventions"]["top3_heads"]["n"] > 0
    _compare(report, want)


@pytest.mark.parametrize("kind", ["hf", "bridge", "nnsight"])
def test_tiny_through_wrap_equals_load(kind, tiny_report, tmp_path):
    _check("countdown-tiny", kind, builtin_path("countdown-tiny"), tiny_report, tmp_path / "run")


def test_smol_through_bridge_equals_load(smol, tmp_path):
    report, folder, probe = smol
    _check("countdown-smol", "bridge", folder, report, tmp_path / "run", probe)
