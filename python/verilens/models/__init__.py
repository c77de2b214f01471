"""`verilens.load`: the built-in model, local Hugging Face folders and GGUF files."""
from .loading import SUPPORTED_MODEL_TYPES, builtin_path, convert_gguf, load

__all__ = ["SUPPORTED_MODEL_TYPES", "builtin_path", "convert_gguf", "load"]
