"""The two format rules greedy decoding of the mode-collapsed chain of thought follows.

1. A verdict ends its line. In the traces (synth.py, PAPER.md section 2) every "(this works)"
   and "(not N)" is the last thing on its line: the next attempt, or the closing "So, the
   equation ...", starts on a new line. A small model sometimes runs on after the verdict
   instead ("= 11 (not 82) = 82 - 29 = 82 (this works)"), and the generation then has no
   parsable attempt line or no <answer> (issue 22, part 3: most of countdown-tiny's unparsed
   generations). Where the model closes a verdict, the line ends, with the token that closes
   and ends at once when the vocabulary has one (")\\n" in countdown-tiny's), else with the
   model's own newline token next (SmolLM2 writes ")" and "\\n").
2. An attempt is not written twice. In the traces a line repeats an earlier one's expression
   and steps only to correct its claimed value (the solution first written with a wrong claim,
   "(not N)", then with the target: `p_final_slip`), so no line ends with a claim its
   expression and steps already had. A pretrained model copies (induction): countdown-smol's
   greedy decoding sometimes writes its last rejected line again, verbatim, until the token
   limit (issue 22), and countdown-tiny writes it again once or a few times in about half of
   its generations. Where a line has written an earlier attempt's expression and steps again,
   its next value cannot start as that attempt's claim (unless the target starts so too, read
   from the earlier verdicts) nor end as it; any other value is the model's greedy choice (both
   models then write the correction the traces taught them). A step that only starts like the
   rejected claim ("= 111 - (47 + 30) = ..." after "= 11 (not 48)") is cut too (11 of the
   demo's 400 generations; they stay in the format).

Everything else is the model's greedy choice, so a generation that keeps the format (and
has no such step) is unchanged, token for token. `FormatRules` is a Hugging Face logits
processor (called with the ids so far and the next token's scores), and HookedModel.generate
takes it as `logits_processor` on both of its paths."""
from __future__ import annotations

import functools
import re

import torch

# An open verdict at the very end of the text ("(this works", "(not 82"), and a closed one
# (\Z: "$" would also match before a final newline).
_OPEN = re.compile(r"\((?:this works|not [^()\n]*)\Z")
_CLOSED = re.compile(r"\((?:this works|not [^()\n]*)\)\Z")
_TAIL_TOKENS = 16  # a verdict is a few tokens; its whole text is in the last 16
_LINE_TOKENS = 64  # an attempt line is shorter: the current line's text is in the last 64
_AT_CLAIM = re.compile(r" = [^ ]*\Z")  # writing a value after " = ": where a claim can start or go on
_VERDICT = re.compile(r" \((?:not ([^()\n]*)|this works)\)$")  # an attempt line's verdict; group 1: "not"'s number


@functools.lru_cache(maxsize=8)
def _tables(tokenizer):
    """Per token id: its text; and the masks of the tokens rule 1 bans at an open verdict and
    after a closed one."""
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


class FormatRules:
    """Logits processor: greedy decoding held to the format's two rules (see the module doc)."""

    def __init__(self, tokenizer):
        self.texts, self.bad_close, self.not_newline = _tables(tokenizer)

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        ban = None
        for r, row in enumerate(input_ids.tolist()):
            mask, rest = self._verdict_ends_line(row)
            if mask is None:
                mask, rest = self._no_repeated_attempt(row), False
            if mask is not None:
                if ban is None:
                    ban = torch.zeros(scores.shape, dtype=torch.bool)
                ban[r, : len(mask)] = mask
                ban[r, len(mask):] = rest  # ids past the tokenizer's (padding rows)
        if ban is None:
            return scores
        return scores.masked_fill(ban.to(scores.device), float("-inf"))

    def _text(self, ids) -> str:
        return "".join(self.texts[i] for i in ids if i < len(self.texts))

    def _verdict_ends_line(self, row):
        """Rule 1's mask for this row and whether it bans ids past the tokenizer's, or (None, False)."""
        tail = self._text(row[-_TAIL_TOKENS:])
        if _OPEN.search(tail):
            return self.bad_close, False
        if _CLOSED.search(tail):
            return self.not_newline, True
        return None, False

    def _no_repeated_attempt(self, row):
        """Rule 2's mask for this row, or None where the line repeats no attempt's claim."""
        tail = self._text(row[-_LINE_TOKENS:])
        if "\n" not in tail:  # no line break in 64 tokens: not an attempt line of the format
            return None
        line = tail.rsplit("\n", 1)[-1]
        if not line.startswith("- ") or not _AT_CLAIM.search(line):  # cheap: most steps end here
            return None
        *earlier, line = self._text(row).split("\n")
        targets = set()
        bans = []  # ("start" | "end", the earlier claim's text from here on)
        for old in earlier:
            verdict = _VERDICT.search(old)
            if not old.startswith("- ") or verdict is None:
                continue
            head = old[: verdict.start()]  # "- E = S = C"
            if " = " not in head:
                continue
            claim_at = head.rindex(" = ") + 3
            targets.add(verdict.group(1) or head[claim_at:])  # "(not T)"; "(this works)": its claim
            if line == head[:claim_at]:
                bans.append(("start", head[claim_at:]))
            elif len(line) > claim_at and head.startswith(line):
                bans.append(("end", head[len(line):]))
        if not bans:
            return None

        def opens(tok, claim):  # tok writes claim's first characters, or all of it and ends it
            return claim.startswith(tok) or (tok.startswith(claim) and not tok[len(claim):][:1].isdigit())

        mask = []
        for tok in self.texts:
            banned = False
            for kind, claim in bans:
                if kind == "start":
                    banned |= bool(tok) and opens(tok, claim) and not any(opens(tok, t) for t in targets)
                else:  # the rest of the earlier claim is `claim`: a token that writes it and ends it
                    banned |= len(tok) > len(claim) and tok.startswith(claim) and not tok[len(claim)].isdigit()
            mask.append(banned)
        return torch.tensor(mask)
