"""Baseline mining strategies with the MinorityMiner interface: fit(features, labels) -> self,
score_samples(features) -> (M,), higher = mine first.

Uncertainty baselines need probabilities. By default they train their own linear softmax head
with plain cross-entropy on the features (what the biased model's last layer is); the benchmark
can instead feed the biased model's own probabilities through ``score_proba``."""
from __future__ import annotations

import numpy as np
import torch

from .metrics import tail_classes
from .recalibration import fit_recalibration
from .scoring import softmax
from .validation import check_features, check_labels, check_num_classes


class _Strategy:
    name = "strategy"

    def __init__(self, num_classes: int, seed: int = 0):
        self.num_classes = check_num_classes(num_classes)
        self.seed = int(seed)
        self.in_dim_: int | None = None

    def _check_fitted(self):
        if self.in_dim_ is None:
            raise ValueError(f"{type(self).__name__} is not fitted: call fit(features, labels) first")


class RandomStrategy(_Strategy):
    """Uniform random scores (seeded): the no-information reference."""
    name = "random"

    def fit(self, features, labels) -> "RandomStrategy":
        x = check_features(features)
        check_labels(labels, len(x), self.num_classes)
        self.in_dim_ = x.shape[1]
        return self

    def score_samples(self, features) -> np.ndarray:
        self._check_fitted()
        x = check_features(features, dim=self.in_dim_)
        return np.random.default_rng(self.seed).random(len(x))


class _ProbaStrategy(_Strategy):
    """Linear head trained with cross-entropy (focal loss with gamma=0, alpha=1)."""

    def fit(self, features, labels) -> "_ProbaStrategy":
        x = check_features(features)
        y = check_labels(labels, len(x), self.num_classes)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            self.head_, _ = fit_recalibration(x, y, self.num_classes, gamma=0.0,
                                             alpha=np.ones(self.num_classes, np.float32), seed=self.seed)
        self.class_proportions_ = np.bincount(y, minlength=self.num_classes) / len(y)
        self.in_dim_ = x.shape[1]
        self._fit_extra(x, y)
        return self

    def fit_proportions(self, labels, n_features: int) -> "_ProbaStrategy":
        """Only what scoring another model's probabilities needs (``score_proba``, the paper's
        protocol): the labeled class proportions. No head is trained, so ``score`` is unavailable."""
        y = check_labels(labels, len(np.asarray(labels)), self.num_classes)
        self.class_proportions_ = np.bincount(y, minlength=self.num_classes) / len(y)
        self.in_dim_ = int(n_features)
        return self

    def _fit_extra(self, x, y) -> None:
        pass

    @torch.no_grad()
    def predict_proba(self, features) -> np.ndarray:
        self._check_fitted()
        x = check_features(features, dim=self.in_dim_)
        return softmax(self.head_(torch.from_numpy(x)).numpy())

    def score_samples(self, features) -> np.ndarray:
        p = self.predict_proba(features)
        return self.score_proba(p, check_features(features))

    def score_proba(self, probs: np.ndarray, features: np.ndarray | None = None) -> np.ndarray:
        raise NotImplementedError


def max_score(probs: np.ndarray) -> np.ndarray:
    """1 - max_k p_k."""
    return 1.0 - np.asarray(probs, dtype=np.float64).max(axis=1)


def entropy(probs: np.ndarray) -> np.ndarray:
    """-sum_k p_k log p_k (natural log; 0 log 0 = 0)."""
    p = np.asarray(probs, dtype=np.float64)
    return -(p * np.log(np.where(p > 0, p, 1.0))).sum(axis=1)


def class_weights(class_proportions: np.ndarray) -> np.ndarray:
    """w_k = (1 / b_k) / sum_j (1 / b_j); a class with no labeled example counts as b_k = 1/(N+1)-ish
    floor (1e-3) so it gets the largest weight instead of an infinite one."""
    b = np.maximum(np.asarray(class_proportions, dtype=np.float64), 1e-3)
    w = 1.0 / b
    return w / w.sum()


