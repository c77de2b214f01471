"""Prompt templates, verbatim from TinyZero (PAPER.md section 1)."""
from __future__ import annotations

from ..errors import VerilensError

_USER = (
    "Using the numbers {nums}, create an equation that equals {target}. "
    "You can use basic arithmetic operations (+, -, *, /) and each number can only be used once. "
    "Show your work in <think> </think> tags. And return the final answer in <answer> </answer> tags, "
    "for example <answer> (1 + 2) / 3 </answer>."
)

TEMPLATES = {
    "base": (
        "A conversation between User and Assistant. The user asks a question, and the Assistant solves it. "
        "The assistant first thinks about the reasoning process in the mind and then provides the user with the answer.\n"
        "User: " + _USER + "\n"
        "Assistant: Let me solve this step by step.\n<think>"
    ),
    "qwen-instruct": (
        "<|im_start|>system\nYou are a helpful assistant. You first thinks about the reasoning process "
        "in the mind and then provides the user with the answer.<|im_end|>\n"
        "<|im_start|>user\n " + _USER + "<|im_end|>\n"
        "<|im_start|>assistant\nLet me solve this step by step.\n<think>"
    ),
}


def prompt(problem, template: str = "base") -> str:
    """The prompt for `problem` (a Problem or anything with .nums and .target)."""
    if template not in TEMPLATES:
        raise VerilensError(f"unknown template {template!r}; choose one of {sorted(TEMPLATES)}")
    return TEMPLATES[template].format(nums=list(problem.nums), target=problem.target)
