"""Object detection (issue 12) against a real Label Studio 1.23: a RectangleLabels project, tail first.

One ordered module sharing one project: 450 canvases of MNIST digits (scripts/make_detection_data.py),
digits 0 and 1 rare among the objects; every task is imported with the predictions of a simulated
detector under the model version "team-detector-v1", as a team's own detector would have put them
there. The backend runs with MCM_DETECTION_CANDIDATES=label-studio:team-detector-v1 (conftest.py).
Ground truth never enters Label Studio's task data: it comes from the manifest.
"""
from __future__ import annotations

import json
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "scripts"))
from make_detection_data import annotation_result, make_detection_data  # noqa: E402
from live_stack import LS, admin, wait_for  # noqa: E402,F401  (tests/ is on sys.path: see conftest.py)

pytestmark = pytest.mark.e2e

SUBDIR = "e2e_detection"
TRAIN_TIMEOUT = float(os.environ.get("MCM_E2E_TRAIN_TIMEOUT", "420"))
TOP_K = 50
N_REQUEUE = 10


def version_predictions(ls: LS, pid: int, version: str) -> dict[int, dict]:
    return {p["task"]: p for p in ls.predictions(pid) if p["model_version"] == version}


def wait_scored(backend, pid: int, n_expected: int, not_version: str | None = None) -> dict:
    def ready():
        status = backend.status(pid)
        if status.get("model_version") and status["model_version"] != not_version and not status.get("training") \
                and (status.get("n_scored") or 0) >= n_expected:
            return status
        return None
    return wait_for(f"a trained detection model other than {not_version!r} scoring >= {n_expected} tasks", ready,
                    TRAIN_TIMEOUT, backend)


def test_1_detection_project_with_a_teams_detector_predictions(ls, ls_env, flow, stopwatch, metrics):
    with stopwatch("det 1 project + 450 canvases with detector predictions"):
        manifest = make_detection_data(ls_env["files_root"], SUBDIR, seed=0)
        folder = Path(ls_env["files_root"]) / SUBDIR
        tasks = json.loads((folder / "tasks.json").read_text())
        pid, imported = ls.local_files_project(f"e2e detection {time.strftime('%H:%M:%S')}",
                                               manifest["label_config"], folder, tasks)
    assert imported["task_count"] == len(tasks) == 450
    version = manifest["detector_version"]
    assert ls.model_versions(pid).get(version) == len(tasks), "every task has the detector's prediction"
    by_image = {it["image"]: it for it in manifest["items"]}
    tails = set(manifest["tail_digits"])
    truth, split, boxes = {}, {}, {}
    for task in ls.tasks(pid):
        item = by_image[task["data"]["image"]]
        truth[task["id"]] = bool(set(item["classes"]) & tails)
        split[task["id"]] = item["split"]
        boxes[task["id"]] = item
    flow.update(pid=pid, truth=truth, split=split, items=boxes, tails=tails, detector=version)
    metrics["detection tasks"] = len(tasks)


def test_2_connect_and_annotate_boxes_in_a_burst(ls, ls_env, backend, flow, stopwatch, metrics):
    pid, split, items = flow["pid"], flow["split"], flow["items"]
    result = admin(ls_env, backend, "connect", "--project", str(pid), "--url", backend.url)
    assert result.returncode == 0, result.stderr + result.stdout
    labeled = [t for t in split if split[t] == "labeled"]

    def annotate(task_id):
        item = items[task_id]
        classes = [int(c) for c in item["classes"]]
        ls.post(f"/api/tasks/{task_id}/annotations/", json={"result": annotation_result(item["boxes"], classes)})

    with stopwatch(f"det 2 post {len(labeled)} box annotations (burst, 4 clients)"):
        with ThreadPoolExecutor(max_workers=4) as pool:
            list(pool.map(annotate, labeled))
    assert ls.project(pid)["num_tasks_with_annotations"] == len(labeled)
    counts: dict[str, int] = {}
    for t in labeled:
        for c in items[t]["classes"]:
            counts[c] = counts.get(c, 0) + 1
    head = max(counts.values())
    assert all(counts.get(d, 0) / head <= 0.25 for d in flow["tails"])
    metrics["detection labeled boxes per digit"] = dict(sorted(counts.items()))


