"""The countdown-tiny tokenizer: byte-level BPE with Qwen2's pre-tokenizer.

Qwen's conventions that the analysis relies on hold by construction: digits are
single tokens (the split regex isolates every \\p{N}), " (" is one token, and "not"
and "this" are single tokens (checked after training, see `check_conventions`)."""
from __future__ import annotations

from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers

from ..errors import VerilensError

# Qwen2's split pattern (tokenizer.json of Qwen2.5), digits one by one.
QWEN2_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
EOS = "<|endoftext|>"
SPECIAL_TOKENS = [EOS, "<|im_start|>", "<|im_end|>"]


def train_tokenizer(texts, vocab_size: int = 1024):
    """Train the byte-level BPE on `texts`; returns a transformers fast tokenizer."""
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN2_SPLIT), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token=EOS, pad_token=EOS, clean_up_tokenization_spaces=False
    )
    check_conventions(fast)
    return fast


def check_conventions(tokenizer) -> None:
    """Raise unless " (", "not", "this" and each digit encode to one token."""
    for s in [" (", "not", "this"] + [str(d) for d in range(10)]:
        ids = tokenizer.encode(s, add_special_tokens=False)
        if len(ids) != 1:
            raise VerilensError(f"tokenizer splits {s!r} into {len(ids)} tokens; need one")
