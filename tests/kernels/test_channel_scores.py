"""Channel-score kernels against their torch references (and a float64 oracle that forms
every head's OV matrix), on fresh random inputs. In the interpreter on CPU: tiny shapes."""
from __future__ import annotations

import pytest
import torch
from kernel_helpers import DEV, rel_err, triton_or_skip

from verilens.kernels.channel_scores import (composition_numerators, composition_numerators_ref, paper_terms,
                                             paper_terms_ref)

# (L, H, KV, d_head, d_model, n): GQA groups, d_head not a power of two, n not a block multiple
SHAPES = [(2, 4, 2, 16, 48, 5), (1, 3, 3, 12, 40, 37), (2, 2, 1, 32, 160, 70)]


def _weights(shape, gen):
    L, H, KV, dh, d, n = shape
    W_V = torch.randn(L, KV, d, dh, generator=gen) / d ** 0.5
    W_O = torch.randn(L, H, dh, d, generator=gen) / dh ** 0.5
    G, U = torch.randn(n, d, generator=gen), torch.randn(n, d, generator=gen)
    return W_V, W_O, G, U


def _oracle(W_V, W_O, G, U):
    """float64, forming each OV matrix: (paper terms [LH, n], composition numerators [LH, n])."""
    L, H = W_O.shape[:2]
    grp = H // W_V.shape[1]
    terms, nums = [], []
    for l in range(L):
        for h in range(H):
            ov = W_V[l, h // grp].double() @ W_O[l, h].double()
            diag = torch.diagonal(ov)
            terms.append(torch.nn.functional.silu(G.double() @ diag) * (U.double() @ diag))
            nums.append((U.double() @ ov.T).norm(dim=1))
    return torch.stack(terms), torch.stack(nums)


@pytest.mark.parametrize("shape", SHAPES)
def test_references_match_the_oracle(shape):
    gen = torch.Generator().manual_seed(hash(shape) % 2**31)
    W_V, W_O, G, U = _weights(shape, gen)
    terms, nums = _oracle(W_V, W_O, G, U)
    assert rel_err(paper_terms_ref(W_V, W_O, G, U), terms) < 1e-5
    P = W_V.transpose(-1, -2) @ W_V
    assert rel_err(composition_numerators_ref(W_O, P, U), nums) < 1e-5


@pytest.mark.parametrize("shape", SHAPES)
def test_kernels_match_the_references(shape):
    triton_or_skip()
    gen = torch.Generator().manual_seed(1 + hash(shape) % 2**31)
    W_V, W_O, G, U = (t.to(DEV) for t in _weights(shape, gen))
    ref = paper_terms_ref(W_V, W_O, G, U)
    got = paper_terms(W_V, W_O, G, U)
    assert got.shape == ref.shape and rel_err(got, ref) < 1e-5
    P = W_V.transpose(-1, -2) @ W_V
    ref = composition_numerators_ref(W_O, P, U)
    got = composition_numerators(W_O, P, U)
    assert got.shape == ref.shape and rel_err(got, ref) < 1e-5


def test_empty_neuron_set():
    triton_or_skip()
    W_V, W_O, G, U = (t.to(DEV) for t in _weights((1, 2, 1, 16, 32, 0), torch.Generator().manual_seed(0)))
    assert paper_terms(W_V, W_O, G, U).shape == (2, 0)
    assert composition_numerators(W_O, W_V.transpose(-1, -2) @ W_V, U).shape == (2, 0)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_composition_kernel_16bit_weights(dtype):
    """16-bit weights (a bf16 checkpoint on the GPU): the kernel reads M and W_O in that
    dtype and sums in fp32, so it matches the fp32 reference on the same rounded values."""
    triton_or_skip()
    gen = torch.Generator().manual_seed(11)
    W_V, W_O, _, U = _weights((2, 4, 2, 32, 96, 45), gen)
    W_O16, U16 = W_O.to(dtype), U.to(dtype)
    P = W_V.transpose(-1, -2) @ W_V
    ref = composition_numerators_ref(W_O16.float(), P, U16.float())
    got = composition_numerators(W_O16.to(DEV), P.to(DEV), U16.to(DEV))
    assert got.dtype == torch.float32 and rel_err(got, ref) < 1e-5
