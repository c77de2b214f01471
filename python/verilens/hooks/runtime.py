"""The hook engine: installs PyTorch hooks on the native Hugging Face modules for one
forward pass, and removes them afterwards (also when the pass raises).

A hook function has the TransformerLens signature `fn(activation, hook)` where
`activation` has the TL layout (e.g. attn.hook_z [batch, pos, head, d_head]) and `hook`
is a `HookContext`; returning a tensor replaces the activation, returning None keeps it.
Nothing is installed for points nobody asked for, so a plain forward runs untouched
(same attention implementation, no extra work)."""
from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

import torch

from ..errors import VerilensError
from .names import parse_name
from .placement import materialized

READ_ONLY = ("attn.hook_pattern", "attn.hook_result")


def _forward_slot(module) -> str:
    """The instance attribute a forward override goes in. accelerate (a device_map) puts
    its own `forward` on each module, which moves the inputs to the module's execution
    device and loads offloaded weights, then calls `_old_forward`: an override goes there,
    inside accelerate's, so it runs on the real weights."""
    return "_old_forward" if getattr(module, "_hf_hook", None) is not None and "_old_forward" in module.__dict__ \
        else "forward"


class _Restore:
    """A handle that undoes a forward override (like a hook handle's `remove`)."""

    def __init__(self, module):
        self.module, self.slot = module, _forward_slot(module)
        self.previous = module.__dict__.get(self.slot)

    def remove(self):
        if self.previous is None:
            self.module.__dict__.pop(self.slot, None)
        else:
            setattr(self.module, self.slot, self.previous)


@dataclass
class PassInfo:
    """What hooks need to know about the current forward pass."""

    batch: int
    seq: int  # tokens in this pass
    past: int  # tokens already in the KV cache
    attention_mask: torch.Tensor | None  # [batch, past + seq], 1 = real token
    input_ids: torch.Tensor | None = None  # [batch, seq] tokens of this pass
    positions: torch.Tensor | None = None  # [batch, k] positions (in this pass) to cache, None = all
    rows: torch.Tensor | None = None  # [batch] bool: rows interventions apply to (trigger), None = all
    stash: dict = field(default_factory=dict)


@dataclass
class HookContext:
    """The `hook` argument of hook functions: TransformerLens' HookPoint surface (`name`,
    `layer()`, `ctx`, the point's persistent dict) plus this pass's `info`."""

    name: str
    layer_index: int | None
    info: PassInfo
    point: object = None  # the model's HookPoint (verilens.hooks.points), whose ctx persists

    def layer(self) -> int | None:  # TransformerLens spelling
        return self.layer_index

    @property
    def ctx(self) -> dict:
        return self.point.ctx if self.point is not None else {}

    @property
    def rows(self):
        return self.info.rows


def _first_arg(args, kwargs, key="hidden_states"):
    return args[0] if args else kwargs[key]


def _replace_first(args, kwargs, value, key="hidden_states"):
    if args:
        return (value,) + tuple(args[1:]), kwargs
    kwargs = dict(kwargs)
    kwargs[key] = value
    return args, kwargs


