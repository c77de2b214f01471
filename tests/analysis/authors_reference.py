"""A small restatement of the authors' released code, as a test oracle (not their code:
theirs loads a 3B checkpoint on CUDA; these are the few lines verilens' --paper-settings
must agree with, restated as closely as their logic allows, bugs included unless said).

Sources (fetched with `git show HEAD:<file>`):
- github.com/ajyl/self_verification @ 66676bae: mech_interp.sync.py (run(), lines 305-419;
  generate_hooked(), lines 113-226; _get_occurrence_idxs / _get_attn_density_for_target,
  lines 446-531), postprocess_qwen_gens.py (lines 27-99);
- github.com/ajyl/verify_circuit @ 519f84ba: src/probe.py (main() lines 406-649,
  run_eval() lines 296-403, cache_valid_data() lines 141-292).
"""
from __future__ import annotations

import re

import torch

# ------------------------------------------------------------------ outcome classification


def _tokens(generation):
    return re.findall(r"\d+|<\w+>|[A-Za-z_]+|[()+\-*/=]", generation)


OPS = {"+", "-", "*", "/", "="}
PARENS = {"(", ")"}
NOT_KW = {"not"}
MIX_EXTRAS = {"so", "the", "answer", "is", "<answer>", "</answer>", "</think>", "So", "equation", "that", "equals",
              "think"}


def _is_int(tok):
    return re.fullmatch(r"\d+", tok) is not None


def run_label(generation: str) -> str:
    """mech_interp.sync.py run(), lines 353-415: the label one continuation adds to."""
    tokens = _tokens(generation)
    if "this works" in generation:
        return "fail"
    elif all(_is_int(t) or t in OPS | PARENS | NOT_KW for t in tokens):
        return "success"
    elif all(_is_int(t) or t in OPS | PARENS | NOT_KW | MIX_EXTRAS for t in tokens):
        return "mix"
    else:
        if "not" in generation and "correct" in generation:
            if "not correct" in generation:
                return "success"
            else:
                return "mix"
        elif "not" in generation and "this works" in generation:
            return "mix"
        elif "not" in generation and "<answer>" in generation:
            return "mix"
        elif "not" in generation:
            return "success"
        else:
            return "unknown"


def postprocess_label(sample: str) -> str:
    """postprocess_qwen_gens.py, lines 27-99 (the R1-14B runs). Its `mix` counter is
    printed as "Partial"; returned here as "partial"."""
    tokens = _tokens(sample)
    if all(_is_int(t) or t in OPS | PARENS | NOT_KW for t in tokens):
        return "success"
    elif all(_is_int(t) or t in OPS | PARENS | NOT_KW | MIX_EXTRAS for t in tokens):
        return "partial"
    else:
        if "not" in sample and "correct" in sample:
            if "not correct" in sample:
                return "success"
            else:
                return "partial"
        elif "not" in sample and "this works" in sample:
            return "partial"
        elif "not" in sample and "<answer>" in sample:
            return "partial"
        elif "not" in sample and "Wait" in sample:
            return "partial"
        elif "not" in sample and "That works" in sample:
            return "partial"
        elif "not" in sample and "this works" in sample:
            return "partial"
        else:
            if "this works" in sample:
                return "fail"
            else:
                return "unknown"


def run_rates(generations):
    """run()'s return value: success / total, mix / total, fail / total ("unknown" counts
    in the total only)."""
    labels = [run_label(g) for g in generations]
    n = len(labels)
    return labels.count("success") / n, labels.count("mix") / n, labels.count("fail") / n


# ------------------------------------------------------------------ their generation loop


