"""ActivationCache: cached activations by hook name, with TransformerLens' helpers
(accumulated_resid, decompose_resid, stack_head_results, apply_ln_to_stack, logit_attrs,
get_full_resid_decomposition, ...), with their argument names and defaults.

The norms are unfolded RMSNorms: hook_scale is sqrt(mean(x^2) + eps) and
hook_normalized = x / scale, before the weight (TransformerLens' meaning), so
`apply_ln_to_stack` divides by the cached scale, and `model.tokens_to_residual_directions`
multiplies W_U by the final norm's weight: `logit_attrs` of a full decomposition then sums
to the logits."""
from __future__ import annotations

import warnings

import torch

from ..errors import VerilensError
from .names import get_act_name
from .slices import Slice


class ActivationCache:
    """name -> tensor [batch, k, ...] (k = cached positions, or all positions).

    Index like TransformerLens: cache["blocks.3.hook_resid_post"], cache["resid_post", 3],
    cache["resid_post", -1], cache["scale", 3, "ln2"], cache["embed"]. `positions` holds the
    positions cached for each sequence, and `attention_mask` the mask of the cached
    positions (1 = real token)."""

    def __init__(self, data: dict, model, positions=None, attention_mask=None, has_batch_dim: bool = True):
        self.data, self.model, self.positions, self.attention_mask = data, model, positions, attention_mask
        self.has_batch_dim = has_batch_dim

    @property
    def cache_dict(self) -> dict:  # TransformerLens' name for the dict
        return self.data

    @cache_dict.setter
    def cache_dict(self, value: dict):
        self.data = value

    @property
    def has_embed(self) -> bool:
        return "hook_embed" in self.data

    def _key(self, key):
        if isinstance(key, tuple):
            if len(key) > 1 and key[1] is not None and key[1] < 0:  # negative layers count from the end
                key = (key[0], self.model.cfg.n_layers + key[1], *key[2:])
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

    def values(self):
        return self.data.values()

    def items(self):
        return self.data.items()

    def __iter__(self):
        return iter(self.data)

    def __len__(self):
        return len(self.data)

    def __repr__(self):
        return f"ActivationCache with keys {list(self.data)}"

    # -- batch and device -----------------------------------------------------------------
    def to(self, device) -> ActivationCache:
        self.data = {k: v.to(device) for k, v in self.data.items()}
        return self

    def toggle_autodiff(self, mode: bool = False):
        """torch.set_grad_enabled(mode), globally, as TransformerLens does."""
        warnings.warn(f"set autodiff to {mode} globally", stacklevel=2)
        torch.set_grad_enabled(mode)

    def _batch_size(self) -> int:
        sizes = [v.shape[0] for v in self.data.values() if v.dim() > 0]
        return max(set(sizes), key=sizes.count) if sizes else 1

    def remove_batch_dim(self) -> ActivationCache:
        """Drop the batch axis of a batch of one (in place, as TransformerLens)."""
        if not self.has_batch_dim:
            warnings.warn("the batch dimension was already removed", stacklevel=2)
            return self
        if self._batch_size() != 1:
            raise VerilensError(f"cannot remove the batch dimension of a batch of {self._batch_size()}")
        self.data = {k: v[0] if v.dim() > 0 and v.shape[0] == 1 else v for k, v in self.data.items()}
        if self.attention_mask is not None:
            self.attention_mask = self.attention_mask[0]
        self.has_batch_dim = False
        return self

    def apply_slice_to_batch_dim(self, batch_slice) -> ActivationCache:
        """A new cache with `batch_slice` (TransformerLens' Slice input) applied to every entry."""
        batch_slice = Slice(batch_slice)
        if not self.has_batch_dim and batch_slice.mode != "identity":
            raise VerilensError("this cache has no batch dimension to slice")
        n = self._batch_size()
        data = {k: batch_slice.apply(v) if v.dim() > 0 and v.shape[0] == n else v for k, v in self.data.items()}
        mask = None if self.attention_mask is None else batch_slice.apply(self.attention_mask)
        return ActivationCache(data, self.model, attention_mask=mask,
                               has_batch_dim=self.has_batch_dim and batch_slice.mode != "int")

    # -- the residual stream ----------------------------------------------------------------
    def _final(self, layer):
        return self.model.cfg.n_layers if layer is None or layer == -1 else layer

    def accumulated_resid(self, layer: int | None = None, incl_mid: bool = False, apply_ln: bool = False,
                          pos_slice=None, mlp_input: bool = False, return_labels: bool = False):
        """[components, *batch_and_pos, d_model]: resid_pre of layers 0..layer (resid_mid too
        with incl_mid; the layer's own resid_mid with mlp_input); layer = n_layers (None, -1)
        adds the final resid_post. apply_ln: the final norm recomputed per component for the
        final layer (a logit lens: multiply by W_U), the cached ln1/ln2 scale otherwise."""
        pos_slice, n = Slice(pos_slice), self.model.cfg.n_layers
        layer = self._final(layer)
        parts, labels = [], []
        for l in range(layer + 1):
            if l == n:
                parts.append(self["resid_post", n - 1])
                labels.append("final_post")
                continue
            parts.append(self["resid_pre", l])
            labels.append(f"{l}_pre")
            if (incl_mid and l < layer) or (mlp_input and l == layer):
                parts.append(self["resid_mid", l])
                labels.append(f"{l}_mid")
        stack = torch.stack([pos_slice.apply(c, dim=-2) for c in parts])
        if apply_ln:
            stack = self.apply_ln_to_stack(stack, layer, pos_slice=pos_slice, mlp_input=mlp_input,
                                           has_batch_dim=self.has_batch_dim, recompute_ln=layer == n)
        return (stack, labels) if return_labels else stack

    def decompose_resid(self, layer: int | None = None, mlp_input: bool = False, mode: str = "all",
                        apply_ln: bool = False, pos_slice=None, incl_embeds: bool = True, return_labels: bool = False):
        """[components, *batch_and_pos, d_model]: the embedding, then each layer's attn_out and
        mlp_out before `layer` (mode "attn" / "mlp" keeps one kind); they sum to resid_pre of
        `layer` (to the final resid_post for None)."""
        if mode not in ("all", "mlp", "attn"):
            raise VerilensError(f"mode must be 'all', 'mlp' or 'attn', got {mode!r}")
        pos_slice = Slice(pos_slice)
        layer = self._final(layer)
        parts, labels = [], []
        if incl_embeds and self.has_embed:
            parts.append(self["hook_embed"])
            labels.append("embed")
        for l in range(layer):
            if mode != "mlp":
                parts.append(self["attn_out", l])
                labels.append(f"{l}_attn_out")
            if mode != "attn":
                parts.append(self["mlp_out", l])
                labels.append(f"{l}_mlp_out")
        if mlp_input and mode != "mlp":
            parts.append(self["attn_out", layer])
            labels.append(f"{layer}_attn_out")
        stack = torch.stack([pos_slice.apply(c, dim=-2) for c in parts])
        if apply_ln:
            stack = self.apply_ln_to_stack(stack, layer, pos_slice=pos_slice, mlp_input=mlp_input)
        return (stack, labels) if return_labels else stack

    def _scale(self, layer, mlp_input, pos_slice, batch_slice):
        n = self.model.cfg.n_layers
        if layer == n:
            if mlp_input:
                raise VerilensError("the final norm has no MLP input: mlp_input must be False at layer n_layers")
            key = "ln_final.hook_scale"
        else:
            key = f"blocks.{layer}.ln{2 if mlp_input else 1}.hook_scale"
        if key not in self.data:
            raise KeyError(f"apply_ln needs {key!r} in the cache: run_with_cache with it in names_filter")
        scale = pos_slice.apply(self.data[key], dim=-2)
        return batch_slice.apply(scale) if self.has_batch_dim else scale

    def apply_ln_to_stack(self, residual_stack: torch.Tensor, layer: int | None = None, mlp_input: bool = False,
                          pos_slice=None, batch_slice=None, has_batch_dim: bool = True, recompute_ln: bool = False):
        """The norm in front of `layer` (ln1, ln2 with mlp_input, ln_final at n_layers) applied
        to every component as it acted on their sum: divided by the cached scale, before the
        norm's weight (TransformerLens). recompute_ln at the final layer: the final norm,
        weight included, run on each component by itself (a logit lens)."""
        pos_slice, batch_slice = Slice(pos_slice), Slice(batch_slice)
        layer = self._final(layer)
        if has_batch_dim:
            residual_stack = batch_slice.apply(residual_stack, dim=1)
        if recompute_ln and layer == self.model.cfg.n_layers:
            with torch.no_grad():
                return torch.stack([self.model.ln_final(c) for c in residual_stack])
        return residual_stack / self._scale(layer, mlp_input, pos_slice, batch_slice)

    def logit_attrs(self, residual_stack: torch.Tensor, tokens, incorrect_tokens=None, pos_slice=None,
                    batch_slice=None, has_batch_dim: bool = True) -> torch.Tensor:
        """[components, *batch_and_pos]: each component's direct contribution to the logit of
        `tokens` (minus that of `incorrect_tokens`), through the final norm's cached scale and
        its weight (so a full decomposition sums to the logit)."""
        directions = self.model.tokens_to_residual_directions(tokens)
        if incorrect_tokens is not None:
            wrong = self.model.tokens_to_residual_directions(incorrect_tokens)
            if wrong.shape != directions.shape:
                raise VerilensError(f"tokens and incorrect_tokens must have the same shape ({tuple(directions.shape)[:-1]}"
                                    f" vs {tuple(wrong.shape)[:-1]})")
            directions = directions - wrong
        scaled = self.apply_ln_to_stack(residual_stack, -1, pos_slice=pos_slice, batch_slice=batch_slice,
                                        has_batch_dim=has_batch_dim)
        if (has_batch_dim and Slice(batch_slice).mode != "int" and scaled.dim() == 4 and directions.dim() == 2
                and directions.shape[0] == scaled.shape[1]):
            directions = directions[:, None]  # one direction per example, shared over positions
        return (scaled * directions.to(scaled)).sum(-1)

    # -- heads and neurons ------------------------------------------------------------------
    def compute_head_results(self):
        """attn.hook_result [batch, pos, head, d_model] of every layer, from the cached hook_z."""
        if self._ensure_head_results():
            warnings.warn("head results were already cached", stacklevel=2)

    def _ensure_head_results(self) -> bool:
        done = True
        for l in range(self.model.cfg.n_layers):
            key = f"blocks.{l}.attn.hook_result"
            if key not in self.data:
                done = False
                with torch.no_grad():
                    W_O = self.model.layer_weights(l)["W_O"]  # [H, d_head, d_model]
                    z = self["z", l]
                    self.data[key] = torch.einsum("...hd,hdm->...hm", z, W_O.to(z))
        return done

    def stack_head_results(self, layer: int = -1, return_labels: bool = False, incl_remainder: bool = False,
                           pos_slice=None, apply_ln: bool = False):
        """[layer * n_heads (+1), *batch_and_pos, d_model]: every head's output before `layer`
        (computed from hook_z where attn.hook_result was not cached); incl_remainder adds
        resid_post of layer - 1 minus their sum."""
        pos_slice = Slice(pos_slice)
        layer = self._final(layer)
        self._ensure_head_results()
        parts, labels = [], []
        for l in range(layer):
            parts.append(pos_slice.apply(self["result", l], dim=-3))
            labels += [f"L{l}H{h}" for h in range(self.model.cfg.n_heads)]
        if parts:
            stack = torch.cat(parts, dim=-2).movedim(-2, 0)
            if incl_remainder:
                rest = pos_slice.apply(self["resid_post", layer - 1], dim=-2) - stack.sum(0)
                stack = torch.cat([stack, rest[None]])
                labels.append("remainder")
        elif incl_remainder:
            stack = pos_slice.apply(self["resid_post", layer - 1], dim=-2)[None]
            labels.append("remainder")
        else:
            like = pos_slice.apply(self["hook_embed"], dim=-2)
            stack = like.new_zeros((0, *like.shape))
        if apply_ln:
            stack = self.apply_ln_to_stack(stack, layer, pos_slice=pos_slice)
        return (stack, labels) if return_labels else stack

    def stack_activation(self, activation_name: str, layer: int = -1, sublayer_type: str | None = None):
        """[layers, ...]: one activation of every layer before `layer`."""
        return torch.stack([self[activation_name, l, sublayer_type] for l in range(self._final(layer))])

    def get_neuron_results(self, layer: int, neuron_slice=None, pos_slice=None, project_output_onto=None):
        """[*batch_and_pos, neurons, d_model]: each GLU neuron's write at `layer` (activation
        times its W_out row); with `project_output_onto` ([d_model] or [d_model, k]) W_out is
        projected first, so the d_mlp x d_model product is never built."""
        self.model.require_glu()
        neuron_slice, pos_slice = Slice(neuron_slice), Slice(pos_slice)
        acts = neuron_slice.apply(pos_slice.apply(self["post", layer], dim=-2), dim=-1)
        W_out = neuron_slice.apply(self.model.layer_weights(layer)["W_out"].detach(), dim=0).to(acts)
        if project_output_onto is None:
            return acts[..., None] * W_out
        projected = W_out @ project_output_onto.to(acts)
        return acts * projected if project_output_onto.dim() == 1 else acts[..., None] * projected

    def stack_neuron_results(self, layer: int, pos_slice=None, neuron_slice=None, return_labels: bool = False,
                             incl_remainder: bool = False, apply_ln: bool = False, project_output_onto=None,
                             mlp_input: bool = False):
        """[layer * neurons (+1), *batch_and_pos, d_model (or k)]: each GLU neuron's write in
        the layers before `layer`; incl_remainder adds what the rest of the residual stream
        entering `layer` (its MLP with mlp_input) holds; projected like get_neuron_results."""
        layer = self._final(layer)
        pos_slice, neuron_slice = Slice(pos_slice), Slice(neuron_slice)
        if neuron_slice.mode == "int":  # layers are concatenated along the neuron axis: keep it
            neuron_slice = Slice([neuron_slice.slice])
        project = project_output_onto
        p2 = None if project is None else (project[:, None] if project.dim() == 1 else project)
        idx = neuron_slice.apply(torch.arange(self.model.cfg.d_mlp)).tolist()
        labels = [f"L{l}N{i}" for l in range(layer) for i in idx]
        parts = [self.get_neuron_results(l, neuron_slice, pos_slice, p2) for l in range(layer)]
        with torch.no_grad():
            if parts:
                stack = torch.cat(parts, dim=-2).movedim(-2, 0)
            else:
                like = pos_slice.apply(self["hook_embed"], dim=-2)
                width = like.shape[-1] if p2 is None else p2.shape[-1]
                stack = like.new_zeros((0, *like.shape[:-1], width))
            if incl_remainder:
                target = pos_slice.apply(self[("resid_mid", layer) if mlp_input else ("resid_post", layer - 1)], dim=-2)
                if p2 is not None:
                    target = target @ p2.to(target)
                stack = torch.cat([stack, (target - stack.sum(0))[None]])
                labels.append("remainder")
            if apply_ln:  # RMSNorm has no centring: dividing by the cached scale commutes with the projection
                stack = stack / self._scale(layer, mlp_input, pos_slice, Slice(None))
        if p2 is not None and project.dim() == 1:
            stack = stack[..., 0]
        return (stack, labels) if return_labels else stack

    def get_full_resid_decomposition(self, layer: int | None = None, mlp_input: bool = False,
                                     expand_neurons: bool = True, apply_ln: bool = False, pos_slice=None,
                                     return_labels: bool = False, project_output_onto=None):
        """Every head, every neuron (or each MLP with expand_neurons=False), the embedding and
        the summed biases (o_proj / down_proj biases, zeros where the model has none): the
        components that add up to the residual stream entering `layer`; with
        `project_output_onto` ([d_model] or [d_model, k]) each projected (neurons without
        building their d_model writes)."""
        layer = self._final(layer)
        pos_slice = Slice(pos_slice)
        project = project_output_onto
        p2 = None if project is None else (project[:, None] if project.dim() == 1 else project)
        proj = (lambda x: x) if p2 is None else (lambda x: x @ p2.to(x))  # noqa: E731
        heads, labels = self.stack_head_results(layer + (1 if mlp_input else 0), pos_slice=pos_slice,
                                                return_labels=True)
        parts = [proj(heads)]
        if layer > 0:
            if expand_neurons:
                neurons, more = self.stack_neuron_results(layer, pos_slice=pos_slice, return_labels=True,
                                                          project_output_onto=p2)
            else:
                neurons, more = self.decompose_resid(layer, pos_slice=pos_slice, incl_embeds=False, mode="mlp",
                                                     return_labels=True)
                neurons = proj(neurons)
            parts.append(neurons)
            labels += more
        if self.has_embed:
            parts.append(proj(pos_slice.apply(self["hook_embed"], dim=-2)[None]))
            labels.append("embed")
        bias = proj(self.model.accumulated_bias(layer, mlp_input, include_mlp_biases=expand_neurons).to(heads))
        parts.append(bias.expand((1, *parts[0].shape[1:])))
        labels.append("bias")
        stack = torch.cat(parts)
        if apply_ln:  # dividing by the cached RMS scale commutes with the projection
            stack = stack / self._scale(layer, mlp_input, pos_slice, Slice(None))
        if p2 is not None and project.dim() == 1:
            stack = stack[..., 0]
        return (stack, labels) if return_labels else stack

    def logit_lens(self, resid: torch.Tensor) -> torch.Tensor:
        """Logits of residual vectors through the final norm and the unembedding."""
        return self.model.logit_lens(resid)