def weighted_entropy(probs: np.ndarray, class_proportions: np.ndarray) -> np.ndarray:
    """-sum_k w_k p_k log p_k with w_k = normalised inverse class proportion b_k of the labeled data,
    so uncertainty mass on rare classes counts more."""
    p = np.asarray(probs, dtype=np.float64)
    w = class_weights(class_proportions)
    return -(w[None, :] * p * np.log(np.where(p > 0, p, 1.0))).sum(axis=1)


def margin_uncertainty(probs: np.ndarray) -> np.ndarray:
    """1 - (p_top1 - p_top2): high when the two best classes are close."""
    p = np.sort(np.asarray(probs, dtype=np.float64), axis=1)
    return 1.0 - (p[:, -1] - p[:, -2])


def tail_mass(probs: np.ndarray, tail: list[int] | np.ndarray) -> np.ndarray:
    """sum_{k in tail} p_k: the probability an example belongs to one of the tail classes (0 if no
    class is tail). The simplest tail score a user can compute from any classifier."""
    p = np.asarray(probs, dtype=np.float64)
    idx = np.asarray(tail, dtype=np.int64).reshape(-1)
    if idx.size and (idx.min() < 0 or idx.max() >= p.shape[1]):
        raise ValueError(f"tail classes must lie in [0, {p.shape[1]}), got {idx.tolist()}")
    return p[:, idx].sum(axis=1) if idx.size else np.zeros(len(p))


def gaussian_novelty(x: np.ndarray, ref: np.ndarray, width: float, chunk: int = 4096) -> np.ndarray:
    """1 - max_j exp(-||x - ref_j||^2 / (2 width^2)): 0 on a labeled point, -> 1 far from all."""
    out = np.empty(len(x))
    ref = ref.astype(np.float64)
    rn = (ref ** 2).sum(1)
    for i in range(0, len(x), chunk):
        xb = x[i:i + chunk].astype(np.float64)
        d2 = np.maximum((xb ** 2).sum(1)[:, None] + rn[None, :] - 2 * xb @ ref.T, 0.0)
        out[i:i + chunk] = 1.0 - np.exp(-d2.min(1) / (2 * width ** 2))
    return out


def median_pairwise_distance(x: np.ndarray, max_points: int = 1000, seed: int = 0) -> float:
    """The median heuristic for the kernel width (on a subsample for large sets)."""
    rng = np.random.default_rng(seed)
    if len(x) > max_points:
        x = x[rng.choice(len(x), max_points, replace=False)]
    x = x.astype(np.float64)
    n2 = (x ** 2).sum(1)
    d2 = np.maximum(n2[:, None] + n2[None, :] - 2 * x @ x.T, 0.0)
    iu = np.triu_indices(len(x), 1)
    if len(iu[0]) == 0:
        return 1.0
    med = float(np.sqrt(np.median(d2[iu])))
    return med if med > 0 else 1.0


def interleave_rankings(exploit: np.ndarray, explore: np.ndarray, p_exploit: float,
                        rng: np.random.Generator) -> np.ndarray:
    """Build one ranking: at each position take the best not-yet-taken item of the exploit ranking
    with probability p_exploit, else of the explore ranking. Returns scores (first = highest)."""
    n = len(exploit)
    orders = (np.argsort(-exploit, kind="stable"), np.argsort(-explore, kind="stable"))
    ptr = [0, 0]
    taken = np.zeros(n, bool)
    scores = np.empty(n)
    coin = rng.random(n)
    for pos in range(n):
        which = 0 if coin[pos] < p_exploit else 1
        o = orders[which]
        while taken[o[ptr[which]]]:
            ptr[which] += 1
        i = o[ptr[which]]
        taken[i] = True
        scores[i] = (n - pos) / n
    return scores


