"""What a prediction pre-ticks: the class of the version's checked pre-fill classifier, or nothing.

Not the miner's class: the RC layer is built to lift the tail and over-predicts it. The version's
PrefillClassifier (mcm_core.prefill: a plain softmax classifier, checked by cross-validation at
training, backend/fitting.py) names the class, and only for the classes whose held-out precision
allows it, at the task's (box's) confidence; any other prediction carries the score and `result: []`
(Label Studio 1.23.2 stores it, keeps its score for the tab's order, and the annotator starts
blank). MCM_PREFILL=off: never a pre-ticked class or box.
"""
from __future__ import annotations

import numpy as np


def prefill_labels(model, features: np.ndarray, settings) -> np.ndarray:
    """(M,) int32: the class each row's prediction pre-ticks, -1 for none (MCM_PREFILL=off, a version
    without a pre-fill classifier, or a class or confidence its held-out precision does not allow)."""
    if settings.prefill == "off" or getattr(model, "prefill", None) is None or len(features) == 0:
        return np.full(len(features), -1, np.int32)
    return model.prefill.prefill_labels(features)


TAIL_MASS_LIMIT = 0.5  # a task whose RC tail mass reaches this is likely tail: no common class pre-ticked on it
NOVELTY_LIMIT = 0.9    # ... nor on one less like the labeled common rows than 90 % of those rows are


def spare_likely_tail(prefill: np.ndarray, miner, features: np.ndarray, limit: float = TAIL_MASS_LIMIT,
                      novelty_limit: float = NOVELTY_LIMIT) -> np.ndarray:
    """`prefill` with -1 where a common (head) class would be pre-ticked on a task the miner finds likely
    tail: its re-calibrated tail mass >= `limit`, its re-calibrated class is a tail class (the queue's
    buckets: the tab serves such a task for that class), or its calibrated novelty against the labeled
    common rows >= `novelty_limit` (about 10 % of common images reach it; they start blank, which costs a click).

    Why: the pre-fill check measures precision on the labels' class mix, but the tail-first tab serves
    the rare-rich head of the pool, where the plain classifier calls rare images common. On the newcomer
    benchmark's MNIST (40 labels) the pool's pre-fills were right 85 % of the time, those among the first
    20 served 64 %; with the tail-mass rule alone the first 20 still held rare images pre-ticked common
    (4 of 8 wrong with simple-cnn): the tab serves them first for their novelty, which the tail mass does
    not see. A rare image saved as a common class is the loss this product exists to prevent, so those
    tasks start blank. The tail class rule: the queue serves each tail class's bucket (the tasks whose
    re-calibrated class it is), and a queue that teaches by the plain classifier's doubt (queue_teach_by)
    serves there the tasks that classifier is least sure of: in the browser stage it served a 7 pre-ticked
    9 and a 9 pre-ticked 3, with tail mass and novelty below the limits.
    Row-wise, like the rest (a miner without a novelty reference uses the tail rules alone)."""
    prefill = np.asarray(prefill, np.int32)
    tail = list(getattr(miner, "tail_", []) or [])
    head_ticked = (prefill >= 0) & ~np.isin(prefill, tail)
    if not head_ticked.any():
        return prefill
    if tail:
        p = np.asarray(miner.predict_proba(features), np.float64)
        likely_tail = (p[:, tail].sum(1) >= limit) | np.isin(p.argmax(1), tail)
    else:
        likely_tail = np.zeros(len(prefill), bool)
    if getattr(miner, "novelty_", None) is not None:
        likely_tail |= np.asarray(miner.novelty_score(features)) >= novelty_limit
    return np.where(head_ticked & likely_tail, -1, prefill).astype(np.int32)


def prefill_summary(model, mode: str) -> dict | None:
    """/mcm/status "prefill": which classes a prediction may pre-tick, and why not the others
    (from the version's meta.json "prefill", written at training; backend/fitting.fit_prefill)."""
    if model is None:
        return None
    checked = model.meta.get("prefill")
    verdicts = checked.get("classes", {}) if isinstance(checked, dict) else {}
    names = [n for n in model.meta.get("classes", []) if n in verdicts]  # the label config's order
    classes = [n for n in names if verdicts[n].get("prefill")] if model.prefill is not None else []
    not_prefilled = {n: verdicts[n].get("reason") for n in names if n not in classes}
    if mode == "off":
        message = "MCM_PREFILL=off: no prediction pre-ticks a class or box; the scores still order the queue."
    elif model.prefill is None:
        message = ("This version has no pre-fill classifier (saved before pre-fills were checked, or its file is "
                   "unreadable): nothing is pre-ticked until the next training.")
    elif classes:
        message = (f"Pre-ticked when the task's confidence is high enough: {', '.join(classes)}. The other classes "
                   f"are never pre-ticked: their held-out precision in this project's labels is below "
                   f"{checked.get('min_precision', 0.9):.0%} or rests on too few labels.")
    else:
        message = ("Nothing is pre-ticked: no class reaches a held-out precision of "
                   f"{checked.get('min_precision', 0.9):.0%} in this project's labels; annotators start blank.")
    return {"enabled": mode != "off" and model.prefill is not None, "classes": classes if mode != "off" else [],
            "not_prefilled": not_prefilled, "message": message}
