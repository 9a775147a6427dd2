import numpy as np
import pytest

from mcm_core.scoring import (aggregate_detection_scores, detection_scores_from_logits,
                              logit_reconstruction_score, rank_descending, reconstruction_score, softmax)


def test_score_on_known_pair():
    z = np.array([[0.0, 0.0]])                 # softmax -> (1/2, 1/2)
    z_hat = np.array([[np.log(3.0), 0.0]])     # softmax -> (3/4, 1/4)
    # S = (1/2 - 3/4)^2 + (1/2 - 1/4)^2 = 1/16 + 1/16
    assert logit_reconstruction_score(z, z_hat) == pytest.approx([0.125])
    assert reconstruction_score(np.array([[1.0, 0, 0]]), np.array([[0, 0, 1.0]])) == pytest.approx([2.0])


def test_softmax_is_shift_invariant_and_normalised():
    z = np.array([[1000.0, 1001.0, 999.0]])
    p = softmax(z)
    assert p.sum() == pytest.approx(1.0)
    assert p == pytest.approx(softmax(z - 1000.0))


def test_rank_descending_is_stable():
    s = np.array([0.2, 0.9, 0.2, 0.9, 0.1])
    assert rank_descending(s).tolist() == [1, 3, 0, 2, 4]


def test_topk_aggregation():
    scores = [np.array([0.1, 0.5, 0.9, 0.3]), np.array([0.4]), np.array([])]
    confs = [np.array([0.9, 0.2, 0.8, 0.7]), np.array([0.1]), np.array([])]
    out = aggregate_detection_scores(scores, confs, k=3, empty_score=-1.0)
    # image 0: top-3 confident are dets 0 (0.9), 2 (0.8), 3 (0.7) -> mean(0.1, 0.9, 0.3)
    assert out[0] == pytest.approx((0.1 + 0.9 + 0.3) / 3)
    assert out[1] == pytest.approx(0.4)  # fewer detections than K: mean of what there is
    assert out[2] == -1.0
    assert aggregate_detection_scores([np.array([])], [np.array([])])[0] == 0.0  # documented default


def test_topk_ties_keep_detection_order():
    out = aggregate_detection_scores([np.array([1.0, 0.0, 5.0])], [np.array([0.5, 0.5, 0.5])], k=2)
    assert out[0] == pytest.approx(0.5)


def test_detection_scores_from_logits_uses_scorer():
    logits = [np.zeros((2, 3)), np.zeros((0, 3))]
    confs = [np.array([0.1, 0.9]), np.array([])]
    out = detection_scores_from_logits(logits, confs, lambda z: np.arange(len(z), dtype=float), k=1)
    assert out.tolist() == [1.0, 0.0]


def test_aggregation_input_errors():
    with pytest.raises(ValueError):
        aggregate_detection_scores([np.array([1.0])], [np.array([1.0, 2.0])])
    with pytest.raises(ValueError):
        aggregate_detection_scores([np.array([1.0])], [np.array([1.0])], k=0)