class MaxScoreStrategy(_ProbaStrategy):
    name = "maxscore"

    def score_proba(self, probs, features=None):
        return max_score(probs)


class EntropyStrategy(_ProbaStrategy):
    name = "entropy"

    def score_proba(self, probs, features=None):
        return entropy(probs)


class WeightedEntropyStrategy(_ProbaStrategy):
    name = "weighted_entropy"

    def score_proba(self, probs, features=None):
        self._check_fitted()
        return weighted_entropy(probs, self.class_proportions_)


class MarginStrategy(_ProbaStrategy):
    """Smallest margin between the two most likely classes first (small-text's "breaking ties")."""
    name = "margin"

    def score_proba(self, probs, features=None):
        return margin_uncertainty(probs)


class TailMassStrategy(_ProbaStrategy):
    """sum of the probabilities of the labeled set's tail classes (skewness ratio < 0.3).

    fit() trains its own re-calibration layer (focal loss, gamma 2, inverse-frequency alpha: the
    miner's RC layer) unless ``focal=False`` (plain cross-entropy head); ``score_proba`` sums any
    classifier's probabilities over the same tail classes (e.g. the biased model's own softmax)."""
    name = "tail_mass"

    def __init__(self, num_classes: int, seed: int = 0, focal: bool = True):
        super().__init__(num_classes, seed)
        self.focal = bool(focal)

    def fit(self, features, labels) -> "TailMassStrategy":
        x = check_features(features)
        y = check_labels(labels, len(x), self.num_classes)
        if not self.focal:
            super().fit(x, y)
        else:
            from .recalibration import inverse_frequency_alpha
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(self.seed)
                self.head_, _ = fit_recalibration(x, y, self.num_classes, gamma=2.0,
                                                 alpha=inverse_frequency_alpha(y, self.num_classes),
                                                 min_epochs=20, seed=self.seed)
            self.class_proportions_ = np.bincount(y, minlength=self.num_classes) / len(y)
            self.in_dim_ = x.shape[1]
        self.tail_ = tail_classes(y, self.num_classes)
        return self

    def score_proba(self, probs, features=None):
        self._check_fitted()
        return tail_mass(probs, self.tail_)


class HALStrategy(_ProbaStrategy):
    """Hybrid exploit/explore. Exploit = margin uncertainty, taken with probability ``p_exploit``
    (default 0.5); explore = Gaussian-kernel novelty of the standardised features w.r.t. the labeled
    points, kernel width = median pairwise distance of the labeled points (median heuristic) times
    ``width_scale`` (default 1). The ranking interleaves both (seeded)."""
    name = "hal"

    def __init__(self, num_classes: int, seed: int = 0, p_exploit: float = 0.5, width_scale: float = 1.0):
        super().__init__(num_classes, seed)
        if not 0.0 <= p_exploit <= 1.0:
            raise ValueError(f"p_exploit must be in [0, 1], got {p_exploit}")
        self.p_exploit = float(p_exploit)
        self.width_scale = float(width_scale)

    def _fit_extra(self, x, y):
        self.mean_ = x.mean(0)
        self.std_ = np.maximum(x.std(0), 1e-6)
        self.labeled_ = ((x - self.mean_) / self.std_).astype(np.float32)
        self.width_ = median_pairwise_distance(self.labeled_, seed=self.seed) * self.width_scale

    def score_proba(self, probs, features=None):
        self._check_fitted()
        if features is None:
            raise ValueError("HAL needs the features of the examples to score")
        x = (check_features(features, dim=self.in_dim_) - self.mean_) / self.std_
        novelty = gaussian_novelty(x, self.labeled_, self.width_)
        return interleave_rankings(margin_uncertainty(probs), novelty, self.p_exploit,
                                   np.random.default_rng(self.seed))


BASELINES = {c.name: c for c in (RandomStrategy, MaxScoreStrategy, EntropyStrategy, MarginStrategy,
                                  WeightedEntropyStrategy, TailMassStrategy, HALStrategy)}
