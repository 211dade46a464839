"""sparse_heads.fuse_head_layouts: the head split / merge around sparse MatMuls goes into the
sparse op, the outputs stay those of the masked dense model, and nothing is fused where the
Reshape would not keep the batch and sequence axes or another node reads the tensors."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import graphprune
from graphprune.sparsity import SparsifyConfig
from models.attention import ATTENTION_BLOCKS
from test_sparsify import _sparsify_and_compare

CONFIG = SparsifyConfig(sparsity=0.75, pattern="unstructured", measure=False)

# block -> (projections that absorb their heads, Transposes left)
EXPECTED = {
    "mha_postnorm": (["q", "k", "v", "o"], 0),
    "mha_prenorm": (["q", "k", "v", "o"], 0),
    "packed_qkv": (["c_proj"], 3),  # the fused QKV projection is split by a Split first
    "gqa": (["q_proj", "k_proj", "v_proj", "o_proj"], 1),  # K^T after repeat_kv stays
}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_attention_blocks_absorb_their_head_transposes(name):
    result, _ = _sparsify_and_compare(ATTENTION_BLOCKS[name](0), CONFIG, batches=(1, 2))
    projections, transposes_left = EXPECTED[name]
    assert result.report.sparsity.head_layouts == [f"attn.{p}.matmul.sparse" for p in projections]
    ops = [n.op_type for n in result.model.graph.node]
    assert ops.count("Transpose") == transposes_left
    onnx.checker.check_model(result.model, full_check=True)
    assert "sparse MatMuls write or read attention heads" in result.report.sparsity.summary()


def test_switched_off():
    config = SparsifyConfig(sparsity=0.75, pattern="unstructured", measure=False,
                            fuse_heads=False)
    result = graphprune.prune(ATTENTION_BLOCKS["mha_prenorm"](0), ratio=0.0, verify=False,
                              sparse=config)
    assert result.report.sparsity.head_layouts == []
    assert [n.op_type for n in result.model.graph.node].count("Transpose") == 4


def _projection(shape, perm=(0, 2, 1, 3), extra_output=None, batch="B"):
    """X [batch, 6, 32] -> MatMul -> Reshape(shape) -> Transpose(perm) -> Y."""
    rng = np.random.default_rng(0)
    nodes = [helper.make_node("MatMul", ["X", "W"], ["p"], name="proj"),
             helper.make_node("Reshape", ["p", "shape"], ["r"]),
             helper.make_node("Transpose", ["r"], ["Y"], perm=list(perm))]
    rank4 = ["d0", "d1", "d2", "d3"]
    outputs = [helper.make_tensor_value_info("Y", TensorProto.FLOAT, rank4)]
    if extra_output:
        outputs.append(helper.make_tensor_value_info(extra_output, TensorProto.FLOAT, rank4))
    graph = helper.make_graph(
        nodes, "proj", [helper.make_tensor_value_info("X", TensorProto.FLOAT, [batch, 6, 32])],
        outputs, initializer=[
            numpy_helper.from_array(rng.standard_normal((32, 32)).astype(np.float32), "W"),
            numpy_helper.from_array(np.array(shape, np.int64), "shape")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


@pytest.mark.parametrize("perm,layout", [((0, 2, 1, 3), "bhsd"), ((0, 2, 3, 1), "bhds")])
def test_split_of_a_projection(perm, layout):
    result, _ = _sparsify_and_compare(_projection([0, 0, 4, 8], perm), CONFIG, batches=(1, 3))
    (node,) = result.model.graph.node
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    assert attrs["heads_out"] == 4 and attrs["heads_out_layout"] == layout.encode()


@pytest.mark.parametrize("case", ["rows_regrouped", "reshape_read_twice", "other_perm"])
def test_not_fused(case):
    """[1, -1, 4, 8] folds the batch into the sequence axis; a Reshape output that is also a
    graph output must stay; a permutation other than the two head layouts stays a Transpose.
    The results are still the masked dense model's."""
    model = {"rows_regrouped": lambda: _projection([1, -1, 4, 8]),
             "reshape_read_twice": lambda: _projection([0, 0, 4, 8], extra_output="r"),
             "other_perm": lambda: _projection([0, 0, 4, 8], perm=(0, 1, 3, 2))}[case]()
    result, _ = _sparsify_and_compare(model, CONFIG, batches=(1, 2))
    assert result.report.sparsity.head_layouts == []
    assert [n.op_type for n in result.model.graph.node] == ["SparseMatMul", "Reshape",
                                                           "Transpose"]


