"""Composable interventions: `with model.intervene(ablate_heads([(17, 11)]), when=at_token(" ("))`.

Each intervention validates itself against the model before any compute and compiles
to hook functions on named hook points. `positions` says where in the sequence it acts:
"all" (every position of the pass), "last" (the last position) or a list of absolute
positions. `when` gates it per sequence: `at_token(" (")` fires on passes whose last
input token is " (" (PAPER.md section 6), i.e. the decoding step that predicts "this"/"not"."""
from __future__ import annotations

import operator

import torch

from ..errors import VerilensError


def _index(x, what: str) -> int:
    """An integer index (int, numpy or 0-d torch integer); a float, bool or string is an
    error, never rounded: ablate_heads([(1.5, 0)]) must not ablate layer 1."""
    if isinstance(x, bool) or (isinstance(x, torch.Tensor) and x.dtype == torch.bool):
        raise VerilensError(f"{what} must be an integer, got {x!r}")
    try:
        return operator.index(x)
    except TypeError:
        raise VerilensError(f"{what} must be an integer, got {x!r}") from None


def _pairs(items, what: str) -> list[tuple[int, int]]:
    out = []
    for item in items:
        if isinstance(item, (str, bytes)) or not hasattr(item, "__len__") or len(item) != 2:
            raise VerilensError(f"{what}: each entry must be a (layer, index) pair, got {item!r}")
        out.append((_index(item[0], f"{what}: layer"), _index(item[1], f"{what}: index")))
    return out


def _check_positions(positions):
    if positions in ("all", "last"):
        return positions
    if isinstance(positions, int):
        positions = [positions]
    if isinstance(positions, str) or not hasattr(positions, "__iter__"):
        raise VerilensError(f"positions must be 'all', 'last' or a list of ints, got {positions!r}")
    positions = [_index(p, "positions") for p in positions]
    if any(p < 0 for p in positions):
        raise VerilensError("explicit positions must be >= 0 (absolute positions in the sequence)")
    return positions


def position_mask(positions, info, device):
    """[batch, seq] bool mask of the positions of this pass to act on (None = all)."""
    if positions == "all":
        return None
    m = torch.zeros(info.batch, info.seq, dtype=torch.bool, device=device)
    if positions == "last":
        m[:, -1] = True
        return m
    for p in positions:
        rel = p - info.past
        if p >= info.past + info.seq:
            raise VerilensError(f"position {p} is past the end of the sequence ({info.past + info.seq} tokens)")
        if rel >= 0:
            m[:, rel] = True
    return m


def position_and_rows(hook, positions, x):
    """[batch, seq] bool: the chosen positions of the firing rows (None = everywhere)."""
    mask = position_mask(positions, hook.info, x.device)
    rows = hook.rows
    if rows is None:
        return mask
    rows = rows.to(x.device)[:, None]
    return rows.expand(x.shape[0], x.shape[1]) if mask is None else mask & rows


def _select(hook, positions, new, old):
    """Blend `new` into `old` only at the chosen positions and firing rows."""
    where = position_and_rows(hook, positions, new)
    if where is None:
        return new
    return torch.where(where.view(*where.shape, *[1] * (new.dim() - 2)), new, old)


class Intervention:
    """Base class: `validate(model)` raises before compute; `hooks(model)` -> [(name, fn)]."""

    positions = "all"

    def validate(self, model) -> None:
        pass

    def hooks(self, model):
        raise NotImplementedError

    @property
    def scope(self) -> str:
        """"last" when it only touches the last position of a pass, else "all"."""
        return "last" if self.positions == "last" else "all"

    @property
    def causal(self) -> bool:
        """True when applying it pass by pass under a KV cache (to each new token as it
        comes) equals applying it to one forward over the whole sequence: the edit at a
        position depends on nothing but that position's own activation."""
        return True


