"""Issue 19: nothing stored in Label Studio stops a project, and nothing to score is a normal state.

Annotations, predictions, tabs and label configs are written by people and other tools; the backend
reads them back at every retraining. One bad item (a rotated box whose image is 0.5 px high, an
image 1e300 px wide, a date in year 0, a `result` that is a number) is skipped, logged and counted
in /mcm/status, and every other item still trains, scores, publishes and reports. A project whose
tasks are all labeled trains, publishes nothing (Label Studio refuses a model_version without
predictions) and says so, instead of retrying forever.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path
from xml.sax.saxutils import quoteattr

import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings as hsettings, strategies as st

from backend.app import create_app, service_of
from backend.boxes import rectangle_result
from backend.fitting import train_project
from backend.label_config import parse_label_config
from backend.annotations import task_boxes, task_label
from backend.maintainer import CHECK_LABEL_STUDIO_SECONDS, Maintainer
from backend.refresh import score_and_push_tasks
from backend.settings import Settings
from backend.validation import Skipped, image_side, parse_timestamp
from backend_fakes import LABEL_CONFIG, png_bytes, populate_project
from backend_helpers import ShiftedClock

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))
from make_detection_data import DETECTOR_VERSION, annotation_result, detector_prediction  # noqa: E402
from make_detection_data import LABEL_CONFIG as DETECTION_CONFIG  # noqa: E402

MINER = '{"n_models": 1, "ae_min_steps": 20, "ae_max_steps": 40, "rc_min_epochs": 2, "rc_max_epochs": 10}'
ROTATED_HALF_PIXEL = {"original_width": 48, "original_height": 0.5, "rotation": 45}
HUGE_IMAGE = {"original_width": 1e300, "original_height": 48, "rotation": 0}


# --- the checks, one by one ---------------------------------------------------------------------------
@pytest.mark.parametrize("value, expected", [
    ("2026-01-02T03:04:05.123456Z", 1767323045.123456), ("2026-01-02", 1767312000.0),
    ("0001-01-01T00:00:00+14:00", None), ("9999-12-31T23:59:59-14:00", None), ("1969-12-31T23:59:59Z", None),
    ("2026", None), ("", None), ("x" * 100, None), (5, None), (None, None), (["2026-01-02"], None)])
def test_parse_timestamp_refuses_what_no_calendar_holds(value, expected):
    parsed = parse_timestamp(value)
    assert (parsed.timestamp() if parsed else None) == (pytest.approx(expected) if expected else None)


@pytest.mark.parametrize("value, expected", [
    (48, 48), (1, 1), (100000, 100000), (99.9, 99), (0.5, None), (0, None), (-3, None), (1e300, None),
    (2**70, None), (float("nan"), None), (float("inf"), None), ("48", None), (True, None), (None, None)])
def test_image_side_is_a_pixel_count_within_bounds(value, expected):
    assert image_side(value) == expected


def _rectangle(**changes) -> dict:
    region = rectangle_result("label", "image", [0.1, 0.1, 0.4, 0.5], "3", 0.9, (48, 48))
    value_keys = {"x", "y", "width", "height", "rotation", "rectanglelabels"}
    region["value"].update({k: v for k, v in changes.items() if k in value_keys})
    region.update({k: v for k, v in changes.items() if k not in value_keys})
    return region


@pytest.mark.parametrize("bad", [ROTATED_HALF_PIXEL, HUGE_IMAGE, {"original_width": float("nan"), "rotation": 45},
                                 {"original_width": "48", "original_height": -2, "rotation": 30},
                                 {"original_width": 1, "original_height": 1, "rotation": 45}])
def test_an_unusable_image_size_is_counted_and_the_box_kept(bad):
    config = parse_label_config(DETECTION_CONFIG)
    skipped = Skipped(7)
    task = {"id": 70, "annotations": [{"id": 1, "result": [_rectangle(**bad), _rectangle()]}]}
    found, reason = task_boxes(task, config, skipped)
    assert reason is None and len(found.boxes) == 2 and np.isfinite(found.boxes).all()
    sane = bad.get("original_width") == 1
    assert skipped.count("image_sizes") == (0 if sane else 1)
    assert sane or skipped.as_dict()["recent"][0]["task"] == 70


@pytest.mark.parametrize("region", [
    5, "x", None, [], {"from_name": "label", "value": [1]},
    {"from_name": "label", "value": {"x": 1e300, "y": 0, "width": 1e300, "height": 5}},
    {"from_name": "label", "value": {"x": -1e308, "y": 0, "width": 1e308, "height": 5, "rotation": 45},
     "original_width": 100000, "original_height": 100000},
    {"from_name": "label", "value": {"x": 1, "y": 1, "width": 5, "height": 5, "rotation": float("nan")}},
    {"from_name": "label", "value": {"x": 1, "y": 1, "width": 5, "height": 5, "rectanglelabels": [{"a": 1}]}},
])
def test_a_malformed_rectangle_is_counted_and_skipped(region):
    config = parse_label_config(DETECTION_CONFIG)
    skipped = Skipped(7)
    found, reason = task_boxes({"id": 71, "annotations": [{"id": 1, "result": [region, _rectangle()]}]}, config,
                               skipped)
    assert reason is None and len(found.boxes) == 1 and skipped.count("regions") == 1


@pytest.mark.parametrize("annotations", [
    [5, {"id": 2, "result": 7}, {"id": "b", "updated_at": None, "result": [{"from_name": "choice", "value": [1]}]},
     {"id": 1, "updated_at": None, "result": [{"from_name": "choice", "value": {"choices": {"0": "x"}}}]}],
    [{"id": {"x": 1}, "updated_at": "0001-01-01T00:00:00+14:00", "result": "zero"}, {"id": 3, "result": None}],
])
def test_garbage_annotations_give_no_label_and_raise_nothing(annotations):
    config = parse_label_config(LABEL_CONFIG)
    skipped = Skipped(7)
    label, reason = task_label({"id": 72, "annotations": annotations}, config, skipped)
    assert label is None and "no non-cancelled annotation" in reason
    assert sum(v for k, v in skipped.as_dict().items() if k != "recent") >= 1


def test_unusable_class_values_are_skipped_not_fatal():
    values = ["zero", "", "  ", "zero", "x" * 600, "seven"]
    xml = ('<View><Image name="image" value="$image"/><Choices name="choice" toName="image">'
           + "".join(f"<Choice value={quoteattr(v)}/>" for v in values) + "</Choices></View>")
    skipped = Skipped(7)
    assert parse_label_config(xml, skipped).classes == ("zero", "seven")
    assert skipped.count("label_values") == 3  # the sdk keeps one of the two "zero"


# --- one detection project: a bad region in an annotation and in a candidate prediction ------------------
def _det_settings(tmp_path, fake, **overrides) -> Settings:
    values = dict(model_dir=str(tmp_path / "models"), backbone="simple-cnn", allowed_hosts=("127.0.0.1",),
                  debounce_seconds=0.0, label_studio_url=fake.url, label_studio_api_key=fake.legacy_token,
                  cnn_epochs=1, retrain_min_interval=0.0, maintain_seconds=3600.0, miner_options=MINER,
                  detection_candidates=f"label-studio:{DETECTOR_VERSION}", detection_region_min_confidence=0.0)
    values.update(overrides)
    return Settings(**values)


def _detection_project(fake, images, pid: int, n_labeled: int = 8, n_pool: int = 4) -> tuple[list[int], list[int]]:
    """Noise images with two labeled boxes each (classes 2/3, and 5/3), a pool with a detector's predictions."""
    fake.add_project(pid, DETECTION_CONFIG, control_name="label")
    rng = np.random.default_rng(pid)
    labeled, pool = [], []
    for i in range(n_labeled + n_pool):
        tid = pid * 1000 + i + 1
        images.files[f"/img/{tid}.png"] = png_bytes((rng.random((48, 48)) * 255).astype(np.uint8))
        fake.add_task(pid, tid, f"{images.url}/img/{tid}.png")
        if i < n_labeled:
            fake.tasks[tid]["annotations"].append({
                "id": tid, "was_cancelled": False, "created_at": "2026-01-01T00:00:00Z",
                "updated_at": "2026-01-01T00:00:00Z",
                "result": annotation_result([[0.1, 0.1, 0.4, 0.5], [0.5, 0.4, 0.9, 0.9]], [2, 3] if i % 3 else [5, 3])})
            labeled.append(tid)
        else:
            prediction = detector_prediction([[0.1, 0.1, 0.5, 0.5], [0.4, 0.4, 0.8, 0.9]], [0.8, 0.6])
            fake.predictions.append({**prediction, "task": tid, "project": pid, "id": fake.next_prediction_id})
            fake.next_prediction_id += 1
            pool.append(tid)
    return labeled, pool


