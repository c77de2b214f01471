"""Every bad input gets a clear VerilensError (or a reported, counted skip)."""
import warnings

import numpy as np
import pytest
import torch

from verilens import geometry as G
from verilens.errors import VerilensError
from scipy.spatial.distance import pdist
from scipy.stats import pearsonr


def test_too_few_tokens(rng):
    with pytest.raises(VerilensError, match="at least 3"):
        G.distance_correlation(rng.standard_normal((2, 4)), rng.standard_normal((2, 5)))
    with pytest.raises(VerilensError, match="at least 3"):
        G.distance_correlation(rng.standard_normal((1, 4)), rng.standard_normal((1, 5)))


def test_mismatched_rows(rng):
    with pytest.raises(VerilensError, match="rows must be aligned"):
        G.distance_correlation(rng.standard_normal((10, 4)), rng.standard_normal((11, 4)))


def test_dtype_mix(rng):
    A = rng.standard_normal((10, 4))
    with pytest.raises(VerilensError, match="dtype mix"):
        G.distance_correlation(A, A.astype(np.float32))
    with pytest.raises(VerilensError, match="floating point"):
        G.distance_correlation(A, (A * 10).astype(np.int64))


def test_shapes(rng):
    with pytest.raises(VerilensError, match="2-D"):
        G.distance_correlation(rng.standard_normal(10), rng.standard_normal(10))
    with pytest.raises(VerilensError, match="zero columns"):
        G.distance_correlation(np.zeros((5, 0)), np.zeros((5, 0)))


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_nan_inf_rows_named(rng, bad):
    A, B = rng.standard_normal((50, 4)), rng.standard_normal((50, 6))
    B[7, 2] = bad
    B[31, 0] = bad
    with pytest.raises(VerilensError, match=r"E_b has NaN or inf in rows 7, 31"):
        G.distance_correlation(A, B)
    with pytest.raises(VerilensError, match=r"rows 7, 31"):
        G.mantel(B, A, permutations=3)


def test_zero_rows_cosine_raise_and_skip(rng):
    A, B = rng.standard_normal((40, 4)), rng.standard_normal((40, 6))
    A[3] = 0
    B[17] = 0
    with pytest.raises(VerilensError, match=r"2 zero-norm rows in E_a and E_b \(rows 3, 17\).*zero_rows='skip'"):
        G.distance_correlation(A, B)
    with pytest.warns(G.GeometryWarning, match="skipped 2 zero-norm rows"):
        info = G.distance_correlation(A, B, zero_rows="skip", return_info=True)
    assert info.skipped_rows == [3, 17] and info.n_tokens == 38
    keep = np.setdiff1d(np.arange(40), [3, 17])
    ref = pearsonr(pdist(A[keep], "cosine"), pdist(B[keep], "cosine")).statistic
    assert abs(info.r - ref) < 1e-9
    # euclidean has no trouble with zero rows
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        G.distance_correlation(A, B, "euclidean")


def test_skip_leaving_too_few(rng):
    A, B = rng.standard_normal((4, 3)), rng.standard_normal((4, 3))
    A[:2] = 0
    with pytest.warns(G.GeometryWarning), pytest.raises(VerilensError, match="only 2 usable"):
        G.distance_correlation(A, B, zero_rows="skip")


def test_constant_distances(rng):
    A = np.eye(5)  # all pairwise distances equal
    with pytest.raises(VerilensError, match="zero variance"):
        G.distance_correlation(A, rng.standard_normal((5, 3)))


def test_bad_options(rng):
    A, B = rng.standard_normal((10, 4)), rng.standard_normal((10, 4))
    with pytest.raises(VerilensError, match="unknown metric"):
        G.distance_correlation(A, B, "manhattan")
    with pytest.raises(VerilensError, match="zero_rows"):
        G.distance_correlation(A, B, zero_rows="ignore")
    with pytest.raises(VerilensError, match="unknown backend"):
        G.distance_correlation(A, B, backend="gpu")
    with pytest.raises(VerilensError, match="CUDA"):
        import os
        if os.environ.get("TRITON_INTERPRET", "0") not in ("0", ""):
            pytest.skip("interpreter enabled")
        G.distance_correlation(A, B, method="stream", backend="triton")
    with pytest.raises(VerilensError, match="permutations"):
        G.mantel(A, B, permutations=0)
    with pytest.raises(VerilensError, match="not a tokenizer"):
        G.shared_vocab(object(), object())


