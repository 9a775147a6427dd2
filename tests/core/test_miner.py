import os

import numpy as np
import pytest
import torch

from mcm_core import MinorityMiner
from mcm_core.scoring import softmax

FAST = dict(ae_min_steps=300, ae_max_steps=1500)


@pytest.fixture(scope="module")
def data(blobs):
    make_blobs = blobs
    # classes 0-2 are head classes, class 3 has 2 examples, class 4 has a single one
    x, y, centers = make_blobs([80, 80, 80, 2, 1], num_classes=5, dim=12, seed=0)
    x_tail, _, _ = make_blobs([0, 0, 0, 30, 30], num_classes=5, dim=12, seed=0)
    rng = np.random.default_rng(7)  # fresh head-class examples around the same centres
    x_head = np.concatenate([centers[k] + rng.normal(size=(30, 12)) for k in range(3)]).astype(np.float32)
    return x, y, x_head, x_tail


@pytest.fixture(scope="module")
def fitted(data):
    x, y, _, _ = data
    return MinorityMiner(5, seed=0, **FAST).fit(x, y)


@pytest.fixture(scope="module")
def fitted_rc(data):
    """The reconstruction strategy (RC + autoencoder S_w), the previous default."""
    x, y, _, _ = data
    return MinorityMiner(5, seed=0, strategy="reconstruction", **FAST).fit(x, y)


def test_fit_returns_self_and_shapes(data, fitted):
    x, _, _, _ = data
    s = fitted.score_samples(x[:17])
    assert s.shape == (17,)
    p = fitted.predict_proba(x[:17])
    assert p.shape == (17, 5)
    assert p.sum(1) == pytest.approx(np.ones(17), abs=1e-5)
    assert fitted.is_fitted


def test_scores_within_upper_bound(data, fitted, fitted_rc):
    x, y, x_head, x_tail = data
    probe = np.concatenate([x, x_head, x_tail, x * 100])
    s = fitted.score_samples(probe)
    assert fitted.score_upper_bound == 1.0  # tail_novelty: 1 - (1 - T)(1 - N), T and N in [0, 1]
    assert (s >= 0).all() and (s <= 1.0).all()
    fitted = fitted_rc
    s = fitted.score_samples(probe)
    # reconstruction S_w with w = alpha (normalised inverse frequency): exact bound = two largest alphas
    inv = 1.0 / np.bincount(y, minlength=5)
    w = np.sort(inv / inv.sum())
    assert fitted.score_upper_bound == pytest.approx(w[-1] + w[-2])
    assert fitted.score_upper_bound < 1.0
    assert (s >= 0).all() and (s <= fitted.score_upper_bound).all()
    assert MinorityMiner(5).score_upper_bound == 2.0  # unfitted: weights unknown, 2 bounds every weighting


@pytest.mark.parametrize("strategy", ["tail_novelty", "reconstruction", "paper"])
def test_tail_examples_rank_above_head_examples(data, strategy):
    x, y, x_head, x_tail = data
    m = MinorityMiner(5, seed=0, strategy=strategy, **FAST).fit(x, y)
    s_head, s_tail = m.score_samples(x_head), m.score_samples(x_tail)
    assert np.median(s_tail) > np.median(s_head)


def test_determinism(data, fitted):
    x, y, x_head, _ = data
    again = MinorityMiner(5, seed=0, **FAST).fit(x, y)
    assert np.array_equal(again.score_samples(x_head), fitted.score_samples(x_head))
    other = MinorityMiner(5, seed=1, **FAST).fit(x, y)
    assert not np.array_equal(other.score_samples(x_head), fitted.score_samples(x_head))


def test_fit_does_not_touch_global_rng(data):
    x, y, _, _ = data
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    MinorityMiner(5, seed=0, **FAST).fit(x, y)
    assert torch.equal(torch.rand(3), expected)


