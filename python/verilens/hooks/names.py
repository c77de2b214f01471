"""Hook point names, as TransformerLens users know them, and their validation."""
from __future__ import annotations

import difflib
import re

from ..errors import VerilensError

# Per-layer points, in the order the forward pass reaches them.
LAYER_POINTS = (
    "hook_resid_pre",
    "ln1.hook_scale",  # TransformerLens' meaning: scale = sqrt(mean(x^2) + eps) [batch, pos, 1],
    "ln1.hook_normalized",  # normalized = x / scale, before the norm's weight
    "attn.hook_q",
    "attn.hook_k",
    "attn.hook_v",
    "attn.hook_z",
    "attn.hook_result",
    "attn.hook_pattern",  # computed once the attention module has run
    "hook_attn_out",
    "hook_resid_mid",
    "ln2.hook_scale",
    "ln2.hook_normalized",
    "mlp.hook_pre",
    "mlp.hook_pre_linear",
    "mlp.hook_post",
    "hook_mlp_out",
    "hook_resid_post",
)
GLOBAL_POINTS = ("hook_embed", "ln_final.hook_scale", "ln_final.hook_normalized")

# get_act_name("resid_post", 5) -> "blocks.5.hook_resid_post", as in TransformerLens.
ALIASES = {
    "embed": "hook_embed",
    "resid_pre": "hook_resid_pre",
    "resid_mid": "hook_resid_mid",
    "resid_post": "hook_resid_post",
    "attn_out": "hook_attn_out",
    "mlp_out": "hook_mlp_out",
    "q": "attn.hook_q",
    "k": "attn.hook_k",
    "v": "attn.hook_v",
    "z": "attn.hook_z",
    "pattern": "attn.hook_pattern",
    "attn": "attn.hook_pattern",
    "result": "attn.hook_result",
    "pre": "mlp.hook_pre",
    "pre_linear": "mlp.hook_pre_linear",
    "post": "mlp.hook_post",
    "ln_final": "ln_final.hook_normalized",
}
NORM_POINTS = ("scale", "normalized")  # get_act_name("scale", 3, "ln1"); without a layer: ln_final

_LAYER_RE = re.compile(r"^blocks\.(\d+)\.(.+)$")
_SHORT_RE = re.compile(r"^([a-z_]+?)(\d+)(ln[12]|attn|mlp)?$")


def get_act_name(name: str, layer: int | None = None, layer_type: str | None = None) -> str:
    """Full hook name from a short alias, as TransformerLens' utils.get_act_name:
    get_act_name("resid_post", 5), get_act_name("scale", 5, "ln2"), get_act_name("normalized")."""
    short = _SHORT_RE.match(name) if name not in ALIASES and name not in LAYER_POINTS else None
    if short and layer is None:  # TransformerLens' short keys: "resid_post5", "scale29ln1"
        name, layer, layer_type = short.group(1), int(short.group(2)), short.group(3) or None
    if name in NORM_POINTS:
        if layer is None:
            return f"ln_final.hook_{name}"
        if layer_type not in ("ln1", "ln2"):
            raise VerilensError(f"{name!r} with a layer needs layer_type 'ln1' or 'ln2', got {layer_type!r}")
        return f"blocks.{layer}.{layer_type}.hook_{name}"
    point = ALIASES.get(name, name)
    if point in GLOBAL_POINTS:
        return point
    if point not in LAYER_POINTS:
        close = difflib.get_close_matches(name, [*ALIASES, *LAYER_POINTS], n=5, cutoff=0.5)
        hint = f"; closest: {', '.join(close)}" if close else ""
        raise VerilensError(f"unknown hook point {name!r}{hint}")
    if layer is None:
        raise VerilensError(f"{name!r} is a per-layer hook point: give a layer")
    return f"blocks.{layer}.{point}"


def all_names(n_layers: int) -> list[str]:
    return [GLOBAL_POINTS[0]] + [f"blocks.{l}.{p}" for l in range(n_layers) for p in LAYER_POINTS] + list(GLOBAL_POINTS[1:])


def parse_name(name: str, n_layers: int) -> tuple[int | None, str]:
    """(layer, point) of a full hook name; raises with the closest valid names."""
    if not isinstance(name, str):
        raise VerilensError(f"hook names are strings, got {type(name).__name__}")
    if name in GLOBAL_POINTS:
        return None, name
    m = _LAYER_RE.match(name)
    if m and m.group(2) in LAYER_POINTS:
        layer = int(m.group(1))
        if layer >= n_layers:
            raise VerilensError(f"{name}: layer {layer} out of range (the model has {n_layers} layers)")
        return layer, m.group(2)
    close = difflib.get_close_matches(name, all_names(n_layers), n=5, cutoff=0.5)
    hint = f"; closest valid names: {', '.join(close)}" if close else ""
    raise VerilensError(f"unknown hook name {name!r}{hint}")


def resolve_names(spec, n_layers: int) -> list[str]:
    """Names from a name, a list of names, or a filter function over all names."""
    if spec is None:
        return all_names(n_layers)
    if callable(spec):
        return [n for n in all_names(n_layers) if spec(n)]
    if isinstance(spec, str):
        spec = [spec]
    names = list(spec)
    for n in names:
        parse_name(n, n_layers)
    return names
