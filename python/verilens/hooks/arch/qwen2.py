"""Qwen2 / Qwen2.5: Llama's layout with q/k/v biases (read from the modules) and an
optional sliding window on the layers config.layer_types marks."""
from .base import Arch

ARCH = Arch(family="Qwen2", model_types=("qwen2",), sliding="layer_types")
