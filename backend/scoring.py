"""Map mining scores into Label Studio predictions.

Label Studio silently drops predictions whose score is outside [0, 1], so the
raw score S (0 <= S <= miner.score_upper_bound) is mapped monotonically:
    linear: s = clip(S / bound, 0, 1)
    sqrt:   s = sqrt(clip(S / bound, 0, 1))   (default; spreads the many small scores)
Higher s = more likely a tail class. MCM_SCORE_DIRECTION=tail-low returns 1 - s,
for Uncertainty sampling, which serves the lowest score first.
"""
from __future__ import annotations

import numpy as np

from .label_config import ImageChoicesConfig


def map_scores(raw: np.ndarray, upper_bound: float, transform: str = "sqrt",
               direction: str = "tail-high") -> np.ndarray:
    raw = np.asarray(raw, dtype=np.float64)
    bound = float(upper_bound) if upper_bound and upper_bound > 0 else 1.0
    unit = np.clip(np.nan_to_num(raw / bound, nan=0.0, posinf=1.0, neginf=0.0), 0.0, 1.0)
    if transform == "sqrt":
        unit = np.sqrt(unit)
    elif transform != "linear":
        raise ValueError(f"unknown score transform {transform!r}")
    if direction == "tail-low":
        unit = 1.0 - unit
    elif direction != "tail-high":
        raise ValueError(f"unknown score direction {direction!r}")
    return unit


def choice_result(config: ImageChoicesConfig, label: str) -> list[dict]:
    """A Choices pre-annotation in Label Studio's result format."""
    return [{
        "from_name": config.control_name,
        "to_name": config.image_name,
        "type": "choices",
        "value": {"choices": [label]},
    }]


def predictions_for(miner, features: np.ndarray, config: ImageChoicesConfig, version: str,
                    transform: str, direction: str) -> list[dict]:
    """One Label Studio prediction dict per feature row (without the task id)."""
    if len(features) == 0:
        return []
    raw = miner.score(features)
    proba = miner.predict_proba(features)
    scores = map_scores(raw, miner.score_upper_bound, transform, direction)
    labels = np.asarray(proba).argmax(axis=1)
    return [{"result": choice_result(config, config.classes[int(c)]), "score": float(s),
             "model_version": version} for c, s in zip(labels, scores)]