@pytest.mark.parametrize("which", ["fitted", "fitted_rc"])
def test_save_load_round_trip(tmp_path, data, which, request):
    fitted = request.getfixturevalue(which)
    x, _, x_head, x_tail = data
    path = tmp_path / "sub" / "miner.pt"
    fitted.save(path)
    assert os.listdir(path.parent) == ["miner.pt"]  # no temp file left behind
    loaded = MinorityMiner.load(path)
    probe = np.concatenate([x_head, x_tail])
    assert np.array_equal(loaded.score_samples(probe), fitted.score_samples(probe))
    assert np.array_equal(loaded.predict_proba(probe), fitted.predict_proba(probe))
    assert loaded.config == fitted.config
    assert loaded.score_upper_bound == fitted.score_upper_bound
    assert loaded.tail_ == fitted.tail_ == [3, 4]


def test_load_rejects_foreign_or_missing_files(tmp_path):
    with pytest.raises(ValueError, match="not found"):
        MinorityMiner.load(tmp_path / "missing.pt")
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a torch file")
    with pytest.raises(ValueError, match="cannot read"):
        MinorityMiner.load(junk)
    other = tmp_path / "other.pt"
    torch.save({"format": "something else"}, other)
    with pytest.raises(ValueError, match="not a MinorityMiner"):
        MinorityMiner.load(other)


def test_save_before_fit_raises(tmp_path):
    with pytest.raises(ValueError, match="not fitted"):
        MinorityMiner(3).save(tmp_path / "m.pt")


def test_score_before_fit_raises():
    m = MinorityMiner(3)
    with pytest.raises(ValueError, match="not fitted"):
        m.score_samples(np.zeros((2, 4), np.float32))
    with pytest.raises(ValueError, match="not fitted"):
        m.predict_proba(np.zeros((2, 4), np.float32))


@pytest.mark.parametrize("bad, match", [
    (lambda x: np.where(np.arange(x.size).reshape(x.shape) == 5, np.nan, x), "NaN or inf"),
    (lambda x: np.where(np.arange(x.size).reshape(x.shape) == 5, np.inf, x), "NaN or inf"),
    (lambda x: x[0], "2-D"),
    (lambda x: x[:, :, None], "2-D"),
    (lambda x: x[:0], "empty"),
])
def test_fit_rejects_bad_features(data, bad, match):
    x, y, _, _ = data
    xb = bad(x)
    with pytest.raises(ValueError, match=match):
        MinorityMiner(5, **FAST).fit(xb, y[:len(xb)] if xb.ndim >= 1 and len(xb) <= len(y) else y)


@pytest.mark.parametrize("labels_fn, match", [
    (lambda y: np.where(np.arange(len(y)) == 3, 5, y), r"\[0, 5\)"),
    (lambda y: np.where(np.arange(len(y)) == 3, -1, y), r"\[0, 5\)"),
    (lambda y: y[:-1], "entries"),
    (lambda y: y.reshape(-1, 1), "1-D"),
    (lambda y: y + 0.5, "integers"),
    (lambda y: y.astype(str), "integers"),
])
def test_fit_rejects_bad_labels(data, labels_fn, match):
    x, y, _, _ = data
    with pytest.raises(ValueError, match=match):
        MinorityMiner(5, **FAST).fit(x, labels_fn(y))


def test_score_rejects_bad_features(data, fitted):
    x, _, _, _ = data
    with pytest.raises(ValueError, match="columns"):
        fitted.score_samples(x[:, :5])
    with pytest.raises(ValueError, match="NaN or inf"):
        fitted.score_samples(np.full((2, x.shape[1]), np.nan, np.float32))
    with pytest.raises(ValueError, match="empty"):
        fitted.score_samples(x[:0])
    with pytest.raises(ValueError, match="2-D"):
        fitted.score_samples(x[0])


@pytest.mark.parametrize("kwargs", [dict(num_classes=1), dict(num_classes=2.5), dict(num_classes=3, gamma=-1),
                                    dict(num_classes=3, input_space="pixels"),
                                    dict(num_classes=3, alpha=[1.0, 2.0]),
                                    dict(num_classes=3, score_weighting="tail"),
                                    dict(num_classes=3, ae_train_on="tail"),
                                    dict(num_classes=3, rc_max_steps_per_epoch=0),
                                    dict(num_classes=3, ae_max_steps_per_epoch=-2),
                                    dict(num_classes=3, rc_min_epochs=-1),
                                    dict(num_classes=3, rc_min_epochs=300)])
def test_constructor_rejects_bad_options(kwargs):
    with pytest.raises(ValueError):
        MinorityMiner(**kwargs)


