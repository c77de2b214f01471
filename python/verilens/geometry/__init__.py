"""Cross-model embedding geometry (PAPER.md section 7; docs/geometry.md).

    from verilens import geometry as G
    idx_a, idx_b, strings = G.shared_vocab(tok_a, tok_b)
    r = G.distance_correlation(E_a[idx_a], E_b[idx_b], metric="cosine")
    test = G.mantel(E_a[idx_a], E_b[idx_b], permutations=99)
    jac = G.knn_overlap(E_a[idx_a], E_b[idx_b], k=10)
    m = G.fit_map(E_a[idx_a], E_b[idx_b], alpha=1.0); v_b = G.transfer(v_a, m)
"""
from ._inputs import GeometryWarning
from .correlation import DistanceCorrelation, MantelResult, distance_correlation, mantel
from .emb2emb import Emb2EmbMap, fit_map, heldout_r2, transfer
from .local import (IntrinsicDimension, LLEAgreement, intrinsic_dimension, knn, knn_overlap,
                    lle_agreement, lle_weights)
from ..models.embeddings import EmbeddingSource, load_embeddings
from .vocab import SharedVocab, shared_vocab

__all__ = [
    "DistanceCorrelation", "Emb2EmbMap", "EmbeddingSource", "GeometryWarning", "IntrinsicDimension",
    "LLEAgreement", "MantelResult", "SharedVocab", "distance_correlation", "fit_map", "heldout_r2",
    "intrinsic_dimension", "knn", "knn_overlap", "lle_agreement", "lle_weights", "load_embeddings",
    "mantel", "shared_vocab", "transfer",
]
