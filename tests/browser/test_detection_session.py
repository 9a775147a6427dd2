"""Object detection (issue 12) in a real browser: an annotator works the tail-first tab of a
RectangleLabels project.

A project like the e2e detection flow's (scripts/make_detection_data.py: MNIST canvases, digits 0
and 1 rare, a team detector's predictions imported under "team-detector-v1"), annotated by API in
a burst, connected, trained and ordered with `python -m backend.admin`. Then Label Studio's own UI
in Chromium: log in, open "Tail classes first", "Label Tasks As Displayed", look at each image
with the backend's boxes pre-filled, and Submit them as they are.

What must hold: the first image served is the tab's first (the highest mining score); every
submission is saved (2xx, no "Annotation is not saved" toast); the saved annotation holds the boxes
the backend pre-filled (RectangleLabels regions of our model version, with the class of the pre-fill
classifier; a box whose class the project's labels cannot vouch for is not pre-filled, so an image
may come blank), and at least one served image had pre-filled boxes.
"""
from __future__ import annotations

import json
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from live_stack import LS, ROOT, Stopwatch, admin, wait_for
from lsui import AnnotatorUI

sys.path.insert(0, str(ROOT / "scripts"))
from make_detection_data import annotation_result, make_detection_data  # noqa: E402

pytestmark = pytest.mark.browser

SUBDIR = "browser_detection"
N_TASKS = 3
PAUSE = 3.0  # seconds an annotator looks at the boxes before accepting them
TRAIN_TIMEOUT = 420
# the labeling view of an image task is usable once the image is drawn on its canvas
IMAGE_READY = "canvas"


@pytest.fixture(scope="module")
def det_project(ls_env, backend, metrics):
    ls = LS(ls_env["url"], ls_env["api_key"])
    with Stopwatch(metrics)("detection: project, 150 box annotations, connect, train, enable-ordering"):
        manifest = make_detection_data(ls_env["files_root"], SUBDIR, seed=0)
        folder = ls_env["files_root"] / SUBDIR
        tasks = json.loads((folder / "tasks.json").read_text())
        pid, _ = ls.local_files_project(f"browser detection {time.strftime('%H:%M:%S')}",
                                        manifest["label_config"], folder, tasks)
        items = {it["image"]: it for it in manifest["items"]}
        by_task = {t["id"]: items[t["data"]["image"]] for t in ls.tasks(pid)}
        labeled = [t for t, it in by_task.items() if it["split"] == "labeled"]

        def annotate(task_id):
            item = by_task[task_id]
            result = annotation_result(item["boxes"], [int(c) for c in item["classes"]])
            ls.post(f"/api/tasks/{task_id}/annotations/", json={"result": result})

        with ThreadPoolExecutor(max_workers=4) as pool:
            list(pool.map(annotate, labeled))
        for args in (("connect", "--project", str(pid), "--url", backend.url), ("retrain", "--project", str(pid))):
            result = admin(ls_env, backend, *args)
            assert result.returncode == 0, f"backend.admin {args[0]}: {result.stderr}{result.stdout}"
        n_pool = len(by_task) - len(labeled)

        def scored():
            status = backend.status(pid)
            done = status.get("model_version") and not status.get("training") and status.get("n_scored", 0) >= n_pool
            return status if done else None

        status = wait_for("the detection model to score every unlabeled image", scored, TRAIN_TIMEOUT, backend)
        result = admin(ls_env, backend, "enable-ordering", "--project", str(pid))
        assert result.returncode == 0, f"backend.admin enable-ordering: {result.stderr}{result.stdout}"
        wait_for("Label Studio to order by the backend's version",
                 lambda: ls.project(pid)["model_version"] == status["model_version"], 60)
    view = next(v["id"] for v in ls.get("/api/dm/views/", params={"project": pid})
                if v["data"].get("title") == "Tail classes first")
    tails = set(manifest["tail_digits"])
    return {"ls": ls, "pid": pid, "view": view, "version": status["model_version"],
            "has_tail": {t: bool(set(it["classes"]) & tails) for t, it in by_task.items()}}


def test_annotator_accepts_the_backends_boxes_on_the_tail_first_tab(det_project, open_ui, ls_env, metrics):
    ls, pid, version = det_project["ls"], det_project["pid"], det_project["version"]
    queue = [t["id"] for t in ls.tasks(pid, view=det_project["view"], limit=N_TASKS + 5)]
    ui: AnnotatorUI = open_ui("detection-annotator", ready=IMAGE_READY)
    ui.login(ls_env["user"], ls_env["password"])
    ui.open_tab(pid, det_project["view"])
    first = ui.label_tasks_as_displayed()
    assert first == queue[0], f"first image served {first}, the tab's first (highest score) is {queue[0]}"
    subs = []
    for i in range(N_TASKS):
        ours = next(p for p in ls.get("/api/predictions/", params={"task": ui.task})
                    if p["model_version"] == version)
        time.sleep(PAUSE)  # looking at the pre-filled boxes
        if i == 0:
            ui.save_evidence("detection-annotator")
        sub = ui.submit("(pre-filled boxes)", [])
        subs.append((sub, ours))
    problems = []
    for sub, ours in subs:
        if not sub.saved:
            problems.append(f"task {sub.task}: HTTP {sub.status}{' + toast' if sub.toast else ''} {sub.body[:200]}")
            continue
        saved = max(ls.get(f"/api/tasks/{sub.task}/annotations/"), key=lambda a: a["id"])  # (the answer's JSON
        # in sub.body is cut short for boxes)
        boxes = sorted((r["value"]["rectanglelabels"][0], round(r["value"]["x"], 2), round(r["value"]["y"], 2))
                       for r in saved["result"] if r["type"] == "rectanglelabels")
        expected = sorted((r["value"]["rectanglelabels"][0], round(r["value"]["x"], 2), round(r["value"]["y"], 2))
                          for r in ours["result"])
        if boxes != expected:  # a box whose class the project's labels cannot vouch for is not pre-filled
            problems.append(f"task {sub.task}: saved boxes {boxes} are not the pre-filled {expected}")
    metrics["detection: images submitted / saved"] = f"{len(subs)} / {sum(s.saved for s, _ in subs)}"
    metrics["detection: served images holding a tail object"] = \
        f"{sum(det_project['has_tail'][s.task] for s, _ in subs)} of {len(subs)}"
    n_prefilled = sum(bool(ours["result"]) for _, ours in subs)
    metrics["detection: served images with pre-filled boxes"] = f"{n_prefilled} of {len(subs)}"
    assert not problems, "detection annotator:\n" + "\n".join(problems)
    assert n_prefilled, "no served image had a pre-filled box: the test did not see the pre-fill path"
