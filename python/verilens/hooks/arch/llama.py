"""Llama (and SmolLM2): the reference layout every other family is described against."""
from .base import Arch

ARCH = Arch(family="Llama", model_types=("llama",))