def test_classes_with_zero_or_one_example_and_logit_space(data):
    x, y, _, x_tail = data
    keep = y != 4  # class 4 now has no example at all
    m = MinorityMiner(5, seed=0, strategy="reconstruction", input_space="logits", standardize=True, n_models=2,
                      gamma=1.0, alpha=0.5, **FAST).fit(x[keep], y[keep])
    s = m.score_samples(x_tail)
    assert s.shape == (60,) and ((s >= 0) & (s <= m.score_upper_bound)).all()
    assert m.fit_info_["labeled_per_class"] == [80, 80, 80, 2, 0]


def test_weighted_score_matches_hand_computation_and_head_only_rows(data, fitted_rc):
    fitted = fitted_rc
    x, y, _, x_tail = data
    assert fitted.fit_info_["ae_rows"] == 240  # default: classes 3 (2 ex.) and 4 (1 ex.) are tail: head rows only
    every = MinorityMiner(5, seed=0, strategy="reconstruction", ae_train_on="all", **FAST).fit(x, y)
    assert every.fit_info_["ae_rows"] == len(y)
    assert np.median(every.score_samples(x_tail)) > np.median(every.score_samples(x[:240]))
    assert fitted.fit_info_["rc_best_epoch"] >= 19  # the default 20-epoch RC warm-up
    p = fitted.ae_.reconstruct_probs(fitted.logits(x_tail))  # (n_models, M, C)
    q = softmax(fitted.logits(x_tail))
    inv = 1.0 / np.bincount(y, minlength=5)
    w = inv / inv.sum()
    expected = ((q[None] - p) ** 2 * w).sum(-1).mean(0)
    assert fitted.score_samples(x_tail) == pytest.approx(expected, rel=1e-6)


def test_unweighted_all_rows_and_sqrt_alpha_options(data):
    x, y, _, x_tail = data
    plain = MinorityMiner(5, seed=0, strategy="reconstruction", score_weighting="none", ae_train_on="all",
                          **FAST).fit(x, y)
    assert plain.fit_info_["ae_rows"] == len(y)
    assert plain.score_upper_bound == 2.0
    q = softmax(plain.logits(x_tail))
    assert plain.score_samples(x_tail) == pytest.approx(((q[None] - plain.ae_.reconstruct_probs(plain.logits(x_tail))) ** 2)
                                                .sum(-1).mean(0), rel=1e-6)
    sq = MinorityMiner(5, seed=0, strategy="reconstruction", score_weighting="sqrt_alpha", **FAST).fit(x, y)
    w = np.sqrt(1.0 / np.bincount(y, minlength=5))
    w /= w.sum()
    assert sq.score_upper_bound == pytest.approx(np.sort(w)[-2:].sum())
    assert ((sq.score_samples(x_tail) >= 0) & (sq.score_samples(x_tail) <= sq.score_upper_bound)).all()


def test_files_without_new_options_load_as_unweighted_all_rows(tmp_path, data):
    """A file written before score_weighting / ae_train_on / steps-per-epoch / strategy existed
    keeps its score (the reconstruction score, plain S)."""
    x, y, x_head, x_tail = data
    old = MinorityMiner(5, seed=0, strategy="reconstruction", score_weighting="none", ae_train_on="all",
                        rc_max_steps_per_epoch=None, ae_max_steps_per_epoch=None, **FAST).fit(x, y)
    path = tmp_path / "old.pt"
    old.save(path)
    payload = torch.load(path, weights_only=True)
    for k in ("score_weighting", "ae_train_on", "rc_max_steps_per_epoch", "ae_max_steps_per_epoch", "strategy",
              "novelty_k", "novelty_max_reference"):
        del payload["config"][k]
    del payload["tail"]
    assert "score_weights" not in payload["ae"]
    torch.save(payload, path)
    loaded = MinorityMiner.load(path)
    assert loaded.config == old.config
    probe = np.concatenate([x_head, x_tail])
    assert np.array_equal(loaded.score_samples(probe), old.score_samples(probe))
    assert loaded.score_upper_bound == 2.0
    assert loaded.config["strategy"] == "reconstruction" and loaded.tail_ == [3, 4]  # from fit_info counts


