"""mcm_core.prefill: the plain classifier a prediction's pre-ticked class comes from, and the
cross-validated rule that pre-fills a class only where the labels show it is right."""
import numpy as np
import pytest

from mcm_core.prefill import (PrefillClassifier, class_reliability, cross_validated_proba, fit_prefill, separation,
                              stratified_folds, stratified_subsample, wilson_lower)


def separable_and_not(n=(60, 40, 40), seed=0):
    """Class 0 far from the rest; classes 1 and 2 drawn from one and the same blob."""
    rng = np.random.default_rng(seed)
    centers = np.array([[6.0, 0, 0, 0], [0, 6.0, 0, 0], [0, 6.0, 0, 0]])
    x = np.concatenate([centers[k] + rng.normal(size=(c, 4)) for k, c in enumerate(n)]).astype(np.float32)
    return x, np.repeat(np.arange(3), n)


def test_classifier_gives_probabilities_is_deterministic_and_round_trips(tmp_path):
    x, y = separable_and_not()
    clf = PrefillClassifier(4, seed=3).fit(x, y)  # class 3 has no row: probability 0
    proba = clf.predict_proba(x)
    assert proba.shape == (len(x), 4) and np.allclose(proba.sum(1), 1) and (proba[:, 3] == 0).all()
    assert (proba[y == 0].argmax(1) == 0).all()
    again = PrefillClassifier(4, seed=3).fit(x, y).predict_proba(x)
    assert np.array_equal(proba, again)
    assert np.array_equal(clf.predict_proba(x[5:6]), proba[5:6])  # a row alone = the row in a batch
    assert (clf.prefill_labels(x) == -1).all()  # no thresholds set: nothing pre-filled
    clf.thresholds_ = np.array([0.5, np.inf, np.inf, np.inf])
    clf.save(tmp_path / "prefill.npz")
    back = PrefillClassifier.load(tmp_path / "prefill.npz")
    assert np.array_equal(back.predict_proba(x), proba) and np.array_equal(back.thresholds_, clf.thresholds_)
    assert set(back.prefill_labels(x).tolist()) == {0, -1}
    (tmp_path / "bad.npz").write_bytes(b"not an npz")
    with pytest.raises(ValueError, match="cannot read pre-fill classifier"):
        PrefillClassifier.load(tmp_path / "bad.npz")
    with pytest.raises(ValueError, match="not fitted"):
        PrefillClassifier(3).predict_proba(x)


def test_a_separable_class_is_prefilled_and_classes_the_features_confuse_never_are():
    x, y = separable_and_not()
    clf, assessment = fit_prefill(x, y, 3, seed=0)
    zero, one, two = assessment.classes
    assert zero.prefill and zero.precision >= 0.9 and zero.support >= 5 and zero.threshold is not None
    assert not one.prefill and not two.prefill and one.threshold is None and "needs 90%" in one.reason
    new_x, new_y = separable_and_not(seed=1)
    labels = clf.prefill_labels(new_x)
    assert (labels[new_y == 0] == 0).mean() > 0.9
    assert not np.isin(labels, [1, 2]).any()  # a confused class is never pre-ticked: the task starts blank
    assert assessment.separation.accuracy > assessment.separation.majority_rate
    assert assessment.folds == 5 and assessment.n_rows == len(y)


def test_held_out_precision_needs_support_a_lower_bound_and_must_beat_chance():
    # hand-made held-out probabilities: every prediction below is right
    def verdict(labels, predicted, k):
        proba = np.full((len(labels), 2), 0.1)
        proba[np.arange(len(labels)), predicted] = 0.9
        return class_reliability(np.asarray(labels), proba)[k]

    half = [0] * 10 + [1] * 10
    four = verdict(half, [0] * 4 + [1] * 16, 0)
    assert not four.prefill and "only 4 held-out" in four.reason  # 4 of 4 right: too few
    five = verdict(half, half[:5] + [1] * 15, 0)
    assert not five.prefill and "not beyond chance" in five.reason  # 5 of 5 at a share of 50 %: P = 3 %
    rare = [0] * 5 + [1] * 95
    few = verdict(rare, rare, 0)  # 5 of 5 for a class of 5 %: beyond chance, but true precision may be 60 %
    assert not few.prefill and "lower bound 65% is below 80%" in few.reason
    many = [0] * 12 + [1] * 88
    assert verdict(many, many, 0).prefill  # 12 of 12: lower bound 82 %
    ten = [0] * 10 + [1] * 90
    assert not verdict(ten, ten, 0).prefill  # 10 of 10: lower bound 78.7 %
    assert not class_reliability(np.asarray(many), np.eye(2)[many], eligible=[1])[0].prefill  # not eligible


