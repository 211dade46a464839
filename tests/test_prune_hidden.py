"""--prune-hidden: a transformer's hidden size prunes through its norms, approximately."""
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from graphprune import prune
from graphprune.verify import run
from models.attention import ATTENTION_BLOCKS


def _with_embedding_and_classifier(block: onnx.ModelProto) -> onnx.ModelProto:
    """token ids -> embedding table -> block -> classifier: the hidden size is internal."""
    rng = np.random.default_rng(0)
    g = block.graph
    hidden = g.input[0].type.tensor_type.shape.dim[2].dim_value
    seq = g.input[0].type.tensor_type.shape.dim[1].dim_value
    g.initializer.extend([
        numpy_helper.from_array(rng.standard_normal((50, hidden)).astype(np.float32), "emb"),
        numpy_helper.from_array((rng.standard_normal((hidden, 10)) / np.sqrt(hidden))
                                .astype(np.float32), "cls_w")])
    g.node.insert(0, helper.make_node("Gather", ["emb", "ids"], [g.input[0].name], name="embed"))
    g.node.append(helper.make_node("MatMul", [g.output[0].name, "cls_w"], ["logits"],
                                   name="classifier"))
    del g.input[:]
    g.input.append(helper.make_tensor_value_info("ids", TensorProto.INT64, [1, seq]))
    del g.output[:]
    g.output.append(helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, seq, 10]))
    onnx.checker.check_model(block, full_check=True)
    return block


@pytest.mark.parametrize("name", ["mha_postnorm", "mha_prenorm", "gqa"])
def test_hidden_size_prunes_only_when_asked(name):
    model = _with_embedding_and_classifier(ATTENTION_BLOCKS[name](0))
    default = prune(model, ratio=0.25, head_ratio=0.0, round_to=1)
    hidden = prune(model, ratio=0.25, head_ratio=0.0, round_to=1, prune_hidden=True)
    assert not default.report.approximate
    assert hidden.report.approximate, "the hidden-size group must be pruned and flagged"
    emb = {t.name: t for t in hidden.model.graph.initializer}["emb"]
    assert emb.dims[1] < 64  # the embedding table lost hidden channels
    assert hidden.report.params_after < default.report.params_after
    onnx.checker.check_model(hidden.model, full_check=True)
    feeds = {"ids": np.arange(8, dtype=np.int64)[None] % 50}
    assert run(hidden.model, feeds)[0].shape == (1, 8, 10)
    assert "approximate" in hidden.report.summary()
