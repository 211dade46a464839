"""torchvision's segmentation and video models (models/torchvision_tasks.py): the ASPP image
pooling branch resized back at run time, LR-ASPP's gating, 3-D and (2+1)-D convolutions. Each
prunes at ratio 0.4 into a model that passes the full checker, equals the mask oracle at batch
1 and 2, and loses at least 40 % of its parameters."""
import numpy as np
import onnx
import pytest

from graphprune import prune
from models import torchvision_tasks
from oracle_testlib import assert_equals_oracle

pytestmark = pytest.mark.zoo
pytest.importorskip("torchvision")


@pytest.mark.parametrize("name", list(torchvision_tasks.TASK_MODELS))
def test_task_model_prunes_to_the_mask_oracle(tmp_path, name):
    path = torchvision_tasks.export(name, tmp_path / f"{name}.onnx")
    result = prune(path, ratio=0.4)
    onnx.checker.check_model(result.model, full_check=True)
    assert 1 - result.report.pruning_param_ratio >= 0.40, result.report.summary()
    assert_equals_oracle(path, result, [torchvision_tasks.feeds(name, batch,
                                                                np.random.default_rng(batch))
                                        for batch in (1, 2)])
