"""The mask oracle (DESIGN.md invariant 2), shared by the tests that compare against it."""
from __future__ import annotations

import numpy as np
import onnx

from graphprune.api import ModelLike, analyze_model
from graphprune.verify import run
from graphprune.policy import Plan
from graphprune.surgery import apply_plan


def masked_reference(model: ModelLike, plan: Plan) -> onnx.ModelProto:
    """The original model with the channels `plan` removes zeroed instead of removed: what the
    pruned model must compute."""
    graph, analysis = analyze_model(model)
    apply_plan(graph, analysis, plan, mode="mask")
    return graph.to_model()


def assert_equals_oracle(model: ModelLike, result, feeds_list,
                         tolerance: float = 1e-4) -> list[np.ndarray]:
    """The pruned model (`result` of prune) equals the mask oracle on every feed, within
    `tolerance` of the reference output's largest value. Returns the pruned model's outputs
    (one single-output run per feed) for the caller's own checks."""
    reference = masked_reference(model, result.plan)
    outputs = []
    for feeds in feeds_list:
        (want,), (have,) = run(reference, feeds), run(result.model, feeds)
        assert want.shape == have.shape
        assert float(np.abs(want - have).max()) <= tolerance * float(np.abs(want).max())
        outputs.append(have)
    return outputs


def residual_model(name: str, nodes, inits, dims) -> onnx.ModelProto:
    """A hand-built block from input "x" to output "y" of the same shape (`dims`, e.g.
    ["B", S, E]) at opset 17, checked by the full checker: what the oracle tests build."""
    io = [onnx.helper.make_tensor_value_info(n, onnx.TensorProto.FLOAT, list(dims))
          for n in "xy"]
    model = onnx.helper.make_model(onnx.helper.make_graph(nodes, name, io[:1], io[1:], inits),
                                   opset_imports=[onnx.helper.make_opsetid("", 17)])
    onnx.checker.check_model(model, full_check=True)
    return model
