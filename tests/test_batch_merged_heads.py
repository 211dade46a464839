"""Heads folded into the batch axis the way torch's nn.MultiheadAttention exports them:
[S, B, H*D] -> view(S, B*H, D) -> bmm -> view(S, B, H*D), the B*H entry computed at run time
as Mul(B read from a shape, H). Heads prune as whole heads, the constant H follows, and the
pruned model equals the mask oracle at several batch sizes."""
import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

from graphprune import prune
from graphprune.api import analyze_model
from graphprune.verify import run
from oracle_testlib import masked_reference

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

    reference = masked_reference(model, result.plan)
    for batch in (1, 3):
        feeds = {"x": RNG.standard_normal((S, batch, E)).astype(np.float32)}
        (want,), (have,) = run(reference, feeds), run(result.model, feeds)
        assert have.shape == (S, batch, E)
        np.testing.assert_allclose(have, want, rtol=0, atol=1e-5 * np.abs(want).max())


def test_literal_batch_times_heads_freezes_the_heads():
    """A literal B*H entry cannot follow the pruning (and pins the batch): heads stay."""
    assert _head_groups(_mha("literal")) == []
