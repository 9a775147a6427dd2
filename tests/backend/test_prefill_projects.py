"""Pre-fills through the backend's training path (issue 21): a prediction pre-ticks a class only where
the project's own labels show it is right; otherwise it carries the score and `result: []`."""
from __future__ import annotations

import collections
import os
import time

import numpy as np

from backend import fitting
from backend.app import create_app
from backend.context import Context
from backend.fitting import train_project
from backend.label_config import LabelConfig
from backend.scoring import predict_tasks
from backend.versions import PREFILL_FILE, LoadedModel
from backend_fakes import LABEL_CONFIG, populate_project, png_bytes
from backend_helpers import app_state

PID = 4


def _noise_project(fake_ls, images, counts=(("zero", 30), ("one", 30), ("seven", 6)), unlabeled=10) -> dict:
    """Images of pure RGB noise: whatever their labels, nothing in them tells the classes apart."""
    rng = np.random.default_rng(21)
    fake_ls.add_project(PID, LABEL_CONFIG)
    truth, tid = {}, PID * 100000
    for name, n in counts:
        for _ in range(n):
            tid += 1
            fake_ls.uploads[f"{PID}/{tid}.png"] = png_bytes(rng.integers(0, 256, (28, 28, 3)))
            fake_ls.add_task(PID, tid, f"/data/upload/{PID}/{tid}.png", label=name)
        for _ in range(unlabeled):
            tid += 1
            images.files[f"/img/{tid}.png"] = png_bytes(rng.integers(0, 256, (28, 28, 3)))
            fake_ls.add_task(PID, tid, f"{images.url}/img/{tid}.png")
            truth[tid] = name
    return truth


def _train(fake_ls, make_settings, **overrides):
    settings = make_settings(label_studio_url=fake_ls.url, label_studio_api_key=fake_ls.legacy_token, **overrides)
    context = Context(settings)
    version = train_project(PID, context)  # and publish: the pool is small, every task is pushed at once
    pushed = {p["task"]: p for p in fake_ls.predictions if p["model_version"] == version}
    return settings, context, version, pushed


def _status(settings) -> dict:
    app = create_app(settings)  # a fresh process: the version is loaded from MODEL_DIR
    try:
        return app.test_client().get(f"/mcm/status?project={PID}").json
    finally:
        app_state(app).close()


def test_features_that_cannot_separate_the_classes_prefill_nothing_and_say_why(fake_ls, images, make_settings):
    truth = _noise_project(fake_ls, images)
    settings, context, version, pushed = _train(fake_ls, make_settings)
    assert set(pushed) == set(truth)  # every task still gets its score: the tab still sorts
    assert all(0.0 <= p["score"] <= 1.0 for p in pushed.values())
    assert [p["result"] for p in pushed.values() if p["result"]] == []  # before: every one pre-ticked a class
    meta = context.projects.get(PID).model.meta
    assert meta["prefill"]["prefilled"] == [] and not any(c["prefill"] for c in meta["prefill"]["classes"].values())
    reliability = meta["reliability"]
    assert reliability["verdict"] == "weak" and reliability["heldout_accuracy"] is not None
    assert "MCM_BACKBONE=resnet18" in reliability["message"] and "14 more labels" in reliability["message"]
    status = _status(settings)
    assert status["model_version"] == version and status["reliability"] == reliability
    assert status["prefill"]["classes"] == [] and "Nothing is pre-ticked" in status["prefill"]["message"]
    assert set(status["prefill"]["not_prefilled"]) == {"zero", "one", "seven"}