def _scaled_projection(scale_shape=(), activation=None, perm=(0, 2, 1, 3)):
    """X [B, 6, 32] -> MatMul + bias (-> activation) -> heads -> Mul(constant) -> Y."""
    rng = np.random.default_rng(1)
    nodes = [helper.make_node("MatMul", ["X", "W"], ["p"], name="proj"),
             helper.make_node("Add", ["p", "b"], ["pb"])]
    last = "pb"
    if activation:
        nodes.append(helper.make_node(activation, ["pb"], ["act"]))
        last = "act"
    nodes += [helper.make_node("Reshape", [last, "shape"], ["r"]),
              helper.make_node("Transpose", ["r"], ["t"], perm=list(perm)),
              helper.make_node("Mul", ["t", "c"], ["Y"])]
    scale = np.full(scale_shape, 0.35, np.float32)
    if scale_shape == (4, 1, 1):  # per head: not a scalar
        scale = rng.uniform(0.1, 1.0, scale_shape).astype(np.float32)
    graph = helper.make_graph(
        nodes, "scaled", [helper.make_tensor_value_info("X", TensorProto.FLOAT, ["B", 6, 32])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT,
                                       [f"d{i}" for i in range(max(4, len(scale_shape)))])],
        initializer=[
            numpy_helper.from_array(rng.standard_normal((32, 32)).astype(np.float32), "W"),
            numpy_helper.from_array(rng.standard_normal(32).astype(np.float32), "b"),
            numpy_helper.from_array(np.array([0, 0, 4, 8], np.int64), "shape"),
            numpy_helper.from_array(scale, "c")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


@pytest.mark.parametrize("scale_shape", [(), (1,), (1, 1, 1, 1)])
def test_scalar_scale_folds_into_the_weights(scale_shape):
    """The SDPA-style scale after a head split goes into the values and bias; the original
    weights are not touched (the scaled ones are new initializers)."""
    result, _ = _sparsify_and_compare(_scaled_projection(scale_shape), CONFIG, batches=(1, 3))
    assert [n.op_type for n in result.model.graph.node] == ["SparseMatMul"]
    assert result.report.sparsity.scales_folded == ["proj.sparse"]
    assert "scalar Muls after sparse MatMuls folded" in result.report.sparsity.summary()
    onnx.checker.check_model(result.model, full_check=True)


@pytest.mark.parametrize("case", ["per_head", "wider_rank", "relu"])
def test_scale_not_folded(case):
    """A per-head constant is not a scalar; a rank-5 constant would broadcast Y to rank 5; a
    fused Relu does not commute with the Mul in general. The Mul stays and the results are
    the masked dense model's."""
    model = {"per_head": lambda: _scaled_projection((4, 1, 1)),
             "wider_rank": lambda: _scaled_projection((1, 1, 1, 1, 1)),
             "relu": lambda: _scaled_projection(activation="Relu")}[case]()
    result, _ = _sparsify_and_compare(model, CONFIG, batches=(1, 2))
    assert result.report.sparsity.scales_folded == []
    assert [n.op_type for n in result.model.graph.node] == ["SparseMatMul", "Mul"]


def test_shape_readers_follow_the_scaled_tensor():
    """torch reads Q's shape with a Shape node: it reads the folded output instead."""
    model = _scaled_projection()
    graph = model.graph
    graph.node.append(helper.make_node("Shape", ["t"], ["t_shape"]))
    graph.output.append(helper.make_tensor_value_info("t_shape", TensorProto.INT64, [4]))
    result, _ = _sparsify_and_compare(model, CONFIG, batches=(1, 2))
    assert [n.op_type for n in result.model.graph.node] == ["SparseMatMul", "Shape"]
    assert result.report.sparsity.scales_folded == ["proj.sparse"]
