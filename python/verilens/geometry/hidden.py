"""Hidden-state geometry: a per-layer correlation curve between two models on one token list.

The paper's "alignment persists through the hidden states": for the tokens two models share,
each model's hidden state of every token at a layer gives a [V, d] matrix, and the two
matrices' distance correlation (closed form, all pairs) is one point of the curve.

Input. Each token is read in the same fixed, minimal context in every model:
  causal LM  [start] + context + [token], read at the token (the last position); start is
             the tokenizer's BOS token, or its EOS token where it has no BOS (SmolLM2's
             GGUF tokenizer adds none by itself; countdown-tiny has only EOS).
  encoder    [CLS] + context + [token] + [SEP], read at the token.
`context` is empty by default. Why not the token alone at position 0: in decoder LMs the
first position is the attention sink, whose hidden state is dominated by a few huge,
token-independent activations from the first layers on; with one start token in front,
that role falls to the start token and every token is read at position 1 with the same
neighbour, so the only thing that varies across the list is the token. Every sequence has
the same length, so batches need no padding.

Layers. Layer 0 is the input to the first block (the embedding output: hook
blocks.0.hook_resid_pre; for an encoder its embedding layer's output, with position and
type embeddings and LayerNorm), layer l >= 1 the output of block l (blocks.{l-1}.hook_resid_post,
before the final norm). Causal LMs are read through HookedModel.run_with_cache (this
package never reaches into transformers); encoders through
verilens.models.embeddings.encoder_hidden_states, since HookedModel covers decoder-only LMs.

Memory. States are computed in batches and appended per layer to a raw [V, d] float32 file
in a temporary folder (removed afterwards): the model runs once over the list for all
requested layers, and the process holds one batch, never V x d x layers; each layer is
mapped (np.memmap) only while its correlation is computed.

Pairing layers of models of different depth (`match`): "relative" (default) pairs layer l
of the shallower model (L_s blocks) with layer round(l * L_d / L_s) of the deeper one
(L_d blocks), the paper's int(L / 36 * 48) mapping; "index" pairs equal layer numbers.
`layers` are numbered in the shallower model of the pair."""
from __future__ import annotations

import re
import shutil
import tempfile
from pathlib import Path

import numpy as np
import torch

from ..errors import VerilensError
from ..models.embeddings import ModelSource, encoder_hidden_states

MATCHES = ("relative", "index")
_ITEM = re.compile(r"^\s*(\d+)\s*(?:-\s*(\d+)\s*)?$")


def parse_layers(spec) -> list[int] | None:
    """'all' -> None; '0,3,6' / '0-6' / '0-30,15' -> sorted unique ints; anything else: an error."""
    if spec is None:
        return None
    if isinstance(spec, (list, tuple)):
        spec = ",".join(str(s) for s in spec)
    s = str(spec).strip()
    if s.lower() == "all":
        return None
    out = set()
    for item in s.split(","):
        m = _ITEM.match(item)
        if not m:
            raise VerilensError(
                f"unknown layer {item.strip()!r} in --layers {s!r}; give layer numbers (0 = the embedding output, "
                "L = the last block's output) such as 0,3,6 or a range 0-6, or 'all'")
        lo, hi = int(m.group(1)), int(m.group(2) if m.group(2) is not None else m.group(1))
        if hi < lo:
            raise VerilensError(f"unknown layer range {item.strip()!r} in --layers: the end is before the start")
        if hi > 100_000:  # before building the range: no model has that many blocks
            raise VerilensError(f"layer {hi} is out of range for every model (--layers {s!r})")
        out.update(range(lo, hi + 1))
    return sorted(out)


def layer_plan(a: ModelSource, b: ModelSource, layers: list[int] | None, match: str = "relative",
               names=("a", "b")) -> list[tuple[int, int]]:
    """[(layer of a, layer of b)] for the curve; `layers` in the shallower model's numbering."""
    if match not in MATCHES:
        raise VerilensError(f"--layer-match must be one of {MATCHES}, not {match!r}")
    La, Lb = a.n_layers, b.n_layers
    shallow_is_a = La <= Lb
    Ls, Ld = (La, Lb) if shallow_is_a else (Lb, La)
    sname = names[0] if shallow_is_a else names[1]
    ls = list(range(Ls + 1)) if layers is None else layers
    bad = [l for l in ls if l > Ls]
    if bad:
        raise VerilensError(
            f"layer {bad[0]} is out of range for {sname}: it has {Ls} blocks, so its hidden-state layers are 0..{Ls} "
            f"(layers are numbered in the shallower model of each pair; --layer-match {match} maps them onto the other)")
    plan = []
    for l in ls:
        other = l if match == "index" else int(round(l * Ld / Ls)) if Ls else 0
        plan.append((l, other) if shallow_is_a else (other, l))
    return plan


