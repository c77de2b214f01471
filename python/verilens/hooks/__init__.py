"""The hooked runtime: HookedModel, hook names, caching and interventions."""
from .cache import ActivationCache
from .interventions import ablate_heads, ablate_neurons, at_token, patch, project_out, steer
from .model import HookedConfig, HookedModel
from .names import get_act_name

__all__ = ["ActivationCache", "HookedConfig", "HookedModel", "ablate_heads", "ablate_neurons", "at_token",
           "get_act_name", "patch", "project_out", "steer"]