class ablate_heads(Intervention):
    """Zero (or mean-replace) attention heads' outputs: their slice of the o_proj input.

    heads: [(layer, head), ...]. mode="mean" uses per-head means of hook_z over
    `reference` (token ids or texts run once through the model), or, without a
    reference, over the current pass's real (non-pad) positions."""

    def __init__(self, heads, mode: str = "zero", positions="all", reference=None):
        self.heads = _pairs(heads, "ablate_heads")
        if mode not in ("zero", "mean"):
            raise VerilensError(f"mode must be 'zero' or 'mean', got {mode!r}")
        self.mode, self.positions, self.reference = mode, _check_positions(positions), reference
        self._means = None

    def validate(self, model):
        cfg = model.cfg
        for l, h in self.heads:
            if not 0 <= l < cfg.n_layers:
                raise VerilensError(f"ablate_heads: layer {l} out of range (0..{cfg.n_layers - 1})")
            if not 0 <= h < cfg.n_heads:
                raise VerilensError(f"ablate_heads: head {h} out of range (0..{cfg.n_heads - 1}) in layer {l}")
        if self.mode == "mean" and self.reference is not None and self._means is None:
            layers = sorted({l for l, _ in self.heads})
            with torch.no_grad():
                _, cache = model.run_with_cache(self.reference, names_filter=[f"blocks.{l}.attn.hook_z" for l in layers])
            mask = cache.attention_mask.bool()
            self._means = {l: cache[f"blocks.{l}.attn.hook_z"][mask].mean(0) for l in layers}

    def hooks(self, model):
        by_layer = {}
        for l, h in self.heads:
            by_layer.setdefault(l, []).append(h)
        return [(f"blocks.{l}.attn.hook_z", HeadEdit(self, l, hs, model.cfg.n_heads)) for l, hs in by_layer.items()]

    @property
    def causal(self) -> bool:
        # without a reference the mean is over the current pass's positions: under a KV
        # cache that pass holds only the new token, so it must be recomputed in full
        return not (self.mode == "mean" and self.reference is None)

    def fill(self, l, z, hook):
        """[n_heads, d_head] values that replace ablated heads' z (None for zeros)."""
        if self.mode == "zero":
            return None
        if self._means is not None:
            return self._means[l].to(z)
        am = hook.info.attention_mask
        real = am[:, -z.shape[1]:].bool() if am is not None else torch.ones(z.shape[:2], dtype=torch.bool)
        return z[real.to(z.device)].mean(0)


class HeadEdit:
    """The hook_z edit of `ablate_heads` at one layer. As a hook function it edits z;
    `plan` states the same edit as the fused o_proj op's arguments (per-head scale,
    fill, where), so on CUDA the runtime runs o_proj and the ablation as one kernel."""

    def __init__(self, iv, layer, heads, n_heads):
        self.iv, self.layer, self.heads = iv, layer, heads
        self.scale = _Scale(n_heads, heads)

    def plan(self, z, hook):
        return self.scale.on(z.device), self.iv.fill(self.layer, z, hook), position_and_rows(hook, self.iv.positions, z)

    def __call__(self, z, hook):
        new = z.clone()
        fill = self.iv.fill(self.layer, z, hook)
        new[:, :, self.heads] = 0 if fill is None else fill[self.heads]
        return _select(hook, self.iv.positions, new, z)


class _Scale:
    """A 0/1 scale (0 at `dropped`), with one copy per device it is used on: moved once,
    so a decoding step's kernel call needs no host-to-device copy."""

    def __init__(self, n, dropped):
        self.host = torch.ones(n)
        self.host[list(dropped)] = 0
        self.copies = {}

    def on(self, device):
        key = str(device)
        if key not in self.copies:
            self.copies[key] = self.host.to(device)
        return self.copies[key]


