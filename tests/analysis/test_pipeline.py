"""`verilens analyze` end to end on the built-in model, and its refusals of bad input."""
import json
import os
from types import SimpleNamespace

import pytest
import torch

import verilens
from verilens.analysis.pipeline import Settings, analyze
from verilens.errors import VerilensError

SMALL = dict(n=40, n_contexts=16, random_seeds=2, random_contexts=6, max_new_tokens=300, batch_size=40,
             intervention_tokens=40)
QUICK = {**SMALL, "n_contexts": 4, "random_seeds": 1, "steer_alphas": [1.0]}  # where only one step matters


@pytest.fixture(scope="module")
def tiny():
    return verilens.load("countdown-tiny")


@pytest.fixture(scope="module")
def run(tiny, tmp_path_factory):
    out = tmp_path_factory.mktemp("analysis") / "run"
    return out, analyze(tiny, out, Settings(**SMALL), progress=False, log=lambda m: None)


def test_report_files_and_numbers(run, tiny):
    out, report = run
    on_disk = json.loads((out / "report.json").read_text())
    assert on_disk["probe_accuracy"] == report["probe_accuracy"]
    L, H = tiny.cfg.n_layers, tiny.cfg.n_heads
    assert len(report["probe_accuracy"]) == L and all(0 <= a <= 1 for a in report["probe_accuracy"])
    assert len(report["probe_accuracy_before_marker"]) == L
    assert all(0 <= a <= 1 for a in report["probe_accuracy_before_marker"])
    assert torch.load(out / "probe.pt").shape == (L, tiny.cfg.d_model, 2)
    for name in ("none", "glu_valid", "glu_valid_invalid", "top3_heads", "random_heads"):
        row = report["interventions"][name]
        assert abs(row["success"] + row["mix"] + row["fail"] - 1) < 1e-9, name
        assert sum(row["counts"].values()) == row["n"]
        assert row["neuron_activation_drop"] is not None, name  # every continuation starts with " ("
    assert report["interventions"]["none"]["neuron_activation_drop"] == 0
    rand = report["interventions"]["random_heads"]
    assert rand["seeds"] == 2
    sets = [report["interventions"][f"random_heads_{i}"]["success"] for i in range(2)]
    assert rand["success_sem"] == pytest.approx(abs(sets[0] - sets[1]) / 2)  # std / sqrt(2) of two values
    assert report["n_contexts"] == report["interventions"]["none"]["n"] <= SMALL["n_contexts"]
    assert len(report["heads"]["density"]) == L and len(report["heads"]["density"][0]) == H
    assert len(report["heads"]["top_heads"]) == 3
    excluded = {tuple(h) for h in report["heads"]["prev_token_heads"]}
    assert all(tuple(h) not in excluded for s in report["heads"]["random_head_sets"] for h in s)
    for f in ("probe_accuracy", "density", "channel_scores", "interventions", "logit_lens"):
        assert (out / "figures" / f"{f}.png").stat().st_size > 1000
    att = report["verdict_attribution"]
    assert att["n"] == report["n_contexts"] and len(att["heads"]) == L and len(att["heads"][0]) == H
    assert att["max_error"] < 1e-3 * max(1.0, abs(att["logit_diff"]))
    page = (out / "report.html").read_text()
    assert "data:image/png;base64," in page and "95.3" in page  # published 3B numbers beside ours
    assert "Who writes the verdict" in page and "activation drop" in page
    assert report["versions"]["verilens"] == verilens.__version__


def test_baseline_accepts_its_correct_attempts(run):
    """Without intervention the model says "(this works)" on (nearly) every correct attempt."""
    _, report = run
    assert report["interventions"]["none"]["fail"] >= 0.9


def test_resume_reuses_the_cache_and_refuses_to_overwrite(run, tiny):
    out, report = run
    with pytest.raises(VerilensError, match="--resume"):
        analyze(tiny, out, Settings(**SMALL), progress=False, log=lambda m: None)
    with pytest.raises(VerilensError, match=r"other settings: seed \(run: 0, now: 1\)"):
        analyze(tiny, out, Settings(**{**SMALL, "seed": 1}), resume=True, progress=False, log=lambda m: None)
    steps = []
    again = analyze(tiny, out, Settings(**SMALL), resume=True, progress=False, log=steps.append)
    assert again["probe_accuracy"] == report["probe_accuracy"]
    assert again["interventions"]["top3_heads"]["counts"] == report["interventions"]["top3_heads"]["counts"]
    assert max(again["seconds"].values()) < 5  # every step came from the cache


