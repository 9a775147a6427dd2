"""The decision module's scores: "tail or novel" (the default), the autoencoder's reconstruction
errors, and the detection (top-K) aggregation of per-detection scores into an image score."""
from __future__ import annotations

from typing import Sequence

import numpy as np

# S = ||p - q||^2 for two probability vectors is at most 2 (all mass on different classes).
RECONSTRUCTION_SCORE_BOUND = 2.0


def softmax(z: np.ndarray, axis: int = -1) -> np.ndarray:
    z = np.asarray(z, dtype=np.float64)
    z = z - z.max(axis=axis, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=axis, keepdims=True)


def reconstruction_score(p: np.ndarray, p_hat: np.ndarray) -> np.ndarray:
    """S = ||p - p_hat||^2 per row (both are probability vectors, so 0 <= S <= 2)."""
    p = np.asarray(p, dtype=np.float64)
    p_hat = np.asarray(p_hat, dtype=np.float64)
    if p.shape != p_hat.shape:
        raise ValueError(f"shape mismatch: {p.shape} vs {p_hat.shape}")
    return ((p - p_hat) ** 2).sum(axis=-1)


def normalise_weights(weights, num_classes: int) -> np.ndarray:
    """Non-negative per-class weights rescaled to sum 1 (ValueError on a bad vector)."""
    w = np.asarray(weights, dtype=np.float64)
    if w.shape != (num_classes,) or not np.isfinite(w).all() or (w < 0).any() or w.sum() <= 0:
        raise ValueError(f"class weights must be {num_classes} finite non-negative values with a positive sum")
    return w / w.sum()


def weighted_reconstruction_score(p: np.ndarray, p_hat: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """S_w = sum_k w_k (p_k - p_hat_k)^2 per row.

    With w = normalised inverse labeled class frequency, an error in a tail-class dimension (mass
    the head-trained autoencoder cannot reproduce) counts far more than the same error spread over
    head classes; still a reconstruction error of the AE."""
    p = np.asarray(p, dtype=np.float64)
    p_hat = np.asarray(p_hat, dtype=np.float64)
    try:  # p may be broadcast against an ensemble of reconstructions (n_models, M, C)
        np.broadcast_shapes(p.shape, p_hat.shape)
    except ValueError:
        raise ValueError(f"shape mismatch: {p.shape} vs {p_hat.shape}") from None
    if p.shape[-1:] != p_hat.shape[-1:]:
        raise ValueError(f"shape mismatch: {p.shape} vs {p_hat.shape}")
    w = np.asarray(weights, dtype=np.float64)
    if w.shape != p.shape[-1:]:
        raise ValueError(f"weights must have shape ({p.shape[-1]},), got {w.shape}")
    return ((p - p_hat) ** 2 * w).sum(axis=-1)


def weighted_score_bound(weights: np.ndarray) -> float:
    """Exact max of S_w over pairs of probability vectors: w_i + w_j for the two largest weights.

    S_w is convex in (p, p_hat), so its max over the product of simplices is at a vertex pair
    (e_i, e_j), where it is w_i + w_j (0 if i == j). Weights summing to 1 give a bound <= 1."""
    w = np.sort(np.asarray(weights, dtype=np.float64).reshape(-1))[::-1]
    if w.size == 0:
        raise ValueError("weights must not be empty")
    return float(w[:2].sum()) if w.size >= 2 else 0.0


def aggregate_detection_scores(per_image_scores: Sequence[np.ndarray], per_image_confidences: Sequence[np.ndarray],
                               k: int = 3, empty_score: float = 0.0) -> np.ndarray:
    """Image score = mean S over its K most confident detections (fewer if it has fewer).

    An image with no detection gets ``empty_score`` (default 0.0 = "nothing to mine", ranked last,
    since S >= 0): with no object there is no tail-class object to find.
    Ties in confidence keep detection order (stable)."""
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if len(per_image_scores) != len(per_image_confidences):
        raise ValueError("per_image_scores and per_image_confidences must have the same length")
    out = np.empty(len(per_image_scores), dtype=np.float64)
    for i, (s, c) in enumerate(zip(per_image_scores, per_image_confidences)):
        s = np.asarray(s, dtype=np.float64).reshape(-1)
        c = np.asarray(c, dtype=np.float64).reshape(-1)
        if s.shape != c.shape:
            raise ValueError(f"image {i}: {s.size} scores but {c.size} confidences")
        if s.size == 0:
            out[i] = empty_score
            continue
        top = np.argsort(-c, kind="stable")[:k]
        out[i] = s[top].mean()
    return out


def tail_or_novel(tail_mass: np.ndarray, novelty: np.ndarray) -> np.ndarray:
    """1 - (1 - T)(1 - N): high when an example is likely a known tail class OR unlike every
    labeled head example; in [0, 1] for T, N in [0, 1]."""
    t = np.clip(np.asarray(tail_mass, dtype=np.float64), 0.0, 1.0)
    n = np.clip(np.asarray(novelty, dtype=np.float64), 0.0, 1.0)
    if t.shape != n.shape:
        raise ValueError(f"shape mismatch: {t.shape} vs {n.shape}")
    return 1.0 - (1.0 - t) * (1.0 - n)