@torch.no_grad()
def generate_hooked(forward, input_ids, attention_mask, max_new_tokens, tokenizer):
    """mech_interp.sync.py generate_hooked(), lines 136-226: greedy, the whole sequence
    recomputed every step; rows whose last token decodes to " (" take the next token from a
    second forward with their hooks on; stops by first-token ids, the stop token replaced
    by EOS. `forward(ids, mask, hooked)` -> logits stands for `model(...)` with or without
    their hooks (the block_size cut never happens here)."""
    eos_token_id = tokenizer.eos_token_id
    batch_size = input_ids.shape[0]
    finished = torch.zeros(batch_size, dtype=torch.bool)
    token_newline = tokenizer.encode("\n", add_special_tokens=False)[0]
    token_double_newline = tokenizer.encode("\n\n", add_special_tokens=False)[0]
    token_bracket_newline = tokenizer.encode(">\n\n", add_special_tokens=False)[0]
    for _ in range(max_new_tokens):
        if finished.all():
            break
        logits = forward(input_ids, attention_mask, False)[:, -1, :]
        next_token = torch.argmax(logits, dim=-1, keepdim=True)
        prev_token = input_ids[:, -1].unsqueeze(1)
        interv_batch_idx = [b for b in range(batch_size) if tokenizer.decode(input_ids[b, -1]) == " ("]
        if len(interv_batch_idx) > 0:
            logits = forward(input_ids[interv_batch_idx], attention_mask[interv_batch_idx], True)[:, -1, :]
            next_token[interv_batch_idx] = torch.argmax(logits, dim=-1, keepdim=True)
        reached_eos = next_token.squeeze(1) == eos_token_id
        reached_two_newline = (prev_token.squeeze(1) == token_newline) & (next_token.squeeze(1) == token_newline)
        reached_double_newline = next_token.squeeze(1) == token_double_newline
        reached_bracket_newline = next_token.squeeze(1) == token_bracket_newline
        new_finished = (~finished) & (reached_eos | reached_double_newline | reached_two_newline
                                      | reached_bracket_newline)
        finished |= new_finished
        next_token[finished] = eos_token_id
        input_ids = torch.cat([input_ids, next_token], dim=1)
        attention_mask = torch.cat([attention_mask, torch.ones((batch_size, 1), dtype=attention_mask.dtype)], dim=1)
    return input_ids


# ------------------------------------------------------------------ previous-token heads


def _get_occurrence_idxs(hay, needle):
    """mech_interp.sync.py lines 446-452: the LAST token index of every match of `needle`."""
    window_size = needle.shape[0]
    hay = hay.unfold(0, window_size, 1)
    mask = (hay == needle).all(dim=1)
    offset = window_size - 1
    match_idxs = mask.nonzero(as_tuple=True)[0] + offset
    return match_idxs


def target_density(patterns, contexts_ids, targets, tokenizer):
    """_get_attn_density_for_target(), lines 455-531, for unpadded contexts one at a time:
    patterns[i] [layers, heads, seq] is context i's attention from its last position. The
    target's tokens are `tokenizer(str(target))` (a BOS dropped, as their R1 code does);
    keys = last token of each match before the first " Let's try different". Averaged over
    all contexts (their loop keeps only the last batch's list: not restated)."""
    cutoff = torch.tensor(tokenizer(" Let's try different", add_special_tokens=False)["input_ids"])
    attn_density = []
    for pattern, _context, target in zip(patterns, contexts_ids, targets):
        target_tokens = torch.tensor(tokenizer(str(target), add_special_tokens=False)["input_ids"])
        cutoff_idx = _get_occurrence_idxs(_context, cutoff)
        curr_context = _context[: cutoff_idx[0]]
        match_idxs = _get_occurrence_idxs(curr_context, target_tokens)
        attn_density.append(pattern[:, :, match_idxs].sum(dim=-1))
    return torch.stack(attn_density, dim=0).mean(dim=0)


# ------------------------------------------------------------------ their probe


