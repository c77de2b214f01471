"""Generation with hooks and interventions, exact under the KV cache.

Semantics: the logits of every decoding step are those of a full forward over the
whole sequence so far, with the active interventions applied to that forward (gated
by their trigger). How each step gets there, fastest first:
- "plain": no trigger, every intervention causal (see `Intervention.causal`) and acting
  at all positions: applied inside the one cached pass; the cache holds the intervened
  keys and values, which by causality *are* the full-forward ones.
- "two_caches": the same interventions, gated by one trigger: a second KV cache runs
  beside the clean one with the interventions always on; a firing row takes its logits
  from it, the others from the clean cache. It is built (one forward over the sequence
  so far) at the first step where at least SECOND_CACHE_SHARE of the live rows fire, and
  then costs one more cached pass per step; before that, firing rows are recomputed in
  full as below. So a trigger that never fires costs nothing, and one that fires in
  every row (the paper's protocol) pays for the sequence once, not at every firing.
- "last": interventions only at the last position: on firing steps one intervened
  cached pass for the new token, the cache cropped back, then the clean pass.
- "recompute" (anything else, e.g. a mean ablation over the current pass): the clean
  cached pass, plus a full recomputed forward of the firing rows.
With nothing to do between steps (no intervention, no hook, nothing cached, no stop
string, greedy; a logits processor goes along), `generate` hands the whole loop to Hugging
Face's own `generate`: the same tokens, at Hugging Face's speed.

Whatever its input, `generate` returns a `Generation`."""
from __future__ import annotations

import copy
from dataclasses import dataclass

import torch

from ..errors import VerilensError
from .cache import ActivationCache
from .names import resolve_names

SECOND_CACHE_SHARE = 0.5


@dataclass
class Generation:
    """What `generate` returns, whatever its input: the tokens, the text and (with
    `cache_names`) the cache of one batched generation."""

    tokens: torch.Tensor  # [batch, prompt + new]: the left-padded prompts, then the generated ids
    prompt_length: int  # tokens[:, prompt_length:] are the generated ones (padded after a row ends)
    text: list[str]  # per row: the prompt (decoded from its ids) + the continuation
    continuation: list[str]  # per row: the generated text, cut after the first stop string (kept)
    cache: ActivationCache | None = None  # with cache_names: tensors [batch, new, ...]

    @property
    def new_tokens(self) -> torch.Tensor:
        """[batch, new]: the generated ids."""
        return self.tokens[:, self.prompt_length:]


