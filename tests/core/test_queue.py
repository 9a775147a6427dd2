import numpy as np
import pytest

from mcm_core import MinorityMiner
from mcm_core.queue import NOVEL_BUCKET, bucket_purity, greedy_queue


def test_greedy_queue_hand():
    """Window = 4 best scores; bucket 0 has a labeled row at (1, 0), bucket 1 none, so the ring
    starts with bucket 1. teach=1: bucket 0: a (0.9, next to its labeled row: d ~ 5e-5) vs b
    (0.8, d = 1) -> b first. Bucket 1: c (0.7 x d=2) vs d (0.1 x 2) -> c. Round-robin: c, b, d, a.
    teach=0: each bucket in score order: c, a, d, b."""
    feats = np.array([[1.0, 0.01], [0.0, 1.0], [1.0, 1.0], [-1.0, 0.0], [0.5, 0.5]])
    scores = np.array([0.9, 0.8, 0.7, 0.1, 0.05])
    buckets = np.array([0, 0, 1, 1, 1])
    refs = {0: np.array([[1.0, 0.0]])}
    q = greedy_queue(scores, buckets, feats, refs, window=4, teach=1.0)
    assert q == pytest.approx([0.625, 0.875, 1.0, 0.75, 0.025])
    q0 = greedy_queue(scores, buckets, feats, refs, window=4, teach=0.0)
    assert np.argsort(-q0, kind="stable").tolist() == [2, 0, 3, 1, 4]
    with pytest.raises(ValueError, match="teach"):
        greedy_queue(scores, buckets, feats, refs, window=4, teach=1.5)
    # window 0: plain half scores, same order as the scores
    assert greedy_queue(scores, buckets, feats, {}, window=0) == pytest.approx(0.5 * scores)
    with pytest.raises(ValueError):
        greedy_queue(scores, buckets[:3], feats, {}, window=4)


def test_greedy_queue_spreads_a_bucket_over_its_modes():
    """Within one bucket the second pick is the far mode, not the near-duplicate of the first."""
    feats = np.array([[1.0, 0.0], [1.0, 0.001], [0.0, 1.0]])
    q = greedy_queue(np.array([0.9, 0.89, 0.5]), np.zeros(3, int), feats, {}, window=3)
    assert np.argsort(-q).tolist() == [0, 2, 1]


def test_the_ring_starts_with_the_least_labeled_tail_class():
    """After a retraining with more labels of class 0 than 1, class 1 is served first (an annotator
    served one task per version still sees both), whatever the scores."""
    feats = np.eye(4) + 0.01
    scores = np.array([0.9, 0.8, 0.7, 0.6])
    buckets = np.array([0, 0, 1, 1])
    first = lambda refs: int(np.argmax(greedy_queue(scores, buckets, feats, refs, window=4, teach=0.0)))
    assert first({0: np.ones((1, 4)), 1: np.ones((3, 4))}) == 0
    assert first({0: np.ones((3, 4)), 1: np.ones((1, 4))}) == 2
    assert first({0: np.ones((2, 4))}) == 2   # class 1 never labeled


def test_teaching_ramps_up_with_the_labels_of_a_class():
    """teach_ramp: a class with few labels is served most likely first (its predicted members are
    unreliable); with teach_ramp labels or more, unlike what is labeled first (the full teach)."""
    feats = np.array([[1.0, 0.0], [1.0, 0.02], [0.0, 1.0]])
    scores = np.array([0.9, 0.85, 0.8])
    buckets = np.zeros(3, int)
    order = lambda n_refs, ramp: np.argsort(-greedy_queue(
        scores, buckets, feats, {0: np.tile([[1.0, 0.0]], (n_refs, 1))}, window=3, teach=1.0, teach_ramp=ramp),
        kind="stable").tolist()
    assert order(2, 20)[0] == 0     # 2 labels of 20: weight 0.1, the most likely first
    assert order(20, 20)[0] == 2    # 20 labels: the far example first
    assert order(2, 0)[0] == 2      # no ramp: the full teach whatever the labels
    with pytest.raises(ValueError, match="teach_ramp"):
        greedy_queue(scores, buckets, feats, {}, window=3, teach_ramp=-1)


