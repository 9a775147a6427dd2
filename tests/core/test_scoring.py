import numpy as np
import pytest

from mcm_core.scoring import (aggregate_detection_scores, normalise_weights, reconstruction_score, softmax,
                              weighted_reconstruction_score, weighted_score_bound)


def test_score_on_known_pair():
    z = np.array([[0.0, 0.0]])                 # softmax -> (1/2, 1/2)
    z_hat = np.array([[np.log(3.0), 0.0]])     # softmax -> (3/4, 1/4)
    # S = (1/2 - 3/4)^2 + (1/2 - 1/4)^2 = 1/16 + 1/16
    assert reconstruction_score(softmax(z), softmax(z_hat)) == pytest.approx([0.125])
    assert reconstruction_score(np.array([[1.0, 0, 0]]), np.array([[0, 0, 1.0]])) == pytest.approx([2.0])


def test_softmax_is_shift_invariant_and_normalised():
    z = np.array([[1000.0, 1001.0, 999.0]])
    p = softmax(z)
    assert p.sum() == pytest.approx(1.0)
    assert p == pytest.approx(softmax(z - 1000.0))


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


def test_aggregation_input_errors():
    with pytest.raises(ValueError):
        aggregate_detection_scores([np.array([1.0])], [np.array([1.0, 2.0])])
    with pytest.raises(ValueError):
        aggregate_detection_scores([np.array([1.0])], [np.array([1.0])], k=0)


def test_weighted_score_hand_computation():
    p = np.array([[0.5, 0.3, 0.2]])
    q = np.array([[0.2, 0.3, 0.5]])
    w = normalise_weights([2.0, 1.0, 1.0], 3)  # (0.5, 0.25, 0.25)
    # 0.5 * 0.3^2 + 0.25 * 0 + 0.25 * 0.3^2 = 0.045 + 0.0225
    assert weighted_reconstruction_score(p, q, w) == pytest.approx([0.0675])
    # uniform weights 1/C give S / C
    assert weighted_reconstruction_score(p, q, np.full(3, 1 / 3)) == pytest.approx(reconstruction_score(p, q) / 3)
    with pytest.raises(ValueError, match="weights"):
        weighted_reconstruction_score(p, q, w[:2])
    with pytest.raises(ValueError, match="shape"):
        weighted_reconstruction_score(p, q[:, :2], w)
    for bad in ([1.0, -1.0, 1.0], [0.0, 0.0, 0.0], [1.0, np.nan, 1.0], [1.0, 1.0]):
        with pytest.raises(ValueError, match="class weights"):
            normalise_weights(bad, 3)


def test_weighted_score_bound_holds_and_is_attained():
    rng = np.random.default_rng(0)
    for _ in range(20):
        C = int(rng.integers(2, 12))
        w = normalise_weights(rng.random(C) ** 3, C)
        bound = weighted_score_bound(w)
        assert bound <= 1.0 + 1e-12
        # random and sharply peaked probability vectors never exceed it
        p = softmax(rng.normal(scale=rng.choice([0.5, 5, 50]), size=(500, C)))
        q = softmax(rng.normal(scale=rng.choice([0.5, 5, 50]), size=(500, C)))
        assert (weighted_reconstruction_score(p, q, w) <= bound + 1e-12).all()
        # ... and it is exact: one-hot vectors on the two largest weights reach it
        i, j = np.argsort(w)[-2:]
        assert weighted_reconstruction_score(np.eye(C)[i], np.eye(C)[j], w) == pytest.approx(bound)
