import numpy as np
import pytest

from mcm_core import MinorityMiner
from mcm_core.metrics import tail_classes as skewness_tail
from mcm_core.tails import binomial_cdf, choose_tail_classes, counted_tail

EARLY = [4, 2, 4, 4, 1, 6, 2, 4, 2, 1]  # 30 labels over 10 digits in Label Studio's default order


def labels_from(counts):
    return np.repeat(np.arange(len(counts)), counts)


def test_binomial_cdf_by_hand():
    # P(X <= 1 | 30, 0.1) = 0.9^30 + 30 * 0.1 * 0.9^29
    assert binomial_cdf(1, 30, 0.1) == pytest.approx(0.9 ** 30 + 3 * 0.9 ** 29)
    assert binomial_cdf(0, 10, 0.5) == pytest.approx(0.5 ** 10)
    assert binomial_cdf(10, 10, 0.5) == 1.0
    assert binomial_cdf(200, 100000, 0.1) < 1e-300 or binomial_cdf(200, 100000, 0.1) == 0.0


def test_early_noise_is_no_tail_but_never_labeled_is():
    y = labels_from(EARLY)
    assert skewness_tail(y, 10) == []          # the old rule: nothing
    assert counted_tail(y, 10) == []           # 1 of 30 is not rare beyond chance (P = 0.18 for share 0.1)
    assert counted_tail(y, 11) == [10]         # a class in the config never labeled is tail


def test_one_label_in_forty_is_tail_at_the_ten_percent_level():
    # 40 labels over 10 classes: P(X <= 1 | 40, 0.1) = 0.080 (tail at 10 %, chance at 5 %)
    y = labels_from([1, 0, 4, 7, 4, 6, 4, 7, 4, 3])
    assert binomial_cdf(1, 40, 0.1) == pytest.approx(0.9 ** 40 + 4 * 0.9 ** 39)
    assert counted_tail(y, 10) == [0, 1]
    assert counted_tail(y, 10, alpha=0.05) == [1]


def test_declared_classes_are_tail_with_any_counts():
    y = labels_from(EARLY)
    tail = choose_tail_classes(y, 10, declared=[5, 9])  # 5 has the most labels
    assert tail.classes == (5, 9) and tail.declared == (5, 9) and tail.counted == ()
    assert tail.rule == "declared + counts"
    assert "declared by the admin: five" in tail.describe(["zero", "one", "two", "three", "four", "five", "six",
                                                            "seven", "eight", "nine"])
    with pytest.raises(ValueError, match="not class indices"):
        choose_tail_classes(y, 10, declared=[10])
    with pytest.raises(ValueError, match="every class"):
        choose_tail_classes(y, 2, declared=[0, 1])


def test_a_small_skewed_set_is_tail_by_counts():
    # 5 sevens among 65 labels: ratio 0.23 and P(X <= 5 | 65, 1/3) ~ 1e-4
    assert counted_tail(labels_from([30, 30, 5]), 3) == [2]
    assert counted_tail(labels_from([3, 3, 1]), 3) == []  # ratio 0.43: not tail anyway


def test_many_labels_the_count_rule_finds_what_the_skewness_rule_finds():
    counts = [500, 480, 510, 20, 495, 0]
    y = labels_from(counts)
    assert counted_tail(y, 6) == skewness_tail(y, 6) == [3, 5]
    assert choose_tail_classes(y, 6).classes == (3, 5)
    only = choose_tail_classes(y, 6, declared=[0], use_counts=False)
    assert only.classes == (0,) and only.rule == "declared"
    with pytest.raises(ValueError, match="needs declared"):
        choose_tail_classes(y, 6, use_counts=False)


def test_a_tail_set_never_holds_every_class():
    y = np.zeros(0, int)
    assert choose_tail_classes(y, 3).classes == ()              # nothing labeled: nothing to be rare against
    assert choose_tail_classes(y, 3, declared=[1]).classes == (1,)