def test_wilson_lower_bound_by_hand():
    assert wilson_lower(0, 0) == 0.0
    assert wilson_lower(5, 5) == pytest.approx(0.6488, abs=1e-4)
    assert wilson_lower(12, 12) == pytest.approx(0.8160, abs=1e-4)
    assert wilson_lower(45, 50) == pytest.approx(0.8085, abs=1e-4)
    assert wilson_lower(9, 10) < wilson_lower(90, 100) < 0.9


def test_a_weak_model_prefills_nothing_even_where_one_class_looks_precise():
    """Features that do not separate the classes overall: no class is pre-filled, whatever a few of
    its held-out predictions say (newcomer images: 29 pool tasks pre-ticked at 41 % accuracy)."""
    rng = np.random.default_rng(0)
    y = np.repeat([0, 1, 2], 40)
    x = rng.normal(size=(120, 8)).astype(np.float32)
    x[:20, 0] += 12.0  # half of class 0 is unmistakable; everything else is noise
    proba = cross_validated_proba(x, y, 3, folds=5, seed=0)
    assert class_reliability(y, proba)[0].prefill and not separation(y, proba).separated
    clf, assessment = fit_prefill(x, y, 3, seed=0)
    assert not any(c.prefill for c in assessment.classes) and (clf.prefill_labels(x) == -1).all()
    assert "do not separate the classes" in assessment.classes[0].reason


def test_the_threshold_is_the_lowest_confidence_whose_predictions_are_precise():
    y = np.array([0] * 30 + [1] * 30)
    confidence = np.concatenate([np.full(15, 0.75), np.full(15, 0.85), np.full(30, 0.75)])
    predicted = np.array([1] * 15 + [0] * 15 + [0] * 8 + [1] * 22)  # class 0: right only above 0.75
    proba = np.zeros((60, 2))
    proba[np.arange(60), predicted] = confidence
    proba[np.arange(60), 1 - predicted] = 1 - confidence
    zero = class_reliability(y, proba)[0]
    assert zero.prefill and zero.threshold == 0.8 and zero.support == 15 and zero.precision == 1.0


def test_features_learned_from_the_labels_are_cross_validated_with_features_learned_without_the_fold():
    """A featurizer that memorised its training rows makes every row it saw look separable; the
    held-out rows of a featurizer that did not see them show the truth (chance)."""
    rng = np.random.default_rng(0)
    y = np.repeat([0, 1], 40)
    noise = rng.normal(size=(80, 6)).astype(np.float32)

    def memorised(rows):  # what a CNN that memorised `rows` would give: their label in the features
        x = noise.copy()
        x[rows, 0] += 8.0 * y[rows]
        return x

    seen_all = memorised(np.arange(80))
    _, leaky = fit_prefill(seen_all, y, 2, seed=0)
    assert all(c.prefill for c in leaky.classes)  # what the leak looks like

    def fold_features(train, held_out):
        x = memorised(train)
        return x[train], x[held_out]

    clf, honest = fit_prefill(seen_all, y, 2, seed=0, fold_features=fold_features)
    assert honest.folds == 3 and not any(c.prefill for c in honest.classes)
    assert not honest.separation.separated and (clf.thresholds_ == np.inf).all()


def test_separation_compares_held_out_accuracy_with_the_majority_rate():
    x, y = separable_and_not((60, 60, 0))
    proba = cross_validated_proba(x[:120], y[:120], 3, folds=5, seed=0)
    assert separation(y[:120], proba).separated
    rng = np.random.default_rng(1)
    noise_y = rng.integers(0, 4, 100)
    weak = separation(noise_y, cross_validated_proba(rng.normal(size=(100, 20)), noise_y, 4, seed=0))
    assert not weak.separated and weak.majority_rate == np.bincount(noise_y).max() / 100


def test_too_few_labels_prefill_nothing():
    x, y = separable_and_not((3, 3, 3))
    clf, assessment = fit_prefill(x, y, 3)
    assert not any(c.prefill for c in assessment.classes) and assessment.separation.accuracy is None
    assert "too few" in assessment.classes[0].reason and (clf.prefill_labels(x) == -1).all()


def test_groups_share_a_fold_and_subsampling_keeps_rare_classes_whole():
    y = np.array([0, 0, 0, 1, 1, 1, 0, 0, 0, 1, 1, 1] * 5)
    groups = np.repeat(np.arange(20), 3)
    folds = stratified_folds(y, 4, seed=0, groups=groups)
    assert all(len(set(folds[groups == g])) == 1 for g in range(20)) and len(set(folds)) == 4
    labels = np.array([0] * 5000 + [1] * 30)
    kept = stratified_subsample(labels, 1000, seed=0)
    assert (labels[kept] == 1).sum() == 30 and 900 <= len(kept) <= 1100
