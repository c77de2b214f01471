"""`verilens geometry`: report.json, heatmap.png and report.html from tiny local models."""
import json

import pytest
import torch
import typer
from typer.testing import CliRunner

from verilens.errors import VerilensError
from verilens.geometry.cli import geometry
from verilens.geometry.report import run_geometry


def test_run_geometry_writes_report(tiny_models, tmp_path):
    lm, enc = tiny_models
    rep = run_geometry([lm, enc], tmp_path / "out", k=3, permutations=4, progress=False)
    files = {p.name for p in (tmp_path / "out").iterdir()}
    assert files == {"report.json", "heatmap.png", "report.html"}
    data = json.loads((tmp_path / "out" / "report.json").read_text())
    assert data == json.loads(json.dumps(rep, default=float))
    (pair,) = data["pairs"]
    e = pair["embed"]
    assert data["what"] == ["embed"] and data["max_tokens"] is None
    assert e["tokens"] >= 10 and -1 <= e["pearson_r"] <= 1 and e["method"] == "closed"
    # the full shared vocabulary by default, and the Mantel test on all of it
    assert e["tokens"] == pair["shared_vocab"]["shared"] - e["skipped_zero_rows"] - e["skipped_out_of_range"]
    assert e["mantel"]["permutations"] == 4 and 0 < e["mantel"]["p_value"] <= 1
    assert e["mantel"]["tokens"] == e["tokens"] and e["mantel"]["r"] == pytest.approx(e["pearson_r"], abs=1e-12)
    assert e["examples"] and len(e["examples"][0]["a"]) == 5
    assert data["matrix"]["names"] == ["tiny-lm", "tiny-encoder"]
    assert data["matrix"]["embed"][0][1] == e["pearson_r"]
    assert (tmp_path / "out" / "heatmap.png").read_bytes()[:4] == b"\x89PNG"
    html = (tmp_path / "out" / "report.html").read_text()
    assert "data:image/png;base64," in html and "tiny-encoder" in html


def test_cli_command(tiny_models, tmp_path):
    lm, enc = tiny_models
    app = typer.Typer()
    app.command()(geometry)
    app.command("other")(lambda: None)  # keep `geometry` a named subcommand
    res = CliRunner().invoke(app, ["geometry", lm, enc, "--out", str(tmp_path / "o"), "--which", "embed",
                                   "--k", "3", "--max-tokens", "40"])
    assert res.exit_code == 0, res.output
    rep = json.loads((tmp_path / "o" / "report.json").read_text())
    assert rep["what"] == ["embed"] and rep["max_tokens"] == 40 and rep["pairs"][0]["embed"]["tokens"] <= 40
    # an encoder has no unembedding: with nothing else to compare, a clear error, not a traceback
    res = CliRunner().invoke(app, ["geometry", lm, enc, "--out", str(tmp_path / "u"), "--what", "unembed"])
    assert isinstance(res.exception, VerilensError) and "unembedding" in str(res.exception)
    res = CliRunner().invoke(app, ["geometry", lm, "--out", str(tmp_path / "p")])
    assert isinstance(res.exception, VerilensError) and "at least two models" in str(res.exception)


def test_bad_model_names(tiny_models, tmp_path):
    lm, enc = tiny_models
    with pytest.raises(VerilensError, match="named twice"):
        run_geometry([lm, lm], tmp_path / "x", progress=False)
    with pytest.raises(VerilensError, match="not found"):
        run_geometry([lm, str(tmp_path / "nope")], tmp_path / "x", progress=False)
    with pytest.raises(VerilensError, match="--what takes"):
        run_geometry([lm, enc], tmp_path / "x", what="hiden", progress=False)


def test_nonfinite_rows_are_an_error_or_skipped_and_counted(tiny_models, tmp_path, capsys):
    """NaN rows are not 'zero rows': an error naming the model and rows by default; with
    skip_nonfinite_rows they are left out, counted apart from zero rows, and printed."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    lm, enc = tiny_models
    bad_dir = tmp_path / "nan-lm"
    m = AutoModelForCausalLM.from_pretrained(lm)
    with torch.no_grad():
        m.get_input_embeddings().weight[[5, 9]] = float("nan")
    m.save_pretrained(bad_dir)
    AutoTokenizer.from_pretrained(lm).save_pretrained(bad_dir)
    with pytest.raises(VerilensError, match=r"2 rows of its embed matrix hold NaN or inf \(rows 5, 9\)"):
        run_geometry([str(bad_dir), enc], tmp_path / "x", progress=False)
    rep = run_geometry([str(bad_dir), lm], tmp_path / "y", k=3, skip_nonfinite_rows=True)
    (pair,) = rep["pairs"]
    assert rep["models"][0]["embed"]["nonfinite_rows"] == 2 and rep["models"][1]["embed"]["nonfinite_rows"] == 0
    pair = pair["embed"]
    assert pair["skipped_nonfinite_rows"] >= 1 and pair["skipped_zero_rows"] == 0
    assert pair["method"] == "closed" and -1 <= pair["pearson_r"] <= 1
    out = capsys.readouterr().out
    assert "NaN or inf" in out and "NaN/inf rows" in out
    assert "left out: zero / NaN-inf rows" in (tmp_path / "y" / "report.html").read_text()