class HookSession:
    """Hooks for one or more forward passes: `with HookSession(model, hooks, info_fn): ...`.

    `hooks` is a list of (full_name, fn). `info` is the PassInfo of the pass running now
    (the session's owner sets `session.info` before each pass)."""

    def __init__(self, model, hooks, bwd_hooks=()):
        self.model = model
        self.info: PassInfo | None = None
        self.by_name, self.bwd_by_name = defaultdict(list), defaultdict(list)
        for name, fn in hooks:
            self.by_name[name].append(fn)
        for name, fn in bwd_hooks:
            if name.endswith(READ_ONLY):
                raise VerilensError(f"{name} is computed beside the model for reading only: it has no gradient "
                                    "of its own to hook; put the backward hook on attn.hook_z or a later point")
            self.bwd_by_name[name].append(fn)
        self.handles = []

    # -- applying user functions --------------------------------------------------
    def _context(self, name, layer):
        return HookContext(name, layer, self.info, self.model.hook_dict.get(name))

    def _apply(self, name, layer, view, writable=True):
        """Run the hook functions at `name` on `view` (TransformerLens' call: fn(x, hook=...));
        returns `view` itself when nothing replaced it."""
        for fn in self.by_name.get(name, ()):
            out = fn(view, hook=self._context(name, layer))
            if out is not None and out is not view:  # returning the activation itself changes nothing
                if not writable:
                    raise VerilensError(
                        f"{name} is computed for reading only; to change a head's output modify "
                        f"blocks.{layer}.attn.hook_z (or use verilens.ablate_heads / patch)"
                    )
                if out.shape != view.shape:
                    raise VerilensError(f"hook on {name} returned shape {tuple(out.shape)}, expected {tuple(view.shape)}")
                view = out
        bwd = self.bwd_by_name.get(name)
        if bwd and view.requires_grad:
            # a node of its own in the graph, so the hook sees exactly this point's gradient;
            # returning it makes the pass continue from it
            view = view.view_as(view)
            context = self._context(name, layer)

            def on_grad(grad):
                for fn in bwd:
                    out = fn(grad, hook=context)
                    if isinstance(out, tuple):  # TransformerLens' backward hooks may return (grad,)
                        out = out[0]
                    grad = grad if out is None else out
                return grad
            view.register_hook(on_grad)
        return view

    def wants(self, name):
        return name in self.by_name or name in self.bwd_by_name

    def _fusable(self, name, module):
        """(the single planned edit at `name`, the ops backend) when a fused op should run
        it, else None (model.backend: see HookedModel). `module`: the one whose weights the
        op reads (on a device_map, its execution device decides)."""
        from ..ops import BACKENDS, triton_available
        from .placement import execution_device

        fns = self.by_name.get(name, ())
        mode = self.model.backend
        if mode not in BACKENDS:
            raise VerilensError(f"model.backend must be one of {', '.join(BACKENDS)}, got {mode!r}")
        if len(fns) != 1 or not hasattr(fns[0], "plan") or mode == "torch":
            return None
        device = execution_device(module)
        if mode == "auto" and not (device is not None and device.type == "cuda" and triton_available()):
            return None
        return fns[0], mode

    def _override(self, module, forward):
        handle = _Restore(module)
        self.handles.append(handle)
        # an instance attribute: nn.Module.__call__ runs it, hooks included (inside accelerate's, if any)
        setattr(module, handle.slot, forward)

    # -- installation ----------------------------------------------------------------
    def __enter__(self):
        try:
            self._install()
        except BaseException:
            self.remove()
            raise
        return self

    def __exit__(self, *exc):
        self.remove()
        return False

    def remove(self):
        for h in self.handles:
            h.remove()
        self.handles = []

    def _pre(self, module, fn):
        self.handles.append(module.register_forward_pre_hook(fn, with_kwargs=True))

    def _post(self, module, fn):
        self.handles.append(module.register_forward_hook(fn, with_kwargs=True))

    def _install(self):
        m = self.model
        cfg = m.cfg
        layers = defaultdict(set)
        for name in [*self.by_name, *self.bwd_by_name]:
            layer, point = parse_name(name, cfg.n_layers)
            layers[layer].add(point)

        if "hook_embed" in layers[None]:
            self._post(m.embed_module, lambda mod, a, k, out: self._apply("hook_embed", None, out))
        self._install_norm(m.final_norm, "ln_final", None, layers[None])
        for layer, points in layers.items():
            if layer is not None:
                self._install_layer(layer, points)

    def _install_layer(self, l, points):
        m, cfg = self.model, self.model.cfg
        block = m.blocks[l]
        part = lambda p: m.module(l, p)  # noqa: E731  (the family's module, verilens.hooks.arch)
        attn, mlp, o_proj, down = part("attn"), part("mlp"), part("o"), part("down")
        n = lambda p: f"blocks.{l}.{p}"  # noqa: E731
        H, Hkv, dh = cfg.n_heads, cfg.n_kv_heads, cfg.d_head
        need_resid_pre = "hook_resid_pre" in points or "hook_resid_mid" in points

        if need_resid_pre:
            def layer_pre(mod, args, kwargs):
                x = _first_arg(args, kwargs)
                new = self._apply(n("hook_resid_pre"), l, x)
                self.info.stash[("resid_pre", l)] = new
                if new is not x:
                    return _replace_first(args, kwargs, new)
            self._pre(block, layer_pre)

        for point, proj, heads in (("attn.hook_q", "q", H), ("attn.hook_k", "k", Hkv), ("attn.hook_v", "v", Hkv)):
            if point in points:
                def proj_post(mod, a, k, out, point=point, heads=heads):
                    b, p, _ = out.shape
                    view = out.view(b, p, heads, dh)
                    new = self._apply(n(point), l, view)
                    if new is not view:
                        return new.reshape(b, p, heads * dh)
                self._post(part(proj), proj_post)

        self._install_norm(part("ln1"), f"blocks.{l}.ln1", l, {p[4:] for p in points if p.startswith("ln1.")})
        self._install_norm(part("ln2"), f"blocks.{l}.ln2", l, {p[4:] for p in points if p.startswith("ln2.")})
        if "attn.hook_pattern" in points:
            self._install_pattern(l)

        fused_z = self._fusable(n("attn.hook_z"), o_proj)
        if fused_z is not None:
            self._override(o_proj, self._fused_o_proj(l, o_proj, *fused_z))
        elif "attn.hook_z" in points or "attn.hook_result" in points:
            def o_pre(mod, args, kwargs):
                x = _first_arg(args, kwargs, "input")
                b, p, _ = x.shape
                z = x.view(b, p, H, dh)
                new = self._apply(n("attn.hook_z"), l, z)
                if self.wants(n("attn.hook_result")):
                    with materialized(o_proj):  # o_proj's real weights, where a device_map offloaded them
                        result = m_result(self.model, l, new, self.info.positions)
                    self._apply(n("attn.hook_result"), l, result, writable=False)
                if new is not z:
                    return _replace_first(args, kwargs, new.reshape(b, p, H * dh), "input")
            self._pre(o_proj, o_pre)

        if "hook_attn_out" in points or "hook_resid_mid" in points:
            def attn_post(mod, args, kwargs, out):
                is_tuple = isinstance(out, tuple)
                a = out[0] if is_tuple else out
                new = self._apply(n("hook_attn_out"), l, a)
                if self.wants(n("hook_resid_mid")):
                    pre = self.info.stash[("resid_pre", l)].to(new.device)  # the layer's input: maybe another device
                    mid = pre + new
                    mid_new = self._apply(n("hook_resid_mid"), l, mid)
                    if mid_new is not mid:
                        new = mid_new - pre  # the layer adds resid_pre back
                if new is not a:
                    return (new,) + tuple(out[1:]) if is_tuple else new
            self._post(part("attn_out"), attn_post)

        for point, mod in (("mlp.hook_pre", "gate"), ("mlp.hook_pre_linear", "up")):
            if point in points:
                self._post(part(mod), lambda _m, a, k, out, point=point: self._apply(n(point), l, out))
        fused_glu = self._fusable(n("mlp.hook_post"), down)
        if fused_glu is not None and self.model.cfg.act_fn == "silu":
            self._override(mlp, self._fused_mlp(l, part("gate"), part("up"), down, *fused_glu))
        elif "mlp.hook_post" in points:
            def down_pre(mod, args, kwargs):
                x = _first_arg(args, kwargs, "input")
                new = self._apply(n("mlp.hook_post"), l, x)
                if new is not x:
                    return _replace_first(args, kwargs, new, "input")
            self._pre(down, down_pre)
        if "hook_mlp_out" in points:
            self._post(part("mlp_out"), lambda _m, a, k, out: self._apply(n("hook_mlp_out"), l, out))
        if "hook_resid_post" in points:
            def layer_post(mod, args, kwargs, out):
                is_tuple = isinstance(out, tuple)
                x = out[0] if is_tuple else out
                new = self._apply(n("hook_resid_post"), l, x)
                if new is not x:
                    return (new,) + tuple(out[1:]) if is_tuple else new
            self._post(block, layer_post)

    def _install_norm(self, norm, prefix, layer, points):
        """hook_scale / hook_normalized of an RMSNorm (TransformerLens' meaning): the norm
        runs as the family's own expression with the two points inside it
        (Arch.rms_norm), only while one of them is hooked."""
        points = {p.rsplit(".", 1)[-1] for p in points}
        if not points & {"hook_scale", "hook_normalized"}:
            return
        arch = self.model.arch

        def hook(point):
            if point not in points:
                return None
            return lambda x: self._apply(f"{prefix}.{point}", layer, x)

        on_scale, on_normalized = hook("hook_scale"), hook("hook_normalized")
        self._override(norm, lambda x: arch.rms_norm(norm, x, on_scale, on_normalized))

    def _fused_o_proj(self, l, o_proj, edit, backend):
        """o_proj with the head edit (and hook_result, if asked for) in one kernel."""
        from ..ops import head_masked_o_proj

        H, dh = self.model.cfg.n_heads, self.model.cfg.d_head
        name, result_name = f"blocks.{l}.attn.hook_z", f"blocks.{l}.attn.hook_result"

        def forward(x):
            b, p, _ = x.shape
            plan = edit.plan(x.view(b, p, H, dh), self._context(name, l))
            scale, fill, where = plan if plan is not None else (None, None, None)
            want = self.wants(result_name)
            positions = (self.info.positions.to(x.device) if self.info.positions is not None else "all") if want \
                else None
            out, result = head_masked_o_proj(x, o_proj.weight, o_proj.bias, n_heads=H, scale=scale, fill=fill,
                                             where=where, result_positions=positions, backend=backend)
            if want:
                self._apply(result_name, l, result, writable=False)
            return out
        return forward

    def _fused_mlp(self, l, gate_proj, up_proj, down_proj, edit, backend):
        """down_proj(SiLU(gate) * up) with the neuron edit fused into the GLU kernel; the
        gate/up/down modules still run as modules, so their hooks fire."""
        from ..ops import masked_glu

        name = f"blocks.{l}.mlp.hook_post"

        def forward(x):
            gate, up = gate_proj(x), up_proj(x)
            plan = edit.plan(gate, self._context(name, l))
            scale, fill, where = plan if plan is not None else (None, None, None)
            act, _ = masked_glu(gate, up, scale=scale, fill=fill, where=where, backend=backend)
            return down_proj(act)
        return forward

    def _install_pattern(self, l):
        """Attention rows for the query positions asked for, from q and k, without
        touching the model's own (fast) attention call."""
        key, m = ("pattern", l), self.model

        def attn_pre(mod, args, kwargs):
            cache = kwargs.get("cache", kwargs.get("past_key_values"))
            self.info.stash[key] = {
                "pos_emb": kwargs.get("position_embeddings"),
                # the keys cached before this pass (read before attention adds its own)
                "past": m.arch.past_keys(cache, l) if cache is not None and self.info.past > 0 else None,
            }

        def q_post(mod, a, k, out):
            self.info.stash[key]["q"] = out

        def k_post(mod, a, k, out):
            self.info.stash[key]["k"] = out

        def attn_post(mod, args, kwargs, out):
            st = self.info.stash.pop(key)
            pattern = attention_pattern(self.model, l, st, self.info)
            self._apply(f"blocks.{l}.attn.hook_pattern", l, pattern, writable=False)

        self._pre(m.module(l, "attn"), attn_pre)
        # registered after any user hook on q/k, so the stash sees their edits
        self._post(m.module(l, "q"), q_post)
        self._post(m.module(l, "k"), k_post)
        self._post(m.module(l, "attn"), attn_post)


