"""HookedModel: TransformerLens-style hooks, caching and interventions on the native
Hugging Face model (nnsight-style wrapping: no re-implementation, so any Qwen2/Llama-
family checkpoint works as is, with its fast attention path)."""
from __future__ import annotations

import contextlib
import inspect
import warnings
from dataclasses import dataclass

import torch

from ..errors import VerilensError
from .arch import Arch, arch_for
from .cache import ActivationCache
from .interventions import Active
from .names import all_names, parse_name, resolve_names
from .placement import check_placement, input_device, read_weights, refuse_move
from .points import HookPoint
from .runtime import HookSession, PassInfo
from .slices import Slice

RETURN_TYPES = ("logits", "loss", "both", None)
HEAD_POINTS = ("hook_q", "hook_k", "hook_v", "hook_z", "hook_result")  # [batch, pos, head, ...]


def _next_token_loss(logits, ids, mask, per_token: bool):
    """Cross-entropy of each next token over real (non-pad) positions, as TransformerLens'
    lm_cross_entropy_loss: [batch, pos - 1] per token, else the mean."""
    logp = logits[:, :-1].float().log_softmax(-1)
    loss = -logp.gather(-1, ids[:, 1:, None])[..., 0]
    real = (mask[:, :-1] * mask[:, 1:]).bool()
    if per_token:
        return loss.masked_fill(~real, 0.0)
    return loss[real].mean()


@dataclass(frozen=True)
class HookedConfig:
    n_layers: int
    n_heads: int
    n_kv_heads: int
    d_model: int
    d_head: int
    d_mlp: int
    d_vocab: int
    model_type: str
    gated_mlp: bool
    act_fn: str
    final_softcap: float | None = None  # logits = cap * tanh(logits / cap) (Gemma2)
    post_norms: bool = False  # attention / MLP outputs are normed before the residual adds them (Gemma)
    normalization_type: str = "RMS"  # TransformerLens' name for the norms (all supported families: RMSNorm)
    device: str = "cpu"  # where the weights were when the model was wrapped (TransformerLens' cfg.device)


def _config_of(hf_model, arch: Arch, blocks) -> HookedConfig:
    c = hf_model.config
    n_heads = c.num_attention_heads
    return HookedConfig(
        n_layers=c.num_hidden_layers,
        n_heads=n_heads,
        n_kv_heads=getattr(c, "num_key_value_heads", None) or n_heads,
        d_model=c.hidden_size,
        d_head=getattr(c, "head_dim", None) or c.hidden_size // n_heads,
        d_mlp=c.intermediate_size,
        d_vocab=hf_model.get_output_embeddings().weight.shape[0],
        model_type=c.model_type,
        gated_mlp=arch.has_glu(blocks[0]),
        act_fn=arch.act_fn(c),
        final_softcap=arch.final_softcap(c),
        post_norms=arch.attn_out is not None or arch.mlp_out is not None,
        device=str(input_device(hf_model)),
    )


