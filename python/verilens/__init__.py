"""verilens: how a reasoning model checks its own work, and cross-model embedding geometry.

    import verilens
    m = verilens.load("countdown-tiny")        # built in, offline
    verilens.countdown.solve([12, 90, 60, 67], 49)
"""
from . import countdown, ops
from .errors import VerilensError
from .hooks import (ActivationCache, HookedModel, ablate_heads, ablate_neurons, at_token, get_act_name, patch,
                    project_out, steer)
from .integrations import fuse, wrap
from .models import load

__version__ = "0.1.0"
__all__ = ["ActivationCache", "HookedModel", "VerilensError", "ablate_heads", "ablate_neurons", "at_token",
           "countdown", "get_act_name", "load", "ops", "patch", "project_out", "steer", "fuse", "wrap", "__version__"]