def test_compare_puts_another_run_beside_this_one(run, tiny, tmp_path):
    """--compare: resuming a finished run with another run's folder writes only the report
    again, with that run's rates beside this run's (the other's own numbers, edited here to
    tell them apart) and its probe accuracy; this run's numbers stay; bad folders are refused
    before anything runs."""
    import shutil

    out, report = run
    other = tmp_path / "other"
    shutil.copytree(out, other)
    theirs = json.loads((other / "report.json").read_text())
    theirs["model"]["name"] = "the-other-model"
    theirs["interventions"]["top3_heads"]["by_rule"]["verilens"].update(success=0.123, mix=0.0, fail=0.877)
    theirs["probe_accuracy"] = [0.5] * len(theirs["probe_accuracy"])
    (other / "report.json").write_text(json.dumps(theirs))
    again = analyze(tiny, out, Settings(**SMALL), resume=True, progress=False, log=lambda m: None, compare=[other])
    assert again["interventions"]["top3_heads"]["counts"] == report["interventions"]["top3_heads"]["counts"]
    assert again["compare"][0]["name"] == "the-other-model"
    page = (out / "report.html").read_text()
    assert "the-other-model" in page and "12.3 / 0.0 / 87.7" in page and "0.50, 0.50" in page
    assert json.loads((out / "report.json").read_text())["compare"][0]["report"] == str(other / "report.json")
    (tmp_path / "empty").mkdir()
    (tmp_path / "junk.json").write_text("{not json")
    (tmp_path / "list.json").write_text("[1, 2]")
    for bad, why in ((tmp_path / "missing", "no report.json"), (tmp_path / "empty", "no report.json"),
                     (tmp_path / "junk.json", "not a readable verilens analysis report"),
                     (tmp_path / "list.json", "not a readable verilens analysis report")):
        with pytest.raises(VerilensError, match=why):
            analyze(tiny, tmp_path / "new", Settings(**SMALL), progress=False, log=lambda m: None, compare=[bad])
    assert not (tmp_path / "new").exists()  # refused before the run folder was made
    analyze(tiny, out, Settings(**SMALL), resume=True, progress=False, log=lambda m: None)  # leave it as it was


