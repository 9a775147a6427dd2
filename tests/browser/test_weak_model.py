"""Issue 21: an annotator served from a project whose model is weak sees nothing pre-ticked.

A project whose model is weak by construction: every image is pure RGB noise, labeled with three
common classes and two rare ones, so nothing in an image tells its class (the "true" class is the
one this test gave it). 77 tasks are imported and 37 of them labeled through the API (the rare classes
with 2 labels each); 40 are not (4 of them rare, 10 %). `python -m backend.admin connect` as an operator would; the
backend's first training starts on its own and its first publish creates the "Tail classes first"
tab (MCM_AUTO_TAB). Its /mcm/status must say the reliability verdict is "weak" and which order the tab
follows (`tab_order` "queue": MCM_WEAK_ORDER's default, the miner's own order).

Then Label Studio's own web UI in Chromium: log in, open the tab, "Label Tasks As Displayed", and for
N_TASKS served tasks look at each for PAUSE seconds, read which classes are ticked (when the task
opens and again before choosing), choose the true class and Submit, while the backend retrains.

What must hold: a weak model pre-ticks nothing (mcm_core/prefill.py), so no served task has a class
ticked, in particular no rare class on a common image; every served task had a prediction of ours
(the pre-fill path was there to be taken) with an empty result; the verdict stayed weak; every
submission is saved (2xx, no "Annotation is not saved" toast, the annotation in Label Studio's API).
Before the pre-fill rules (commit dbd9f4a) every prediction pre-ticked the RC layer's argmax, which
the tail-lifting focal loss tips towards the rare classes.
"""
from __future__ import annotations

import os
import time

import numpy as np
import pytest
from PIL import Image

from live_stack import LS, Stopwatch, admin, wait_for
from lsui import AnnotatorUI, Submission

pytestmark = pytest.mark.browser

SUBDIR = "browser_weak_model"
COMMON, RARE = ("meadow", "forest", "desert"), ("wolf", "eagle")
LABELED = {"meadow": 12, "forest": 11, "desert": 10, "wolf": 2, "eagle": 2}     # 37 labeled
UNLABELED = {"meadow": 12, "forest": 12, "desert": 12, "wolf": 2, "eagle": 2}   # 40, 10 % rare
CONTROL = "kind"
LABEL_CONFIG = f"""<View>
  <Image name="image" value="$image"/>
  <Choices name="{CONTROL}" toName="image" choice="single" showInline="true">
""" + "".join(f'    <Choice value="{c}"/>\n' for c in (*COMMON, *RARE)) + """  </Choices>
</View>
"""
N_TASKS = int(os.environ.get("MCM_BROWSER_WEAK_TASKS", "8"))
PAUSE = float(os.environ.get("MCM_BROWSER_WEAK_PAUSE", "3"))   # seconds an annotator looks at a task
TRAIN_TIMEOUT = float(os.environ.get("MCM_E2E_TRAIN_TIMEOUT", "420"))
TAB = "Tail classes first"


def make_noise_tasks(folder) -> list[dict]:
    """The PNG files (64x64 RGB noise, no class signal) and the tasks to import, in shuffled order;
    each task carries its true class in `_truth` and whether it is labeled first in `_labeled`
    (both removed before the import)."""
    rng = np.random.default_rng(21)
    kinds = [(k, True) for k, n in LABELED.items() for _ in range(n)] + \
            [(k, False) for k, n in UNLABELED.items() for _ in range(n)]
    order = rng.permutation(len(kinds))
    (folder / "images").mkdir(parents=True, exist_ok=True)
    tasks = []
    for i, j in enumerate(order):
        kind, labeled = kinds[j]
        name = f"noise-{i:03d}.png"
        Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(folder / "images" / name)
        tasks.append({"data": {"image": f"/data/local-files/?d={SUBDIR}/images/{name}"}, "_truth": kind,
                      "_labeled": labeled})
    return tasks


def first_model(backend, ls: LS, pid: int, n_pool: int) -> dict | None:
    """The backend's status once its first model scored the pool, Label Studio orders by it and the tab exists."""
    status = backend.status(pid)
    if not status.get("model_version") or status.get("training") or status.get("n_scored", 0) < n_pool:
        return None
    if ls.project(pid)["model_version"] != status["model_version"]:
        return None
    views = ls.get("/api/dm/views/", params={"project": pid})
    view = next((v["id"] for v in views if v["data"].get("title") == TAB), None)
    return {**status, "view": view} if view is not None else None


@pytest.fixture(scope="module")
def weak_project(ls_env, backend, metrics):
    ls = LS(ls_env["url"], ls_env["api_key"])
    folder = ls_env["files_root"] / SUBDIR
    with Stopwatch(metrics)("weak model: noise project, connect, first model + tab"):
        tasks = make_noise_tasks(folder)
        truth_of_image = {t["data"]["image"]: t.pop("_truth") for t in tasks}
        labeled_images = {t["data"]["image"] for t in tasks if t.pop("_labeled")}
        pid, answer = ls.local_files_project(f"weak model {time.strftime('%H:%M:%S')}", LABEL_CONFIG, folder, tasks)
        assert answer["task_count"] == len(tasks), answer
        truth = {t["id"]: truth_of_image[t["data"]["image"]] for t in ls.tasks(pid)}
        # One annotation per request, as an API script does (imported annotations train too since the
        # first-training check also reads finished_task_number: tests/backend/test_onboarding.py).
        for t in ls.tasks(pid):
            if t["data"]["image"] in labeled_images:
                ls.post(f"/api/tasks/{t['id']}/annotations/", json={"result": [{
                    "from_name": CONTROL, "to_name": "image", "type": "choices",
                    "value": {"choices": [truth[t["id"]]]}}]})
        result = admin(ls_env, backend, "connect", "--project", str(pid), "--url", backend.url)
        assert result.returncode == 0, f"backend.admin connect: {result.stderr}{result.stdout}"
        n_pool = sum(UNLABELED.values())
        status = wait_for(f"the first model (connect alone), {n_pool} tasks scored and the '{TAB}' tab",
                          lambda: first_model(backend, ls, pid, n_pool), TRAIN_TIMEOUT, backend)
    reliability = status.get("reliability") or {}
    metrics["weak model: verdict / held-out accuracy / majority rate / tab order"] = (
        f"{reliability.get('verdict')} / {reliability.get('heldout_accuracy')} / {reliability.get('majority_rate')} "
        f"/ {status.get('tab_order')}")
    metrics["weak model: tail classes"] = status.get("tail_classes")
    return {"ls": ls, "pid": pid, "view": status["view"], "truth": truth, "status": status}