@torch.no_grad()
def recorded_sites(hf_model, input_ids, attention_mask, max_new_tokens, tokenizer, **generate_kwargs):
    """src/probe.py main(), lines 475-543 (probe_timestep "("): generate() with forward
    hooks recording every decoder layer's output, the recordings concatenated over steps,
    the last `max_new_tokens` positions taken as the response's states, and the sites found
    on the response tokens. Returns {(row, t): [n_layers, d_model]} for the rows with both
    verdicts, t the index in `response` of the " (" (the state is the one their indexing
    reads: one position before it). `generate_kwargs` go to generate() (tests force the
    tokens along a known trace)."""
    from transformers import GenerationConfig

    recording = {i: [] for i in range(len(hf_model.model.layers))}
    hooks = [layer.register_forward_hook(lambda m, i, o, k=k: recording[k].append(
        (o[0] if isinstance(o, tuple) else o).clone())) for k, layer in enumerate(hf_model.model.layers)]
    try:
        output = hf_model.generate(input_ids=input_ids, attention_mask=attention_mask, max_new_tokens=max_new_tokens,
                                   eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
                                   generation_config=GenerationConfig(do_sample=False), return_dict_in_generate=True,
                                   use_cache=True, **generate_kwargs)
    finally:
        for h in hooks:
            h.remove()
    recording = {k: torch.cat(acts, dim=1) for k, acts in recording.items()}
    response = output.sequences[:, -max_new_tokens:]
    resid_stream = torch.stack([acts[:, -max_new_tokens:] for acts in recording.values()], dim=1)
    token_open = tokenizer.encode(" (")[0]
    token_not = tokenizer.encode("not")[0]
    token_this = tokenizer.encode("this")[0]
    mask_not = (response[:, :-1] == token_open) & (response[:, 1:] == token_not)
    mask_this = (response[:, :-1] == token_open) & (response[:, 1:] == token_this)
    both = set(torch.where(mask_not)[0].tolist()) & set(torch.where(mask_this)[0].tolist())
    out = {}
    for b, t in zip(*torch.where(mask_not | mask_this)):
        if int(b) in both:
            out[(int(b), int(t))] = resid_stream[b, :, t]
    return out, output.sequences


def train_online(W0, train_batches, val, eval_interval=50, patience=10, lr=1e-4, batch_size=128):
    """src/probe.py main() lines 450-649 with run_eval() lines 296-403, on recorded sites:
    `train_batches` [(resid [n_layers, n, d_model], labels) or None (no generation with both
    verdicts: skipped)], `val` = (resid, labels). Returns the probe their loop saves last
    (the lowest validation loss) and its per-layer validation accuracy."""
    n_layers = W0.shape[0]
    probe_model = W0.clone()
    probe_model.requires_grad = True
    optimiser = torch.optim.AdamW([probe_model], lr=lr, betas=(0.9, 0.99), weight_decay=0.01)
    optimiser.zero_grad()
    lowest_val_loss, curr_patience, saved = 1e10, 0, None

    def loss_of(resid, labels):
        labels_one_hot = torch.nn.functional.one_hot(torch.tensor(labels), num_classes=2)
        probe_out = torch.einsum("lbd,ldo->lbo", resid, probe_model)
        _labels_one_hot = labels_one_hot.unsqueeze(0).repeat((n_layers, 1, 1))
        probe_log_probs = probe_out.log_softmax(-1)
        probe_correct_log_probs = (probe_log_probs * _labels_one_hot).mean(dim=1) * 2  # reduce "mean" over batch
        return -probe_correct_log_probs.mean(), probe_log_probs

    for batch_idx, batch in enumerate(train_batches):
        if batch is None:
            continue
        train_loss, _ = loss_of(*batch)
        train_loss.backward()
        optimiser.step()
        if batch_idx % eval_interval == 0:
            with torch.no_grad():
                resid, labels = val
                val_losses, val_accuracies, valid_seen = [], [], 0
                for i in range(0, resid.shape[1], batch_size):
                    r, y = resid[:, i:i + batch_size], labels[i:i + batch_size]
                    valid_loss, log_probs = loss_of(r, y)
                    val_losses.append(valid_loss.item() * r.shape[1])
                    res = log_probs.argmax(-1) == torch.tensor(y).unsqueeze(0)
                    val_accuracies.append(res.sum(dim=1) / res.shape[1] * r.shape[1])
                    valid_seen += r.shape[1]
                val_loss = sum(val_losses) / valid_seen
                val_accuracy_per_layer = torch.stack(val_accuracies, dim=1).sum(dim=1) / valid_seen
            if val_loss < lowest_val_loss:
                curr_patience = 0
                saved = (probe_model.detach().clone(), val_accuracy_per_layer)
                lowest_val_loss = val_loss
            else:
                curr_patience += 1
                if curr_patience >= patience:
                    break
    return saved