def test_miner_mines_the_tail_it_is_given():
    rng = np.random.default_rng(0)
    centers = rng.normal(size=(3, 16)).astype(np.float32) * 3
    y = labels_from([60, 60, 60])
    x = centers[y] + 0.1 * rng.normal(size=(len(y), 16)).astype(np.float32)
    default = MinorityMiner(3, seed=0, rc_max_epochs=30).fit(x, y)
    assert default.tail_ == []                                   # balanced: the skewness rule finds none
    declared = MinorityMiner(3, seed=0, rc_max_epochs=30).fit(x, y, tail_classes=[2])
    assert declared.tail_ == [2] and declared.fit_info_["tail_classes"] == [2]
    pool = centers[[0, 1, 2]] + 0.1 * rng.normal(size=(3, 16)).astype(np.float32)
    scores = declared.score_samples(pool)
    assert scores[2] > max(scores[0], scores[1])                 # the declared class's example first
    with pytest.raises(ValueError, match="tail_classes"):
        MinorityMiner(3, seed=0).fit(x, y, tail_classes=[0, 1, 2])


def test_early_label_noise_with_declared_rare_digits_ranks_them_first():
    """30 first labels [4, 2, 4, 4, 1, 6, 2, 4, 2, 1] (sklearn digits), the admin declares 4 and 9, which
    make ~5 % of the pool: the declared digits' examples come first (no class is tail by counts)."""
    from sklearn.datasets import load_digits

    from mcm_core.metrics import auc_pr

    x, y = load_digits(return_X_y=True)
    x = x.astype(np.float32)
    lifts = []
    for seed in range(3):
        rng = np.random.default_rng(seed)
        labeled = np.concatenate([rng.choice(np.flatnonzero(y == k), c, replace=False) for k, c in enumerate(EARLY)])
        rest = np.setdiff1d(np.arange(len(y)), labeled)
        pool = rest[~np.isin(y[rest], [4, 9]) | (rng.random(len(rest)) < 0.2)]
        rare = np.isin(y[pool], [4, 9])
        tail = choose_tail_classes(y[labeled], 10, declared=[4, 9])
        assert tail.classes == (4, 9) and tail.counted == ()
        declared = MinorityMiner(10, seed=seed).fit(x[labeled], y[labeled], tail.classes).score_samples(x[pool])
        counted = MinorityMiner(10, seed=seed).fit(x[labeled], y[labeled]).score_samples(x[pool])
        assert auc_pr(rare, declared) > auc_pr(rare, counted), seed
        lifts.append(rare[np.argsort(-declared)[:50]].mean() / rare.mean())
    assert np.mean(lifts) >= 3.0, lifts


def test_a_previous_tail_class_stays_until_it_has_as_many_labels_as_an_average_class():
    y = labels_from([10, 10, 10, 5])                   # ratio 0.57: not rare by the rule alone
    assert choose_tail_classes(y, 4).classes == ()
    kept = choose_tail_classes(y, 4, previous=[3])
    assert kept.classes == kept.counted == kept.kept == (3,)
    assert "kept from the previous version): 3" in kept.describe()
    assert choose_tail_classes(labels_from([10, 10, 10, 9]), 4, previous=[3]).classes == (3,)
    assert choose_tail_classes(labels_from([10, 10, 10, 10]), 4, previous=[3]).classes == ()  # the average
    assert choose_tail_classes(y, 4, previous=[0, 7, -1]).classes == ()       # a head class, unknown indices
    # the count rule off: only the declared classes, nothing kept
    assert choose_tail_classes(y, 4, declared=[1], use_counts=False, previous=[3]).classes == (1,)
    # a class both counted now and before is counted, not "kept"
    both = choose_tail_classes(labels_from([10, 10, 10, 0]), 4, previous=[3])
    assert both.counted == (3,) and both.kept == ()