def _app(settings):
    app = create_app(settings)
    service_of(app).maintainer.close()  # the tests run its passes themselves
    return app


@pytest.mark.parametrize("bad", [ROTATED_HALF_PIXEL, HUGE_IMAGE], ids=["rotated-half-pixel-high", "1e300-wide"])
def test_one_bad_region_never_stops_a_detection_project(fake_ls, images, tmp_path, bad, monkeypatch):
    """Before: ZeroDivisionError (int(0.5) = 0) or OverflowError (1e300 in the candidate store) at every
    retraining: /predict 500, training failed, report 500, 0 tasks scored."""
    import backend.detection

    # every box pre-filled, so that every region (the bad one too) is served: noise images make no box
    # class reliable, and which classes are is tests/backend/test_prefill_projects.py's subject, not this test's
    monkeypatch.setattr(backend.detection, "prefill_labels", lambda model, features, settings: np.full(
        len(features), 3, np.int32))
    monkeypatch.setattr(backend.detection, "spare_likely_tail", lambda prefill, miner, features: prefill)
    pid = 41
    labeled, pool = _detection_project(fake_ls, images, pid)
    fake_ls.tasks[labeled[0]]["annotations"][0]["result"].insert(0, _rectangle(**bad))
    prediction = next(p for p in fake_ls.predictions if p["task"] == pool[0])
    prediction["result"].insert(0, {**_rectangle(**bad), "score": 0.7})  # first: its size is the image's
    app = _app(_det_settings(tmp_path, fake_ls))
    client = app.test_client()
    try:
        assert client.post("/setup", json={"project": f"{pid}.1", "schema": DETECTION_CONFIG}).status_code == 200
        assert client.post("/webhook", json={"action": "START_TRAINING", "project": {"id": pid}}).status_code == 201
        assert service_of(app).scheduler.wait_idle(timeout=300)
        status = client.get(f"/mcm/status?project={pid}").json
        version = status["model_version"]
        assert version and status["last_error"] is None, status
        assert status["n_scored"] == len(pool)
        assert {p["task"] for p in fake_ls.predictions if p["model_version"] == version} == set(pool)
        skipped = status["skipped_items"]
        assert skipped["image_sizes"] >= 2, skipped  # the annotation's and the prediction's, boxes kept
        assert {labeled[0], pool[0]} <= {r["task"] for r in skipped["recent"]}
        tasks = [{"id": t, "data": fake_ls.tasks[t]["data"]} for t in pool]
        predicted = client.post("/predict", json={"tasks": tasks, "project": f"{pid}.1"})
        assert predicted.status_code == 200 and all(predicted.json["results"]), predicted.json
        regions = [r for result in predicted.json["results"] for r in result["result"]]
        assert len(regions) == 2 * len(pool) + 1
        assert all(1 <= r.get("original_width", 48) <= 100000 for r in regions)
        report = client.get(f"/mcm/report?project={pid}&format=json")
        assert report.status_code == 200, report.json
        assert report.json["n_labeled_tasks"] == len(labeled)
    finally:
        service_of(app).close()


