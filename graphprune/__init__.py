"""graphprune: structural pruning of ONNX models from the .onnx file alone.

The public API is deliberately small:

    result = graphprune.prune("model.onnx", ratio=0.4)
    graphprune.write(result, "model.pruned.onnx")
    print(result.report.summary())

    sparse = graphprune.sparsify("model.onnx", sparsity=0.9, pattern="1x4")  # custom ops
"""
from .api import DEFAULT_ROUND_TO, PruneResult, Report, analyze_model, prune, sparsify, write
from .errors import (GraphpruneError, ModelLoadError, NothingToPruneError, UnsafeResultError,
                     UsageError)
from .policy import Plan
from .sparsity import SparsifyConfig, SparsityReport

__version__ = "0.1.0"

__all__ = ["DEFAULT_ROUND_TO", "GraphpruneError", "ModelLoadError", "NothingToPruneError",
           "Plan", "PruneResult", "Report", "SparsifyConfig", "SparsityReport", "UnsafeResultError",
           "UsageError", "analyze_model", "prune", "sparsify", "write", "__version__"]
