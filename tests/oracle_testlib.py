"""The mask oracle (DESIGN.md invariant 2), shared by the tests that compare against it."""
from __future__ import annotations

import onnx

from graphprune.api import ModelLike, analyze_model
from graphprune.policy import Plan
from graphprune.surgery import apply_plan


def masked_reference(model: ModelLike, plan: Plan) -> onnx.ModelProto:
    """The original model with the channels `plan` removes zeroed instead of removed: what the
    pruned model must compute."""
    graph, analysis = analyze_model(model)
    apply_plan(graph, analysis, plan, mode="mask")
    return graph.to_model()
