import numpy as np
import onnx
from onnx import helper

from graphprune.passes import DEFAULT_PASSES
from graphprune.passes.split_packed_blocks import SplitPackedBlocks
from passes_testlib import assert_equivalent, init, load, make_model, op_types, rand, vi

E, H = 8, 2  # embedding, heads (head size 4)


def _run(model):
    graph = load(model)
    graph.infer_shapes(bind_dynamic=True)
    changed = SplitPackedBlocks().run(graph)
    return graph, changed


def _torch_mha_split(picks=(0, 1, 2), *, opset=17, gather_axis=0, extra_reader=False,
                     squeeze_axis=3, concat=False):
    """nn.MultiheadAttention's separation of its packed projection: [S, B, 3E] ->
    unflatten(-1, (3, E)) -> unsqueeze(0) -> transpose(0, -2) -> squeeze(-2) -> [i]."""
    outs = [f"p{k}" for k in range(len(picks))]
    if opset >= 13:
        unsqueeze = helper.make_node("Unsqueeze", ["r", "ax0"], ["u"])
        squeeze = helper.make_node("Squeeze", ["t", "ax3"], ["sq"])
        axes = [init("ax0", np.array([0], np.int64)), init("ax3", np.array([squeeze_axis]))]
    else:
        unsqueeze = helper.make_node("Unsqueeze", ["r"], ["u"], axes=[0])
        squeeze = helper.make_node("Squeeze", ["t"], ["sq"], axes=[squeeze_axis])
        axes = []
    nodes = [helper.make_node("MatMul", ["x", "W"], ["qkv"]),
             helper.make_node("Reshape", ["qkv", "shape"], ["r"]),
             unsqueeze,
             helper.make_node("Transpose", ["u"], ["t"], perm=[3, 1, 2, 0, 4]),
             squeeze]
    nodes += [helper.make_node("Gather", ["sq", f"i{k}"], [o], axis=gather_axis)
              for k, o in enumerate(outs)]
    outputs = [vi(o, [5, "batch", E] if gather_axis == 0 else [3, "batch", E]) for o in outs]
    if concat:  # the picks feed one node instead of being graph outputs themselves
        nodes.append(helper.make_node("Concat", outs, ["all"], axis=2))
        outputs = [vi("all", [5, "batch", E * len(outs)])]
    if extra_reader:
        nodes.append(helper.make_node("Relu", ["t"], ["side"]))
        outputs.append(vi("side", [3, 5, "batch", 1, E]))
    inits = [init("W", rand(E, 3 * E)), init("shape", np.array([0, 0, 3, E], np.int64)),
             *axes, *(init(f"i{k}", np.array(p, np.int64)) for k, p in enumerate(picks))]
    return make_model(nodes, [vi("x", [5, "batch", E])], outputs, inits, opset=opset)


def test_torch_mha_projection_becomes_one_split():
    model = _torch_mha_split()
    graph, changed = _run(model)
    assert changed and op_types(graph) == ["MatMul", "Split"]
    (split,) = [n for n in graph.nodes if n.op_type == "Split"]
    assert list(split.output) == ["p0", "p1", "p2"]
    assert not {"shape", "ax0", "ax3", "i0", "i1", "i2"} & set(graph.weights)
    assert_equivalent(model, graph, batch=3)
    assert SplitPackedBlocks().run(graph) is False


def test_opset11_attributes_and_repeated_or_negative_picks():
    model = _torch_mha_split(picks=(2, -3, 0, 1), opset=11, concat=True)
    graph, changed = _run(model)
    assert changed and op_types(graph) == ["MatMul", "Split", "Concat"]
    (split,) = [n for n in graph.nodes if n.op_type == "Split"]
    assert [a.ints for a in split.attribute if a.name == "split"] == [[E, E, E]]
    (concat,) = [n for n in graph.nodes if n.op_type == "Concat"]
    assert list(concat.input) == ["p0", "p1", "p1", "p3"]  # pick -3 is block 0, named p1
    assert_equivalent(model, graph, batch=2)


def test_repeated_pick_into_a_graph_output_is_left_alone():
    graph, changed = _run(_torch_mha_split(picks=(0, 0, 1, 2)))
    assert not changed


