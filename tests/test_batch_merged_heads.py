"""Heads folded into the batch axis the way torch's nn.MultiheadAttention exports them:
[S, B, H*D] -> view(S, B*H, D) -> bmm -> view(S, B, H*D), the B*H entry computed at run time
as Mul(B read from a shape, H); and BLOOM's [B, H, S, D] -> [B*H, S, D] with the batch
recovered as Div(B*H, H). Heads prune as whole heads, the constant H follows, and the pruned
model equals the mask oracle at several batch sizes."""
import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

from graphprune import prune
from graphprune.api import analyze_model
from oracle_testlib import assert_equals_oracle, residual_model

S, E, H, D = 5, 16, 4, 4
RNG = np.random.default_rng(7)


def _const(name, value):
    return numpy_helper.from_array(np.asarray(value), name)


def _mha(merged_entry: str = "mul") -> onnx.ModelProto:
    """One seq-first attention block with packed QKV split by Split, as graphprune's
    canonicalization leaves torch's export. `merged_entry`: how the B*H target entry is
    given: "mul" (Mul(batch, H), the legacy exporter), "minus1" (-1), "literal" (a number)."""
    nodes = [helper.make_node("Shape", ["x"], ["xs"]),
             helper.make_node("Gather", ["xs", "one"], ["b"], axis=0),
             helper.make_node("Mul", ["b", "heads"], ["bh"]),
             helper.make_node("Unsqueeze", ["bh", "zero_ax"], ["bh1"]),
             helper.make_node("Unsqueeze", ["b", "zero_ax"], ["b1"]),
             helper.make_node("MatMul", ["x", "Wqkv"], ["qkv0"]),
             helper.make_node("Add", ["qkv0", "bqkv"], ["qkv"]),
             helper.make_node("Split", ["qkv", "sizes"], ["q", "k", "v"], axis=2)]
    inits = [_const("one", np.array(1, np.int64)), _const("heads", np.array(H, np.int64)),
             _const("zero_ax", np.array([0], np.int64)), _const("sizes", np.full(3, E)),
             _const("Wqkv", RNG.standard_normal((E, 3 * E)).astype(np.float32) / 4),
             _const("bqkv", RNG.standard_normal(3 * E).astype(np.float32) / 4),
             _const("Wo", RNG.standard_normal((E, E)).astype(np.float32) / 4),
             _const("s1", np.array([S], np.int64)), _const("d1", np.array([D], np.int64)),
             _const("e1", np.array([E], np.int64)), _const("heads1", np.array([H], np.int64)),
             _const("shape3", np.array([-1, S, D], np.int64))]
    if merged_entry == "mul":
        nodes.append(helper.make_node("Concat", ["s1", "bh1", "d1"], ["split_shape"], axis=0))
    else:
        value = -1 if merged_entry == "minus1" else 2 * H
        inits.append(_const("split_shape", np.array([S, value, D], np.int64)))
    for t in "qkv":
        nodes += [helper.make_node("Reshape", [t, "split_shape"], [f"{t}r"]),
                  helper.make_node("Transpose", [f"{t}r"], [f"{t}h"], perm=[1, 0, 2])]
    # Q takes a round trip through [B, H, S, D] (as the legacy export's attention does), which
    # pins which element of the merged axis is which head: b * H + h.
    nodes += [helper.make_node("Concat", ["b1", "heads1", "s1", "d1"], ["shape4"], axis=0),
              helper.make_node("Reshape", ["qh", "shape4"], ["q4"]),
              helper.make_node("Reshape", ["q4", "shape3"], ["q3"]),
              helper.make_node("Transpose", ["kh"], ["kt"], perm=[0, 2, 1]),
              helper.make_node("MatMul", ["q3", "kt"], ["scores"]),
              helper.make_node("Softmax", ["scores"], ["p"], axis=-1),
              helper.make_node("MatMul", ["p", "vh"], ["ctx"]),
              helper.make_node("Transpose", ["ctx"], ["ctx_t"], perm=[1, 0, 2]),
              helper.make_node("Concat", ["s1", "b1", "e1"], ["merge_shape"], axis=0),
              helper.make_node("Reshape", ["ctx_t", "merge_shape"], ["merged"]),
              helper.make_node("MatMul", ["merged", "Wo"], ["out"]),
              helper.make_node("Add", ["out", "x"], ["y"])]
    graph = helper.make_graph(
        nodes, "mha", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [S, "B", E])],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [S, "B", E])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model, full_check=True)
    return model


