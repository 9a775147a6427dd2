import numpy as np
import pytest

from mcm_core.novelty import NoveltyScorer, calibrated_novelty, knn_cosine_distance, l2_normalise, stratified_reference
from mcm_core.scoring import tail_or_novel


def test_knn_cosine_distance_hand():
    ref = l2_normalise(np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]))
    x = np.array([[2.0, 0.0], [0.0, -3.0]])
    # x0: distances 0, 1, 1 - 1/sqrt2 -> 2-NN mean (0 + 0.2929) / 2; x1: 1, 2, 1 + 1/sqrt2 -> k=1: 1
    assert knn_cosine_distance(ref, x, 2)[0] == pytest.approx((1 - 1 / np.sqrt(2)) / 2)
    assert knn_cosine_distance(ref, x, 1)[1] == pytest.approx(1.0)
    assert knn_cosine_distance(ref, x, 10)[1] == pytest.approx((1 + 2 + 1 + 1 / np.sqrt(2)) / 3)  # k capped
    # leave-one-out skips the self-match: row 0's nearest other row is [1,1] at 1 - 1/sqrt2
    assert knn_cosine_distance(ref, ref, 1, leave_one_out=True)[0] == pytest.approx(1 - 1 / np.sqrt(2))
    assert knn_cosine_distance(ref, x, 1, chunk=1) == pytest.approx(knn_cosine_distance(ref, x, 1))
    with pytest.raises(ValueError):
        knn_cosine_distance(ref, x, 0)


def test_calibrated_novelty_hand():
    """N(d) = (1 - e) mean_i Phi((d - r_i) / h) + e d / (d + s), e = 1/(n+1), s = std(r),
    h = max(s/4, 0.05): with these references s/4 = 0.2041 / 4 would be 0.051, so h = 0.051."""
    from math import erf, sqrt
    ref = np.array([0.3, 0.1, 0.2]) * 2.5  # std 0.204 -> s / 4 = 0.051, above the 0.05 floor
    sd = np.std(ref)
    h, e = sd / 4, 0.25

    def by_hand(d):
        phi = np.mean([0.5 * (1 + erf((d - r) / (h * sqrt(2)))) for r in ref])
        return (1 - e) * phi + e * d / (d + sd)

    d = np.array([0.0, 0.25, 0.5, 0.6, 1.8])
    assert calibrated_novelty(ref, d) == pytest.approx([by_hand(v) for v in d], abs=1e-4)
    # at the middle reference, one below (Phi ~ 1), itself (1/2), one above (Phi ~ 0)
    assert calibrated_novelty(ref, np.array([0.5]))[0] == pytest.approx(0.375 + 0.25 * 0.5 / (0.5 + sd), abs=1e-4)
    assert calibrated_novelty(ref, np.array([1.8]))[0] == pytest.approx(0.75 + 0.25 * 1.8 / (1.8 + sd), abs=1e-9)
    # tightly clustered references: the bandwidth floor (0.05) replaces s / 4
    tight = np.array([0.001, 0.002, 0.003])
    assert calibrated_novelty(tight, np.array([0.002]))[0] == pytest.approx(
        0.75 * np.mean([0.5 * (1 + erf((0.002 - r) / (0.05 * sqrt(2)))) for r in tight])
        + 0.25 * 0.002 / (0.002 + np.std(tight)), abs=1e-4)
    many = calibrated_novelty(ref, np.linspace(0, 2, 400))  # cosine distances lie in [0, 2]
    assert (np.diff(many) > 0).all() and many.max() < 1.0  # strictly increasing, never saturates
    # bounded slope: a 1e-7 change of the distance moves N by far less than 1e-6
    assert np.abs(calibrated_novelty(ref, d + 1e-7) - calibrated_novelty(ref, d)).max() < 1e-6


def test_tail_or_novel_hand():
    t = np.array([0.0, 0.5, 1.0, 0.2])
    n = np.array([0.0, 0.5, 0.3, 1.0])
    assert tail_or_novel(t, n) == pytest.approx([0.0, 0.75, 1.0, 1.0])
    with pytest.raises(ValueError):
        tail_or_novel(t, n[:2])


def test_stratified_reference_is_capped_balanced_and_deterministic():
    labels = np.array([0] * 100 + [1] * 100 + [2] * 3 + [3] * 50)
    rows = labels != 3
    idx = stratified_reference(labels, rows, 50, seed=0)
    assert len(idx) == 50 and rows[idx].all()
    counts = np.bincount(labels[idx], minlength=3)
    assert counts[2] == 3 and abs(counts[0] - counts[1]) <= 1  # the small class gives its share away
    assert np.array_equal(idx, stratified_reference(labels, rows, 50, seed=0))
    assert not np.array_equal(idx, stratified_reference(labels, rows, 50, seed=1))
    assert len(stratified_reference(labels, rows, 1000, seed=0)) == rows.sum()


def test_novelty_scorer_ranks_far_points_high():
    rng = np.random.default_rng(0)
    head = rng.normal(size=(200, 6)) + np.array([5, 0, 0, 0, 0, 0])
    scorer = NoveltyScorer(k=5, max_reference=100).fit(head.astype(np.float32), np.zeros(200, int),
                                                       np.ones(200, bool))
    assert len(scorer.reference) == 100
    near = scorer.score((rng.normal(size=(50, 6)) + [5, 0, 0, 0, 0, 0]).astype(np.float32))
    far = scorer.score((rng.normal(size=(50, 6)) + [0, 5, 0, 0, 0, 0]).astype(np.float32))
    assert far.min() > np.quantile(near, 0.9) and (0 <= near).all() and (far < 1).all()
    with pytest.raises(ValueError, match="not fitted"):
        NoveltyScorer().score(head)


def test_a_rows_score_does_not_depend_on_its_batch():
    """The backend scores a task alone (/predict, new tasks) and inside whole pools: same score, to the bit."""
    from mcm_core import MinorityMiner

    rng = np.random.default_rng(3)
    centers = rng.normal(size=(4, 64)).astype(np.float32)
    labels = np.r_[np.zeros(150), np.ones(150), np.full(150, 2), np.full(6, 3)].astype(int)
    features = centers[labels] + 0.05 * rng.normal(size=(len(labels), 64)).astype(np.float32)
    pool = rng.normal(size=(1300, 64)).astype(np.float32)
    for strategy in ("tail_novelty", "reconstruction", "paper"):
        miner = MinorityMiner(num_classes=4, seed=0, strategy=strategy, n_models=2).fit(features, labels)
        whole = miner.score_samples(pool)
        for size in (1, 2, 37, 511, 513):
            picked = rng.choice(len(pool), size=size, replace=False)
            assert np.array_equal(miner.score_samples(pool[picked]), whole[picked]), (strategy, size)
            assert np.array_equal(miner.predict_proba(pool[picked]), miner.predict_proba(pool)[picked])
    d_alone = knn_cosine_distance(l2_normalise(features), pool[:1], k=5)
    assert np.array_equal(d_alone, knn_cosine_distance(l2_normalise(features), pool, k=5)[:1])
