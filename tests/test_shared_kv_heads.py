"""Query heads that share one key/value head (multi-query attention: Falcon, Gemma-2B, Llama
with one KV head). The shared K and V are repeated for every query head by Unsqueeze -> Expand
(an axis created by broadcasting) -> Reshape, so pruning query heads must rewrite the Expand's
repeat count and leave K and V whole. Falcon packs Q, K, V as 4 + 1 + 1 heads on one axis split
by Split: each part loses its own share of heads. Also a single-head attention whose Q/K
channels prune: removing a channel summed by Q @ Kᵀ is what zeroing it at its source does,
which the mask oracle must model (it zeroes makers as well as readers)."""
import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

from graphprune import prune
from graphprune.api import analyze_model
from oracle_testlib import assert_equals_oracle, residual_model

S, E, H, D = 5, 16, 4, 4
RNG = np.random.default_rng(11)


def _const(name, value):
    return numpy_helper.from_array(np.asarray(value), name)


def _weight(name, rows, cols):
    return _const(name, (RNG.standard_normal((rows, cols)) / np.sqrt(rows)).astype(np.float32))


def _repeat_kv(src: str, dst: str, target: str) -> list:
    """[B, 1, S, D] -> [B, H, S, D] as transformers' repeat_kv exports it."""
    return [helper.make_node("Unsqueeze", [src, "unsq_ax"], [f"{src}_u"]),
            helper.make_node("Expand", [f"{src}_u", target], [f"{src}_x"]),
            helper.make_node("Reshape", [f"{src}_x", "bhsd"], [dst])]


def _mqa(packed: bool, target_form: str) -> onnx.ModelProto:
    """x [B, S, E] -> multi-query attention (H query heads, one K/V head) -> + x."""
    inits = [_weight("Wo", H * D, E), _const("unsq_ax", np.array([2], np.int64)),
             _const("bhsd", np.array([0, H, S, D], np.int64)),
             _const("merge", np.array([0, S, H * D], np.int64))]
    nodes = []
    if packed:  # Falcon: one projection, heads axis split 4 + 1 + 1
        inits += [_weight("Wqkv", E, (H + 2) * D),
                  _const("packed", np.array([0, S, H + 2, D], np.int64)),
                  _const("parts", np.array([H, 1, 1], np.int64))]
        nodes += [helper.make_node("MatMul", ["x", "Wqkv"], ["qkv"]),
                  helper.make_node("Reshape", ["qkv", "packed"], ["qkv4"]),
                  helper.make_node("Split", ["qkv4", "parts"], ["q4", "k4", "v4"], axis=2)]
    else:  # Llama: three projections, K and V one head each
        inits += [_weight("Wq", E, H * D), _weight("Wk", E, D), _weight("Wv", E, D),
                  _const("q_shape", np.array([0, S, H, D], np.int64)),
                  _const("kv_shape", np.array([0, S, 1, D], np.int64))]
        for t, shape in (("q", "q_shape"), ("k", "kv_shape"), ("v", "kv_shape")):
            nodes += [helper.make_node("MatMul", ["x", f"W{t}"], [f"{t}p"]),
                      helper.make_node("Reshape", [f"{t}p", shape], [f"{t}4"])]
    for t in "qkv":
        nodes.append(helper.make_node("Transpose", [f"{t}4"], [f"{t}h"], perm=[0, 2, 1, 3]))
    if target_form == "literal":  # Expand keeps the dynamic batch against a literal 1
        inits.append(_const("target", np.array([1, 1, H, S, D], np.int64)))
    else:  # [B, 1, H, S, D] assembled from the batch read off a shape, as exporters do
        inits += [_const("zero", np.array(0, np.int64)), _const("ax0", np.array([0], np.int64)),
                  _const("rest", np.array([1, H, S, D], np.int64))]
        nodes += [helper.make_node("Shape", ["x"], ["xs"]),
                  helper.make_node("Gather", ["xs", "zero"], ["b"], axis=0),
                  helper.make_node("Unsqueeze", ["b", "ax0"], ["b1"]),
                  helper.make_node("Concat", ["b1", "rest"], ["target"], axis=0)]
    for t in "kv":
        nodes += _repeat_kv(f"{t}h", f"{t}r", "target")
    nodes += [helper.make_node("Transpose", ["kr"], ["kt"], perm=[0, 1, 3, 2]),
              helper.make_node("MatMul", ["qh", "kt"], ["scores"]),
              helper.make_node("Softmax", ["scores"], ["p"], axis=-1),
              helper.make_node("MatMul", ["p", "vr"], ["ctx"]),
              helper.make_node("Transpose", ["ctx"], ["ctx_t"], perm=[0, 2, 1, 3]),
              helper.make_node("Reshape", ["ctx_t", "merge"], ["merged"]),
              helper.make_node("MatMul", ["merged", "Wo"], ["out"]),
              helper.make_node("Add", ["out", "x"], ["y"])]
    return residual_model("mqa", nodes, inits, ["B", S, E])


