"""The CountDown task: problems, solver, reward, prompts, trace parsing and synthesis."""
from .problems import Problem, generate_problems, load_problems
from .icl import icl_prompt
from .prompts import TEMPLATES, prompt
from .reward import reward
from .solver import solve, solve_ref
from .synth import write_trace
from .trace import Attempt, char_to_token, parse_trace

__all__ = [
    "Attempt", "Problem", "TEMPLATES", "char_to_token", "generate_problems", "icl_prompt", "load_problems",
    "parse_trace", "prompt", "reward", "solve", "solve_ref", "write_trace",
]
