"""The torchvision detector wrapper, on a randomly initialised Faster R-CNN (plumbing only: no
weights can be downloaded here, so what its boxes mean is not tested, only that they are used right)."""
import numpy as np
import pytest
import torch
from PIL import Image

from mcm_core.backbones import BackboneError
from mcm_core.detectors import TorchvisionDetector

ARCH = "fasterrcnn_mobilenet_v3_large_320_fpn"


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    import torchvision

    torch.manual_seed(0)
    model = torchvision.models.detection.fasterrcnn_mobilenet_v3_large_320_fpn(
        weights=None, weights_backbone=None, num_classes=3)
    path = tmp_path_factory.mktemp("det") / "random.pth"
    torch.save({"model": model.state_dict()}, path)
    return str(path)


@pytest.fixture(scope="module")
def detector(weights):
    return TorchvisionDetector(ARCH, weights, score_threshold=0.0, max_detections=20)


def test_detections_are_fraction_boxes_with_their_box_head_features(detector):
    image = Image.fromarray((np.random.default_rng(0).random((60, 120, 3)) * 255).astype(np.uint8))
    boxes, conf, feats = detector.detect(image)
    assert 0 < len(boxes) <= 20 and conf.shape == (len(boxes),) and feats.shape == (len(boxes), 1024)
    assert ((boxes >= 0) & (boxes <= 1)).all() and (boxes[:, 2] >= boxes[:, 0]).all()
    assert ((conf >= 0) & (conf <= 1)).all()
    # the features of given boxes are the same pass's: the RC layer sees the same rows for labeled boxes
    assert np.allclose(detector.box_features(image, boxes[[2, 0, 1]]), feats[[2, 0, 1]], atol=1e-4)
    assert detector.box_features(image, [[0.0, 0.0, 0.5, 1.0]]).shape == (1, 1024)
    assert detector.box_features(image, np.zeros((0, 4))).shape == (0, 1024)
    assert detector.num_classes == 3 and detector.cache_kind.startswith("detector-" + ARCH)


def test_bad_architecture_and_weights_are_named(weights, tmp_path):
    with pytest.raises(BackboneError, match="unknown detector 'retinanet_resnet50_fpn'"):
        TorchvisionDetector("retinanet_resnet50_fpn", weights)
    with pytest.raises(BackboneError, match="MCM_DETECTOR_WEIGHTS.*does not exist"):
        TorchvisionDetector(ARCH, str(tmp_path / "missing.pth"))
    wrong = tmp_path / "wrong.pth"
    torch.save({"roi_heads.box_predictor.cls_score.weight": torch.zeros(2, 1024)}, wrong)
    with pytest.raises(BackboneError, match="do not match"):
        TorchvisionDetector(ARCH, str(wrong))


def test_the_cost_benchmark_loads_through_the_weights_file_and_keeps_the_detection_cap(capsys):
    """benchmarks/detector_cost.py (a script, not a test of speed): it runs, loads the detector from
    a state_dict file and, with its score threshold 0, times images that keep all 100 detections."""
    import json

    from benchmarks.detector_cost import main

    assert main(["--archs", "fasterrcnn_mobilenet_v3_large_320_fpn", "--images", "1", "--threads", "1"]) == 0
    row = json.loads(capsys.readouterr().out.splitlines()[0])
    assert row["arch"] == "fasterrcnn_mobilenet_v3_large_320_fpn" and row["images"] == 1
    assert row["detections_per_image"] == 100 and row["feature_dim"] == 1024
