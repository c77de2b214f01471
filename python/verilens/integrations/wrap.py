"""`verilens.wrap(model)`: a HookedModel over a model another tool already loaded, on the
same weights (no copy).

- A Hugging Face causal LM: wrapped as is.
- A TransformerLens `TransformerBridge` (TransformerLens >= 4): the bridge puts its
  components around the Hugging Face modules, inside the model it holds
  (`bridge.original_model`). verilens builds a second view of that module tree with the
  bridge components taken out: the same decoder layers, norms and Linear modules (their
  parameters are the same tensors), so the bridge keeps working and verilens runs the
  plain Hugging Face forward, with its own config set to the fast ("sdpa") attention
  that `verilens.load` gets (the bridge forces "eager" on the model's). Text is tokenised by the checkpoint's own tokenizer, as
  `verilens.load` does (TransformerLens' tokenizer adds a BOS token; pass
  `tokenizer=bridge.tokenizer` to tokenise as TransformerLens does).
- An nnsight `LanguageModel`: its Hugging Face module (`lm._module`); a lazily loaded one
  (still on the meta device) is dispatched first, by nnsight.
- A TransformerLens `HookedTransformer` (TransformerLens < 4) re-implements the model in
  its own modules and layout: there are no Hugging Face modules to hook, so it is refused
  with what to pass instead.

Nothing here imports transformer_lens or nnsight: the objects are recognised by what they
hold, so verilens works without either installed."""
from __future__ import annotations

import copy

from ..errors import VerilensError
from ..hooks import HookedModel
from ..hooks.arch import supported


def wrap(model, tokenizer=None, name: str | None = None) -> HookedModel:
    """A HookedModel over `model`'s own weights: a Hugging Face causal LM, a TransformerLens
    TransformerBridge or an nnsight LanguageModel (a HookedModel is returned as is).
    `tokenizer`: the one to use (default: the tool's own, or the Hugging Face model's
    folder's)."""
    if isinstance(model, HookedModel):
        return model
    kind = type(model).__name__
    if kind == "HookedTransformer" or (hasattr(model, "W_Q") and hasattr(model, "blocks") and hasattr(model, "hook_dict")
                                       and not hasattr(model, "original_model")):
        raise VerilensError(
            "a TransformerLens HookedTransformer re-implements the model in its own modules (and usually folds the "
            "norms into the weights): verilens works on the native Hugging Face modules. Load the checkpoint with "
            "TransformerBridge.boot_transformers(...) (TransformerLens >= 4) and wrap the bridge, or wrap the Hugging "
            "Face model itself (AutoModelForCausalLM.from_pretrained(...))")
    if "original_model" in getattr(model, "__dict__", {}) or kind == "TransformerBridge":
        # the checkpoint's own tokenizer (TransformerLens' prepends BOS), so a model gives the
        # same numbers however it was loaded; tokenizer=bridge.tokenizer tokenises as TransformerLens
        hf = _from_bridge(model)
        tok, label = tokenizer or _tokenizer_for(hf) or getattr(model, "tokenizer", None), "TransformerBridge"
    elif hasattr(model, "_module") and hasattr(model, "interleaver"):  # nnsight's Envoy at the root
        hf, tok, label = _from_nnsight(model), tokenizer or getattr(model, "tokenizer", None), "nnsight"
    elif _is_hf_causal_lm(model):
        hf, tok, label = model, tokenizer or _tokenizer_for(model), "Hugging Face"
    else:
        raise VerilensError(
            f"verilens.wrap takes a Hugging Face causal LM, a TransformerLens TransformerBridge or an nnsight "
            f"LanguageModel; got {kind}. For a checkpoint folder use verilens.load(path)")
    if tok is None:
        raise VerilensError(f"the {label} model came without a tokenizer: pass verilens.wrap(model, tokenizer=...)")
    model_type = getattr(getattr(hf, "config", None), "model_type", None)
    try:
        return HookedModel(hf, tok, name=name or getattr(hf, "name_or_path", None) or kind,
                           source=f"wrapped {label} model")
    except VerilensError as e:
        if model_type is not None and "not supported" in str(e):
            raise VerilensError(f"cannot wrap this {label} model: model_type {model_type!r} has no verilens adapter "
                                f"(supported: {supported()})") from None
        raise


def _is_hf_causal_lm(model) -> bool:
    return hasattr(model, "config") and hasattr(model, "get_output_embeddings") and callable(
        getattr(model, "forward", None))


def _tokenizer_for(hf_model):
    """The tokenizer saved beside a model loaded from a local folder, or None."""
    from pathlib import Path

    path = getattr(hf_model, "name_or_path", None)
    if not path or not Path(path).is_dir():
        return None
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError):
        return None


def _from_nnsight(lm):
    hf = lm._module
    if any(p.is_meta for p in hf.parameters()):
        dispatch = getattr(lm, "dispatch", None)
        if dispatch is None:
            raise VerilensError("this nnsight model has no weights loaded yet (meta device): build it with "
                                "LanguageModel(..., dispatch=True)")
        dispatch()  # nnsight loads the real weights into its own module
        hf = lm._module
    return hf


def _from_bridge(bridge):
    if getattr(bridge, "_weights_processed", False):
        raise VerilensError(
            "this TransformerBridge has processed weights (enable_compatibility_mode folded the norms into the "
            "linear layers and centred the weights): verilens' weight analyses read the checkpoint's own weights. "
            "Wrap a bridge without compatibility mode, or enable_compatibility_mode(no_processing=True)")
    hf = bridge.__dict__.get("original_model") or bridge.original_model
    # The bridge set "eager" attention on the model's config (its hooks need the scores);
    # verilens' view gets its own config with the fast default, as verilens.load has
    config = copy.copy(hf.config)
    config._attn_implementation = "sdpa"
    return unbridged(hf, config)


def _is_bridge_component(module) -> bool:
    return "_original_component" in module._modules and hasattr(module, "hook_in")


def unbridged(module, config=None):
    """`module` with every TransformerLens bridge component replaced by the module it wraps.
    Containers on the way are shallow copies with their own child lists and hook dicts
    (and `config`, where they hold one); parameters and buffers are shared, never copied."""
    while _is_bridge_component(module):
        module = module._modules["_original_component"]
    children = {k: (unbridged(c, config) if c is not None else None) for k, c in module._modules.items()}
    if all(children[k] is c for k, c in module._modules.items()):
        return module
    clone = copy.copy(module)
    clone._modules = children
    if config is not None and "config" in clone.__dict__:
        clone.config = config
    # fresh hook tables: hooks verilens installs on the view must not fire on the bridge's modules
    for table in ("_forward_hooks", "_forward_hooks_with_kwargs", "_forward_hooks_always_called", "_forward_pre_hooks",
                  "_forward_pre_hooks_with_kwargs", "_backward_hooks", "_backward_pre_hooks", "_state_dict_hooks",
                  "_state_dict_pre_hooks", "_load_state_dict_pre_hooks", "_load_state_dict_post_hooks"):
        if table in clone.__dict__:
            setattr(clone, table, type(clone.__dict__[table])())
    clone.__dict__.pop("forward", None)  # the class's own forward, not a per-instance override of the bridge's
    return clone
