"""`verilens geometry`: report.json, heatmap.png and report.html from tiny local models."""
import json

import pytest
import torch
import typer
from typer.testing import CliRunner

from verilens.errors import VerilensError
from verilens.geometry.cli import geometry
from verilens.geometry.report import run_geometry

WORDS = ["the", "cat", "dog", "red", "blue", "house", "water", "king", "run", "good", "music",
         "three", "two", "one", "happy", "tree", "car", "sun", "moon", "fish"]


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import BertConfig, BertModel, PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

    from verilens.models.tokenizer import train_tokenizer

    root = tmp_path_factory.mktemp("geo-models")
    corpus = [" ".join(WORDS[(i + j) % len(WORDS)] for j in range(8)) + f" not this ({i % 10})\nnot this\nthis not"
              for i in range(200)]
    tok = train_tokenizer(corpus, vocab_size=400)
    torch.manual_seed(0)
    eos = tok.convert_tokens_to_ids(tok.eos_token)
    lm = Qwen2ForCausalLM(Qwen2Config(vocab_size=len(tok), hidden_size=32, intermediate_size=64,
                                      num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1,
                                      bos_token_id=eos, eos_token_id=eos, pad_token_id=eos,
                                      tie_word_embeddings=False))
    lm_dir = root / "tiny-lm"
    lm.save_pretrained(lm_dir)
    tok.save_pretrained(lm_dir)

    vocab = {"[PAD]": 0, "[UNK]": 1, "[CLS]": 2, "[SEP]": 3, "[MASK]": 4}
    for w in WORDS:
        vocab[w] = len(vocab)
        vocab["##" + w] = len(vocab)
    wp = Tokenizer(models.WordPiece(vocab=vocab, unk_token="[UNK]"))
    wp.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    wp.decoder = decoders.WordPiece()
    btok = PreTrainedTokenizerFast(tokenizer_object=wp, unk_token="[UNK]", pad_token="[PAD]",
                                   cls_token="[CLS]", sep_token="[SEP]", mask_token="[MASK]")
    enc = BertModel(BertConfig(vocab_size=len(vocab), hidden_size=24, num_hidden_layers=1,
                               num_attention_heads=2, intermediate_size=48))
    enc_dir = root / "tiny-encoder"
    enc.save_pretrained(enc_dir)
    btok.save_pretrained(enc_dir)
    return str(lm_dir), str(enc_dir)


def test_run_geometry_writes_report(tiny_models, tmp_path):
    lm, enc = tiny_models
    rep = run_geometry([lm, enc], tmp_path / "out", k=3, permutations=4, progress=False)
    files = {p.name for p in (tmp_path / "out").iterdir()}
    assert files == {"report.json", "heatmap.png", "report.html"}
    data = json.loads((tmp_path / "out" / "report.json").read_text())
    assert data == json.loads(json.dumps(rep, default=float))
    (pair,) = data["pairs"]
    assert pair["tokens"] >= 10 and -1 <= pair["pearson_r"] <= 1
    assert pair["mantel"]["permutations"] == 4 and 0 < pair["mantel"]["p_value"] <= 1
    assert pair["examples"] and len(pair["examples"][0]["a"]) == 5
    assert data["matrix"]["names"] == ["tiny-lm", "tiny-encoder"]
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
    assert json.loads((tmp_path / "o" / "report.json").read_text())["which"] == "embed"
    # an encoder has no unembedding: a clear error, not a traceback
    res = CliRunner().invoke(app, ["geometry", lm, enc, "--out", str(tmp_path / "u"), "--which", "unembed"])
    assert isinstance(res.exception, VerilensError) and "unembedding" in str(res.exception)
    res = CliRunner().invoke(app, ["geometry", lm, "--out", str(tmp_path / "p")])
    assert isinstance(res.exception, VerilensError) and "at least two models" in str(res.exception)


def test_bad_model_names(tiny_models, tmp_path):
    lm, enc = tiny_models
    with pytest.raises(VerilensError, match="named twice"):
        run_geometry([lm, lm], tmp_path / "x", progress=False)
    with pytest.raises(VerilensError, match="not found"):
        run_geometry([lm, str(tmp_path / "nope")], tmp_path / "x", progress=False)
    with pytest.raises(VerilensError, match="which"):
        run_geometry([lm, enc], tmp_path / "x", which="hidden", progress=False)


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
    assert rep["models"][0]["nonfinite_rows"] == 2 and rep["models"][1]["nonfinite_rows"] == 0
    assert pair["skipped_nonfinite_rows"] >= 1 and pair["skipped_zero_rows"] == 0
    assert pair["method"] == "closed" and -1 <= pair["pearson_r"] <= 1
    out = capsys.readouterr().out
    assert "NaN or inf" in out and "NaN/inf rows" in out
    assert "left out: zero / NaN-inf rows" in (tmp_path / "y" / "report.html").read_text()