def read_plan(src: ModelSource, context: str = "") -> tuple[list[int], list[int]]:
    """(ids before the token, ids after it) for one model: see the module doc."""
    tok = src.tokenizer
    ctx = tok(context, add_special_tokens=False)["input_ids"] if context else []
    if src.kind == "encoder":
        cls, sep = tok.cls_token_id, tok.sep_token_id
        if cls is None or sep is None:
            raise VerilensError(f"{src.name}: the encoder's tokenizer has no [CLS] / [SEP] token to frame each token")
        return [int(cls), *ctx], [int(sep)]
    start = tok.bos_token_id if getattr(tok, "bos_token", None) is not None else tok.eos_token_id
    if start is None:
        raise VerilensError(f"{src.name}: its tokenizer has neither a BOS nor an EOS token to start each sequence")
    return [int(start), *ctx], []


def _hook(l: int) -> str:
    return "blocks.0.hook_resid_pre" if l == 0 else f"blocks.{l - 1}.hook_resid_post"


class LayerFiles(dict):
    """{layer: [V, d] float32} backed by one raw file per layer: each lookup maps the file
    afresh (np.memmap), so a layer's pages leave the process once its array is dropped."""

    def __init__(self, paths: dict, shape_of: dict):
        super().__init__(paths)
        self.shapes = shape_of

    def __getitem__(self, layer):
        return np.memmap(dict.__getitem__(self, layer), dtype=np.float32, mode="r+", shape=self.shapes[layer])

    def values(self):
        return [self[k] for k in self]

    def items(self):
        return [(k, self[k]) for k in self]


def hidden_states(src: ModelSource, token_ids, layers, *, context: str = "", batch_size: int = 256,
                  folder: str | Path | None = None, say=None) -> dict[int, np.ndarray]:
    """{layer: [V, d] float32} hidden states of `token_ids` (one per sequence, module doc), in
    batches. With `folder`, each batch is appended to one raw file per layer (plain writes:
    the pages go to the page cache, not the process) and a LayerFiles maps them on lookup;
    without, the arrays are in RAM."""
    layers = sorted(set(int(l) for l in layers))
    for l in layers:
        if not 0 <= l <= src.n_layers:
            raise VerilensError(f"layer {l} is out of range for {src.name}: its hidden-state layers are 0..{src.n_layers}")
    if batch_size < 1:
        raise VerilensError("--batch-size must be at least 1")
    ids = np.asarray(token_ids, dtype=np.int64)
    V = len(ids)
    before, after = read_plan(src, context)
    pos = len(before)
    out: dict[int, np.ndarray] = {}
    files, widths = {}, {}
    names = [_hook(l) for l in layers]
    try:
        for s in range(0, V, batch_size):
            t = torch.as_tensor(ids[s:s + batch_size])
            seq = torch.cat([torch.tensor(before, dtype=torch.long).expand(len(t), -1), t[:, None],
                             torch.tensor(after, dtype=torch.long).expand(len(t), -1)], dim=1)
            if src.kind == "encoder":
                got = encoder_hidden_states(src, seq, pos, layers)
            else:
                with torch.no_grad():
                    _, store = src.model.run_with_cache(seq, names_filter=names, positions=pos, return_type=None,
                                                        return_cache_object=False, device="cpu",
                                                        dtype=torch.float32)
                got = {l: store[n][:, 0] for l, n in zip(layers, names)}
            for l in layers:
                x = np.ascontiguousarray(got[l].detach().float().cpu().numpy())
                widths[l] = x.shape[1]
                if folder is None:
                    if l not in out:
                        out[l] = np.empty((V, x.shape[1]), np.float32)
                    out[l][s:s + len(x)] = x
                else:
                    if l not in files:
                        files[l] = open(Path(folder) / f"{_safe(src.name)}-{id(out)}-layer{l}.f32", "wb")
                    files[l].write(x.tobytes())
            if say and (s // batch_size) % 20 == 19:
                say(f"  {src.name}: hidden states of {min(V, s + batch_size)} / {V} tokens")
    finally:
        for f in files.values():
            f.close()
    if folder is None:
        return out
    return LayerFiles({l: files[l].name for l in layers}, {l: (V, widths[l]) for l in layers})


def mean_cosine(X, block: int = 8192) -> float:
    """Mean cosine similarity between distinct rows (anisotropy; zero rows left out):
    (|sum_i u_i|^2 - V) / (V (V - 1)) over the unit rows u_i, in float64."""
    s, V = None, 0
    for i in range(0, X.shape[0], block):
        x = torch.as_tensor(np.asarray(X[i:i + block])).double()
        n = torch.linalg.vector_norm(x, dim=1)
        u = x[n > 0] / n[n > 0, None]
        s = u.sum(0) if s is None else s + u.sum(0)
        V += u.shape[0]
    return float((s @ s - V) / (V * (V - 1))) if V > 1 else float("nan")


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", Path(name).name or name)[:60]


class Scratch:
    """A temporary folder for the per-layer memmaps, removed on exit (also on errors / Ctrl-C)."""

    def __enter__(self):
        self.path = Path(tempfile.mkdtemp(prefix="verilens-hidden-"))
        return self.path

    def __exit__(self, *exc):
        shutil.rmtree(self.path, ignore_errors=True)
        return False
