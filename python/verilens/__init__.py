"""verilens: how a reasoning model checks its own work, and cross-model embedding geometry.

    import verilens
    m = verilens.load("countdown-tiny")        # built in, offline
    verilens.countdown.solve([12, 90, 60, 67], 49)
"""
from . import countdown
from .errors import VerilensError
from .models import load

__version__ = "0.1.0"
__all__ = ["VerilensError", "countdown", "load", "__version__"]