def test_reconstruction_miners_keep_the_same_novelty_reference(tmp_path, data, fitted, fitted_rc):
    """Every strategy keeps the novelty N (the detection cold start reads it): the reconstruction
    miner's N is tail_novelty's (same head rows, same seed), its score is still the AE's, and N
    survives save/load; a file saved without it loads, and asking it for N is a clear error."""
    x, _, x_head, x_tail = data
    probe = np.concatenate([x_head, x_tail])
    n = fitted_rc.novelty_score(probe)
    assert np.array_equal(n, fitted.novelty_score(probe))
    assert n[len(x_head):].mean() > n[:len(x_head)].mean() + 0.3  # tail blobs are far from the head rows
    assert fitted_rc.score_upper_bound < 2.0 and fitted_rc.score_samples(probe).max() > 0  # the AE's S_w, not 1-(1-T)(1-N)
    path = tmp_path / "rc.pt"
    fitted_rc.save(path)
    loaded = MinorityMiner.load(path)
    assert np.array_equal(loaded.novelty_score(probe), n) and np.array_equal(loaded.score_samples(probe), fitted_rc.score_samples(probe))
    payload = torch.load(path, weights_only=True)
    del payload["novelty"]
    torch.save(payload, path)
    older = MinorityMiner.load(path)
    assert older.novelty_ is None and np.array_equal(older.score_samples(probe), fitted_rc.score_samples(probe))
    with pytest.raises(ValueError, match="no novelty reference"):
        older.novelty_score(probe)


def test_tail_novelty_score_is_tail_or_novel_by_hand(data, fitted):
    """score = 1 - (1 - T)(1 - N): T from the RC probabilities over the tail classes (3, 4), N the
    calibrated 5-NN cosine distance to the labeled head rows (classes 0-2)."""
    x, y, x_head, x_tail = data
    from mcm_core.novelty import calibrated_novelty, knn_cosine_distance, l2_normalise
    probe = np.concatenate([x_head, x_tail])
    t = fitted.predict_proba(probe).astype(np.float64)[:, [3, 4]].sum(1)
    ref = l2_normalise(x[y < 3])  # 240 head rows, under the 2048 cap: all of them
    assert fitted.novelty_.reference == pytest.approx(ref)
    dist = 1 - l2_normalise(probe).astype(np.float64) @ ref.T.astype(np.float64)
    knn = np.sort(dist, 1)[:, :5].mean(1)
    assert knn_cosine_distance(ref, probe, 5) == pytest.approx(knn, abs=1e-6)
    n = calibrated_novelty(fitted.novelty_.reference_distances, knn)
    assert fitted.score_samples(probe) == pytest.approx(1 - (1 - t) * (1 - n), abs=1e-6)
    assert fitted.tail_mass(probe) == pytest.approx(t)
    assert fitted.fit_info_["novelty_reference"] == 240 and fitted.ae_ is None  # no autoencoder trained


def test_tail_novelty_finds_a_class_with_no_label(blobs):
    """A class in the config with 0 labels: the RC tail mass cannot know it, the novelty can."""
    x, y, centers = blobs([80, 80, 80, 0], num_classes=4, dim=12, seed=3)
    x_new, _, _ = blobs([0, 0, 0, 40], num_classes=4, dim=12, seed=3)
    rng = np.random.default_rng(11)
    x_head = np.concatenate([centers[k] + rng.normal(size=(40, 12)) for k in range(3)]).astype(np.float32)
    m = MinorityMiner(4, seed=0, **FAST).fit(x, y)
    assert m.tail_ == [3]
    s_new, s_head = m.score_samples(x_new), m.score_samples(x_head)
    assert s_new.min() > np.quantile(s_head, 0.9)


def test_paper_strategy_forces_the_paper_configuration():
    m = MinorityMiner(5, strategy="paper", input_space="probs", n_models=5)
    assert (m.config["input_space"], m.config["score_weighting"], m.config["ae_train_on"], m.config["rc_min_epochs"],
            m.config["n_models"]) == ("logits", "none", "all", 0, 1)
    with pytest.raises(ValueError, match="strategy"):
        MinorityMiner(5, strategy="magic")
    with pytest.raises(ValueError, match="novelty_k"):
        MinorityMiner(5, novelty_k=0)