class HookedModel:
    """A causal LM with hook points. Build it with `verilens.load(...)`."""

    def __init__(self, hf_model, tokenizer, name: str = "model", source: str | None = None):
        self.arch = arch_for(getattr(getattr(hf_model, "config", None), "model_type", None))
        try:
            self.arch.top(hf_model, "layers")
        except AttributeError:
            raise VerilensError(f"{type(hf_model).__name__} has no {self.arch.layers}: not a {self.arch.family} "
                                "causal LM") from None
        # a device_map that left weights on the meta device fails here, before any run
        check_placement(hf_model, f"{type(hf_model).__name__} ({name})")
        self.hf_model, self.tokenizer, self.name, self.source = hf_model, tokenizer, name, source
        self.cfg = _config_of(hf_model, self.arch, self.blocks)
        # TransformerLens' hook state: one HookPoint per name, holding the attached functions
        self.hook_dict: dict[str, HookPoint] = {
            n: HookPoint(n, parse_name(n, self.cfg.n_layers)[0]) for n in all_names(self.cfg.n_layers)}
        self.context_level = 0
        self._active: list[Active] = []
        # How head and neuron ablations run, in verilens.ops' vocabulary: "auto" fuses them
        # into o_proj / the GLU through the registered ops on CUDA and edits by hook in
        # torch elsewhere, "torch" always edits by hook (hook_z / hook_post), "triton"
        # always runs the Triton kernels (CPU tensors need TRITON_INTERPRET=1: for tests).
        self.backend = "auto"
        params = inspect.signature(hf_model.forward).parameters
        self._cache_kw = "cache" if "cache" in params else "past_key_values"
        if tokenizer is not None and tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token

    # -- modules ----------------------------------------------------------------------
    @property
    def blocks(self):
        return self.arch.top(self.hf_model, "layers")

    @property
    def embed_module(self):
        return self.arch.top(self.hf_model, "embed")

    @property
    def final_norm(self):
        return self.arch.top(self.hf_model, "final_norm")

    def module(self, layer: int, part: str):
        """Layer `layer`'s module `part`: attn, q, k, v, o, q_norm, k_norm, mlp, gate, up,
        down, attn_out, mlp_out (the modules whose outputs the residual adds); None where
        the family has none (see verilens.hooks.arch)."""
        return self.arch.part(self.blocks[layer], part)

    @property
    def device(self) -> torch.device:
        """Where inputs go and outputs (logits, caches by default) come back: the model's
        device, or accelerate's main device for a model dispatched with a device_map."""
        return input_device(self.hf_model)

    @property
    def dtype(self) -> torch.dtype:
        return next(self.hf_model.parameters()).dtype

    # -- weights (TransformerLens layout) ---------------------------------------------
    _WEIGHT_PARTS = {"W_Q": "q", "W_K": "k", "W_V": "v", "W_O": "o", "W_gate": "gate", "W_in": "up", "W_out": "down"}

    def _layer_weight(self, l: int, key: str) -> torch.Tensor:
        c, mod = self.cfg, self.module(l, self._WEIGHT_PARTS[key])

        def view():
            w = mod.weight
            if key == "W_O":
                return w.view(c.d_model, c.n_heads, c.d_head).permute(1, 2, 0)
            if key in ("W_Q", "W_K", "W_V"):  # [n_heads*d_head, d_model] -> [n_heads, d_model, d_head]
                return w.view(-1, c.d_head, c.d_model).transpose(1, 2)
            return w.T
        return read_weights([mod], view)

    def layer_weights(self, l: int) -> dict:
        """Views (no copies) of layer l's weights in TransformerLens' layout: W_Q [H, d, dh],
        W_K / W_V [n_kv_heads, d, dh], W_O [H, dh, d]; with a GLU, W_gate / W_in
        [d, d_mlp] and W_out [d_mlp, d] (row i: neuron i's value vector). For a layer
        offloaded by a device_map (to disk or CPU) the weights are loaded, as its forward
        loads them, and copies are returned."""
        keys = ["W_Q", "W_K", "W_V", "W_O"] + (["W_gate", "W_in", "W_out"] if self.cfg.gated_mlp else [])
        return {k: self._layer_weight(l, k) for k in keys}

    def stacked(self, key: str, repeat_kv: bool = False) -> torch.Tensor:
        """layer_weights(l)[key] of every layer, stacked: [n_layers, ...]. W_K / W_V have
        n_kv_heads heads unless `repeat_kv` repeats each KV head for its query heads."""
        if key in ("W_gate", "W_in", "W_out"):
            self.require_glu()
        if key not in self._WEIGHT_PARTS:
            raise VerilensError(f"stacked: unknown key {key!r}; use one of {sorted(self._WEIGHT_PARTS)}")
        ws = [self._layer_weight(l, key) for l in range(self.cfg.n_layers)]
        if repeat_kv and self.cfg.n_kv_heads != self.cfg.n_heads:
            ws = [w.repeat_interleave(self.cfg.n_heads // self.cfg.n_kv_heads, dim=0) for w in ws]
        if len({w.device for w in ws}) > 1:  # layers on several devices (a device_map): gather on the main one
            ws = [w.to(self.device) for w in ws]
        return torch.stack(ws)

    @property
    def W_Q(self):  # [L, H, d_model, d_head]
        return self.stacked("W_Q")

    @property
    def W_K(self):  # [L, H, d_model, d_head], KV heads repeated per query head
        return self.stacked("W_K", repeat_kv=True)

    @property
    def W_V(self):
        return self.stacked("W_V", repeat_kv=True)

    @property
    def W_O(self):  # [L, H, d_head, d_model]
        return self.stacked("W_O")

    def require_glu(self):
        """Raise unless the MLPs are GLUs (gate/up/down): the GLU analyses need them."""
        if not self.cfg.gated_mlp:
            raise VerilensError("this model has no GLU MLP (gate_proj/up_proj/down_proj)")

    @property
    def W_gate(self):  # [L, d_model, d_mlp]
        return self.stacked("W_gate")

    @property
    def W_in(self):  # up_proj, [L, d_model, d_mlp]
        return self.stacked("W_in")

    @property
    def W_out(self):  # down_proj, [L, d_mlp, d_model]
        return self.stacked("W_out")

    @property
    def W_U(self):  # [d_model, d_vocab] (view; a copy where a device_map offloaded it)
        head = self.hf_model.get_output_embeddings()
        return read_weights([head], lambda: head.weight.T)

    @property
    def W_E(self):  # [d_vocab, d_model] (the embedding itself; a copy where offloaded)
        emb = self.embed_module
        return read_weights([emb], lambda: emb.weight)

    @property
    def ln_final(self):
        return self.final_norm

    @property
    def final_norm_gain(self) -> torch.Tensor:
        """[d_model]: the final RMSNorm's elementwise gain, ln_final(x) = gain * x / rms(x)
        (Gemma: 1 + its weight)."""
        norm = self.final_norm
        return read_weights([norm], lambda: self.arch.norm_gain(norm))

    @property
    def final_norm_eps(self) -> float:
        """The epsilon inside the final RMSNorm's rms."""
        return self.arch.norm_eps(self.final_norm)

    def tokens_to_residual_directions(self, tokens) -> torch.Tensor:
        """[..., d_model]: the direction in hook_normalized space (before the final norm's
        weight) whose dot product with ln_final.hook_normalized is the token's logit:
        gain * W_U[:, token] (TransformerLens folds the gain into W_U; here it is unfolded)."""
        if isinstance(tokens, str):
            tokens = self.to_single_token(tokens)
        W_U = self.W_U  # read once (a device_map may have offloaded it)
        t = torch.as_tensor(tokens, dtype=torch.long, device=W_U.device)
        return (W_U[:, t].movedim(0, -1) * self.final_norm_gain.to(W_U.device)).detach()

    def to_single_token(self, string: str) -> int:
        ids = self.tokenizer.encode(string, add_special_tokens=False)
        if len(ids) != 1:
            raise VerilensError(f"{string!r} is {len(ids)} tokens, not one")
        return ids[0]

    def accumulated_bias(self, layer: int, mlp_input: bool = False, include_mlp_biases: bool = True) -> torch.Tensor:
        """[d_model]: the biases the attention outputs (o_proj) and, with include_mlp_biases,
        the MLPs (down_proj) add to the residual stream before `layer` (its attention's too
        with mlp_input); zeros for the bias-free families."""
        total = torch.zeros(self.cfg.d_model, device=self.device, dtype=self.dtype)
        for l in range(layer + (1 if mlp_input else 0)):
            parts = ("o",) if (l == layer or not include_mlp_biases) else ("o", "down")
            for part in parts:
                mod = self.module(l, part)
                bias = read_weights([mod], lambda: mod.bias)
                if bias is not None:
                    total = total + bias.detach().to(total.device)
        return total

    def logit_lens(self, x: torch.Tensor) -> torch.Tensor:
        """Logits of residual-stream vectors [..., d_model] through the final norm, the
        unembedding and the model's logit soft-cap, if any (for a direction, the norm's
        scale drops out of the ranking)."""
        x = torch.as_tensor(x)
        if x.shape[-1] != self.cfg.d_model:
            raise VerilensError(f"logit_lens: width {x.shape[-1]} != d_model {self.cfg.d_model}")
        with torch.no_grad():
            logits = self.hf_model.get_output_embeddings()(self.final_norm(x.to(self.device, self.dtype)))
            logits = logits.to(self.device)  # from the unembedding's device (a device_map)
            cap = self.cfg.final_softcap
            return logits if cap is None else torch.tanh(logits / cap) * cap

    # -- tokens -----------------------------------------------------------------------
    def tokenize(self, input, attention_mask=None):
        """(input_ids [b, p], attention_mask [b, p]) with left padding. Token ids may come
        with their own `attention_mask` (e.g. a left-padded batch); text is padded here."""
        if attention_mask is not None:
            if not isinstance(input, torch.Tensor):
                raise VerilensError("attention_mask goes with token ids (text is padded for you)")
            ids = input if input.dim() == 2 else input[None]
            if tuple(attention_mask.shape) != tuple(ids.shape):
                raise VerilensError(f"attention_mask of shape {tuple(attention_mask.shape)} for token ids of shape "
                                    f"{tuple(ids.shape)}")
            return self._checked(ids.to(self.device), attention_mask.to(self.device))
        if isinstance(input, torch.Tensor):
            ids = input if input.dim() == 2 else input[None]
            return self._checked(ids.to(self.device), torch.ones_like(ids, device=self.device))
        if isinstance(input, str):
            input = [input]
        if not isinstance(input, (list, tuple)) or not input or not all(isinstance(s, str) for s in input):
            raise VerilensError("input must be a string, a list of strings or a tensor of token ids")
        self.tokenizer.padding_side = "left"
        enc = self.tokenizer(list(input), return_tensors="pt", padding=True)
        return self._checked(enc["input_ids"].to(self.device), enc["attention_mask"].to(self.device))

    def check_length(self, n_positions: int, what: str = "the input"):
        """Warn when a sequence runs past the positions the model was built for."""
        limit = getattr(self.hf_model.config, "max_position_embeddings", None)
        if limit is not None and n_positions > limit:
            warnings.warn(f"{what} has {n_positions} positions, more than the model's max_position_embeddings = "
                          f"{limit}: outputs past that are extrapolation", stacklevel=3)

    def _checked(self, ids, mask):
        if ids.dim() != 2 or ids.shape[1] == 0:
            raise VerilensError(f"an empty prompt: token ids of shape {tuple(ids.shape)}; give at least one token")
        empty = (mask.sum(1) == 0).nonzero().flatten().tolist()
        if empty:
            raise VerilensError(f"prompt(s) {empty} have no tokens (an empty string?); give at least one token each")
        self.check_length(ids.shape[1])
        return ids, mask


    def to_tokens(self, input) -> torch.Tensor:
        return self.tokenize(input)[0]

    def to_string(self, tokens):
        t = torch.as_tensor(tokens)
        if t.dim() == 0:
            return self.tokenizer.decode([int(t)])
        if t.dim() == 1:
            return self.tokenizer.decode(t.tolist())
        return [self.tokenizer.decode(row.tolist()) for row in t]

    def to_str_tokens(self, input) -> list[str]:
        ids = self.to_tokens(input)[0] if not isinstance(input, torch.Tensor) else torch.as_tensor(input).flatten()
        return [self.tokenizer.decode([int(i)]) for i in ids]

    # -- forward passes ---------------------------------------------------------------
    def _positions(self, positions, ids, mask):
        """[b, k] long tensor of positions, or None for all positions."""
        if positions is None:
            return None
        b, p = ids.shape
        if isinstance(positions, str):
            if positions != "last":
                raise VerilensError(f"positions: 'last', an int, a list per sequence or a tensor, got {positions!r}")
            return torch.full((b, 1), p - 1, dtype=torch.long, device=ids.device)
        if isinstance(positions, int):
            positions = [[positions]] * b
        t = torch.as_tensor(positions, dtype=torch.long, device=ids.device) if not isinstance(positions, torch.Tensor) \
            else positions.to(ids.device, torch.long)
        if t.dim() == 1:
            t = t[None].expand(b, -1)
        if t.dim() != 2 or t.shape[0] != b:
            raise VerilensError(f"positions must give the same number of positions for each of the {b} sequences")
        if t.numel() and (int(t.max()) >= p or int(t.min()) < -p):
            raise VerilensError(f"positions {t.max().item()} past the sequence length {p}")
        return t % p

    def _position_ids(self, mask):
        pos = mask.long().cumsum(-1) - 1
        return pos.masked_fill(mask == 0, 1)

    def _user_hooks(self) -> list:
        """(name, fn) of every forward hook attached to the hook points, in order."""
        return [(name, h.fn) for name, hp in self.hook_dict.items() for h in hp.fwd_hooks]

    def _user_bwd_hooks(self) -> list:
        """(name, fn) of the backward hooks; each runs only while it is still attached
        when the backward pass reaches it (as a TransformerLens module hook would)."""
        def live(hp, h):
            return lambda grad, hook: h.fn(grad, hook=hook) if h in hp.bwd_hooks else None
        return [(name, live(hp, h)) for name, hp in self.hook_dict.items() for h in hp.bwd_hooks]

    def _active_hooks(self, gate=True):
        out = self._user_hooks()
        for a in self._active:
            out += a.hooks(self, gate=gate)
        return out

    def _run(self, ids, mask, hooks, positions=None, kv=None, past=0, use_cache=False, full_mask=None,
             last_logits_only=False, bwd_hooks=()):
        info = PassInfo(batch=ids.shape[0], seq=ids.shape[1], past=past,
                        attention_mask=full_mask if full_mask is not None else mask, positions=positions,
                        input_ids=ids)
        attn_mask = full_mask if full_mask is not None else mask
        pos_ids = self._position_ids(attn_mask)[:, -ids.shape[1]:]
        kwargs = {"input_ids": ids, "attention_mask": attn_mask, "position_ids": pos_ids, "use_cache": use_cache}
        if kv is not None:
            kwargs[self._cache_kw] = kv
        if last_logits_only:  # generation reads only the last position: skip the unembedding of the rest
            kwargs["logits_to_keep"] = 1
        with HookSession(self, hooks, bwd_hooks) as session:
            session.info = info
            out = self.hf_model(**kwargs)
        return out.logits

    # -- forward passes (TransformerLens' HookedRootModule API) ---------------------------
    # Like TransformerLens, passes record gradients when torch's grad mode is on: wrap
    # analysis code in torch.no_grad() / torch.inference_mode() (verilens' own analyses do).
    def __call__(self, input, return_type: str | None = "logits", loss_per_token: bool = False,
                 attention_mask=None):
        return self.forward(input, return_type, loss_per_token, attention_mask)

    def forward(self, input, return_type: str | None = "logits", loss_per_token: bool = False, attention_mask=None):
        """`return_type`: "logits" [batch, pos, d_vocab], "loss" (mean next-token cross-entropy
        over real tokens; per token [batch, pos - 1] with `loss_per_token`), "both" (logits,
        loss) or None; with the hooks attached to the hook points and the active interventions."""
        ids, mask = self.tokenize(input, attention_mask)
        return self._output(ids, mask, self._active_hooks(), None, self._user_bwd_hooks(), return_type, loss_per_token)

    def _output(self, ids, mask, hooks, positions, bwd_hooks, return_type="logits", loss_per_token=False):
        if return_type not in RETURN_TYPES:
            raise VerilensError(f"return_type must be one of {RETURN_TYPES}, got {return_type!r}")
        logits = self._run(ids, mask, hooks, positions=positions, bwd_hooks=bwd_hooks)
        if return_type == "logits":
            return logits
        if return_type is None:
            return None
        loss = _next_token_loss(logits, ids, mask, loss_per_token)
        return loss if return_type == "loss" else (logits, loss)

    # -- the module (TransformerLens / nn.Module conveniences, on the wrapped model) ---------
    def to(self, *args, **kwargs) -> "HookedModel":
        refuse_move(self.hf_model)
        self.hf_model.to(*args, **kwargs)
        return self

    def cpu(self) -> "HookedModel":
        return self.to("cpu")

    def cuda(self, device=None) -> "HookedModel":
        return self.to(torch.device("cuda", device) if isinstance(device, int) else (device or "cuda"))

    def parameters(self, recurse: bool = True):
        return self.hf_model.parameters(recurse)

    def named_parameters(self, *args, **kwargs):
        return self.hf_model.named_parameters(*args, **kwargs)

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.hf_model.zero_grad(set_to_none=set_to_none)

    # -- hook points ----------------------------------------------------------------------
    @property
    def mod_dict(self) -> dict[str, HookPoint]:
        """TransformerLens' name -> module map, restricted to what verilens hooks: the hook
        points (the native modules are in `hf_model`, and `module(l, part)` names them)."""
        return self.hook_dict

    def hook_points(self):
        return self.hook_dict.values()

    def _points(self, name) -> list[HookPoint]:
        """The hook points a name, a list of names or a filter on names selects (unknown
        names are an error listing the closest valid ones)."""
        return [self.hook_dict[n] for n in resolve_names(name, self.cfg.n_layers)]

    def add_hook(self, name, hook, dir: str = "fwd", is_permanent: bool = False, level: int | None = None,
                 prepend: bool = False) -> None:
        """Attach `hook(activation, hook=point)` at a hook point (a name or a filter on names)
        until it is removed: `reset_hooks()`, or the end of the `hooks()` block that added it."""
        for hp in self._points(name):
            hp.add_hook(hook, dir=dir, is_permanent=is_permanent, level=level, prepend=prepend)

    def add_perma_hook(self, name, hook, dir: str = "fwd") -> None:
        """A hook that `reset_hooks()` keeps (unless including_permanent=True)."""
        self.add_hook(name, hook, dir=dir, is_permanent=True)

    def remove_all_hook_fns(self, direction: str = "both", including_permanent: bool = False,
                            level: int | None = None) -> None:
        for hp in self.hook_points():
            hp.remove_hooks(direction, including_permanent=including_permanent, level=level)

    def clear_contexts(self) -> None:
        for hp in self.hook_points():
            hp.clear_context()

    def reset_hooks(self, clear_contexts: bool = True, direction: str = "both", including_permanent: bool = False,
                    level: int | None = None) -> None:
        if clear_contexts:
            self.clear_contexts()
        self.remove_all_hook_fns(direction, including_permanent, level=level)

    @contextlib.contextmanager
    def hooks(self, fwd_hooks=(), bwd_hooks=(), reset_hooks_end: bool = True, clear_contexts: bool = False):
        """The hooks [(name or filter, fn)] stay on for every pass inside the block (generate
        included); on exit they are removed (with reset_hooks_end), also when the block raises."""
        self.context_level += 1
        try:
            for name, fn in fwd_hooks:
                self.add_hook(name, fn, dir="fwd", level=self.context_level)
            for name, fn in bwd_hooks:
                self.add_hook(name, fn, dir="bwd", level=self.context_level)
            yield self
        finally:
            if reset_hooks_end:
                self.reset_hooks(clear_contexts, including_permanent=False, level=self.context_level)
            self.context_level -= 1

    def run_with_hooks(self, input, fwd_hooks=(), bwd_hooks=(), reset_hooks_end: bool = True,
                       clear_contexts: bool = False, **forward_kwargs):
        """forward(input, **forward_kwargs) with extra hooks for this call only (keep backward
        hooks for a later loss.backward() with reset_hooks_end=False)."""
        if bwd_hooks and reset_hooks_end:
            warnings.warn("run_with_hooks removes its hooks at the end: backward hooks are gone before a "
                          "backward pass can run (pass reset_hooks_end=False)", stacklevel=2)
        with self.hooks(fwd_hooks, bwd_hooks, reset_hooks_end, clear_contexts):
            return self.forward(input, **forward_kwargs)

    @contextlib.contextmanager
    def intervene(self, *interventions, when=None):
        """Apply interventions to every forward, run_with_cache and generate in the block."""
        active = Active(self, interventions, when)  # validates before any compute
        self._active.append(active)
        try:
            yield self
        finally:
            self._active.remove(active)

    def _cache_hooks(self, names, store, device, dtype, pos_slice=None, suffix=""):
        # by default the cache goes where the inputs are: on a model split over devices by
        # a device_map, every activation comes to the main device (helpers combine them)
        device = device or self.device

        def make(name):
            def fn(x, hook):
                pos = hook.info.positions
                if pos is not None and not name.endswith(("hook_pattern", "hook_result")):
                    x = x[torch.arange(x.shape[0], device=x.device)[:, None], pos.to(x.device)]
                if pos_slice is not None:  # TransformerLens: heads' activations have pos at -3
                    x = pos_slice.apply(x, dim=-3 if name.endswith(HEAD_POINTS) else -2)
                store[name + suffix] = x.detach().to(device=device, dtype=dtype or x.dtype)
            return fn
        return [(n, make(n)) for n in names]

    def run_with_cache(self, input, names_filter=None, device=None, remove_batch_dim: bool = False,
                       incl_bwd: bool = False, clear_contexts: bool = False, pos_slice=None,
                       return_cache_object: bool = True, positions=None, dtype=None, attention_mask=None,
                       **forward_kwargs):
        """(output, ActivationCache), with TransformerLens' arguments. `names_filter`: a name,
        names or a filter on names (None: every point but attn.hook_result, which
        `cache.compute_head_results()` derives from hook_z, as TransformerLens); `pos_slice`:
        TransformerLens' slice of the position axis (an int keeps the axis, as [int]);
        `positions`: verilens' per-sequence choice, None (all), "last", an int, a list per
        sequence or a [batch, k] tensor, which also limits attention patterns to those query
        positions; `incl_bwd`: backward() on the output (a scalar: return_type="loss") and the
        gradients cached as "<name>_grad"; `device`, `dtype`: where the cache goes;
        `return_cache_object=False`: a plain dict. The caching hooks live for this call only
        and run after the attached hooks and interventions, so the cache sees their edits."""
        if positions is not None and pos_slice is not None:
            raise VerilensError("give positions (verilens, per sequence) or pos_slice (TransformerLens), not both")
        ids, mask = self.tokenize(input, attention_mask)
        if remove_batch_dim and ids.shape[0] != 1:
            raise VerilensError(f"remove_batch_dim needs a batch of one, got {ids.shape[0]}")
        names = resolve_names(names_filter, self.cfg.n_layers)
        if names_filter is None:
            names = [n for n in names if not n.endswith("attn.hook_result")]
        pos = self._positions(positions, ids, mask)
        if isinstance(pos_slice, int) and not isinstance(pos_slice, bool):
            pos_slice = [pos_slice]  # TransformerLens' Slice.unwrap: the position axis stays
        pos_slice = None if pos_slice is None else Slice(pos_slice)
        store = {}
        bwd = self._user_bwd_hooks()
        if incl_bwd:
            bwd += self._cache_hooks(names, store, device, dtype, pos_slice, suffix="_grad")
        out = self._output(ids, mask, self._active_hooks() + self._cache_hooks(names, store, device, dtype, pos_slice),
                           pos, bwd, **forward_kwargs)
        if incl_bwd:
            out.backward()
        if clear_contexts:
            self.clear_contexts()
        if not return_cache_object:
            return out, store
        cache_mask = mask if pos is None else mask.gather(1, pos)
        if pos_slice is not None:
            cache_mask = pos_slice.apply(cache_mask, dim=-1)
        cache = ActivationCache(store, self, positions=pos, attention_mask=cache_mask)
        return out, cache.remove_batch_dim() if remove_batch_dim else cache

    # -- generation -------------------------------------------------------------------
    def prefill(self, input, cache_names=None, cache_device=None, cache_dtype=None, attention_mask=None):
        """The clean first pass over prompts, to start many `generate` calls from
        (see verilens.hooks.generate.Prefill)."""
        from .generate import Prefill

        return Prefill(self, input, cache_names, cache_device, cache_dtype, attention_mask)

    def generate(self, input, max_new_tokens: int = 64, **kwargs):
        """Batched generation with left padding, exact under interventions; returns a
        Generation (see verilens.hooks.generate.generate)."""
        from .generate import generate

        return generate(self, input, max_new_tokens=max_new_tokens, **kwargs)

    def __repr__(self):
        c = self.cfg
        return (f"HookedModel({self.name!r}: {self.arch.family}, {c.n_layers} layers, {c.n_heads} heads "
                f"({c.n_kv_heads} kv), d_model {c.d_model}, d_mlp {c.d_mlp}, vocab {c.d_vocab})")
