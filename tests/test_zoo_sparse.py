"""The sparsity pass on torchvision's ResNet-50: every block's last 1x1 conv and the next
block's first one become one SparseConvChain (15 pairs), and the model still computes what
the masked dense model computes, on the fused path (56x56 maps: many chunks) and at batch 2.
Slow (exports ResNet-50 unless the zoo cache holds it), hence the ``zoo`` marker."""

import numpy as np
import onnx
import pytest

from models import zoo

ort = pytest.importorskip("onnxruntime")

pytestmark = pytest.mark.zoo


@pytest.mark.parametrize("pattern", ["4x4", "unstructured"])
def test_resnet50_blocks_are_chained_and_match(pattern):
    import graphprune
    from graphprune import kernels
    from graphprune.api import canonicalize, load_graph
    from graphprune.sparsity import SparsifyConfig, masked_reference
    from graphprune.verify import random_inputs

    try:
        kernels.library_path()
    except kernels.KernelsUnavailable as exc:
        pytest.skip(f"kernel library unavailable here: {exc}")
    path = zoo.default_cache_dir() / "resnet50.legacy.onnx"
    if not path.exists():
        pytest.importorskip("torchvision")
    path = zoo.torchvision_model("resnet50", "legacy")
    config = SparsifyConfig(sparsity=0.9, pattern=pattern, measure=False)
    result = graphprune.prune(str(path), ratio=0.0, sparse=config, verify=False)
    chains = [n for n in result.model.graph.node if n.op_type == "SparseConvChain"]
    assert len(result.report.sparsity.chained) == len(chains) == 15
    assert all(len(n.input) > 5 and n.input[5] for n in chains), "conv3 keeps its shortcut"
    onnx.checker.check_model(result.model)
    _, reference = load_graph(onnx.load(str(path)))
    canonicalize(reference)
    masked_reference(reference, result.report.sparsity, config)
    feeds = random_inputs(result.model, seed=3, batch=2)
    got = kernels.session(result.model, threads=2).run(None, feeds)[0]
    want = ort.InferenceSession(reference.to_model().SerializeToString(),
                                providers=["CPUExecutionProvider"]).run(None, feeds)[0]
    assert np.abs(got - want).max() <= 1e-4 * np.abs(want).max()


@pytest.mark.parametrize("pattern", ["4x4", "unstructured"])
@pytest.mark.parametrize("name", zoo.EXTRA_TORCHVISION_MODELS)
def test_more_architectures_match_the_masked_model(name, pattern):
    """Depthwise and squeeze-excite blocks, 1x7 / 7x1 kernels with asymmetric pads, strided and
    fused MBConvs: every sparse conv path against the masked dense model at batch 1 and 3.
    torchvision's initialisation leaves some outputs tiny (1e-15) but not constant, so the
    tolerance is relative to each output's own scale."""
    import graphprune
    from graphprune import kernels
    from graphprune.api import canonicalize, load_graph
    from graphprune.sparsity import SparsifyConfig, masked_reference
    from graphprune.verify import random_inputs

    try:
        kernels.library_path()
    except kernels.KernelsUnavailable as exc:
        pytest.skip(f"kernel library unavailable here: {exc}")
    if not (zoo.default_cache_dir() / f"{name}.legacy.onnx").exists():
        pytest.importorskip("torchvision")
    path = zoo.torchvision_model(name, "legacy")
    config = SparsifyConfig(sparsity=0.9, pattern=pattern, measure=False)
    result = graphprune.prune(str(path), ratio=0.0, sparse=config, verify=False)
    assert result.report.sparsity.rewritten, result.report.summary()
    onnx.checker.check_model(result.model)
    _, reference = load_graph(onnx.load(str(path)))
    canonicalize(reference)
    masked_reference(reference, result.report.sparsity, config)
    want_session = ort.InferenceSession(reference.to_model().SerializeToString(),
                                        providers=["CPUExecutionProvider"])
    for batch in (1, 3):
        feeds = random_inputs(result.model, seed=3, batch=batch)
        got = kernels.session(result.model, threads=2).run(None, feeds)[0]
        want = want_session.run(None, feeds)[0]
        scale = float(np.abs(want).max())
        assert scale > 0 and float(want.std()) > 0, "degenerate output: the check would be empty"
        assert float(np.abs(got - want).max()) <= 1e-4 * scale
