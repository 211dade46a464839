"""Coupling rules, one small function per op type, all registered in `coupling.RULES`.

Importing this package registers every rule; an op type with no rule freezes the channels it
touches (the analysis records the reason), so an unknown op can never be pruned by guesswork.
"""
from . import (contrib, conv, elementwise, indexing, linear, norms, pooling,  # noqa: F401
               recurrent, shape_ops)
from ..coupling import RULES

__all__ = ["RULES", "describe_rules"]


def describe_rules() -> str:
    """The supported-op table of the README, generated from the registry so it never drifts."""
    by_fn: dict = {}
    for op, rule in sorted(RULES.items()):
        by_fn.setdefault(rule.couple, []).append(op)
    lines = ["| op types | how channels flow |", "|---|---|"]
    for fn, ops in sorted(by_fn.items(), key=lambda kv: kv[1][0]):
        doc = (fn.__doc__ or "").strip().split("\n\n")[0].replace("\n", " ")
        lines.append(f"| {', '.join(ops)} | {' '.join(doc.split())} |")
    return "\n".join(lines)
