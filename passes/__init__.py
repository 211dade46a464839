"""Canonicalizing passes: rewrite an imported graph into the plain form the pruner expects
(no forwarding nodes, no constant subgraphs, no BatchNorms, nothing dead)."""
from __future__ import annotations

from typing import Sequence

from graphprune.ir import Graph

from .base import Pass
from .dequantize_weights import DequantizeWeights
from .eliminate_dead import EliminateDeadNodes
from .fold_batchnorm import FoldBatchNorm
from .fold_constants import FoldConstants
from .global_pool import ReduceToGlobalPool
from .remove_identity import RemoveIdentity
from .split_packed_blocks import SplitPackedBlocks
from .unshare_weights import UnshareWeights

# Identities first so BN/const patterns are adjacent; quantized weights become float weights
# before anything reads them as constants; constants before BN so BN parameters
# computed from constant subgraphs are plain weights; dead code next, to sweep up orphans;
# global pools and packed-block splits after constants, whose folding gives ReduceMean its axes
# and Gather its indices; unsharing last, so that pruning never couples layers through a
# deduplicated constant.
DEFAULT_PASSES: tuple[Pass, ...] = (RemoveIdentity(), DequantizeWeights(), FoldConstants(),
                                    FoldBatchNorm(),
                                    ReduceToGlobalPool(), SplitPackedBlocks(),
                                    EliminateDeadNodes(), UnshareWeights())


def run_passes(graph: Graph, passes: Sequence[Pass] = DEFAULT_PASSES,
               max_rounds: int = 8) -> list[str]:
    """Run `passes` in order, round after round, until a round changes nothing (or
    `max_rounds` is reached). Returns the names of the passes that changed something, in the
    order they first did, without repeats."""
    changed: list[str] = []
    for _ in range(max_rounds):
        any_change = False
        for p in passes:
            if p.run(graph):
                any_change = True
                if p.name not in changed:
                    changed.append(p.name)
        if not any_change:
            break
    return changed


__all__ = ["DEFAULT_PASSES", "DequantizeWeights", "EliminateDeadNodes", "FoldBatchNorm", "FoldConstants", "Pass",
           "ReduceToGlobalPool", "RemoveIdentity", "SplitPackedBlocks", "UnshareWeights",
           "run_passes"]
