"""Coupling rules, one small function per op type, all registered in `coupling.RULES`.

Importing this package registers every rule; an op type with no rule freezes the channels it
touches (the analysis records the reason), so an unknown op can never be pruned by guesswork.
"""
from . import conv, elementwise, linear, norms, pooling, shape_ops  # noqa: F401  (registration)
from ..coupling import RULES

__all__ = ["RULES"]