class ablate_neurons(Intervention):
    """Set GLU activations SiLU(gate.x)*(up.x) of chosen neurons to `value` (default 0).

    neurons: {layer: [index, ...]} or [(layer, index), ...]."""

    def __init__(self, neurons, positions="last", value: float = 0.0):
        if isinstance(neurons, dict):
            pairs = _pairs([(l, i) for l, idx in neurons.items() for i in idx], "ablate_neurons")
        else:
            pairs = _pairs(neurons, "ablate_neurons")
        self.neurons = {}
        for l, i in pairs:
            self.neurons.setdefault(l, []).append(i)
        self.positions, self.value = _check_positions(positions), float(value)

    def validate(self, model):
        cfg = model.cfg
        if not cfg.gated_mlp:
            raise VerilensError("ablate_neurons needs a GLU MLP (gate_proj/up_proj/down_proj); this model has none")
        for l, idx in self.neurons.items():
            if not 0 <= l < cfg.n_layers:
                raise VerilensError(f"ablate_neurons: layer {l} out of range (0..{cfg.n_layers - 1})")
            bad = [i for i in idx if not 0 <= i < cfg.d_mlp]
            if bad:
                raise VerilensError(f"ablate_neurons: neuron indices {bad[:5]} out of range (d_mlp = {cfg.d_mlp}) in layer {l}")

    def hooks(self, model):
        return [(f"blocks.{l}.mlp.hook_post", NeuronEdit(self, idx, model.cfg.d_mlp)) for l, idx in self.neurons.items()]


class NeuronEdit:
    """The mlp.hook_post edit of `ablate_neurons` at one layer; `plan` states it as the
    fused GLU op's arguments (neuron scale, fill, where), like HeadEdit."""

    def __init__(self, iv, idx, d_mlp):
        self.iv, self.idx = iv, torch.tensor(idx)
        self.scale = _Scale(d_mlp, idx)

    def plan(self, x, hook):
        return self.scale.on(x.device), self.iv.value, position_and_rows(hook, self.iv.positions, x)

    def __call__(self, x, hook):
        new = x.clone()
        new[..., self.idx.to(x.device)] = self.iv.value
        return _select(hook, self.iv.positions, new, x)


def _per_layer(vectors, layers, d_model, what):
    """{layer: tensor [k, d_model]} from a shared tensor or a {layer: tensor} dict."""
    out = {}
    for l in layers:
        v = vectors[l] if isinstance(vectors, dict) else vectors
        v = torch.as_tensor(v)
        if v.dim() == 1:
            v = v[None]
        if v.dim() != 2 or v.shape[-1] != d_model:
            raise VerilensError(f"{what}: vectors must have width d_model = {d_model}, got shape {tuple(v.shape)}")
        if not torch.isfinite(v).all():
            raise VerilensError(f"{what}: vectors contain NaN or inf")
        out[l] = v
    return out


def _check_layers(layers, n_layers, what):
    layers = [_index(l, f"{what}: layer") for l in ([layers] if isinstance(layers, int) else layers)]
    for l in layers:
        if not 0 <= l < n_layers:
            raise VerilensError(f"{what}: layer {l} out of range (0..{n_layers - 1})")
    return layers


class project_out(Intervention):
    """Remove the span of `directions` from the residual stream (resid_post) at `layers`.

    directions: [d_model], [k, d_model] (shared) or {layer: tensor}."""

    def __init__(self, directions, layers, positions="all"):
        self.directions, self.layers_, self.positions = directions, layers, _check_positions(positions)

    def validate(self, model):
        self.layers = _check_layers(self.layers_, model.cfg.n_layers, "project_out")
        vecs = _per_layer(self.directions, self.layers, model.cfg.d_model, "project_out")
        self.bases = {}
        for l, v in vecs.items():
            q, r = torch.linalg.qr(v.double().T)  # orthonormal basis of the span, [d, k]
            keep = r.diagonal().abs() > 1e-10
            self.bases[l] = q[:, keep]

    def hooks(self, model):
        def make(Q):
            def fn(x, hook):
                Qx = Q.to(x.device, x.dtype)
                new = x - (x @ Qx) @ Qx.T
                return _select(hook, self.positions, new, x)
            return fn
        return [(f"blocks.{l}.hook_resid_post", make(self.bases[l])) for l in self.layers]


class steer(Intervention):
    """Add alpha * vector to the residual stream (resid_post) at `layers`.

    vector: [d_model] or {layer: [d_model]}."""

    def __init__(self, vector, layers, alpha: float = 1.0, positions="all"):
        self.vector, self.layers_, self.alpha, self.positions = vector, layers, float(alpha), _check_positions(positions)

    def validate(self, model):
        self.layers = _check_layers(self.layers_, model.cfg.n_layers, "steer")
        vecs = _per_layer(self.vector, self.layers, model.cfg.d_model, "steer")
        for l, v in vecs.items():
            if v.shape[0] != 1:
                raise VerilensError(f"steer: one vector per layer, got {v.shape[0]} for layer {l}")
        self.vecs = {l: v[0] for l, v in vecs.items()}

    def hooks(self, model):
        def make(v):
            def fn(x, hook):
                return _select(hook, self.positions, x + self.alpha * v.to(x.device, x.dtype), x)
            return fn
        return [(f"blocks.{l}.hook_resid_post", make(self.vecs[l])) for l in self.layers]


