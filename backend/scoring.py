"""Map mining scores into Label Studio predictions.

Label Studio silently drops predictions whose score is outside [0, 1], so the
raw score S (0 <= S <= miner.score_upper_bound) is mapped monotonically:
    linear: s = clip(S / bound, 0, 1)
    sqrt:   s = sqrt(clip(S / bound, 0, 1))   (default; spreads the many small scores)
Higher s = more likely a tail class: the "Tail classes first" tab sorts by s, descending.
"""
from __future__ import annotations

import numpy as np

from .label_config import ImageChoicesConfig


def map_scores(raw: np.ndarray, upper_bound: float, transform: str = "sqrt") -> np.ndarray:
    raw = np.asarray(raw, dtype=np.float64)
    bound = float(upper_bound) if upper_bound and upper_bound > 0 else 1.0
    unit = np.clip(np.nan_to_num(raw / bound, nan=0.0, posinf=1.0, neginf=0.0), 0.0, 1.0)
    if transform == "sqrt":
        unit = np.sqrt(unit)
    elif transform != "linear":
        raise ValueError(f"unknown score transform {transform!r}")
    return unit


def choice_result(config: ImageChoicesConfig, label: str) -> list[dict]:
    """A Choices pre-annotation in Label Studio's result format."""
    return [{
        "from_name": config.control_name,
        "to_name": config.image_name,
        "type": "choices",
        "value": {"choices": [label]},
    }]


def score_features(miner, features: np.ndarray, transform: str) -> tuple[np.ndarray, np.ndarray]:
    """(scores in [0, 1], predicted class index) per feature row."""
    if len(features) == 0:
        return np.zeros(0), np.zeros(0, np.int32)
    scores = map_scores(miner.score(features), miner.score_upper_bound, transform)
    labels = np.asarray(miner.predict_proba(features)).argmax(axis=1).astype(np.int32)
    return scores, labels