def read_ticks(ui: AnnotatorUI) -> list[str]:
    return sorted(ui.checked_classes())


def test_weak_model_prefills_nothing_for_the_annotator(weak_project, open_ui, backend, ls_env, metrics):
    ls, pid, truth, status = weak_project["ls"], weak_project["pid"], weak_project["truth"], weak_project["status"]
    # The model is weak by construction: the backend must say so; the tab follows MCM_WEAK_ORDER's default
    # (the miner's scores: measured best on newcomer images, backend/weak_order.py).
    assert (status.get("reliability") or {}).get("verdict") == "weak", status.get("reliability")
    assert status.get("tab_order") == "queue", status.get("tab_order")
    assert status["prefill"]["classes"] == [], status["prefill"]

    ui = open_ui("weak-model-annotator")
    served: list[dict] = []
    subs: list[Submission] = []
    with Stopwatch(metrics)(f"weak model: {N_TASKS} tasks at >= {PAUSE:.0f}s each"):
        ui.login(ls_env["user"], ls_env["password"])
        ui.open_tab(pid, weak_project["view"])
        ui.label_tasks_as_displayed()
        for i in range(N_TASKS):
            task, at_open = ui.task, read_ticks(ui)
            verdict = (backend.status(pid).get("reliability") or {}).get("verdict")
            predictions = ls.get("/api/predictions/", params={"task": task})
            time.sleep(max(0.0, ui.opened_at + PAUSE - time.monotonic()))  # the annotator looks at it
            if i == 0:
                shot = ui.save_evidence("weak-model-annotator")
            label = truth[task]
            before_choosing = ui.choose(label)
            ticked = sorted(set(at_open) | set(before_choosing))
            served.append({"task": task, "truth": label, "ticked": ticked, "verdict": verdict,
                           "n_predictions": len(predictions),
                           "prediction_results": [p["result"] for p in predictions if p["result"]]})
            subs.append(ui.submit(label, ticked))
            print(f"[browser] weak model: task {task} true class {label} ({'rare' if label in RARE else 'common'}), "
                  f"pre-ticked {ticked or 'nothing'}, verdict {verdict}, {len(predictions)} prediction(s) -> "
                  f"HTTP {subs[-1].status}{' TOAST' if subs[-1].toast else ''}", flush=True)
            if not subs[-1].saved or not subs[-1].next_loaded:
                break

    rare_on_common = [s for s in served if s["truth"] in COMMON and set(s["ticked"]) & set(RARE)]
    metrics["weak model: served tasks (true class: pre-ticked)"] = \
        "; ".join(f"{s['task']} {s['truth']}: {','.join(s['ticked']) or '-'}" for s in served)
    metrics["weak model: served tasks pre-ticked / rare pre-ticked on a common image"] = \
        f"{sum(bool(s['ticked']) for s in served)} of {len(served)} / {len(rare_on_common)}"
    metrics["weak model: submissions saved"] = f"{sum(s.saved for s in subs)} of {len(subs)}"
    metrics["weak model: screenshot"] = str(shot)

    problems = []
    for s in served:
        if s["ticked"]:
            problems.append(f"task {s['task']} (a {s['truth']}) opened with {s['ticked']} pre-ticked while the model "
                            f"is weak{' (a rare class on a common image)' if s in rare_on_common else ''}")
        if not s["n_predictions"]:
            problems.append(f"task {s['task']} had no prediction: the pre-fill path was never offered")
        if s["prediction_results"]:
            problems.append(f"task {s['task']}: Label Studio holds weak-model predictions with a result "
                            f"{s['prediction_results']}")
        if s["verdict"] != "weak":
            problems.append(f"task {s['task']} was served while the backend's verdict was {s['verdict']!r}, not weak")
    for s in subs:
        kept = [a for a in ls.get(f"/api/tasks/{s.task}/annotations/") if a.get("completed_by") == s.user_id
                and (a.get("result") or [{}])[0].get("value", {}).get("choices") == [s.label]]
        if not (s.saved and kept):
            problems.append(f"submission of task {s.task} ({s.label}) not saved: HTTP {s.status} {s.body[:200]}; "
                            f"toast {'shown' if s.toast else 'not shown'}; {len(kept)} matching annotation(s) in "
                            f"the API; browser API errors {s.api_errors}")
        elif not s.next_loaded:
            problems.append(f"after task {s.task} the next task never appeared; API errors {s.api_errors}")
    if len(served) < N_TASKS:
        problems.append(f"only {len(served)} of {N_TASKS} tasks were labeled")
    assert not problems, "weak model, Label Tasks As Displayed:\n" + "\n".join(problems)