def _choose(logits, do_sample, temperature, top_k, top_p, generator):
    if not do_sample:
        return logits.argmax(-1)
    logits = logits.float() / max(temperature, 1e-8)
    if top_k:
        kth = torch.topk(logits, min(top_k, logits.shape[-1]), dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        sorted_logits, idx = torch.sort(logits, descending=True, dim=-1)
        probs = sorted_logits.softmax(-1)
        drop = probs.cumsum(-1) - probs > top_p
        sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
        logits = torch.full_like(logits, float("-inf")).scatter(-1, idx, sorted_logits)
    probs = logits.softmax(-1)
    return torch.multinomial(probs, 1, generator=generator)[:, 0]


def continuation_text(tokenizer, tokens, stops=()) -> str:
    """Generated tokens as text, cut after the first stop string (kept), as `generate`
    returns them for text input."""
    text = tokenizer.decode(tokens.tolist(), skip_special_tokens=True)
    for s in stops:
        if s in text:
            text = text[: text.index(s) + len(s)]
    return text


def _step_cache_hooks(names, store, device, dtype, rows=None):
    """Hooks that keep each name's activation at the last position of a pass in
    `store[name] = (rows, tensor)` (rows: the batch rows it holds, None = all)."""
    def make(name):
        def fn(x, hook):
            v = x[:, :, -1] if name.endswith("hook_pattern") else x[:, -1]
            store[name] = (rows, v.detach().to(device=device or v.device, dtype=dtype or v.dtype))
        return fn
    return [(n, make(n)) for n in names]


class Prefill:
    """The clean first pass over a batch of prompts (no interventions), kept to start
    many `generate` calls from: e.g. one per intervention condition on the same
    contexts, which then pay for the prompts once. Build it with `model.prefill(...)`;
    `model.generate(prefill, ...)` caches the hooks the prefill was built with."""

    def __init__(self, model, input, cache_names=None, cache_device=None, cache_dtype=None, attention_mask=None):
        if model._active:
            raise VerilensError("prefill runs the clean pass: build it outside `model.intervene(...)`")
        self.model = model
        self.ids, self.mask = model.tokenize(input, attention_mask)
        self.names = resolve_names(cache_names, model.cfg.n_layers) if cache_names is not None else []
        # the cache goes where the inputs are unless asked (on a device_map: the main device)
        self.cache_device, self.cache_dtype = cache_device or model.device, cache_dtype
        self.context_hooks = model._user_hooks()
        self.kv = model.arch.new_cache()
        self.store: dict = {}
        b, p = self.ids.shape
        last = torch.full((b, 1), p - 1, dtype=torch.long, device=self.ids.device)
        with torch.no_grad():
            self.logits = model._run(self.ids, None, self.context_hooks + _step_cache_hooks(
                self.names, self.store, cache_device, cache_dtype), positions=last, kv=self.kv, past=0,
                use_cache=True, full_mask=self.mask, last_logits_only=True)[:, -1]

    def check(self, model, cache_names, attention_mask):
        if model is not self.model:
            raise VerilensError("this prefill was built by another model")
        if model._user_hooks() != self.context_hooks:
            raise VerilensError("the model's hooks changed since this prefill was built: build it again")
        if cache_names is not None:
            raise VerilensError("a prefill fixes what is cached: pass cache_names to model.prefill(...)")
        if attention_mask is not None:
            raise VerilensError("a prefill holds its attention mask: pass attention_mask to model.prefill(...)")


def _mode(actives) -> str:
    """How steps are computed for these interventions (the module docstring)."""
    ivs = [iv for a in actives for iv in a.interventions]
    if not all(iv.causal for iv in ivs):
        return "recompute"
    triggers = {a.when.token_id if a.when is not None else None for a in actives}
    if all(iv.scope == "all" for iv in ivs):
        if triggers == {None} or not ivs:
            return "plain"
        if len(triggers) == 1:
            return "two_caches"
    if all(iv.scope == "last" for iv in ivs):
        return "last"
    return "recompute"


@torch.no_grad()
def generate(model, input, max_new_tokens=64, do_sample=False, temperature=1.0, top_k=None, top_p=None,
             seed=None, stop=None, stop_at_eos=True, cache_names=None, cache_device=None, cache_dtype=None,
             attention_mask=None, logits_processor=None):
    """Generate from `input` (a string, a list of strings, token ids [b, p] with an optional
    left-padding `attention_mask`, or a Prefill); returns a `Generation`.

    `stop`: strings that end a sequence (kept in the continuation). `logits_processor`: a
    Hugging Face logits processor (a callable (ids so far [b, t], next-token scores [b, vocab])
    -> scores, e.g. countdown.decoding.FormatRules), applied to every step's scores before
    the choice, on both paths. With `cache_names`,
    `Generation.cache` is an ActivationCache whose tensors are [b, new, ...]: entry i is
    the activation at the position that predicted generated token i (attention rows are
    [b, new, head, keys], right-padded with zeros to the last step's length)."""
    if max_new_tokens < 0:
        raise VerilensError("max_new_tokens must be >= 0")
    pre = input if isinstance(input, Prefill) else None
    if pre is not None:
        pre.check(model, cache_names, attention_mask)
        ids, mask = pre.ids, pre.mask
        names, cache_device, cache_dtype = pre.names, pre.cache_device, pre.cache_dtype
    else:
        ids, mask = model.tokenize(input, attention_mask)
        names = resolve_names(cache_names, model.cfg.n_layers) if cache_names is not None else []
    cache_device = cache_device or model.device  # on a device_map: the main device, unless asked
    b, p0 = ids.shape
    model.check_length(p0 + max_new_tokens, "the prompt plus max_new_tokens")
    stops = [stop] if isinstance(stop, str) else list(stop or [])
    eos = model.tokenizer.eos_token_id
    pad = model.tokenizer.pad_token_id if model.tokenizer.pad_token_id is not None else eos
    if pre is None and not names and not stops and not do_sample and not model._active and not model._user_hooks():
        return _result(model, _hf_generate(model, ids, mask, max_new_tokens, eos if stop_at_eos else None, pad,
                                           logits_processor), p0, stops)
    generator = None
    if do_sample:
        generator = torch.Generator(device=model.device)
        if seed is not None:
            generator.manual_seed(seed)

    actives = list(model._active)
    mode = _mode(actives)
    # the prefill is the prompt's clean pass: what every mode's first step needs, except
    # interventions that live inside the one cache
    edits = any(a.interventions for a in actives)
    reuse = pre is not None and not (mode == "plain" and edits)
    kv = copy.deepcopy(pre.kv) if reuse else model.arch.new_cache()
    ikv = None  # the second cache of "two_caches", once built
    store_steps: list[dict] = []
    finished = torch.zeros(b, dtype=torch.bool, device=ids.device)
    new_tokens = []

    def cache_hooks(store, rows=None):
        return _step_cache_hooks(names, store, cache_device, cache_dtype, rows)

    def cached(step_ids, hooks, cache, past, full_mask):
        last = torch.full((b, 1), step_ids.shape[1] - 1, dtype=torch.long, device=ids.device)
        return model._run(step_ids, None, hooks, positions=last, kv=cache, past=past, use_cache=True,
                          full_mask=full_mask, last_logits_only=True)[:, -1]

    def clean(step_ids, store, past, full_mask):
        if reuse and past == 0:
            store.update(pre.store)
            return pre.logits
        return cached(step_ids, model._user_hooks() + cache_hooks(store), kv, past, full_mask)

    def step(step_ids, full_ids, full_mask, past):
        """Logits of the last position for every row, per the semantics above."""
        nonlocal ikv
        store = {}
        if mode == "plain":
            logits = cached(step_ids, model._active_hooks() + cache_hooks(store), kv, past, full_mask) \
                if edits else clean(step_ids, store, past, full_mask)
            store_steps.append(store)
            return logits
        firing = torch.zeros(b, dtype=torch.bool, device=ids.device)
        for a in actives:
            firing |= a.when.rows(full_ids) if a.when is not None else torch.ones_like(firing)
        firing &= ~finished
        istore, inter = {}, None
        if mode == "two_caches":
            if ikv is not None:  # it advances on every step, firing or not
                inter = cached(step_ids, model._active_hooks(gate=False) + cache_hooks(istore), ikv, past, full_mask)
            elif firing.sum() > 0 and firing.sum() >= SECOND_CACHE_SHARE * (~finished).sum():
                ikv = model.arch.new_cache()
                inter = cached(full_ids, model._active_hooks(gate=False) + cache_hooks(istore), ikv, 0, full_mask)
        elif mode == "last" and firing.any():
            hooks = model._active_hooks() + cache_hooks(istore)
            if reuse and past == 0:  # the prompt is in the cache already: run it once more without
                inter = model._run(step_ids, full_mask, hooks, positions=torch.full(
                    (b, 1), step_ids.shape[1] - 1, dtype=torch.long, device=ids.device), last_logits_only=True)[:, -1]
            else:
                inter = cached(step_ids, hooks, kv, past, full_mask)
                kv.crop(-step_ids.shape[1])  # drop the intervened keys/values again
        logits = clean(step_ids, store, past, full_mask)
        if firing.any():
            if inter is None:  # recompute the firing rows in full
                rows = firing.nonzero()[:, 0]
                sub_ids, sub_mask = full_ids[rows], full_mask[rows]
                sub_last = torch.full((len(rows), 1), sub_ids.shape[1] - 1, dtype=torch.long, device=ids.device)
                sub = model._run(sub_ids, sub_mask, model._active_hooks() + cache_hooks(istore, rows),
                                 positions=sub_last, last_logits_only=True)[:, -1]
                logits = logits.clone()
                logits[rows] = sub
            else:
                logits = torch.where(firing[:, None], inter, logits)
                istore = {k: (firing.nonzero()[:, 0], v[1][firing]) for k, v in istore.items()}
            for k, (rows_k, v) in istore.items():
                _, base = store[k]
                base = base.clone()
                base[rows_k] = v
                store[k] = (None, base)
        store_steps.append(store)
        return logits

    full_ids, full_mask = ids, mask
    if max_new_tokens > 0:
        logits = step(ids, full_ids, full_mask, 0)
    for t in range(max_new_tokens):
        if logits_processor is not None:
            logits = logits_processor(full_ids, logits)
        nxt = _choose(logits, do_sample, temperature, top_k, top_p, generator)
        nxt = torch.where(finished, torch.full_like(nxt, pad), nxt)
        new_tokens.append(nxt)
        if stop_at_eos and eos is not None:
            finished |= nxt == eos
        if stops:
            gen = torch.stack(new_tokens, 1)
            for r in (~finished).nonzero()[:, 0].tolist():
                tail = model.tokenizer.decode(gen[r, -(max(map(len, stops)) + 1):].tolist())
                if any(s in tail for s in stops):
                    finished[r] = True
        if bool(finished.all()) or t == max_new_tokens - 1:
            break
        full_ids = torch.cat([full_ids, nxt[:, None]], 1)
        full_mask = torch.cat([full_mask, torch.ones_like(nxt[:, None])], 1)
        logits = step(nxt[:, None], full_ids, full_mask, full_ids.shape[1] - 1)

    gen = torch.stack(new_tokens, 1) if new_tokens else ids[:, :0]
    cache = None
    if names:
        data = {}
        for n in names:
            steps = [s[n][1] for s in store_steps[: gen.shape[1]]]
            if n.endswith("hook_pattern"):  # rows grow by one key per step: right-pad with zeros
                width = steps[-1].shape[-1]
                steps = [torch.nn.functional.pad(x, (0, width - x.shape[-1])) for x in steps]
            data[n] = torch.stack(steps, 1)
        cache = ActivationCache(data, model, attention_mask=torch.ones_like(gen))
    return _result(model, torch.cat([ids, gen], 1), p0, stops, cache)


def _hf_generate(model, ids, mask, max_new_tokens, eos, pad, logits_processor=None):
    """Greedy generation by Hugging Face's own loop (nothing of ours runs between steps but
    the logits processor, if one is given)."""
    if max_new_tokens == 0:
        return ids
    from transformers import GenerationConfig, LogitsProcessorList

    cfg = GenerationConfig(max_new_tokens=max_new_tokens, do_sample=False, eos_token_id=eos, pad_token_id=pad)
    processors = LogitsProcessorList([logits_processor] if logits_processor is not None else [])
    return model.hf_model.generate(input_ids=ids, attention_mask=mask, generation_config=cfg,
                                   logits_processor=processors)


def _result(model, tokens, p0, stops, cache=None) -> Generation:
    tok = model.tokenizer
    prompts = tok.batch_decode(tokens[:, :p0], skip_special_tokens=True)
    conts = [continuation_text(tok, row, stops) for row in tokens[:, p0:]]
    return Generation(tokens, p0, [p + c for p, c in zip(prompts, conts)], conts, cache)
