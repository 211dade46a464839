"""torchvision's Faster R-CNN (MobileNetV3-320 FPN) end to end (models/torchvision_detection.py):
its FPN channels reach the box head through the multi-level RoIAlign merge (ConstantOfShape,
Expand to run-time shapes, ScatterElements), so they prune with the box head's first layer;
the pruned detector passes the full checker and gives the mask oracle's boxes, labels and
scores on images where it detects something."""
import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from graphprune import prune
from graphprune.verify import run
from models import torchvision_detection
from oracle_testlib import masked_reference

pytestmark = pytest.mark.zoo
pytest.importorskip("torchvision")


@pytest.mark.parametrize("name", list(torchvision_detection.DETECTION_MODELS))
def test_detector_prunes_through_the_region_merge(tmp_path, name):
    path = torchvision_detection.export(name, tmp_path / f"{name}.onnx")
    result = prune(path, ratio=0.4)
    onnx.checker.check_model(result.model, full_check=True)
    report = result.report
    assert 1 - report.pruning_param_ratio >= 0.55, report.summary()
    assert not any("ScatterElements" in why for _, why in report.frozen), report.summary()
    # boxes [detections, 4] are no classifier output: no top-1 agreement over box coordinates
    assert report.fidelity.elements > 0 and report.fidelity.top1_agreement is None
    before = {t.name: t.dims for t in onnx.load(path, load_external_data=False).graph.initializer}
    after = {t.name: numpy_helper.to_array(t).shape for t in result.model.graph.initializer}
    fc6 = "roi_heads.box_head.fc6.weight"  # reads FPN channels x 7 x 7 pooled cells
    assert after[fc6][1] < before[fc6][1] and after[fc6][1] % 49 == 0

    reference = masked_reference(path, result.plan)
    for seed in (1, 2):
        feeds = torchvision_detection.feeds(name, np.random.default_rng(seed))
        wants, haves = run(reference, feeds), run(result.model, feeds)
        assert haves[0].shape[0] > 0  # detections to compare
        for key, want, have in zip(torchvision_detection.OUTPUTS, wants, haves):
            assert want.shape == have.shape, key
            scale = max(float(np.abs(want).max()), 1e-6)
            assert float(np.abs(want - have).max()) <= 1e-4 * scale, key
