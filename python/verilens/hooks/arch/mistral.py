"""Mistral: Llama's layout; config.sliding_window (when set) limits every layer's keys."""
from .base import Arch

ARCH = Arch(family="Mistral", model_types=("mistral",), sliding="all")