def test_a_classifiers_doubt_teaches_in_place_of_the_distance_in_the_buckets_it_is_given():
    """doubt: within a doubted bucket the largest score x doubt (the likely members the classifier does
    not recognise yet first), in full whatever the labels; the other buckets keep the distance and its ramp."""
    feats = np.array([[1.0, 0.0], [1.0, 0.02], [0.0, 1.0]])
    scores = np.array([0.9, 0.85, 0.8])
    buckets = np.zeros(3, int)
    order = lambda doubt, n_refs=20, ramp=20, doubted=None: np.argsort(-greedy_queue(
        scores, buckets, feats, {0: np.tile([[1.0, 0.0]], (n_refs, 1))}, window=3, teach=1.0, teach_ramp=ramp,
        doubt=doubt, doubt_buckets=doubted), kind="stable").tolist()
    unsure = np.array([0.1, 0.9, 0.2])
    assert order(unsure) == [1, 2, 0]                           # 0.765, 0.16, 0.09
    assert order(np.array([1.0, 1.0, 1.0])) == [0, 1, 2]        # doubted alike: score order
    assert order(unsure, n_refs=1, ramp=50) == [1, 2, 0]        # 1 label of 50: the doubt still in full
    assert order(None)[0] == 2                                  # the distance: the far example first
    assert order(unsure, doubted=[]) == order(None)             # a bucket not doubted keeps the distance
    assert order(unsure, n_refs=1, ramp=50, doubted=[]) == [0, 1, 2]  # ... and its ramp
    for bad in (np.array([0.1, 0.9]), np.array([0.1, 1.5, 0.2]), np.array([np.nan, 0.5, 0.5])):
        with pytest.raises(ValueError, match="doubt"):
            greedy_queue(scores, buckets, feats, {}, window=3, doubt=bad)


def test_bucket_purity_needs_evidence_that_a_bucket_is_mostly_rare():
    """1 - (upper bound of the false-alarm rate x pool size) / bucket size: more held-out common rows
    tighten the bound, false alarms and a bigger pool lower it."""
    assert bucket_purity(0, 400, 69, 1500) > bucket_purity(0, 118, 69, 1500)
    assert bucket_purity(0, 400, 69, 1500) > bucket_purity(2, 400, 69, 1500)
    assert bucket_purity(0, 400, 69, 1500) > bucket_purity(0, 400, 69, 3000)
    assert bucket_purity(0, 400, 138, 1500) > bucket_purity(0, 400, 69, 1500)
    assert 0.8 < bucket_purity(0, 400, 69, 1500) < 0.9   # 0 of 400: the bound is ~0.7 %, ~10 of 69 may be common
    assert bucket_purity(0, 0, 69, 1500) == 0.0 and bucket_purity(0, 400, 0, 1500) == 0.0
    assert bucket_purity(50, 100, 10, 1000) == 0.0


