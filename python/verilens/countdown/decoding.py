"""The format rule greedy decoding of the mode-collapsed chain of thought follows: a verdict
ends its line.

In the traces (synth.py, PAPER.md section 2) every "(this works)" and "(not N)" is the last
thing on its line: the next attempt, or the closing "So, the equation ...", starts on a new
line. A small model sometimes runs on after the verdict instead ("= 11 (not 82) = 82 - 29 =
82 (this works)"), and the generation then has no parsable attempt line or no <answer>
(issue 22, part 3: most of countdown-tiny's unparsed generations). `VerdictEndsLine` holds
greedy decoding to the format there, and only there: where the model closes a verdict, the
line ends, with the token that closes and ends at once when the vocabulary has one (")\\n" in
countdown-tiny's), else with the model's own newline token next (SmolLM2 writes ")" and "\\n").
Everything else is the model's greedy choice, so a generation that keeps the format is
unchanged, token for token.

It is a Hugging Face logits processor (called with the ids so far and the next token's
scores), and HookedModel.generate takes it as `logits_processor` on both of its paths."""
from __future__ import annotations

import functools
import re

import torch

# An open verdict at the very end of the text ("(this works", "(not 82"), and a closed one
# (\Z: "$" would also match before a final newline).
_OPEN = re.compile(r"\((?:this works|not [^()\n]*)\Z")
_CLOSED = re.compile(r"\((?:this works|not [^()\n]*)\)\Z")
_TAIL_TOKENS = 16  # a verdict is a few tokens; its whole text is in the last 16


@functools.lru_cache(maxsize=8)
def _tables(tokenizer):
    """Per token id: its text; and the masks of the tokens the rule bans at an open verdict
    and after a closed one."""
    n = len(tokenizer)
    texts = tokenizer.batch_decode([[i] for i in range(n)], skip_special_tokens=False,
                                   clean_up_tokenization_spaces=False)
    closes_line = any(t.startswith(")\n") for t in texts)
    # at an open verdict: a ")" that goes on with anything but a newline; and a bare ")" when
    # the vocabulary closes and ends the line in one token (the one the model trained on)
    bad_close = torch.tensor([t.startswith(")") and not t.startswith(")\n") and (closes_line or t != ")")
                              for t in texts])
    not_newline = torch.tensor([not t.startswith("\n") for t in texts])
    if tokenizer.eos_token_id is not None:
        not_newline[tokenizer.eos_token_id] = False
    return texts, bad_close, not_newline


class VerdictEndsLine:
    """Logits processor: after a verdict, the line ends (see the module doc)."""

    def __init__(self, tokenizer):
        self.texts, self.bad_close, self.not_newline = _tables(tokenizer)

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        ban = None
        for r, row in enumerate(input_ids[:, -_TAIL_TOKENS:].tolist()):
            tail = "".join(self.texts[i] for i in row if i < len(self.texts))
            mask = self.bad_close if _OPEN.search(tail) else self.not_newline if _CLOSED.search(tail) else None
            if mask is not None:
                if ban is None:
                    ban = torch.zeros(scores.shape, dtype=torch.bool)
                ban[r, : len(mask)] = mask
                ban[r, len(mask):] = mask is self.not_newline  # ids past the tokenizer's (padding rows)
        if ban is None:
            return scores
        return scores.masked_fill(ban.to(scores.device), float("-inf"))