# --- property-based: generated Label Studio data through training, scoring, publishing, the report ------
SCALARS = st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats() | st.text(max_size=6)
GARBAGE = st.recursive(SCALARS, lambda inner: st.lists(inner, max_size=3)
                       | st.dictionaries(st.text(max_size=6), inner, max_size=3), max_leaves=8)
NUMBERS = (st.sampled_from([10, 25.5, 40, 0.5, 1e300, -1e300, float("nan"), float("inf"), -5, 0, 1, 1e5, 1e5 + 1,
                            2**70, "48", True])
           | st.floats(-200, 200) | GARBAGE)
DATES = st.sampled_from(["2026-01-02T00:00:00Z", "2026-01-03T10:00:00.5+02:00", "0001-01-01T00:00:00+14:00",
                         "9999-12-31T23:59:59-14:00", "2026", "", "not a date", "2026-13-45"]) | GARBAGE


def _regions(control: str):
    value = st.fixed_dictionaries({}, optional={
        "x": NUMBERS, "y": NUMBERS, "width": NUMBERS, "height": NUMBERS,
        "rotation": st.sampled_from([0, 45, 90, 360, -45, 1e300, float("nan")]) | NUMBERS,
        "rectanglelabels": st.sampled_from([["2"], ["3"], ["cat"], [], [5], "2"]) | GARBAGE,
        "choices": st.sampled_from([["zero"], ["seven"], ["cat"], [], [7], "zero"]) | GARBAGE}) | GARBAGE
    region = st.fixed_dictionaries({"from_name": st.sampled_from([control, control, "other"]) | GARBAGE}, optional={
        "to_name": st.just("image") | GARBAGE, "type": st.sampled_from(["rectanglelabels", "choices"]) | GARBAGE,
        "value": value, "original_width": NUMBERS, "original_height": NUMBERS, "score": NUMBERS}) | GARBAGE
    return st.lists(region, max_size=4) | GARBAGE