def test_half_precision_is_widened_exactly(rng):
    A = torch.randn(30, 8, dtype=torch.bfloat16)
    B = torch.randn(30, 5, dtype=torch.bfloat16)
    r = G.distance_correlation(A, B)
    ref = pearsonr(pdist(A.double().numpy(), "cosine"), pdist(B.double().numpy(), "cosine")).statistic
    assert abs(r - ref) < 1e-5


def test_local_and_map_errors(rng):
    A, B = rng.standard_normal((10, 4)), rng.standard_normal((10, 3))
    with pytest.raises(VerilensError, match="k=10 needs more than k tokens"):
        G.knn_overlap(A, B, k=10)
    with pytest.raises(VerilensError, match="rows must be aligned"):
        G.knn_overlap(A, B[:9], k=3)
    A0 = A.copy()
    A0[2] = 0
    with pytest.raises(VerilensError, match="zero-norm rows"):
        G.knn(A0, 3)
    with pytest.raises(VerilensError, match="k >= 3"):
        G.intrinsic_dimension(A, k=2)
    m = G.fit_map(A, B, alpha=1.0)
    with pytest.raises(VerilensError, match=r"shape \[4\] or \[n, 4\]"):
        G.transfer(np.ones(3), m)
    with pytest.raises(VerilensError, match="alpha"):
        G.fit_map(A, B, alpha=-1)
    with pytest.raises(VerilensError, match="fit_map"):
        G.transfer(np.ones(4), "not a map")


# ---------------------------------------------------------------------------------------------
# `verilens geometry` on hostile input: one `verilens: error:` line each (verilens.cli.main)
def _one_error_line(capsys, *args) -> str:
    from verilens.cli import main

    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("VERILENS_DEBUG", raising=False)
        with pytest.raises(SystemExit) as e:
            main(["geometry", *[str(a) for a in args]])
    out, err = capsys.readouterr()
    lines = [l for l in err.splitlines() if l.startswith("verilens: error:")]
    assert e.value.code == 2 and len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


@pytest.fixture(scope="module")
def two_word_encoder(tmp_path_factory):
    """A tiny BERT whose vocabulary shares exactly two words with tiny-lm's."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import BertConfig, BertModel, PreTrainedTokenizerFast

    vocab = {"[PAD]": 0, "[UNK]": 1, "[CLS]": 2, "[SEP]": 3, "[MASK]": 4, "the": 5, "cat": 6, "zzqx": 7}
    wp = Tokenizer(models.WordPiece(vocab=vocab, unk_token="[UNK]"))
    wp.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok = PreTrainedTokenizerFast(tokenizer_object=wp, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]",
                                  sep_token="[SEP]", mask_token="[MASK]")
    d = tmp_path_factory.mktemp("two-word") / "two-word-encoder"
    BertModel(BertConfig(vocab_size=len(vocab), hidden_size=8, num_hidden_layers=1, num_attention_heads=2,
                         intermediate_size=16)).save_pretrained(d)
    tok.save_pretrained(d)
    return d


def test_cli_hostile_geometry_options(capsys, tiny_models, two_word_encoder, tmp_path):
    lm, enc = tiny_models
    o = tmp_path / "o"
    line = _one_error_line(capsys, lm, enc, "--what", "hidden", "--layers", "0,first", "--out", o)
    assert "unknown layer 'first'" in line
    line = _one_error_line(capsys, lm, enc, "--what", "hidden", "--layers", "0-2", "--out", o)
    assert "layer 2 is out of range for tiny-lm: it has 1 blocks, so its hidden-state layers are 0..1" in line
    line = _one_error_line(capsys, lm, enc, "--what", "unembed", "--out", o)
    assert "tiny-encoder has no LM head" in line and "--what embed or --what hidden" in line
    line = _one_error_line(capsys, lm, two_word_encoder, "--what", "embed,hidden", "--out", o)
    assert "share only 2 usable tokens for embed: at least 3 are needed" in line
    line = _one_error_line(capsys, "countdown-tiny", enc, "--out", o)
    assert "the tokenizers share only 1 tokens" in line
    assert "unknown metric 'manhattan'" in _one_error_line(capsys, lm, enc, "--metric", "manhattan", "--out", o)
    assert "--what takes embed, unembed, hidden" in _one_error_line(capsys, lm, enc, "--what", "states", "--out", o)
    assert "--layer-match must be one of" in _one_error_line(capsys, lm, enc, "--what", "hidden", "--layer-match",
                                                             "closest", "--out", o)
    assert not o.exists()  # nothing written by a refused run
