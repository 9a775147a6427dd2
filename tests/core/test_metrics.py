import numpy as np
import pytest
from sklearn.metrics import average_precision_score, precision_recall_curve

from mcm_core.metrics import (auc_pr, average_f_score, pr_curve, precision_at_k, relative_improvement,
                              skewness_ratios, tail_classes)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_auc_pr_matches_sklearn(seed):
    rng = np.random.default_rng(seed)
    y = rng.random(300) < 0.2
    s = np.round(rng.random(300) + y * 0.3, 1)  # rounding creates many ties
    assert auc_pr(y, s) == pytest.approx(average_precision_score(y, s), abs=1e-12)


def test_pr_curve_matches_sklearn_points():
    rng = np.random.default_rng(5)
    y = rng.random(100) < 0.3
    s = np.round(rng.random(100), 1)
    p, r, t = pr_curve(y, s)
    sp, sr, st = precision_recall_curve(y, s)
    # sklearn lists low -> high threshold and appends (1, 0); compare as sets of points
    assert sorted(zip(np.round(p, 12), np.round(r, 12))) == sorted(zip(np.round(sp[:-1], 12), np.round(sr[:-1], 12)))


def test_precision_at_k_hand():
    y = np.array([1, 0, 1, 0, 0])
    s = np.array([0.9, 0.8, 0.7, 0.1, 0.0])
    assert precision_at_k(y, s, 1) == 1.0
    assert precision_at_k(y, s, 2) == 0.5
    assert precision_at_k(y, s, 3) == pytest.approx(2 / 3)
    assert precision_at_k(y, s, 50) == pytest.approx(2 / 5)  # k larger than the list


def test_average_f_hand():
    y = np.array([1, 0, 1])
    s = np.array([3.0, 2.0, 1.0])
    # points: (P=1, R=.5), (P=.5, R=.5), (P=2/3, R=1)
    f = [2 * 1 * .5 / 1.5, 2 * .5 * .5 / 1.0, 2 * (2 / 3) * 1 / (5 / 3)]
    assert average_f_score(y, s) == pytest.approx(np.mean(f))
    assert auc_pr(y, s) == pytest.approx(0.5 * 1 + 0.5 * (2 / 3))


def test_relative_improvement():
    assert relative_improvement(0.6, 0.4) == pytest.approx(50.0)
    assert relative_improvement(0.3, 0.4) == pytest.approx(-25.0)


def test_skewness_and_tail_classes():
    labels = np.array([0] * 1 + [1] * 10 + [2] * 50 + [3] * 59)  
    r = skewness_ratios(labels, 5)  # class 4 unseen; mean over 5 classes = 24
    assert r == pytest.approx(np.array([1, 10, 50, 59, 0]) / 24)
    assert tail_classes(labels, 5) == [0, 4]  # 10/24 = 0.42 is above the default 0.30
    assert tail_classes(labels, 5, threshold=0.5) == [0, 1, 4]
    assert tail_classes(labels, 5, threshold=0.05) == [0, 4]


def test_metric_input_errors():
    with pytest.raises(ValueError):
        auc_pr([0, 0, 0], [1, 2, 3])  # no positives
    with pytest.raises(ValueError):
        auc_pr([0, 1], [1.0])
    with pytest.raises(ValueError):
        auc_pr([0, 1], [np.nan, 1.0])