def _annotations(control: str):
    annotation = st.fixed_dictionaries({}, optional={
        "id": st.integers(1, 10**6) | GARBAGE, "result": _regions(control), "was_cancelled": st.booleans() | GARBAGE,
        "created_at": DATES, "updated_at": DATES}) | GARBAGE
    return st.lists(annotation, min_size=1, max_size=3)


def _predictions():
    return st.lists(st.fixed_dictionaries({"result": _regions("label"), "score": st.none() | st.floats()}),
                    max_size=2)


VIEWS = st.lists(st.fixed_dictionaries({}, optional={"title": st.text(max_size=8) | GARBAGE,
                                                     "mcm_enabled_at": DATES}) | GARBAGE, max_size=3)
EXTRA_CLASSES = st.lists(st.sampled_from(["", "  ", "zero", "2", "x" * 600, "extra"]), max_size=3)

# The known bad cases, always tried first (generation alone may not combine them).
_BAD = [_rectangle(**ROTATED_HALF_PIXEL), _rectangle(**HUGE_IMAGE),
        _rectangle(original_width=float("nan"), original_height="48", rotation=45),
        _rectangle(original_width=-5, original_height=1, rotation=45), _rectangle(x="1", width=None)]
_YEAR_ZERO = "0001-01-01T00:00:00+14:00"  # parses, but is before year 1 in UTC
KNOWN_BAD = dict(annotations=[[{"id": 1, "result": _BAD + [{**r, "from_name": "choice"} for r in _BAD]},
                               {"id": 3, "result": [], "was_cancelled": True, "updated_at": _YEAR_ZERO}],
                              [{"id": 2, "result": 5, "updated_at": "0001-01-01T00:00:00+14:00"}, 7]],
                 predictions=[{"result": _BAD, "score": float("nan")}, {"result": {"x": 1}, "score": None}],
                 views=[{"data": {"title": "t", "mcm_enabled_at": "0001-01-01T00:00:00+14:00"}}, {"data": [1]}, 5],
                 extra=["", "zero", "x" * 600])


