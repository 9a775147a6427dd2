"""Issue 22: an honest mining report.

Seen by a new admin: "Expected at random" showed 16.8 % ("tasks predicted as a tail class") against a
true base rate of 5.9 %, so "0 % since ordering" looked less bad than it was; the held-out card said
"being computed ... reload in a minute" while the answer was "too little data"; nothing said that the
ranking was no better than random on the project's own labels.
"""
from __future__ import annotations

import numpy as np
import pytest

from backend.report import stats as report
from backend.report.page import _cards
from backend.report.source import _heldout_part, base_rate_part


def _summary(held: dict, tail_yield: dict | None = None) -> dict:
    y = {"before": {"n": 12, "n_tail": 1, "share": 1 / 12}, "after": {"n": 10, "n_tail": 0, "share": 0.0},
         **base_rate_part({"n": 12, "n_tail": 1}, None), "lift_after": None}
    return {"tail_yield": {**y, **(tail_yield or {})}, "heldout": held, "ordering": {"enabled_at": "2026-01-01"},
            "pool": {"likely_tail_left": None, "n_unlabeled": 48, "predicted_tail": 9},
            "tail_classes": ["seven"], "classes": ["zero", "one", "seven"], "tail_rule": "counted",
            "n_labeled_tasks": 22, "n_annotations": 22}


def test_expected_at_random_is_an_estimate_with_its_interval_or_unknown():
    # 1 tail label in 12 before ordering: 8 % with a 95 % interval of 1.5-35 %: not known to +-50 %.
    part = base_rate_part({"n": 12, "n_tail": 1}, None)
    assert part["base_rate"] is None and part["base_rate_method"].startswith("unknown")
    assert part["base_rate_best"]["value"] == pytest.approx(1 / 12, abs=1e-4)
    page = _cards(_summary({"status": "too_little_data", "message": "1 labeled tail-class task(s)"}))
    assert "Expected at random (estimate)" in page and ">unknown<" in page
    assert "predicted" not in page.split("Expected at random")[1].split('<div class="card">')[0]
    # 30 tail labels in 300 before ordering: 10 %, 95 % interval within +-50 %: shown, labeled an estimate.
    part = base_rate_part({"n": 300, "n_tail": 30}, None)
    assert part["base_rate"] == 0.1 and part["base_rate_estimate"]["source"] == "labels before ordering"
    page = _cards(_summary({"status": "ready"}, part))
    assert ">10.0%<" in page and "estimate, 95 % interval 7.1%-13.9%" in page
    # Without labels before ordering nor a held-out calibration: unknown, never the predicted share.
    part = base_rate_part(None, None)
    assert part["base_rate"] is None and part["base_rate_best"] is None
    assert "never the share of tasks predicted as tail" in part["base_rate_method"]


def test_the_calibrated_expected_count_counts_tail_per_score_bin():
    scores = np.r_[np.linspace(0.0, 0.4, 40), np.linspace(0.6, 1.0, 10)]
    is_tail = np.r_[np.zeros(40, bool), np.ones(10, bool)]
    table = report.calibration_table(is_tail, scores)
    assert sum(table["n"]) == 50 and sum(table["n_tail"]) == 10 and len(table["n"]) == len(table["edges"]) + 1
    pool = np.r_[np.full(90, 0.1), np.full(10, 0.9)]  # 10 pool tasks score like the tail rows
    expected, variance = report.calibrated_count(table, pool)
    assert expected == 10.0 and variance > 0  # the 90 low-scored ones in bins without a tail row: uncertain
    estimate = report.rate_from_calibration(0, 0, expected, variance, len(pool))
    assert estimate["low"] < 0.1 < estimate["high"]


def test_beats_random_needs_a_margin():
    assert report.beats_random(0.10, 0.07, [0.09, 0.11, 0.10]) == {"better": False, "margin": 0.05}
    assert report.beats_random(0.60, 0.07, [0.55, 0.65, 0.60])["better"] is True
    noisy = report.beats_random(0.30, 0.07, [0.0, 0.9, 0.0])  # one tail row per fold: too noisy to tell
    assert noisy["better"] is False and noisy["margin"] > 0.23


def test_the_first_card_says_when_the_ranking_is_no_better_than_random():
    held = {"status": "ready", "auc_pr": 0.081, "prevalence": 0.07, "best_baseline": "entropy",
            "best_baseline_auc_pr": 0.09, "evaluated_version": "v", "version": "v", "better_than_random": False,
            "random_margin": 0.05}
    page = _cards(_summary(held))
    first = page.split('<div class="card">')[1]
    assert "Tail yield since ordering" in first and "no better than random" in first and "0.081" in first
    assert "no better than random" not in _cards(_summary({**held, "better_than_random": True}))


def test_the_first_card_says_when_the_model_is_weak_and_what_would_help():
    weak = {"verdict": "weak", "heldout_accuracy": 0.2, "majority_rate": 0.3,
            "message": "The features do not separate the classes well: ... What would help: 80 more labels."}
    page = _cards({**_summary({"status": "ready"}), "reliability": weak})
    first = page.split('<div class="card">')[1]
    assert "Weak model: The features do not separate the classes well" in first and "80 more labels" in first
    for fine in ({**weak, "verdict": "ok"}, None, "not a dict"):
        assert "Weak model" not in _cards({**_summary({"status": "ready"}), "reliability": fine})


class FakeHeldOut:
    """The held-out evaluation's state as backend/heldout.HeldOut answers it, recording requests."""

    folds = 5

    def __init__(self, state: str = "not requested") -> None:
        self.current = state
        self.requested: list[str] = []

    def state(self, project_id, version):
        return self.current, None

    def request(self, project_id, version):
        self.requested.append(version)
        self.current = "queued"

    def read(self, project_id, version):
        return None

    def latest_ready(self, project_id, up_to):
        return None


def test_too_little_data_is_said_at_once_never_being_computed():
    heldout = FakeHeldOut()
    part, shown = _heldout_part(heldout, 1, "mcm-v1-x", labels_now=(12, 1, True))
    assert part["status"] == "too_little_data" and shown is None and heldout.requested == []
    assert part["message"] == "12 labeled tasks with images; the held-out evaluation needs at least 20"
    page = _cards(_summary(part))
    assert "being computed" not in page and "needs at least 20" in page
    part, _ = _heldout_part(heldout, 1, "mcm-v1-x", labels_now=(40, 2, True))
    assert part["message"].startswith("2 labeled tail-class task(s)") and heldout.requested == []
    part, _ = _heldout_part(heldout, 1, "mcm-v1-x", labels_now=(40, 6, True))  # enough: computed in the background
    assert part["status"] == "queued" and heldout.requested == ["mcm-v1-x"]
