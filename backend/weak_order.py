"""What the tail-first tab follows while a model is weak: an order no worse than random, not the miner's score.

A version's reliability verdict (backend/fitting.reliability_meta, checked at each training) is `weak`
when a plain classifier's held-out accuracy on the project's own labels does not beat always answering
the most common class by a margin. Then the miner's scores rank no better than chance, and on a
newcomer's images they once ranked worse (issue 21: 0 rare images in the first 20, the rare ones at
positions 40-219 of 236). Classification projects follow MCM_WEAK_ORDER (docs/quality.md has the figures):
- `miner` (default): the miner's score anyway. Measured on the newcomer benchmark (4 image families,
  40 labels, simple-cnn, 3 seeds): first-20 rare share 0.99x the base rate, AUC-PR 0.087 against a base
  rate of 0.059, better than the alternatives below;
- `random`: a fixed pseudo-random order from (MCM_SEED, task id): the base rate in expectation;
- `novelty`: the miner's calibrated kNN novelty against the labeled examples of the common classes
  (mcm_core.novelty): the tasks least like what is labeled first (measured: 0.64x, AUC-PR 0.064).
The real remedy is features that separate the classes (the verdict's message says which backbone).
Both orders are row-wise, so a task gets the same score alone (/predict, new tasks) or in the pool.
"""
from __future__ import annotations

import numpy as np

WEAK_ORDER_SENTENCES = {
    "novelty": "Until they do, the tail-first tab shows the tasks least like the labeled examples of the common "
               "classes first (MCM_WEAK_ORDER=novelty), not the model's scores.",
    "random": "Until they do, the tail-first tab follows a fixed random order (MCM_WEAK_ORDER=random): it finds the "
              "rare classes at their base rate, no slower.",
}


def weak_order(model, setting: str) -> str | None:
    """The order the tab follows instead of the miner's score, or None: a version whose reliability
    verdict is weak (backend/fitting.reliability_meta) follows MCM_WEAK_ORDER unless it is `miner`.
    Novelty needs the miner's kNN reference (absent when fewer than 2 head rows were labeled)."""
    if setting == "miner":
        return None
    reliability = model.meta.get("reliability")
    if not isinstance(reliability, dict) or reliability.get("verdict") != "weak":
        return None
    if setting == "novelty" and getattr(model.miner, "novelty_", None) is None:
        return None
    return setting


def fallback_scores(order: str, miner, features: np.ndarray, task_ids: list[int], seed: int) -> np.ndarray:
    """Raw scores in [0, 1) of the weak-model order, row by row (a task scores the same alone or in a pool):
    `novelty`: the miner's calibrated kNN novelty; `random`: a uniform number drawn from (seed, task id)."""
    if order == "novelty":
        return np.asarray(miner.novelty_score(features), np.float64)
    return np.asarray([np.random.default_rng([int(seed), int(t)]).random() for t in task_ids], np.float64)
