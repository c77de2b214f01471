"""countdown-tiny: a small Qwen2 CountDown reasoner, trained by `verilens train`.

The architecture is transformers' own Qwen2ForCausalLM (GQA, RMSNorm, RoPE, SiLU GLU),
so every analysis runs the same code path as Qwen2.5-3B, just smaller. The training
data are synthetic mode-collapsed traces (verilens.countdown.synth) on the "train"
side of `problem_split`, with the base prompt; the loss covers the response only."""
from __future__ import annotations

import random
from dataclasses import dataclass

import torch

from ..countdown import generate_problems, prompt
from ..countdown.synth import drill_trace, trace_and_slips

NAME = "countdown-tiny"
PINNED_DIGIT = 2  # last digit of the targets in pinned drills (any digit would do)


@dataclass
class TinySpec:
    """Everything that defines a countdown-tiny run; the defaults reproduce the shipped model."""

    seed: int = 0
    hidden_size: int = 192
    num_hidden_layers: int = 6
    num_attention_heads: int = 6
    num_key_value_heads: int = 2
    intermediate_size: int = 576
    vocab_size: int = 576  # the trained BPE (~530 tokens) padded to a multiple of 64
    max_position_embeddings: int = 1024
    tokenizer_vocab: int = 1024  # BPE merge budget; it stops early when the corpus is covered
    tokenizer_corpus: int = 3000  # traces used to train the tokenizer
    n_problems: int = 40000  # training problems (train split); traces are redrawn every time
    batch_size: int = 12
    steps: int = 3000
    lr: float = 1e-3  # at 2e-3..3e-3 the digit-copying heads form late or not at all
    warmup: int = 100
    weight_decay: float = 0.05
    verdict_weight: float = 10.0  # loss weight of the verdict token ("this"/"not") after " ("
    p_chain: float = 0.4  # share of chained attempts ("a + b - c = v - c = w"): arithmetic step by step
    # share of failed attempts with a wrong claimed value (the target, near misses), seen
    # without loss: it breaks any link between verdict and position (see encode_example)
    p_slip: float = 0.6
    # share of traces whose solution is first written with a wrong claimed value ("(not ...)"):
    # the line that ends the search must not be recognisable before its claimed value
    p_final_slip: float = 0.5
    # share of failed attempts drawn as near misses (value close to the target) whose claimed
    # value is trained; near-miss claims that are not trained come from p_slip
    p_near: float = 0.0  # off: near misses still come as untrained wrong claims (p_slip) and in drills
    # share of the wrong claimed values that claim the target (a wrong computation that
    # "works"): the verdict "this works" after a line that was not meant to end the search
    p_slip_target: float = 0.5
    # Verdict drills (`synth.drill_trace`: many attempt lines whose claims are the target or one
    # digit away from it; loss on the verdicts only), from step `drill_from` on,
    # once the digit-copying circuits have formed: `p_drill` of the traces on any problem,
    # `p_pinned_drill` on problems whose target ends in PINNED_DIGIT. The pinned share is the
    # curriculum that makes the second-digit comparison learnable: there "claim ends in 2" alone
    # decides the verdict, so the claim's last digit gets a reason to reach " (", then the
    # target's, then their equality forms (issue 3's notes: ftF -> ftK).
    p_drill: float = 0.3
    p_pinned_drill: float = 0.15
    drill_from: int = 300
    # LayerDrop (Fan et al. 2019): on each step every layer from `layer_drop_from` on is
    # skipped (the identity) with probability `layer_drop`. Without it the model compares
    # claim and target at the claim's last digit and only its last two layers copy the
    # verdict to " (" (probes there: 0.83 in layers 0-3); when the upper layers may vanish,
    # the verdict has to be at " (" by layer 2, as the paper's probes find it from early on
    # (issue 5's notes). At 0.2 from layer 2 training went unstable (agreement 0.76).
    layer_drop: float = 0.35
    layer_drop_from: int = 3


def qwen2_config(spec: TinySpec, tokenizer):
    from transformers import Qwen2Config

    return Qwen2Config(
        vocab_size=spec.vocab_size,
        hidden_size=spec.hidden_size,
        intermediate_size=spec.intermediate_size,
        num_hidden_layers=spec.num_hidden_layers,
        num_attention_heads=spec.num_attention_heads,
        num_key_value_heads=spec.num_key_value_heads,
        max_position_embeddings=spec.max_position_embeddings,
        rms_norm_eps=1e-6,
        rope_theta=10000.0,
        hidden_act="silu",
        tie_word_embeddings=False,
        bos_token_id=tokenizer.eos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.eos_token_id,
    )


