"""The real pair: SmolLM2-135M (byte-level BPE, decoder) vs all-MiniLM-L6-v2 (WordPiece,
encoder) on a sampled shared vocabulary."""
import numpy as np
import pytest
from scipy.spatial.distance import pdist
from scipy.stats import pearsonr

from verilens import geometry as G


@pytest.fixture(scope="module")
def pair(smollm2_dir, minilm_dir):
    a = G.load_embeddings(str(smollm2_dir), "embed")
    b = G.load_embeddings(str(minilm_dir), "embed")
    return a, b


def test_smollm2_vs_minilm(pair):
    a, b = pair
    assert a.matrix.shape[1] == 576 and b.matrix.shape[1] == 384
    sv = G.shared_vocab(a.tokenizer, b.tokenizer, max_tokens=1500, seed=0)
    assert sv.stats["shared"] > 10_000  # ~17k tokens are shared in full
    assert len(sv.strings) == 1500
    Ea, Eb = a.matrix[sv.idx_a], b.matrix[sv.idx_b]
    info = G.distance_correlation(Ea, Eb, "cosine", return_info=True)
    ref = pearsonr(pdist(Ea.double().numpy(), "cosine"), pdist(Eb.double().numpy(), "cosine")).statistic
    assert abs(info.r - ref) < 1e-5
    # two unrelated models still share a clearly positive relative geometry
    assert 0.05 < info.r < 0.9
    m = G.mantel(Ea[:400], Eb[:400], permutations=9, seed=0)
    assert m.p_value == pytest.approx(0.1)  # the observed r beats every relabelling
    jac = G.knn_overlap(Ea, Eb, k=10)
    assert 0.0 < jac.mean() < 1.0


def test_unembed_of_encoder_is_an_error(minilm_dir):
    from verilens.errors import VerilensError

    with pytest.raises(VerilensError, match="no LM head.*use --what embed"):
        G.load_embeddings(str(minilm_dir), "unembed")
