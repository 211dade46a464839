"""FoldBatchNorm: merge an inference BatchNormalization into the Conv/ConvTranspose/Gemm
that feeds it.

BN is a per-channel affine map, so it folds exactly into the producer's weight and bias.
After folding, a pruned output channel takes its BN parameters with it for free, and there is
one node less to keep consistent during surgery. |gamma| is kept in `graph.bn_scales` because
the BN-scale pruning criterion needs it after the BN is gone.
"""
from __future__ import annotations

import numpy as np
import onnx
from onnx import helper

from graphprune.ir import Graph

from .base import add_weight, delete_weights, drop_unused_weights, is_default_domain

_PRODUCERS = ("Conv", "ConvTranspose", "Gemm")


class FoldBatchNorm:
    name = "fold_batchnorm"

    def run(self, graph: Graph) -> bool:
        changed = False
        while self._sweep(graph):  # BN after BN folds in turn into the same producer
            changed = True
        return changed

    def _sweep(self, graph: Graph) -> bool:
        removed, orphans = set(), []
        outputs = set(graph.output_names)
        for bn in graph.nodes:
            producer = self._match(graph, bn)
            if producer is None:
                continue
            old = [n for n in list(producer.input[1:]) + list(bn.input[1:]) if n]
            # Free the replaced weight as soon as it is folded, not after the sweep: otherwise
            # every conv weight of the model is held twice at once (ONNX's light ResNet-50:
            # +106 MiB of peak memory on a 98 MiB file). The index is from the sweep's start
            # and folds only remove reads, so a weight the producer alone read then is unread.
            weight = producer.input[1]
            sole_reader = (weight not in outputs
                           and [id(n) for n in graph.consumers(weight)] == [id(producer)])
            if _fold(graph, producer, bn):
                removed.add(id(bn))
                orphans.extend(old)
                if sole_reader:
                    delete_weights(graph, {weight})
        if not removed:
            return False
        graph.nodes = [n for n in graph.nodes if id(n) not in removed]
        graph.reindex()
        drop_unused_weights(graph, orphans)  # only those no other node still reads
        return True

    @staticmethod
    def _match(graph: Graph, bn: onnx.NodeProto) -> onnx.NodeProto | None:
        if bn.op_type != "BatchNormalization" or not is_default_domain(bn):
            return None
        attrs = {a.name: a for a in bn.attribute}
        if "training_mode" in attrs and attrs["training_mode"].i != 0:
            return None
        if "spatial" in attrs and attrs["spatial"].i == 0:  # opset < 9 per-element stats
            return None
        if len(bn.input) < 5 or not all(n in graph.weights for n in bn.input[1:5]):
            return None
        if graph.opset < 14 and any(bn.output[1:]):  # opsets 7-13: extra outputs = training
            return None
        if graph.opset < 7 and ("is_test" not in attrs or attrs["is_test"].i == 0):
            return None
        outputs = set(graph.output_names)
        for extra in bn.output[1:]:  # running statistics (training only) must be unused
            if extra and (graph.consumers(extra) or extra in outputs):
                return None
        x = bn.input[0]
        producer = graph.producer(x)
        if (producer is None or producer.op_type not in _PRODUCERS
                or not is_default_domain(producer) or producer.output[0] != x
                or x in outputs or len(graph.consumers(x)) != 1
                or len(producer.input) < 2 or producer.input[1] not in graph.weights
                or producer.input[1] in graph.quantized):  # its integers must stay as they are
            return None
        if len(producer.input) > 2 and producer.input[2] and producer.input[2] not in graph.weights:
            return None
        return producer


def _fold(graph: Graph, node: onnx.NodeProto, bn: onnx.NodeProto) -> bool:
    """Rewrite `node` to compute BN(node(x)); False (graph untouched) if shapes don't fit."""
    gamma, beta, mean, var = (graph.weights[n].astype(np.float64).reshape(-1)
                              for n in bn.input[1:5])
    eps = next((a.f for a in bn.attribute if a.name == "epsilon"), 1e-5)
    scale = gamma / np.sqrt(var + eps)
    w = graph.weights[node.input[1]]
    attrs = {a.name: a for a in node.attribute}
    bias = graph.weights.get(node.input[2]) if len(node.input) > 2 and node.input[2] else None

    if node.op_type == "Conv":
        n_out = w.shape[0]
        if w.ndim < 3 or n_out != scale.size:
            return False
        new_w = w * scale.reshape((-1,) + (1,) * (w.ndim - 1))
    elif node.op_type == "ConvTranspose":
        # W is [Cin, Cout/group, k...]; output channel g*(Cout/group)+j is W[group g's rows, j].
        group = attrs["group"].i if "group" in attrs else 1
        n_out = w.shape[1] * group if w.ndim >= 3 else -1
        if n_out != scale.size or w.shape[0] % group:
            return False
        grouped = w.reshape((group, w.shape[0] // group) + w.shape[1:])
        s = scale.reshape((group, 1, w.shape[1]) + (1,) * (w.ndim - 2))
        new_w = (grouped * s).reshape(w.shape)
    else:  # Gemm: Y = alpha*A'B' + beta*C
        trans_b = attrs["transB"].i if "transB" in attrs else 0
        if w.ndim != 2:
            return False
        n_out = w.shape[0] if trans_b else w.shape[1]
        if n_out != scale.size:
            return False
        new_w = w * (scale.reshape(-1, 1) if trans_b else scale.reshape(1, -1))
        if bias is not None:
            # Only a C that is the same for every row can become a per-channel bias.
            if bias.ndim > 2 or bias.size not in (1, n_out) or bias.shape[:-1] not in ((), (1,)):
                return False
            gemm_beta = attrs["beta"].f if "beta" in attrs else 1.0
            bias = np.broadcast_to(bias.reshape(-1).astype(np.float64) * gemm_beta, (n_out,))

    b = np.zeros(n_out) if bias is None else bias.astype(np.float64).reshape(-1)
    new_b = (b - mean) * scale + beta
    dtype = w.dtype
    w_name = graph.unique_name(node.input[1] + "_bnfold")
    add_weight(graph, w_name, new_w.astype(dtype))
    b_name = graph.unique_name(node.input[2] + "_bnfold" if bias is not None
                               else node.input[1] + "_bnfold_bias")
    add_weight(graph, b_name, new_b.astype(dtype))
    node.input[1] = w_name
    if len(node.input) > 2:
        node.input[2] = b_name
    else:
        node.input.append(b_name)
    if node.op_type == "Gemm":  # the bias is now final: C enters with weight 1
        keep = [a for a in node.attribute if a.name != "beta"]
        del node.attribute[:]
        node.attribute.extend(keep + [helper.make_attribute("beta", 1.0)])
    graph.bn_scales[bn.output[0]] = np.abs(gamma).astype(np.float32)
    node.output[0] = bn.output[0]  # consumers of the BN now read the producer directly
    return True