def training_texts(problems, rng: random.Random, p_chain: float = 0.2, p_slip: float = 0.1, p_final_slip: float = 0.0,
                   p_near: float = 0.3, p_slip_target: float = 0.3):
    """(prompt, response, slip spans) with fresh synthetic traces."""
    for p in problems:
        yield (prompt(p), *trace_and_slips(p, rng, p_chain=p_chain, p_slip=p_slip, p_final_slip=p_final_slip,
                                           p_near=p_near, p_slip_target=p_slip_target))


def encode_example(tokenizer, prompt_text: str, response: str, verdict_weight: float = 1.0, slips=(), end=True):
    """Token ids and per-token loss weights: 0 on the prompt, 1 on the response and the
    final EOS (none without `end`: a drill is not a whole response), `verdict_weight` on
    each verdict token (the one right after " ("): the single token where the model must
    compare its claimed value with the target.

    Tokens overlapping a `slips` span (character offsets in `response`: the deliberately
    wrong claimed values) get weight 0, so the model learns what follows a wrong claim
    (its verdict) but is never taught to write one."""
    p_ids = tokenizer.encode(prompt_text, add_special_tokens=False)
    enc = tokenizer(response, add_special_tokens=False, return_offsets_mapping=True)
    r_ids = enc["input_ids"] + [tokenizer.eos_token_id] * end
    r_w = [0.0 if any(a < e and s < b for s, e in slips) else 1.0 for a, b in enc["offset_mapping"]] + [1.0] * end
    paren, this, not_ = (tokenizer.convert_tokens_to_ids(tokenizer.tokenize(t))[0] for t in (" (", "this", "not"))
    w = [0.0] * len(p_ids) + r_w
    ids = p_ids + r_ids
    for i in range(len(p_ids) + 1, len(ids)):
        if ids[i - 1] == paren and ids[i] in (this, not_):  # not the " (" of a bracketed expression
            w[i] = verdict_weight
    return ids, w


def spec_examples(tokenizer, spec: TinySpec, problems, pinned, rng: random.Random, drills: bool):
    """Encoded training examples for `problems`, drawn with `rng`: normal traces, or, when
    `drills` is on, verdict drills in the spec's shares (pinned ones on problems drawn from
    `pinned`, the training problems whose target ends in PINNED_DIGIT)."""
    out = []
    for p in problems:
        r = rng.random() if drills else 1.0  # no draw when off: older recipes reproduce
        if r < spec.p_pinned_drill + spec.p_drill:
            # pinned: wrong claims differ in the last digit only, so "ends in 2" decides
            q, p_last = (pinned[rng.randrange(len(pinned))], 1.0) if r < spec.p_pinned_drill else (p, 0.5)
            text, untrained = drill_trace(q, rng, p_last=p_last)
            out.append(encode_example(tokenizer, prompt(q), text, spec.verdict_weight, untrained, end=False))
        else:
            (p_text, response, slips), = training_texts([p], rng, spec.p_chain, spec.p_slip, spec.p_final_slip,
                                                         spec.p_near, spec.p_slip_target)
            out.append(encode_example(tokenizer, p_text, response, spec.verdict_weight, slips))
    return out


def collate(examples, pad_id: int):
    """Right-padded batch: input_ids, attention_mask, per-token loss weights."""
    n = max(len(ids) for ids, _ in examples)
    ids = torch.full((len(examples), n), pad_id, dtype=torch.long)
    attn = torch.zeros((len(examples), n), dtype=torch.long)
    weights = torch.zeros((len(examples), n), dtype=torch.float32)
    for i, (x, w) in enumerate(examples):
        ids[i, : len(x)] = torch.tensor(x)
        attn[i, : len(x)] = 1
        weights[i, : len(x)] = torch.tensor(w)
    return ids, attn, weights


def weighted_loss(logits, ids, weights):
    """Next-token cross-entropy, weighted per target token, normalised by the number
    of response tokens (so verdict_weight adds emphasis without rescaling the rest)."""
    ce = torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1).float(), ids[:, 1:].flatten(), reduction="none")
    w = weights[:, 1:].flatten()
    return (ce * w).sum() / (w > 0).sum().clamp(min=1)


def train_problems(spec: TinySpec):
    return generate_problems(spec.n_problems, seed=spec.seed, split="train")