def test_miner_queue_teaches_by_a_plain_classifiers_doubt_when_told(blobs, tmp_path):
    x, y, centers = blobs([200, 200, 3, 3])
    rng = np.random.default_rng(5)
    pool = np.concatenate([centers[k] + rng.normal(size=(n, 8)) for k, n in enumerate([100, 100, 30, 30])])
    pool = pool.astype(np.float32)
    # a classifier sure of class 2 on the first half of the pool, unsure elsewhere
    proba = np.full((len(pool), 4), 0.25)
    proba[: len(pool) // 2] = [0.0, 0.0, 1.0, 0.0]
    assert MinorityMiner(4).config["queue_teach_by"] == "novel_doubt" and MinorityMiner(4).queue_needs_proba
    distance = MinorityMiner(4, seed=0, queue_window=40, queue_teach_by="distance").fit(x, y)
    assert not distance.queue_needs_proba
    assert np.array_equal(distance.queue_scores(pool, proba), distance.queue_scores(pool))  # proba unused
    info = distance.fit_info_
    assert info["head_held_out"] == 80 and set(info["tail_false_alarms"]) == {"2", "3"}  # 20 % of each head class
    by = {}
    for teach_by in ("doubt", "novel_doubt"):
        m = MinorityMiner(4, seed=0, queue_window=40, queue_teach_by=teach_by, queue_doubt_purity=0.0).fit(x, y)
        assert m.queue_needs_proba
        by[teach_by] = m.queue_scores(pool, proba)
        assert np.array_equal(by[teach_by], m.queue_scores(pool, proba.copy()))
        assert np.array_equal(m.queue_scores(pool), distance.queue_scores(pool))  # no proba: the distance
        m.save(tmp_path / f"{teach_by}.pt")
        assert np.array_equal(MinorityMiner.load(tmp_path / f"{teach_by}.pt").queue_scores(pool, proba), by[teach_by])
        with pytest.raises(ValueError, match="proba"):
            m.queue_scores(pool, proba[:, :3])
        with pytest.raises(ValueError, match="proba"):
            m.queue_scores(pool, np.full((len(pool), 4), np.nan))
        with pytest.raises(ValueError, match="pool_size"):
            m.queue_scores(pool, proba, pool_size=len(pool) - 1)
    assert not np.array_equal(by["doubt"], by["novel_doubt"])  # the novelty weighs the doubt
    assert not np.array_equal(by["doubt"], distance.queue_scores(pool))
    # the default purity: 80 held-out common rows cannot show that a 30-example bucket is 80 % rare
    pure = MinorityMiner(4, seed=0, queue_window=40, queue_teach_by="doubt").fit(x, y)
    assert all(v < 0.8 for v in pure.bucket_purity(np.repeat([2, 3], 30), len(pool)).values())
    assert np.array_equal(pure.queue_scores(pool, proba), distance.queue_scores(pool))
    for bad in ({"queue_teach_by": "entropy"}, {"queue_doubt_purity": 1.5}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            MinorityMiner(4, **bad)


def test_miner_queue_balances_tail_classes_and_is_deterministic(blobs, tmp_path):
    x, y, centers = blobs([80, 80, 6, 2], num_classes=4, dim=8, seed=2)
    rng = np.random.default_rng(5)
    pool = np.concatenate([centers[k] + rng.normal(size=(n, 8)) for k, n in enumerate([100, 100, 30, 30])])
    pool = pool.astype(np.float32)
    truth = np.repeat(np.arange(4), [100, 100, 30, 30])
    m = MinorityMiner(4, seed=0, queue_window=40).fit(x, y)
    q = m.queue_scores(pool)
    top = truth[np.argsort(-q, kind="stable")[:20]]
    assert set(top) <= {2, 3} and abs(int((top == 2).sum()) - int((top == 3).sum())) <= 2
    assert (q[np.argsort(-q)[:40]] > 0.5).all() and (np.sort(q)[:-40] <= 0.5).all()
    assert np.array_equal(q, MinorityMiner(4, seed=0, queue_window=40).fit(x, y).queue_scores(pool))
    m.save(tmp_path / "m.pt")
    assert np.array_equal(MinorityMiner.load(tmp_path / "m.pt").queue_scores(pool), q)
    rc = MinorityMiner(4, seed=0, strategy="reconstruction", ae_min_steps=100, ae_max_steps=200).fit(x, y)
    with pytest.raises(ValueError, match="tail_novelty"):
        rc.queue_scores(pool)
    with pytest.raises(ValueError, match="queue_window"):
        MinorityMiner(4, queue_window=-1)
    with pytest.raises(ValueError, match="queue_teach"):
        MinorityMiner(4, queue_teach=-0.1)
    with pytest.raises(ValueError, match="queue_teach_ramp"):
        MinorityMiner(4, queue_teach_ramp=-1)
    assert NOVEL_BUCKET not in m.tail_


def test_queue_of_the_top_window_alone_equals_the_whole_pool(blobs):
    """What a chunked backend relies on: only the top-`queue_window` rows by score() are reordered,
    so queue_scores on those rows alone gives their values, and every other row is 0.5 * score()."""
    x, y, centers = blobs([60, 60, 5, 3], num_classes=4, dim=8, seed=4)
    rng = np.random.default_rng(9)
    pool = np.concatenate([centers[k] + rng.normal(size=(40, 8)) for k in range(4)]).astype(np.float32)
    m = MinorityMiner(4, seed=0, queue_window=30).fit(x, y)
    s, q = m.score_samples(pool), m.queue_scores(pool)
    top = np.argsort(-s, kind="stable")[:30]
    rest = np.setdiff1d(np.arange(len(pool)), top)
    assert q[rest] == pytest.approx(0.5 * s[rest])
    assert m.queue_scores(pool[top]) == pytest.approx(q[top])


def test_novel_examples_keep_their_places_so_the_tail_yield_is_the_scores():
    """Window of 6: tail buckets 0 and 1 are re-ordered among their own places; the examples
    predicted as a head class (NOVEL_BUCKET) stay where their score put them."""
    feats = np.eye(6) + 0.01
    scores = np.array([0.9, 0.8, 0.7, 0.6, 0.5, 0.4])
    buckets = np.array([0, 0, NOVEL_BUCKET, 0, 1, NOVEL_BUCKET])
    q = greedy_queue(scores, buckets, feats, {}, window=6)
    order = np.argsort(-q, kind="stable").tolist()
    assert order[2] == 2 and order[5] == 5               # novel: same places as in the score order
    assert sorted(order[i] for i in (0, 1, 3, 4)) == [0, 1, 3, 4]
    assert order[:2] == [0, 4]                           # round-robin: best of bucket 0, then bucket 1
    assert (q[order[:6]] > 0.5).all()