def test_features_that_separate_the_classes_prefill_right_answers(fake_ls, images, make_settings):
    truth = populate_project(fake_ls, images, pid=PID, head=40, tail=12, unlabeled_per_class=10)
    settings, context, version, pushed = _train(fake_ls, make_settings)
    model = context.projects.get(PID).model
    assert model.meta["reliability"]["verdict"] == "ok"
    prefilled = {t: p["result"][0]["value"]["choices"][0] for t, p in pushed.items() if p["result"]}
    assert len(prefilled) >= 0.6 * len(truth), prefilled
    assert np.mean([truth[t] == c for t, c in prefilled.items()]) >= 0.85, (prefilled, truth)
    assert set(prefilled.values()) <= set(model.meta["prefill"]["prefilled"])
    for verdict in model.meta["prefill"]["classes"].values():  # what meta.json records per class
        assert {"prefill", "threshold", "precision", "support", "reason"} <= set(verdict)
    served, _ = predict_tasks(PID, [{"id": t, "data": fake_ls.tasks[t]["data"]} for t in truth], context, model)
    assert {p["task"]: p["result"] for p in served} == {t: p["result"] for t, p in pushed.items()}
    status = _status(settings)
    assert status["prefill"]["enabled"] and status["prefill"]["classes"] == model.meta["prefill"]["prefilled"]


def test_prefill_off_pushes_scores_without_a_choice(fake_ls, images, make_settings):
    truth = populate_project(fake_ls, images, pid=PID, head=40, tail=12, unlabeled_per_class=4)
    settings, context, _version, pushed = _train(fake_ls, make_settings, prefill="off")
    assert set(pushed) == set(truth) and all(p["result"] == [] for p in pushed.values())
    status = _status(settings)
    assert not status["prefill"]["enabled"] and "MCM_PREFILL=off" in status["prefill"]["message"]
    assert status["reliability"]["verdict"] == "ok"  # the verdict is still computed and shown


def test_a_version_saved_before_prefill_checks_loads_and_prefills_nothing(fake_ls, images, make_settings):
    truth = populate_project(fake_ls, images, pid=PID, head=40, tail=12, unlabeled_per_class=4)
    settings, context, version, pushed = _train(fake_ls, make_settings)
    assert any(p["result"] for p in pushed.values())
    os.remove(os.path.join(settings.project_dir(PID), version, PREFILL_FILE))  # as an older backend saved it
    fresh = Context(settings)
    model = fresh.projects.get(PID).model
    assert model.version == version and model.prefill is None
    served, _ = predict_tasks(PID, [{"id": t, "data": fake_ls.tasks[t]["data"]} for t in truth], fresh, model)
    assert len(served) == len(truth) and all(p["result"] == [] and 0 <= p["score"] <= 1 for p in served)
    status = _status(settings)
    assert status["model_version"] == version and status["last_error"] is None
    assert status["prefill"]["classes"] == [] and "no pre-fill classifier" in status["prefill"]["message"]



def test_the_pre_fill_check_is_kept_between_close_retrainings_and_redone_when_labels_grow(make_settings):
    """A retraining every ~30 s while a team labels must not pay for a cross-validation each time."""
    check = {"classes": {"a": {"prefill": True, "threshold": 0.8}, "b": {"prefill": False, "threshold": None}},
             "prefilled": ["a"], "checked_at": time.time(), "n_labeled_checked": 100}

    def version(name, **prefill):
        return LoadedModel(version=name, miner=None, trained_backbone=None,
                           meta={"prefill": {**check, **prefill}, "reliability": {"verdict": "ok"}})
    previous = version("v1")
    assert fitting.reusable_check(previous, ["a", "b"], 110) == previous.meta["prefill"]  # +10 %: kept
    assert fitting.reusable_check(previous, ["a", "b"], 111) is None                       # grew more
    assert fitting.reusable_check(previous, ["a", "c"], 100) is None                       # other classes
    assert fitting.reusable_check(None, ["a", "b"], 100) is None
    assert fitting.reusable_check(version("v0", checked_at=time.time() - fitting.RECHECK_SECONDS - 1),
                                  ["a", "b"], 100) is None                                  # too old
    assert fitting.reusable_check(version("v0", checked_at=None), ["a", "b"], 100) is None  # never stamped

    x = np.random.default_rng(0).normal(size=(60, 4)).astype(np.float32)
    clf, meta = fitting.fit_prefill(1, make_settings(), x, np.repeat([0, 1], 30), list(range(60)),
                                    LabelConfig("image", "image", "choice", ("a", "b")),
                                    collections.Counter({"a": 30, "b": 30}), previous=previous)
    assert meta["prefill"]["kept_from"] == "v1" and meta["reliability"] == {"verdict": "ok"}
    assert clf.thresholds_.tolist() == [0.8, np.inf]