def attention_pattern(model, l, st, info: PassInfo):
    """[batch, head, q, key] attention probabilities for the cached query positions, over
    every key position of the sequence so far (past + this pass), computed the way the
    family's attention does: q/k norms, RoPE, scaling, soft-cap, causal and sliding-window
    masks, the padding mask."""
    cfg, arch = model.cfg, model.arch
    attn = model.module(l, "attn")
    q_norm, k_norm = model.module(l, "q_norm"), model.module(l, "k_norm")
    H, Hkv, dh = cfg.n_heads, cfg.n_kv_heads, cfg.d_head
    q, k = st["q"], st["k"]
    b, p, _ = q.shape
    rows = torch.arange(b, device=q.device)[:, None]
    pos = info.positions.to(q.device) if info.positions is not None else torch.arange(p, device=q.device).expand(b, p)
    qs = q[rows, pos].view(b, -1, H, dh)
    ks = k.view(b, p, Hkv, dh)
    if q_norm is not None:
        qs = q_norm(qs)
    if k_norm is not None:
        ks = k_norm(ks)
    cos, sin = st["pos_emb"]
    cos, sin = cos.expand(b, -1, -1), sin.expand(b, -1, -1)
    qs = arch.rope(qs.transpose(1, 2), cos[rows, pos], sin[rows, pos])
    keys = arch.rope(ks.transpose(1, 2), cos, sin)
    if st["past"] is not None:
        keys = torch.cat([st["past"], keys], dim=-2)  # already rotated
    keys = keys.repeat_interleave(H // Hkv, dim=1)
    scores = torch.matmul(qs.float(), keys.float().transpose(-1, -2)) * attn.scaling
    cap = arch.attn_softcap(model.hf_model.config)
    if cap is not None:
        scores = torch.tanh(scores / cap) * cap
    n_keys = keys.shape[-2]
    k_abs = torch.arange(n_keys, device=q.device)[None, None, :]
    q_abs = (pos + info.past)[:, :, None]  # [b, k, 1]
    allowed = k_abs <= q_abs
    window = arch.sliding_window(model.hf_model.config, l)
    if window is not None:
        allowed = allowed & (k_abs > q_abs - window)
    if info.attention_mask is not None:
        allowed = allowed & info.attention_mask[:, None, -n_keys:].to(q.device).bool()
    scores = scores.masked_fill(~allowed[:, None], float("-inf"))
    probs = torch.softmax(scores, dim=-1)
    return torch.nan_to_num(probs, nan=0.0).to(q.dtype)


def m_result(model, l, z, positions):
    """Per-head outputs after W_O, [batch, k, head, d_model], at `positions` only."""
    b, p, H, dh = z.shape
    if positions is not None:
        z = z[torch.arange(b, device=z.device)[:, None], positions.to(z.device)]
    W_O = model.module(l, "o").weight  # [d_model, H*dh] (real: the caller materialises an offloaded o_proj)
    W = W_O.view(W_O.shape[0], H, dh).to(z.device)  # view
    return torch.einsum("bkhd,mhd->bkhm", z, W)