def test_refuses_a_folder_that_is_not_a_run(tiny, tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(VerilensError, match="--force"):
        analyze(tiny, tmp_path, Settings(**SMALL), resume=True, progress=False, log=lambda m: None)
    assert (tmp_path / "notes.txt").exists()


def test_no_parseable_attempts(qwen, tmp_path):
    """A random model writes no CountDown attempts: a clear error, and no report."""
    with pytest.raises(VerilensError, match="both a valid and an invalid verdict"):
        analyze(qwen, tmp_path / "r", Settings(n=4, max_new_tokens=8), progress=False, log=lambda m: None)
    assert not (tmp_path / "r" / "report.json").exists()


def test_model_without_glu(small_tokenizer, tmp_path):
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from verilens.hooks import HookedModel

    class PlainMLP(torch.nn.Module):
        def __init__(self, d):
            super().__init__()
            self.fc_in, self.fc_out = torch.nn.Linear(d, 2 * d), torch.nn.Linear(2 * d, d)

        def forward(self, x):
            return self.fc_out(torch.relu(self.fc_in(x)))

    tok = small_tokenizer
    hf = Qwen2ForCausalLM(Qwen2Config(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                      num_attention_heads=2, num_key_value_heads=1)).eval()
    for layer in hf.model.layers:
        layer.mlp = PlainMLP(32)
    with pytest.raises(VerilensError, match="no GLU MLP"):
        analyze(HookedModel(hf, tok, "plain"), tmp_path / "r", Settings(n=4), progress=False, log=lambda m: None)


def test_bad_problem_rows(tiny, tmp_path):
    f = tmp_path / "p.jsonl"
    f.write_text('{"nums": [3, 5, 7], "target": 22}\n{"nums": "x"}\nnot json\n')
    with pytest.raises(VerilensError, match="row 2"):
        analyze(tiny, tmp_path / "r", Settings(n=4), problems_file=f, on_bad_row="error", progress=False,
                log=lambda m: None)


def test_settings_scale_with_depth(tiny):
    s = Settings().resolved(tiny)
    L = tiny.cfg.n_layers
    assert s.glu_layers == list(range(L // 2, L)) and s.glu_top_k >= 8
    qwen3b = SimpleNamespace(cfg=SimpleNamespace(n_layers=36, d_mlp=11008))  # Qwen2.5-3B's shape
    p = Settings.paper().resolved(qwen3b)  # the authors' lists on their model
    assert p.glu_layers == list(range(18, 36)) and p.steer_layers == list(range(24, 36))
    assert p.glu_top_k == 50 and p.glu_top_n == 200 and p.steer_alphas == [20.0] and p.paper_settings
    t = Settings.paper().resolved(tiny)  # the same fractions of another depth
    assert t.glu_layers == s.glu_layers and t.steer_layers == s.steer_layers and t.glu_top_k == 50
    with pytest.raises(VerilensError, match="out of range"):
        Settings.paper(glu_layers=[18]).resolved(tiny)  # layers asked for must exist


def test_given_probe_is_used_and_checked(run, tiny, tmp_path, monkeypatch):
    out, report = run
    again = analyze(tiny, tmp_path / "given", Settings(**QUICK), probe_file=out / "probe.pt", progress=False,
                    log=lambda m: None)
    monkeypatch.chdir(tmp_path)  # the same probe by a relative path is the same run
    resumed = analyze(tiny, "given", Settings(**QUICK), probe_file=os.path.relpath(out / "probe.pt"), resume=True,
                      progress=False, log=lambda m: None)
    assert resumed["probe_accuracy"] == again["probe_accuracy"]
    torch.testing.assert_close(torch.load(tmp_path / "given" / "probe.pt"), torch.load(out / "probe.pt"))
    assert again["probe_generations"]["train"] == 0
    assert all(0.5 <= a <= 1 for a in again["probe_accuracy"][1:])
    bad = tmp_path / "bad.pt"
    torch.save(torch.zeros(3, 7, 2), bad)
    with pytest.raises(VerilensError, match="does not fit the model"):
        analyze(tiny, tmp_path / "r", Settings(**SMALL), probe_file=bad, progress=False, log=lambda m: None)
    assert not (tmp_path / "r").exists()  # refused before any folder is made


def test_bfloat16_model_end_to_end(tmp_path):
    """Real checkpoints run in bf16 (the paper's 3B on a GPU): every step, including the
    hooks that add or project out fp32 probe directions, works on a bf16 model, and the
    numbers come out in fp32."""
    m = verilens.load("countdown-tiny", dtype="bf16")
    assert m.hf_model.model.embed_tokens.weight.dtype == torch.bfloat16
    report = analyze(m, tmp_path / "r", Settings(**{**QUICK, "n": 16, "intervention_tokens": 20}), progress=False,
                     log=lambda msg: None)
    probe = torch.load(tmp_path / "r" / "probe.pt")
    assert probe.dtype == torch.float32 and probe.shape == (m.cfg.n_layers, m.cfg.d_model, 2)
    assert len(report["probe_accuracy"]) == m.cfg.n_layers and max(report["probe_accuracy"]) > 0.9
    assert report["interventions"]["none"]["fail"] >= 0.75
    assert report["interventions"]["top3_heads"]["success"] > report["interventions"]["none"]["success"]


def test_random_sets_are_scored_on_the_first_contexts(run):
    _, report = run
    inter = report["interventions"]
    assert report["n_contexts"] > 6  # else this test says nothing
    assert inter["top3_heads"]["n"] == report["n_contexts"]
    assert inter["random_heads_0"]["n"] == inter["random_heads_1"]["n"] == inter["random_heads"]["contexts"] == 6
    assert inter["random_heads"]["n"] == 12 and inter["random_heads"]["seeds"] == 2


def test_valid_gap_is_the_class_means_distance_along_the_unit_valid_vector():
    from verilens.analysis.pipeline import valid_gap

    g = torch.Generator().manual_seed(0)
    L, d, n = 3, 16, 200
    W = torch.randn(L, d, 2, generator=g)
    v = W[:, :, 1] / W[:, :, 1].norm(dim=-1, keepdim=True)
    labels = torch.randint(0, 2, (n,), generator=g)
    noise = torch.randn(n, L, d, generator=g)
    noise -= torch.einsum("nld,ld->nl", noise, v)[..., None] * v  # orthogonal to v: no part in the gap
    shift = torch.tensor([1.5, -2.0, 7.0])  # per layer: where the valid sites sit along v, invalid at 0
    acts = noise + 0.3 + labels[:, None, None] * shift[None, :, None] * v
    assert torch.allclose(valid_gap(W, acts, labels), shift, atol=1e-4)


def test_steering_strengths_default_to_multiples_of_the_class_gap(run):
    _, report = run
    st = report["subspace"]["steering"]
    assert st["valid_gap"] > 0  # the valid sites lie on the valid side
    assert list(st["by_alpha"]) == [str(round(f * st["valid_gap"], 3)) for f in (1.0, 2.0, 4.0)]