def test_swin_style_block_axes_are_reshaped_and_transposed():
    """qkv.reshape(B, N, 3, H, D).permute(2, 0, 3, 1, 4) -> [i]: each block is x's slice, split
    into (H, D) and moved to [B, H, N, D]."""
    nodes = [helper.make_node("MatMul", ["x", "W"], ["qkv"]),
             helper.make_node("Reshape", ["qkv", "shape"], ["r"]),
             helper.make_node("Transpose", ["r"], ["t"], perm=[2, 0, 3, 1, 4])]
    nodes += [helper.make_node("Gather", ["t", f"i{k}"], [f"p{k}"], axis=0) for k in range(3)]
    model = make_model(
        nodes, [vi("x", ["batch", 6, E])], [vi(f"p{k}", ["batch", H, 6, E // H]) for k in range(3)],
        [init("W", rand(E, 3 * E)), init("shape", np.array([0, 6, 3, H, E // H], np.int64)),
         *(init(f"i{k}", np.array(k, np.int64)) for k in range(3))])
    graph, changed = _run(model)
    assert changed
    assert op_types(graph) == ["MatMul", "Split"] + ["Reshape", "Transpose"] * 3
    assert_equivalent(model, graph, batch=3)


def test_untouched_where_the_gathers_do_not_pick_blocks():
    for model in (_torch_mha_split(gather_axis=1),  # picks sequence positions, not blocks
                  _torch_mha_split(extra_reader=True),  # the transposed tensor is read elsewhere
                  _torch_mha_split(squeeze_axis=2)):  # squeezes the batch axis, not the unit axis
        graph, changed = _run(model)
        assert not changed and "Split" not in op_types(graph)


def test_untouched_when_the_reshape_splits_a_leading_axis():
    nodes = [helper.make_node("Reshape", ["x", "shape"], ["r"]),
             helper.make_node("Gather", ["r", "i"], ["p"], axis=1)]
    model = make_model(nodes, [vi("x", [6, 4, E])], [vi("p", [3, 4, E])],
                       [init("shape", np.array([3, 2, 4, E], np.int64)),
                        init("i", np.array(0, np.int64))])
    graph, changed = _run(model)
    assert not changed and op_types(graph) == ["Reshape", "Gather"]


def test_runs_by_default():
    assert any(isinstance(p, SplitPackedBlocks) for p in DEFAULT_PASSES)
    assert isinstance(_torch_mha_split(), onnx.ModelProto)


def _timm_unbind(picker: str, sizes=(1, 1, 1), slice_step=1, squeeze=True):
    """timm's attention: qkv.reshape(B, N, 3, H, D).permute(2, 0, 3, 1, 4).unbind(0), exported
    as Split (legacy) or one Slice per block (dynamo), each block then squeezed."""
    nodes = [helper.make_node("MatMul", ["x", "W"], ["qkv"]),
             helper.make_node("Reshape", ["qkv", "shape"], ["r"]),
             helper.make_node("Transpose", ["r"], ["t"], perm=[2, 0, 3, 1, 4])]
    inits = [init("W", rand(E, 3 * E)), init("shape", np.array([0, 6, 3, H, E // H], np.int64)),
             init("ax0", np.array([0], np.int64)), init("step", np.array([slice_step]))]
    blocks = [f"b{k}" for k in range(len(sizes))] if picker == "Split" else \
        [f"b{k}" for k in range(3)]
    if picker == "Split":
        nodes.append(helper.make_node("Split", ["t", "sizes"], blocks, axis=0))
        inits.append(init("sizes", np.array(sizes, np.int64)))
    else:
        for k in range(3):
            inits += [init(f"s{k}", np.array([k], np.int64)),
                      init(f"e{k}", np.array([k + 1], np.int64))]
            nodes.append(helper.make_node("Slice", ["t", f"s{k}", f"e{k}", "ax0", "step"],
                                          [f"b{k}"]))
    out_shape = ["batch", H, 6, E // H]
    if squeeze:
        nodes += [helper.make_node("Squeeze", [b, "ax0"], [f"p{k}"]) for k, b in enumerate(blocks)]
        outputs = [vi(f"p{k}", out_shape) for k in range(len(blocks))]
    else:
        nodes += [helper.make_node("Relu", [b], [f"p{k}"]) for k, b in enumerate(blocks)]
        outputs = [vi(f"p{k}", [1, *out_shape]) for k in range(len(blocks))]
    return make_model(nodes, [vi("x", ["batch", 6, E])], outputs, inits)


def test_timm_unbind_by_split_or_slices_becomes_one_split():
    for picker in ("Split", "Slice"):
        model = _timm_unbind(picker)
        graph, changed = _run(model)
        assert changed, picker
        assert op_types(graph) == ["MatMul", "Split"] + ["Reshape", "Transpose"] * 3
        assert_equivalent(model, graph, batch=3)


def test_unbind_forms_that_are_not_single_blocks_are_left_alone():
    for model in (_split_two_and_one(),  # its squeezed output is block 2, not 1
                  _timm_unbind("Slice", slice_step=2),  # a strided slice (of one block)
                  _timm_unbind("Split", squeeze=False)):  # blocks kept with their axis
        graph, changed = _run(model)
        assert not changed


def _split_two_and_one():
    nodes = [helper.make_node("Reshape", ["x", "shape"], ["r"]),
             helper.make_node("Transpose", ["r"], ["t"], perm=[2, 0, 1, 3]),
             helper.make_node("Split", ["t", "sizes"], ["b01", "b2"], axis=0),
             helper.make_node("Squeeze", ["b2", "ax0"], ["p"])]
    return make_model(nodes, [vi("x", ["batch", 6, 3 * E])], [vi("p", ["batch", 6, E])],
                      [init("shape", np.array([0, 6, 3, E], np.int64)),
                       init("sizes", np.array([2, 1], np.int64)),
                       init("ax0", np.array([0], np.int64))])