def _config(kind: str, extra: list[str]) -> str:
    if kind == "detection":
        return DETECTION_CONFIG.replace("</RectangleLabels>", "".join(f"<Label value={quoteattr(v)}/>" for v in extra)
                                        + "</RectangleLabels>")
    return LABEL_CONFIG.replace("</Choices>", "".join(f"<Choice value={quoteattr(v)}/>" for v in extra) + "</Choices>")


@pytest.mark.parametrize("kind", ["classification", "detection"])
def test_generated_label_studio_data_never_stops_training_scoring_publishing_or_the_report(
        fake_ls, images, tmp_path, kind):
    pid = 51 if kind == "classification" else 52
    if kind == "detection":
        labeled, pool = _detection_project(fake_ls, images, pid, n_labeled=6, n_pool=3)
        control = "label"
    else:
        truth = populate_project(fake_ls, images, pid=pid, head=6, tail=3, unlabeled_per_class=1)
        labeled, pool, control = [t for t in fake_ls.tasks if t not in truth], sorted(truth), "choice"
    fuzzed = labeled[:2]  # their annotations are replaced by generated ones; the others keep 2+ classes
    base_predictions = list(fake_ls.predictions)
    settings = _det_settings(tmp_path, fake_ls, pool_relist_seconds=0.0, fill_after_seconds=0.0,
                             prediction_grace_seconds=0.0)
    app = _app(settings)
    state = service_of(app)
    client = app.test_client()
    clock = ShiftedClock()
    maintainer = Maintainer(state.context, is_busy=lambda project_id: False, clock=clock)
    config = DETECTION_CONFIG if kind == "detection" else LABEL_CONFIG
    assert client.post("/setup", json={"project": f"{pid}.1", "schema": config}).status_code == 200
    ordering = os.path.join(settings.project_dir(pid), "ordering.json")

    @hsettings(max_examples=40, deadline=None, derandomize=True, database=None,
               suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(annotations=st.lists(_annotations(control), min_size=2, max_size=2), predictions=_predictions(),
           views=VIEWS, extra=EXTRA_CLASSES)
    @example(**KNOWN_BAD)
    def check(annotations, predictions, views, extra):
        fake_ls.projects[pid]["label_config"] = _config(kind, extra)
        for tid, generated in zip(fuzzed, annotations):
            fake_ls.tasks[tid]["annotations"] = generated
        fake_ls.predictions = [p for p in base_predictions] + [
            {**p, "model_version": DETECTOR_VERSION, "task": pool[0], "project": pid, "id": 10**6 + j}
            for j, p in enumerate(predictions)]
        fake_ls.views = [{"id": j + 1, "project": pid, "data": v} for j, v in enumerate(views)]
        if os.path.exists(ordering):
            os.remove(ordering)  # read the generated tabs again
        version = train_project(pid, state.context)  # training, scoring and publishing: nothing may raise
        assert version, "the untouched annotations still give two classes"
        tasks = [{"id": t, "data": fake_ls.tasks[t]["data"]} for t in pool]
        predicted = client.post("/predict", json={"tasks": tasks, "project": f"{pid}.1"})
        assert predicted.status_code == 200 and len(predicted.json["results"]) == len(pool), predicted.json
        report = client.get(f"/mcm/report?project={pid}&format=json")
        assert report.status_code == 200, report.json
        clock.advance(CHECK_LABEL_STUDIO_SECONDS)  # Label Studio is asked again
        maintainer.maintain(pid)  # recover, relist, fill, retire, tabs: nothing may raise
        status = client.get(f"/mcm/status?project={pid}")
        assert status.status_code == 200 and status.json["last_error"] is None, status.json
        assert fake_ls.projects[pid]["model_version"] == version  # published

    try:
        check()
        skipped = client.get(f"/mcm/status?project={pid}").json["skipped_items"]
        kinds = ["regions", "annotations", "label_values", "tabs", "dates"]
        kinds += ["image_sizes", "predictions"] if kind == "detection" else []
        assert all(skipped[k] for k in kinds), skipped
        assert all(isinstance(r["reason"], str) for r in skipped["recent"])
    finally:
        state.close()


# --- nothing to score ----------------------------------------------------------------------------------
def test_a_project_with_every_task_labeled_keeps_its_model_publishes_nothing_and_settles(fake_ls, images,
                                                                                      make_settings):
    """Before: training succeeded, 0 predictions were pushed, Label Studio refused the switch of
    model_version (400), the training was logged as failed and the maintainer retried every pass."""
    pid = 61
    populate_project(fake_ls, images, pid=pid, head=6, tail=3, unlabeled_per_class=0)  # every task labeled
    settings = make_settings(label_studio_url=fake_ls.url, label_studio_api_key=fake_ls.legacy_token, cnn_epochs=1,
                             miner_options=MINER, pool_relist_seconds=0.0, fill_after_seconds=0.0,
                             prediction_grace_seconds=0.0)
    app = _app(settings)
    state = service_of(app)
    client = app.test_client()

    def patches() -> int:
        return fake_ls.calls.count(("PATCH", f"/api/projects/{pid}/"))

    def pushes() -> int:
        return fake_ls.calls.count(("POST", f"/api/projects/{pid}/import/predictions"))

    try:
        assert client.post("/setup", json={"project": f"{pid}.1", "schema": LABEL_CONFIG}).status_code == 200
        assert fake_ls.refuse_model_version(pid, "mcm-v1-20260101T000000")  # as Label Studio does
        version = train_project(pid, state.context)
        assert version and patches() == 0 and pushes() == 0 and fake_ls.projects[pid]["model_version"] == ""
        status = client.get(f"/mcm/status?project={pid}").json
        assert status["model_version"] == version and status["last_error"] is None
        assert status["nothing_to_score"] is True and "every task of the project is labeled" in \
            status["nothing_to_score_message"]
        clock = ShiftedClock()
        maintainer = Maintainer(state.context, is_busy=lambda project_id: False, clock=clock)
        for _ in range(3):  # passes of the upkeep: nothing to retry
            clock.advance(CHECK_LABEL_STUDIO_SECONDS)  # Label Studio is asked again
            maintainer.maintain(pid)
        assert patches() == 0 and pushes() == 0 and state.context.ledger(pid).get("current") is None

        # a task is imported: the kept model scores it and is published at the next pass
        new = pid * 100000 + 99
        images.files[f"/img/{new}.png"] = png_bytes(np.zeros((28, 28), np.uint8))
        fake_ls.add_task(pid, new, f"{images.url}/img/{new}.png")
        maintainer.maintain(pid)
        assert fake_ls.projects[pid]["model_version"] == version and patches() == 1
        assert [p["task"] for p in fake_ls.predictions if p["model_version"] == version] == [new]
        assert client.get(f"/mcm/status?project={pid}").json["nothing_to_score"] is False

        # it is labeled and the project retrains: the new version has nothing to score; Label Studio
        # keeps showing the previous one, and nothing is retried
        fake_ls.add_task(pid, new, f"{images.url}/img/{new}.png", label="seven")
        newer = train_project(pid, state.context)
        for _ in range(3):
            clock.advance(CHECK_LABEL_STUDIO_SECONDS)  # Label Studio is asked again
            maintainer.maintain(pid)
        assert newer != version and patches() == 1 and fake_ls.projects[pid]["model_version"] == version
        status = client.get(f"/mcm/status?project={pid}").json
        assert status["model_version"] == newer and status["nothing_to_score"] is True
        assert status["published_version"] == version

        # TASKS_CREATED for a new task publishes the waiting version at once
        fake_ls.add_task(pid, new + 1, f"{images.url}/img/{new}.png")
        assert score_and_push_tasks(pid, [{"id": new + 1, "data": fake_ls.tasks[new + 1]["data"]}],
                                    state.context) == 1
        assert fake_ls.projects[pid]["model_version"] == newer and patches() == 2
        assert client.get(f"/mcm/status?project={pid}").json["nothing_to_score"] is False
    finally:
        state.close()