def test_3_training_scores_every_image_from_its_candidates(ls, backend, flow, stopwatch, metrics):
    pid, split = flow["pid"], flow["split"]
    pool = [t for t in split if split[t] == "pool"]
    with stopwatch("det 3 wait: box-level training + scoring"):
        status = wait_scored(backend, pid, len(pool))
    version = status["model_version"]
    assert set(status["tail_classes"]) == flow["tails"], status

    def all_pushed():
        found = version_predictions(ls, pid, version)
        return found if set(pool) <= set(found) else None

    mine = wait_for(f"every unlabeled image to get a {version} prediction", all_pushed, 120, backend)
    wait_for("project.model_version to follow the backend", lambda: ls.project(pid)["model_version"] == version, 30)
    regions = [r for p in mine.values() for r in p["result"]]
    assert regions and all(r["type"] == "rectanglelabels" and r["value"]["rectanglelabels"][0] in
                           {str(d) for d in range(10)} for r in regions)
    assert ls.model_versions(pid).get(flow["detector"]) == len(split), "the detector's predictions are left alone"
    flow["version"] = version
    metrics["detection model_version_1"] = version
    metrics["detection regions pushed"] = len(regions)


def test_4_tail_first_tab_puts_images_with_a_rare_object_first(ls, ls_env, backend, flow, stopwatch, metrics):
    pid, truth = flow["pid"], flow["truth"]
    with stopwatch("det 4 enable-ordering + read the queue"):
        result = admin(ls_env, backend, "enable-ordering", "--project", str(pid))
        assert result.returncode == 0, result.stderr + result.stdout
        views = [v for v in ls.get("/api/dm/views/", params={"project": pid})
                 if v["data"].get("title") == "Tail classes first"]
        queue = [t["id"] for t in ls.tasks(pid, view=views[0]["id"])]
    unlabeled = sorted(t for t in truth if flow["split"][t] == "pool")
    assert sorted(queue) == unlabeled
    base_rate = sum(truth[t] for t in unlabeled) / len(unlabeled)
    p_at_k = sum(truth[t] for t in queue[:TOP_K]) / TOP_K
    p_id_order = sum(truth[t] for t in unlabeled[:TOP_K]) / TOP_K
    metrics["detection base rate (pool images with a tail object)"] = round(base_rate, 4)
    metrics["detection precision@50 tail-first view"] = round(p_at_k, 4)
    metrics["detection precision@50 task-id order"] = round(p_id_order, 4)
    metrics["detection lift@50"] = round(p_at_k / base_rate, 2)
    assert p_at_k >= 2.5 * base_rate, f"precision@50 {p_at_k:.3f} < 2.5 x base rate {base_rate:.3f}"
    flow.update(view=views[0]["id"], queue=queue)


def test_5_annotating_the_queue_head_retrains_and_republishes(ls, backend, flow, stopwatch, metrics):
    pid, items, old = flow["pid"], flow["items"], flow["version"]
    head = flow["queue"][:N_REQUEUE]
    with stopwatch(f"det 5 annotate the first {N_REQUEUE} of the queue + retrain"):
        for t in head:
            item = items[t]
            ls.post(f"/api/tasks/{t}/annotations/",
                    json={"result": annotation_result(item["boxes"], [int(c) for c in item["classes"]])})
        left = sum(1 for t in flow["split"] if flow["split"][t] == "pool") - N_REQUEUE
        status = wait_scored(backend, pid, left, not_version=old)
    new = status["model_version"]
    wait_for("project.model_version to follow the new version", lambda: ls.project(pid)["model_version"] == new, 60)
    queue = [t["id"] for t in ls.tasks(pid, view=flow["view"])]
    assert not set(head) & set(queue), "annotated images leave the tab"
    mine = version_predictions(ls, pid, new)
    ranked = [t for t in queue if t in mine]
    assert ranked and [mine[t]["score"] for t in ranked] == sorted((mine[t]["score"] for t in ranked), reverse=True)
    assert ls.model_versions(pid).get(old, 0) > 0, "the old version's predictions stay for the grace period"
    metrics["detection model_version_2"] = new
    metrics["detection tail images among the 10 annotated"] = sum(flow["truth"][t] for t in head)
    p_after = sum(flow["truth"][t] for t in queue[:TOP_K]) / TOP_K
    base_after = sum(flow["truth"][t] for t in queue) / len(queue)
    metrics["detection precision@50 after retrain"] = round(p_after, 4)
    metrics["detection base rate after retrain"] = round(base_after, 4)
    # The mined labels raise the rare digits' counts: the tab must keep hunting them (mcm_core.tails keeps a
    # counted tail class until it has as many labels as an average class; without that, 0.16 = the base rate).
    assert p_after >= 2 * base_after, f"precision@50 after retraining {p_after:.3f} < 2 x base rate {base_after:.3f}"
