"""Feature-space novelty against the labeled head classes, and its fusion with the tail mass.

Why: the re-calibrated tail mass T = sum_{k in tail} p_k finds examples of tail classes the RC
layer has learned, but it cannot find a class with no labeled example (in the label config but
never annotated, or absent from it): the RC layer has no reason to put mass there. Such examples
are far, in the backbone's feature space, from every labeled head-class example. The novelty
N(x) in [0, 1) is the calibrated mean cosine distance to the k nearest labeled head-class
examples: the fraction of labeled head examples (leave-one-out) that are less novel. The decision
module (mcm_core.scoring.tail_or_novel) fuses it with the tail mass.
"""
from __future__ import annotations

import numpy as np
import torch

from .rowwise import DEFAULT_BLOCK, apply_rowwise

# Reference set cap: scoring costs |ref| * D multiply-adds per example (2048 x 512 ~ 1 M, a few
# per cent of a resnet18 forward pass's 1.8 G); on MNIST-5k 500 refs lost ~0.01 AUC-PR vs 2000.
DEFAULT_MAX_REFERENCE = 2048
# Smallest smoothing bandwidth of the novelty calibration, in cosine distance (see calibrated_novelty).
MIN_BANDWIDTH = 0.05
DEFAULT_K = 5  # k=5 vs 10 vs 20 on the 8 benchmark settings: mean AUC-PR 0.933, 0.930, 0.924


