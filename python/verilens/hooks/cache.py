"""ActivationCache: cached activations by hook name, with the helpers analyses need."""
from __future__ import annotations

import torch

from ..errors import VerilensError
from .names import get_act_name


class ActivationCache:
    """name -> tensor [batch, k, ...] (k = cached positions, or all positions).

    Index like TransformerLens: cache["blocks.3.hook_resid_post"], cache["resid_post", 3],
    cache["embed"]. `positions` holds the positions cached for each sequence, and
    `attention_mask` the mask of the cached positions (1 = real token)."""

    def __init__(self, data: dict, model, positions=None, attention_mask=None):
        self.data, self.model, self.positions, self.attention_mask = data, model, positions, attention_mask

    def _key(self, key):
        if isinstance(key, tuple):
            key = get_act_name(*key)
        elif key not in self.data:
            try:
                key = get_act_name(key)
            except VerilensError:
                pass
        if key not in self.data:
            raise KeyError(f"{key!r} was not cached; cached: {sorted(self.data)[:8]}{' ...' if len(self.data) > 8 else ''}")
        return key

    def __getitem__(self, key):
        return self.data[self._key(key)]

    def __contains__(self, key):
        try:
            self._key(key)
            return True
        except (KeyError, VerilensError):
            return False

    def keys(self):
        return self.data.keys()

    def items(self):
        return self.data.items()

    def __len__(self):
        return len(self.data)

    def accumulated_resid(self, layer: int | None = None, incl_mid: bool = False) -> torch.Tensor:
        """[n, batch, k, d_model]: resid_pre of layer 0 (the embeddings), then each
        layer's resid_mid (if incl_mid) and resid_post, up to `layer` (exclusive of
        later layers; None = all)."""
        n_layers = self.model.cfg.n_layers if layer is None else layer
        parts = [self["resid_pre", 0]] if ("resid_pre", 0) in self else [self["embed"]]
        for l in range(n_layers):
            if incl_mid:
                parts.append(self["resid_mid", l])
            parts.append(self["resid_post", l])
        return torch.stack(parts)

    def logit_lens(self, resid: torch.Tensor) -> torch.Tensor:
        """Logits of residual vectors through the final norm and the unembedding."""
        return self.model.logit_lens(resid)

    def stack_head_results(self, layer: int | None = None) -> torch.Tensor:
        """[n_layers * n_heads, batch, k, d_model] per-head outputs (needs attn.hook_result cached)."""
        layers = range(self.model.cfg.n_layers) if layer is None else range(layer)
        heads = [self["result", l] for l in layers]  # [batch, k, head, d_model]
        return torch.cat([h.permute(2, 0, 1, 3) for h in heads])
