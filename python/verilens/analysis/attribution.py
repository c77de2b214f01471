"""Direct logit attribution of the verdict: which components write "this" over "not".

At the " (" step of a correct attempt the model's verdict is the logit difference
logit("this") - logit("not"). The final residual is the sum of the embedding and every
layer's attention and MLP outputs, and the final RMSNorm is linear once its scale is
fixed at its value on that residual, so the difference splits exactly into one term per
component: embedding, each layer's attention (and each head within it), each layer's
MLP (and each GLU neuron within it). The terms sum to the model's own logit difference.

Why it is in the pipeline: the paper finds GLU neurons that write the verdict and heads
that feed them; a small model may write it from attention instead, and then GLU
ablations are expected to do nothing. This says which components write it; whether they
are needed is for the ablations to show (countdown-tiny's layer-2 MLP writes more of it
than any head, yet only its heads are needed: docs/analysis.md)."""
from __future__ import annotations

import torch

from ..errors import VerilensError


def verdict_ids(model) -> list[int]:
    """Token ids of "this" and "not" (each must be one token)."""
    ids = []
    for word in ("this", "not"):
        toks = model.tokenizer.tokenize(word)
        if len(toks) != 1:
            raise VerilensError(f"{word!r} is not one token in {model.name}'s tokenizer; no verdict logit to attribute")
        ids.append(model.tokenizer.convert_tokens_to_ids(toks)[0])
    return ids


@torch.no_grad()
def verdict_attribution(model, contexts, top_neurons: int = 10) -> dict:
    """Mean direct attribution of logit("this") - logit("not") at the " (" step over
    `contexts` (texts cut right before " ("). Returns embed, attn [L], mlp [L],
    heads [L][H], the top `top_neurons` GLU neurons (layer, index, value), logit_diff
    (the model's own, mean) and max_error (largest |sum of terms - logit_diff|)."""
    if not contexts:
        raise VerilensError("verdict attribution needs at least one context")
    if model.cfg.final_softcap is not None or model.cfg.post_norms:
        # the split below is exact because the residual is a sum of the heads' and neurons'
        # writes and the final norm is frozen at it; soft-capped logits or post-norms on
        # each write (Gemma) would need their own linearisation, not written yet
        raise VerilensError(f"verdict attribution is written for models whose layers add their attention and MLP "
                            f"outputs to the residual unnormed and whose logits are not soft-capped; "
                            f"{model.arch.family} norms each write or soft-caps its logits")
    L, H, D = model.cfg.n_layers, model.cfg.n_heads, model.cfg.d_model
    verdict = verdict_ids(model)
    W_U = model.W_U.detach().float()
    d = W_U[:, verdict[0]] - W_U[:, verdict[1]]  # logit("this") - logit("not") per unit of normed residual
    gain = model.final_norm_gain.detach().float()
    eps = model.final_norm_eps
    names = ("hook_embed", "hook_attn_out", "hook_mlp_out", "attn.hook_result", "mlp.hook_post")
    u = d * gain  # the final norm is gain * x / rms(x): only the 1 / rms(x) factor depends on the context
    # each neuron's value vector read along u, one layer at a time (no fp32 copy of all of W_out)
    neuron_u = torch.stack([model.W_out[l].detach().float() @ u for l in range(L)])  # [L, d_mlp]
    embed = 0.0
    attn, mlp, heads = torch.zeros(L), torch.zeros(L), torch.zeros(L, H)
    neurons = torch.zeros(L, model.cfg.d_mlp)
    diffs, worst = [], 0.0
    for text in contexts:
        logits, cache = model.run_with_cache(text + " (", names_filter=lambda n: n.endswith(names), positions="last")
        last = lambda key: cache[key].float().reshape(-1, cache[key].shape[-1])[-1]  # noqa: E731
        # embedding, attention outputs, MLP outputs: together the final residual
        parts = torch.stack([last("hook_embed")] + [last(f"blocks.{l}.hook_attn_out") for l in range(L)]
                            + [last(f"blocks.{l}.hook_mlp_out") for l in range(L)])
        inv_rms = 1.0 / (parts.sum(0).pow(2).mean() + eps).sqrt()  # the final norm, frozen at this residual
        w = u * inv_rms
        terms = (parts @ w).cpu()
        e, a, m = float(terms[0]), terms[1:L + 1], terms[L + 1:]
        for l in range(L):
            res = cache[f"blocks.{l}.attn.hook_result"].float()
            heads[l] += (res.reshape(-1, H, D)[-1] @ w).cpu()
            post = cache[f"blocks.{l}.mlp.hook_post"].float().reshape(-1, model.cfg.d_mlp)[-1]
            neurons[l] += (post * neuron_u[l] * inv_rms).cpu()
        embed += e
        attn += a
        mlp += m
        final = logits.float().reshape(-1, logits.shape[-1])[-1]
        diff = float(final[verdict[0]] - final[verdict[1]])
        diffs.append(diff)
        worst = max(worst, abs(e + float(a.sum()) + float(m.sum()) - diff))
    n = len(contexts)
    neurons /= n
    idx = neurons.flatten().abs().topk(min(top_neurons, neurons.numel())).indices
    top = [(int(i) // model.cfg.d_mlp, int(i) % model.cfg.d_mlp, float(neurons.flatten()[i])) for i in idx]
    return {"logit_diff": sum(diffs) / n, "embed": embed / n, "attn": (attn / n).tolist(), "mlp": (mlp / n).tolist(),
            "heads": (heads / n).tolist(), "top_neurons": top, "n": n, "max_error": worst}