def l2_normalise(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def knn_cosine_distance(ref_unit: np.ndarray, x: np.ndarray, k: int, leave_one_out: bool = False,
                        chunk: int = DEFAULT_BLOCK) -> np.ndarray:
    """Mean cosine distance (1 - cos) from each row of x to its k nearest rows of ref_unit
    (ref_unit already L2-normalised). leave_one_out: x is ref_unit itself, skip each row's self-match.

    A row's result must not depend on its batch (the backend scores tasks one by one and whole pools;
    the calibration amplifies tiny differences when the labeled head rows are tightly clustered):
    the similarities are computed in zero-padded blocks of exactly `chunk` rows (mcm_core.rowwise),
    in float32, about twice as fast as float64 (the matmul is most of the cost of scoring a pool)."""
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    n_ref = len(ref_unit) - (1 if leave_one_out else 0)
    if n_ref < 1:
        raise ValueError("the reference set needs at least one row (two with leave_one_out)")
    k = min(k, n_ref)
    ref_t = torch.from_numpy(np.ascontiguousarray(ref_unit, dtype=np.float32)).T.contiguous()
    take = k + 1 if leave_one_out else k  # one more, so the self-match can be dropped

    def nearest(block: torch.Tensor) -> torch.Tensor:  # (B, take) similarities, then their indices
        top = torch.topk(block @ ref_t, take, dim=1, largest=True)
        return torch.cat([top.values, top.indices.to(torch.float32)], dim=1)

    found = apply_rowwise(nearest, l2_normalise(x), chunk)
    similarity, index = found[:, :take].astype(np.float64), found[:, take:]
    if leave_one_out:  # drop each row's own entry (or, if a duplicate outranked it, the k+1-th)
        own = index == np.arange(len(found))[:, None]
        own[~own.any(1), -1] = True
        similarity = similarity[~own].reshape(len(found), k)
    return np.maximum((1.0 - similarity).mean(1), 0.0)


def calibrated_novelty(reference_distances: np.ndarray, d: np.ndarray, grid: int = 4096) -> np.ndarray:
    """Map distances to [0, 1) by a smoothed empirical CDF of the reference distances r_1..r_n:

        N(d) = (1 - e) * mean_i Phi((d - r_i) / h) + e * d / (d + s),   e = 1 / (n + 1),

    s = std of the references, h = max(s / 4, MIN_BANDWIDTH) in cosine-distance units. The
    smoothing bounds the slope (<= 1 / (h sqrt(2 pi)) + e / s <= ~8 + e / s): the same image's
    features differ by ~1e-7 between processes (backbone threads, batch sizes), and a CDF that is
    steep on tightly clustered labeled rows (a step CDF, or h = s / 4 with s = 0.003 in the
    backend's tests) turned that into score differences of 1e-5. The floor costs no ranking
    quality (benchmark mean AUC-PR 0.933 with h = s / 4, 0.935 with the 0.05 floor). The small
    second term keeps N strictly increasing beyond the references, so the most novel examples
    keep their order instead of all reaching 1. The smoothed CDF is tabulated
    on ``grid`` points up to r_n + 8h and interpolated linearly."""
    return NoveltyCalibration(reference_distances, grid)(d)


class NoveltyCalibration:
    """`calibrated_novelty` with its table built once: the table costs ~0.1 s for 2,048 references,
    which dominated scoring a few tasks at a time (/predict, new tasks)."""

    def __init__(self, reference_distances: np.ndarray, grid: int = 4096):
        self.reference_distances = reference_distances
        r = np.sort(np.asarray(reference_distances, dtype=np.float64).reshape(-1))
        if r.size == 0:
            raise ValueError("reference_distances is empty")
        self.s = max(float(r.std()), 1e-6)
        h = max(self.s / 4, MIN_BANDWIDTH)
        self.e = 1.0 / (r.size + 1)
        self.xs = np.linspace(0.0, r[-1] + 8 * h, grid)
        self.cdf = np.empty(grid)
        for i in range(0, grid, 256):  # (256, n) blocks keep memory small for large n
            z = torch.from_numpy((self.xs[i:i + 256, None] - r[None, :]) / (h * np.sqrt(2.0)))
            self.cdf[i:i + 256] = (0.5 * (1.0 + torch.special.erf(z))).mean(1).numpy()

    def __call__(self, d: np.ndarray) -> np.ndarray:
        d = np.maximum(np.asarray(d, dtype=np.float64), 0.0)
        smooth = np.interp(d, self.xs, self.cdf)  # 1 beyond the table (Phi > 1 - 1e-15 there)
        return (1.0 - self.e) * smooth + self.e * d / (d + self.s)


def stratified_reference(labels: np.ndarray, rows: np.ndarray, cap: int, seed: int) -> np.ndarray:
    """Indices of at most ``cap`` of ``rows`` (a boolean mask), as equal a share per class as the
    classes allow, chosen with a seeded generator (deterministic)."""
    if cap < 2:
        raise ValueError(f"the reference cap must be >= 2, got {cap}")
    idx = np.flatnonzero(rows)
    if len(idx) <= cap:
        return idx
    rng = np.random.default_rng(seed)
    groups = [rng.permutation(idx[labels[idx] == k]) for k in np.unique(labels[idx])]
    take = np.zeros(len(groups), int)
    left = cap
    while left > 0:  # water-filling: equal shares, small classes give their unused share away
        open_ = [g for g in range(len(groups)) if take[g] < len(groups[g])]
        share = max(1, left // len(open_))
        for g in open_:
            add = min(share, len(groups[g]) - take[g], left)
            take[g] += add
            left -= add
            if left == 0:
                break
    return np.sort(np.concatenate([g[:t] for g, t in zip(groups, take)]))


class NoveltyScorer:
    """kNN cosine novelty against a (capped, class-stratified) reference set of labeled rows."""

    def __init__(self, k: int = DEFAULT_K, max_reference: int = DEFAULT_MAX_REFERENCE, seed: int = 0):
        if k < 1:
            raise ValueError(f"novelty_k must be >= 1, got {k}")
        if max_reference < 2:
            raise ValueError(f"novelty_max_reference must be >= 2, got {max_reference}")
        self.k, self.max_reference, self.seed = int(k), int(max_reference), int(seed)
        self.reference: np.ndarray | None = None            # (R, D) float32, unit rows
        self.reference_distances: np.ndarray | None = None  # (R,) leave-one-out kNN distances
        self._calibration: NoveltyCalibration | None = None  # built from reference_distances when first needed

    def fit(self, features: np.ndarray, labels: np.ndarray, rows: np.ndarray) -> "NoveltyScorer":
        idx = stratified_reference(labels, rows, self.max_reference, self.seed)
        if len(idx) < 2:
            raise ValueError("novelty needs at least 2 labeled head-class rows")
        self.reference = l2_normalise(features[idx])
        self.reference_distances = np.sort(knn_cosine_distance(self.reference, self.reference, self.k,
                                                               leave_one_out=True))
        return self

    def score(self, features: np.ndarray) -> np.ndarray:
        if self.reference is None:
            raise ValueError("novelty scorer is not fitted")
        if self._calibration is None or self._calibration.reference_distances is not self.reference_distances:
            self._calibration = NoveltyCalibration(self.reference_distances)
        return self._calibration(knn_cosine_distance(self.reference, features, self.k))
