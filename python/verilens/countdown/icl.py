"""In-context CountDown for general reasoning models (PAPER.md section 6, last bullets).

A model never trained on CountDown (a DeepSeek-R1 distill, say) is shown `shots` solved
problems in the RL model's mode-collapsed format, then the question, so that its
continuation has the same attempt lines and " (" verdict sites as the 3B model's."""
from __future__ import annotations

import random

from ..errors import VerilensError
from .problems import generate_problems
from .prompts import TEMPLATES, _USER
from .synth import write_trace

_HEADER = TEMPLATES["base"].split("\nUser:")[0]  # "A conversation between User and Assistant. ..."
_TURN = "User: " + _USER + "\nAssistant: Let me solve this step by step.\n<think>"


def icl_prompt(problem, shots: int = 3, seed: int = 0, max_failed: int = 3) -> str:
    """The base template's header, `shots` solved examples (synthetic traces on train-split
    problems, at most `max_failed` failed attempts each, deterministic for `seed`), then
    `problem`'s turn, ending in "<think>" like `prompt(problem)`."""
    if shots < 0:
        raise VerilensError(f"shots must be >= 0, got {shots}")
    rng = random.Random(seed)
    examples = [p for p in generate_problems(shots + 1, seed=10_000 + seed, split="train")
                if (p.nums, p.target) != (tuple(problem.nums), problem.target)][:shots]
    parts = [_HEADER]
    for ex in examples:
        parts.append(_TURN.format(nums=list(ex.nums), target=ex.target) + write_trace(ex, rng, max_failed=max_failed, p_slip=0.0))
    parts.append(_TURN.format(nums=list(problem.nums), target=problem.target))
    return "\n\n".join(parts[:1]) + "\n" + "\n\n".join(parts[1:])