class patch(Intervention):
    """Replace the activation at `hook_name` with `value`: a tensor broadcastable to the
    activation, or a function (activation, hook) -> activation."""

    def __init__(self, hook_name: str, value, positions="all"):
        self.hook_name, self.value, self.positions = hook_name, value, _check_positions(positions)

    def validate(self, model):
        from .names import parse_name
        from .runtime import READ_ONLY

        _, point = parse_name(self.hook_name, model.cfg.n_layers)
        if point in READ_ONLY:
            raise VerilensError(f"{self.hook_name} is read-only; patch attn.hook_z instead")
        # activations are [batch, pos, ...] with two trailing axes for q/k/v/z, one otherwise
        self._feature_dims = 2 if point in ("attn.hook_q", "attn.hook_k", "attn.hook_v", "attn.hook_z") else 1

    @property
    def causal(self) -> bool:
        # a tensor with a position axis is a whole-sequence value (a function is taken to
        # act position by position, as TransformerLens's cached generation assumes)
        return callable(self.value) or torch.as_tensor(self.value).dim() <= self._feature_dims

    def hooks(self, model):
        def fn(x, hook):
            if callable(self.value):
                new = self.value(x, hook=hook)
            else:
                try:
                    new = torch.as_tensor(self.value, device=x.device, dtype=x.dtype).expand_as(x)
                except RuntimeError as e:
                    raise VerilensError(f"patch {self.hook_name}: value of shape {tuple(torch.as_tensor(self.value).shape)} "
                                        f"does not broadcast to {tuple(x.shape)}") from e
            return _select(hook, self.positions, new, x)
        return [(self.hook_name, fn)]


class at_token:
    """Trigger: fire on passes whose last input token is `text` (one token)."""

    def __init__(self, text: str):
        self.text = text
        self.token_id = None

    def resolve(self, model):
        ids = model.tokenizer.encode(self.text, add_special_tokens=False)
        if len(ids) != 1:
            raise VerilensError(f"at_token({self.text!r}): the tokenizer splits it into {len(ids)} tokens; need exactly one")
        self.token_id = ids[0]
        return self

    def rows(self, input_ids):
        return input_ids[:, -1] == self.token_id


class Active:
    """Interventions plus their trigger, validated, ready to compile to hooks."""

    def __init__(self, model, interventions, when=None):
        for iv in interventions:
            if not isinstance(iv, Intervention):
                raise VerilensError(f"not an intervention: {iv!r}")
            iv.validate(model)
        self.interventions = list(interventions)
        self.when = when.resolve(model) if when is not None else None
        self.scope = "last" if all(iv.scope == "last" for iv in interventions) else "all"

    def hooks(self, model, gate: bool = True):
        """Hook functions; with a trigger they act only on firing rows."""
        out = []
        for iv in self.interventions:
            for name, fn in iv.hooks(model):
                out.append((name, self._gated(fn) if (gate and self.when is not None) else fn))
        return out

    def _gated(self, fn):
        return Gated(self.when, fn)


class Gated:
    """A hook function (or edit) that acts only on the rows where the trigger fires."""

    def __init__(self, when, fn):
        self.when, self.fn = when, fn
        if hasattr(fn, "plan"):
            self.plan = lambda x, hook: self._with_rows(hook, fn.plan, x)

    def _with_rows(self, hook, f, x):
        rows = self.when.rows(hook.info.input_ids)
        if not bool(rows.any()):
            return None
        prev = hook.info.rows
        hook.info.rows = rows if prev is None else (prev & rows)
        try:
            return f(x, hook)
        finally:
            hook.info.rows = prev

    def __call__(self, x, hook):
        return self._with_rows(hook, self.fn, x)