@pytest.fixture(scope="module")
def cold_data(blobs):
    """Class 3 in the config with 0 labels, class 4 with 2: a cold start for cold_start="any" only
    (the default "all" needs every tail class unlabeled)."""
    x, y, centers = blobs([80, 80, 80, 0, 2], num_classes=5, dim=12, seed=3)
    x_new, _, _ = blobs([0, 0, 0, 30, 30], num_classes=5, dim=12, seed=3)
    rng = np.random.default_rng(11)
    x_head = np.concatenate([centers[k] + rng.normal(size=(30, 12)) for k in range(3)]).astype(np.float32)
    return x, y, np.concatenate([x_head, x_new])


@pytest.fixture(scope="module")
def fitted_cold(cold_data):
    x, y, _ = cold_data
    return MinorityMiner(5, seed=0, strategy="reconstruction_cold", cold_start="any", **FAST).fit(x, y)


def test_reconstruction_cold_score_by_hand(cold_data, fitted_cold):
    """Cold start: 1 - (1 - S_w / bound)(1 - H N), H = entropy(p) / log C, N the kNN novelty."""
    _, _, probe = cold_data
    m = fitted_cold
    assert m.tail_ == [3, 4] and m.cold_start and m.score_upper_bound == 1.0
    s_w = m.ae_.score(m.logits(probe))
    p = m.predict_proba(probe).astype(np.float64)
    h = -(p * np.log(np.clip(p, 1e-300, None))).sum(1) / np.log(5)
    expected = 1 - (1 - s_w / m.ae_.upper_bound) * (1 - h * m.novelty_score(probe))
    scores = m.score_samples(probe)
    assert scores == pytest.approx(expected, abs=1e-6)
    assert not np.allclose(scores, s_w / m.ae_.upper_bound)  # the cold-start term changed the score
    assert 0 <= scores.min() and scores.max() <= m.score_upper_bound


def test_reconstruction_cold_is_the_reconstruction_score_once_warm(data, cold_data, fitted_rc):
    """No cold start (every tail class labeled; or cold_start="all" with one labeled): exactly
    the reconstruction strategy's score and bound."""
    x, _, x_head, x_tail = data
    warm = MinorityMiner(5, seed=0, strategy="reconstruction_cold", **FAST).fit(x, data[1])
    probe = np.concatenate([x_head, x_tail])
    assert not warm.cold_start
    assert np.array_equal(warm.score_samples(probe), fitted_rc.score_samples(probe))
    assert warm.score_upper_bound == fitted_rc.score_upper_bound < 1.0
    xc, yc, probe_c = cold_data
    every = MinorityMiner(5, seed=0, strategy="reconstruction_cold", **FAST).fit(xc, yc)  # cold_start="all"
    plain = MinorityMiner(5, seed=0, strategy="reconstruction", **FAST).fit(xc, yc)
    assert not every.cold_start and np.array_equal(every.score_samples(probe_c), plain.score_samples(probe_c))
    none = MinorityMiner(5, seed=0, strategy="reconstruction_cold", **FAST).fit(xc[yc < 3], yc[yc < 3])
    assert none.tail_ == [3, 4] and none.cold_start and none.score_upper_bound == 1.0  # no tail class labeled
    with pytest.raises(ValueError, match="cold_start"):
        MinorityMiner(5, strategy="reconstruction_cold", cold_start="sometimes")


def test_reconstruction_cold_save_load_and_batch_independence(tmp_path, cold_data, fitted_cold):
    _, _, probe = cold_data
    path = tmp_path / "cold.pt"
    fitted_cold.save(path)
    loaded = MinorityMiner.load(path)
    full = fitted_cold.score_samples(probe)
    assert loaded.config == fitted_cold.config and loaded.cold_start
    assert np.array_equal(loaded.score_samples(probe), full) and loaded.score_upper_bound == 1.0
    order = np.random.default_rng(0).permutation(len(probe))
    parts = np.concatenate([fitted_cold.score_samples(probe[order][i:i + 7]) for i in range(0, len(probe), 7)])
    assert np.array_equal(parts, full[order])  # a row's score never depends on its batch
    again = MinorityMiner(5, seed=0, strategy="reconstruction_cold", cold_start="any", **FAST).fit(*cold_data[:2])
    assert np.array_equal(again.score_samples(probe), full)  # deterministic