def _assert_matches_oracle(model, result):
    outputs = assert_equals_oracle(model, result, [
        {"x": RNG.standard_normal((batch, S, E)).astype(np.float32)} for batch in (1, 3)],
        tolerance=1e-5)
    assert [o.shape for o in outputs] == [(batch, S, E) for batch in (1, 3)]


def _weights(model):
    return {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}


@pytest.mark.parametrize("target_form", ["literal", "concat"])
@pytest.mark.parametrize("packed", [False, True], ids=["llama", "falcon"])
def test_query_heads_prune_around_one_shared_kv_head(packed, target_form):
    model = _mqa(packed, target_form)
    _, analysis = analyze_model(model)
    (heads,) = [g for g in analysis.prunable if "heads" in g.tags]
    assert heads.units == (H + 2 if packed else H)  # Falcon's group holds its K and V head
    result = prune(model, ratio=0.0, head_ratio=0.5)
    onnx.checker.check_model(result.model, full_check=True)
    w = _weights(result.model)
    if packed:
        assert w["Wqkv"].shape == (E, (H // 2 + 2) * D)  # half the query heads, K and V whole
    else:
        assert (w["Wq"].shape, w["Wk"].shape, w["Wv"].shape) == ((E, H // 2 * D), (E, D), (E, D))
    assert w["Wo"].shape == (H // 2 * D, E)
    expand_targets = [v for k, v in w.items() if v.ndim == 1 and v.size == 5]
    if target_form == "literal":
        assert expand_targets  # one per Expand once rewritten
        assert all(t.tolist() == [1, 1, H // 2, S, D] for t in expand_targets)
    _assert_matches_oracle(model, result)


def test_single_head_query_key_channels_prune_to_the_mask_oracle():
    """One head: Q's and K's channels are summed by Q @ Kᵀ and prune as one group with no
    weight that reads them, so only zeroing them at Wq and Wk makes the oracle."""
    inits = [_weight(f"W{t}", E, E) for t in "qkv"] + [_weight("Wo", E, E)]
    nodes = [helper.make_node("MatMul", ["x", f"W{t}"], [t]) for t in "qkv"]
    nodes += [helper.make_node("Transpose", ["k"], ["kt"], perm=[0, 2, 1]),
              helper.make_node("MatMul", ["q", "kt"], ["scores"]),
              helper.make_node("Softmax", ["scores"], ["p"], axis=-1),
              helper.make_node("MatMul", ["p", "v"], ["ctx"]),
              helper.make_node("MatMul", ["ctx", "Wo"], ["out"]),
              helper.make_node("Add", ["out", "x"], ["y"])]
    model = residual_model("one_head", nodes, inits, ["B", S, E])
    result = prune(model, ratio=0.5, round_to=1)
    w = _weights(result.model)
    assert w["Wq"].shape == w["Wk"].shape == (E, E // 2)  # the summed channels pruned
    _assert_matches_oracle(model, result)
