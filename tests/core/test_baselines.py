import numpy as np
import pytest

from mcm_core.baselines import (BASELINES, EntropyStrategy, HALStrategy, MarginStrategy, MaxScoreStrategy,
                                RandomStrategy, TailMassStrategy, WeightedEntropyStrategy, class_weights, entropy,
                                gaussian_novelty, interleave_rankings, margin_uncertainty, max_score,
                                median_pairwise_distance, tail_mass, weighted_entropy)

P = np.array([[1.0, 0.0, 0.0], [0.5, 0.5, 0.0], [1 / 3, 1 / 3, 1 / 3], [0.6, 0.3, 0.1]])


def test_max_score_hand():
    assert max_score(P) == pytest.approx([0.0, 0.5, 2 / 3, 0.4])


def test_entropy_hand():
    assert entropy(P) == pytest.approx([0.0, np.log(2), np.log(3),
                                        -(0.6 * np.log(0.6) + 0.3 * np.log(0.3) + 0.1 * np.log(0.1))])


def test_weighted_entropy_hand():
    b = np.array([0.5, 0.25, 0.25])  # w = (2, 4, 4) / 10
    w = np.array([0.2, 0.4, 0.4])
    assert class_weights(b) == pytest.approx(w)
    expected = -(0.2 * 0.5 * np.log(0.5) + 0.4 * 0.5 * np.log(0.5))
    assert weighted_entropy(P[1:2], b)[0] == pytest.approx(expected)
    # uncertainty between rare classes counts more than between frequent ones
    assert weighted_entropy(np.array([[0, .5, .5]]), b)[0] > weighted_entropy(np.array([[.5, .5, 0]]), b)[0]


def test_margin_hand():
    assert margin_uncertainty(P) == pytest.approx([0.0, 1.0, 1.0, 0.7])


def test_tail_mass_hand():
    assert tail_mass(P, [1, 2]) == pytest.approx([0.0, 0.5, 2 / 3, 0.4])
    assert tail_mass(P, []) == pytest.approx([0, 0, 0, 0])
    with pytest.raises(ValueError):
        tail_mass(P, [3])


def test_tail_mass_and_margin_strategies(blobs):
    x, y, _ = blobs([60, 60, 60, 3], num_classes=4, dim=6, seed=1)
    tm = TailMassStrategy(4, seed=0).fit(x, y)
    assert tm.tail_ == [3]
    p = tm.predict_proba(x)
    assert tm.score_samples(x) == pytest.approx(p[:, 3])
    assert tm.score_samples(x[y == 3]).min() > np.median(tm.score_samples(x[y == 0]))
    ce = TailMassStrategy(4, seed=0, focal=False).fit(x, y)
    assert ce.score_samples(x).shape == (len(x),)
    assert MarginStrategy(4).fit(x, y).score_proba(P[:, :3]) == pytest.approx(margin_uncertainty(P))
    assert {"margin", "tail_mass"} <= set(BASELINES)


def test_gaussian_novelty_hand():
    ref = np.array([[0.0, 0.0], [10.0, 0.0]])
    x = np.array([[0.0, 0.0], [3.0, 4.0]])  # nearest distances 0 and 5
    nov = gaussian_novelty(x, ref, width=5.0)
    assert nov == pytest.approx([0.0, 1 - np.exp(-25 / 50)])


def test_median_pairwise_distance_hand():
    x = np.array([[0.0], [1.0], [3.0]])  # distances 1, 3, 2 -> median 2
    assert median_pairwise_distance(x) == pytest.approx(2.0)


def test_interleave_extremes():
    exploit = np.array([0.1, 0.9, 0.5, 0.3])
    explore = np.array([0.8, 0.0, 0.1, 0.9])
    rng = np.random.default_rng(0)
    s1 = interleave_rankings(exploit, explore, 1.0, rng)
    assert np.argsort(-s1).tolist() == [1, 2, 3, 0]
    s0 = interleave_rankings(exploit, explore, 0.0, rng)
    assert np.argsort(-s0).tolist() == [3, 0, 2, 1]
    s_mix = interleave_rankings(exploit, explore, 0.5, np.random.default_rng(1))
    assert sorted(s_mix.tolist()) == sorted(s1.tolist())  # a permutation of the same rank scores


def _data(blobs):
    return blobs([60, 60, 60, 3], num_classes=4, dim=6, seed=1)


@pytest.mark.parametrize("name", sorted(BASELINES))
def test_baseline_interface(blobs, name):
    x, y, _ = _data(blobs)
    strat = BASELINES[name](4, seed=0)
    with pytest.raises(ValueError, match="not fitted"):
        strat.score_samples(x)
    assert strat.fit(x, y) is strat
    s = strat.score_samples(x[:50])
    assert s.shape == (50,) and np.isfinite(s).all()
    assert np.array_equal(s, BASELINES[name](4, seed=0).fit(x, y).score_samples(x[:50]))
    with pytest.raises(ValueError):
        strat.score_samples(x[:, :3])
    with pytest.raises(ValueError):
        strat.fit(x, np.full(len(x), 4))


def test_uncertainty_baselines_rank_ambiguous_points_first(blobs):
    x, y, centers = _data(blobs)
    ambiguous = ((centers[0] + centers[1]) / 2)[None, :].astype(np.float32)
    clear = centers[2][None, :].astype(np.float32)
    for cls in (MaxScoreStrategy, EntropyStrategy, WeightedEntropyStrategy):
        s = cls(4).fit(x, y).score_samples(np.concatenate([ambiguous, clear]))
        assert s[0] > s[1], cls.name


def test_hal_explore_prefers_novel_points(blobs):
    x, y, centers = _data(blobs)
    far = (centers[0] + 50.0)[None, :].astype(np.float32)
    near = x[:1]
    hal = HALStrategy(4, p_exploit=0.0).fit(x, y)
    s = hal.score_samples(np.concatenate([near, far]))
    assert s[1] > s[0]
    with pytest.raises(ValueError):
        HALStrategy(4, p_exploit=1.5)


def test_random_is_seeded(blobs):
    x, y, _ = _data(blobs)
    a = RandomStrategy(4, seed=1).fit(x, y).score_samples(x)
    b = RandomStrategy(4, seed=2).fit(x, y).score_samples(x)
    assert not np.array_equal(a, b)