def _head_groups(model):
    _, analysis = analyze_model(model)
    return [g for g in analysis.prunable if "heads" in g.tags]


@pytest.mark.parametrize("merged_entry", ["mul", "minus1"])
def test_batch_merged_heads_prune_and_match_the_mask_oracle(merged_entry):
    model = _mha(merged_entry)
    # Unnamed nodes, as in many hand-built graphs: the rules' fixups (keyed by node name) of
    # the several Reshapes must not overwrite each other.
    assert not any(n.name for n in model.graph.node)
    (heads,) = _head_groups(model)
    assert heads.units == H
    result = prune(model, ratio=0.0, head_ratio=0.5)
    onnx.checker.check_model(result.model, full_check=True)
    weights = {t.name: numpy_helper.to_array(t) for t in result.model.graph.initializer}
    qkv = [w for n, w in weights.items() if w.ndim == 2 and w.shape[0] == E and w.shape[1] != E]
    assert [w.shape for w in qkv] == [(E, 3 * E // 2)]  # half the heads of Q, K and V
    if merged_entry == "mul":
        assert [int(w) for n, w in weights.items() if w.ndim == 0 and int(w) in (H, H // 2)] \
            == [H // 2]  # the head count inside B*H follows the pruning

    feeds = [{"x": RNG.standard_normal((S, batch, E)).astype(np.float32)} for batch in (1, 3)]
    outputs = assert_equals_oracle(model, result, feeds, tolerance=1e-5)
    assert [o.shape for o in outputs] == [(S, batch, E) for batch in (1, 3)]


def test_literal_batch_times_heads_freezes_the_heads():
    """A literal B*H entry cannot follow the pruning (and pins the batch): heads stay."""
    assert _head_groups(_mha("literal")) == []


def _bloom() -> onnx.ModelProto:
    """BLOOM's attention as its exports write it: the fused projection reshaped to
    [B, S, H, 3, D] and Q, K, V gathered per head; heads folded into the batch ([B*H, S, D],
    the B*H entry Mul(batch, H)) and unfolded again with the batch recovered as
    Div(B*H read off a shape, H); an ALiBi bias [B, H, S] folded the same way into
    [B*H, 1, S] (the same rank, so rank alone does not tell which side is merged)."""
    x, s, e = "x", S, E
    inits = [_const("Wqkv", RNG.standard_normal((E, 3 * E)).astype(np.float32) / 4),
             _const("Wo", RNG.standard_normal((E, E)).astype(np.float32) / 4),
             _const("slopes", RNG.standard_normal((1, H, 1)).astype(np.float32)),
             _const("fused", np.array([0, S, H, 3, D], np.int64)),
             _const("zero", np.array(0, np.int64)), _const("ax0", np.array([0], np.int64)),
             _const("heads", np.array(H, np.int64)), _const("s1", np.array([S], np.int64)),
             _const("d1", np.array([D], np.int64)), _const("one1", np.array([1], np.int64)),
             _const("heads1", np.array([H], np.int64)), _const("e1", np.array([E], np.int64))]
    inits += [_const(f"pick{i}", np.array(i, np.int64)) for i in range(3)]
    nodes = [helper.make_node("Shape", [x], ["xs"]),
             helper.make_node("Gather", ["xs", "zero"], ["b"], axis=0),
             helper.make_node("Mul", ["b", "heads"], ["bh"]),
             helper.make_node("Unsqueeze", ["bh", "ax0"], ["bh1"]),
             helper.make_node("Concat", ["bh1", "s1", "d1"], ["fold"], axis=0),
             helper.make_node("MatMul", [x, "Wqkv"], ["qkv"]),
             helper.make_node("Reshape", ["qkv", "fused"], ["qkv5"])]
    for i, t in enumerate("qkv"):
        nodes += [helper.make_node("Gather", ["qkv5", f"pick{i}"], [f"{t}4"], axis=3),
                  helper.make_node("Transpose", [f"{t}4"], [f"{t}h"], perm=[0, 2, 1, 3]),
                  helper.make_node("Reshape", [f"{t}h", "fold"], [f"{t}3"])]
    nodes += [helper.make_node("ReduceMean", [x], ["pos"], axes=[2], keepdims=1),
              helper.make_node("Transpose", ["pos"], ["pos_t"], perm=[0, 2, 1]),
              helper.make_node("Mul", ["pos_t", "slopes"], ["alibi"]),
              helper.make_node("Concat", ["bh1", "one1", "s1"], ["alibi_fold"], axis=0),
              helper.make_node("Reshape", ["alibi", "alibi_fold"], ["alibi3"]),
              helper.make_node("Transpose", ["k3"], ["kt"], perm=[0, 2, 1]),
              helper.make_node("MatMul", ["q3", "kt"], ["scores"]),
              helper.make_node("Add", ["scores", "alibi3"], ["biased"]),
              helper.make_node("Softmax", ["biased"], ["p"], axis=-1),
              helper.make_node("MatMul", ["p", "v3"], ["ctx"]),
              helper.make_node("Shape", ["ctx"], ["cs"]),
              helper.make_node("Gather", ["cs", "zero"], ["ctx_bh"], axis=0),
              helper.make_node("Div", ["ctx_bh", "heads"], ["batch"]),
              helper.make_node("Unsqueeze", ["batch", "ax0"], ["batch1"]),
              helper.make_node("Concat", ["batch1", "heads1", "s1", "d1"], ["unfold"], axis=0),
              helper.make_node("Reshape", ["ctx", "unfold"], ["ctx4"]),
              helper.make_node("Transpose", ["ctx4"], ["ctx_t"], perm=[0, 2, 1, 3]),
              helper.make_node("Concat", ["batch1", "s1", "e1"], ["merge"], axis=0),
              helper.make_node("Reshape", ["ctx_t", "merge"], ["merged"]),
              helper.make_node("MatMul", ["merged", "Wo"], ["out"]),
              helper.make_node("Add", ["out", x], ["y"])]
    return residual_model("bloom", nodes, inits, ["B", s, e])


def test_bloom_heads_prune_with_batch_times_heads_and_batch_recovered_by_division():
    model = _bloom()
    (heads,) = _head_groups(model)
    assert heads.units == H
    result = prune(model, ratio=0.0, head_ratio=0.5)
    onnx.checker.check_model(result.model, full_check=True)
    weights = {t.name: numpy_helper.to_array(t) for t in result.model.graph.initializer}
    assert weights["Wqkv"].shape == (E, 3 * E // 2) and weights["slopes"].shape == (1, H // 2, 1)
    # Mul(batch, H) and Div(B*H, H) both follow
    head_counts = {n.op_type: int(weights[n.input[1]]) for n in result.model.graph.node
                   if n.op_type in ("Mul", "Div") and n.input[1] in weights
                   and weights[n.input[1]].dtype == np.int64}
    assert head_counts == {"Mul": H // 2, "Div": H // 2}
    feeds = [{"x": RNG.standard_normal((batch, S, E)).astype(np.float32)} for batch in (1, 3)]
    outputs = assert_equals_oracle(model, result, feeds, tolerance=1e-5)
    assert [o.shape for o in outputs] == [(batch, S, E) for batch in (1, 3)]
