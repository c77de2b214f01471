"""The Triton kernel in the interpreter (TRITON_INTERPRET=1, CPU tensors, tiny shapes),
against the float64 torch reference. On a CUDA machine the same tests run on the GPU."""
import numpy as np
import pytest
import torch

triton = pytest.importorskip("triton")
if not torch.cuda.is_available():
    from triton.runtime.interpreter import InterpretedFunction

    if not isinstance(triton.language.zeros, InterpretedFunction):
        pytest.skip("triton was imported before TRITON_INTERPRET=1 was set; run with TRITON_INTERPRET=1",
                    allow_module_level=True)

from verilens import geometry as G  # noqa: E402
from verilens.kernels.distance_correlation import (  # noqa: E402
    distance_correlation_ref, pearson_sums_ref, pearson_sums_triton)


DEV = "cuda" if torch.cuda.is_available() else "cpu"


@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-9), (torch.float32, 1e-5)])
def test_distance_correlation_triton(rng, metric, dtype, tol):
    V = 37  # 3 x 3 tiles of 16, ragged last tile
    A = torch.from_numpy(rng.standard_normal((V, 20)) + 1.0).to(DEV, dtype)
    B = (A[:, :13].double() + torch.from_numpy(rng.standard_normal((V, 13))).to(DEV)).to(dtype)
    r = G.distance_correlation(A, B, metric, method="stream", backend="triton")
    assert abs(r - distance_correlation_ref(A.double().cpu(), B.double().cpu(), metric)) < tol


@pytest.mark.parametrize("metric,code", [("cosine", 0), ("euclidean", 1)])
def test_sums_with_permutation_and_bf16(rng, metric, code):
    V = 29
    A = torch.from_numpy(rng.standard_normal((V, 16))).to(DEV, torch.bfloat16)
    B = torch.from_numpy(rng.standard_normal((V, 24))).to(DEV, torch.bfloat16)
    perm = torch.from_numpy(rng.permutation(V)).to(DEV)
    A64, B64 = A.double(), B.double()
    if code == 0:
        wa, wb = 1 / A64.norm(dim=1), 1 / B64.norm(dim=1)
    else:
        wa, wb = (A64 ** 2).sum(1), (B64 ** 2).sum(1)
    got = pearson_sums_triton(A, B, code, wa, wb, cx=0.9, cy=1.1, perm=perm).tolist()
    ref = pearson_sums_ref(A64.cpu(), B64.cpu(), metric, cx=0.9, cy=1.1, perm=perm.cpu())
    assert got[0] == ref[0] == V * (V - 1) // 2
    # bf16 inputs are exact in fp32: only the fp32 accumulation of the dots differs
    np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-3)


def test_mantel_triton_matches_cpu(rng):
    V = 33
    A = torch.from_numpy(rng.standard_normal((V, 8)))
    B = torch.from_numpy(rng.standard_normal((V, 5)))
    res_t = G.mantel(A.to(DEV), B.to(DEV), "euclidean", permutations=3, seed=1, backend="triton")
    res_c = G.mantel(A, B, "euclidean", permutations=3, seed=1, backend="blas")
    np.testing.assert_allclose(res_t.null, res_c.null, atol=1e-9)
    assert abs(res_t.r - res_c.r) < 1e-9
