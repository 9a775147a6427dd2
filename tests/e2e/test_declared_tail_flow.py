"""Declared tail classes (issue 24) against a real Label Studio 1.23: an admin names the two digits they hunt.

One ordered module sharing one project: 384 MNIST digits (8 common digits x 45, 2 rare x 12), the
admin declares the rare digits with `admin tail-classes --set` (written into the label config as
mcm_tail="true"), connects the backend, and the first 30 labels are tasks chosen at random (Label
Studio's default order is by id, and ids follow a shuffled import): the early-label noise in which
the count rule alone finds nothing. The test checks that the declaration reaches the model, the
status and the queue; the share of declared digits among the tab's first 50 is measured and printed
(figures, not a pass mark: with 30 labels of simple-cnn features it is what the features allow).
"""
from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "scripts"))
from make_demo_data import make_demo_data  # noqa: E402
from live_stack import LS, admin, wait_for  # noqa: E402,F401  (tests/ is on sys.path: see conftest.py)

pytestmark = pytest.mark.e2e

SUBDIR = "e2e_declared"
TRAIN_TIMEOUT = float(os.environ.get("MCM_E2E_TRAIN_TIMEOUT", "420"))
FIRST_LABELS = 30
TOP_K = 50


def test_1_project_and_declared_tail_classes(ls, ls_env, backend, flow, stopwatch):
    with stopwatch("decl 1 project + 384 digits, tail-classes --set"):
        manifest = make_demo_data(ls_env["files_root"], SUBDIR, seed=24, labeled_head=0, labeled_tail=0,
                                  pool_head=45, pool_tail=12)
        folder = Path(ls_env["files_root"]) / SUBDIR
        tasks = json.loads((folder / "tasks.json").read_text())
        pid, imported = ls.local_files_project(f"e2e declared tail {time.strftime('%H:%M:%S')}",
                                               manifest["label_config"], folder, tasks)
    assert imported["task_count"] == len(tasks) == 8 * 45 + 2 * 12
    tails = manifest["tail_digits"]
    bad = admin(ls_env, backend, "tail-classes", "--project", str(pid), "--set", "ten")
    assert bad.returncode == 1 and "unknown class(es) ['ten']" in bad.stderr, bad.stderr
    result = admin(ls_env, backend, "tail-classes", "--project", str(pid), "--set", ",".join(tails))
    assert result.returncode == 0, result.stderr + result.stdout
    config = ls.project(pid)["label_config"]
    assert all(f'value="{d}" mcm_tail="true"' in config for d in tails), config
    by_image = {it["image"]: it["label"] for it in manifest["items"]}
    truth = {t["id"]: by_image[t["data"]["image"]] for t in ls.tasks(pid)}
    flow.update(pid=pid, truth=truth, tails=set(tails))


def test_2_thirty_random_first_labels_train_with_the_declared_tail(ls, ls_env, backend, flow, stopwatch, metrics):
    pid, truth, tails = flow["pid"], flow["truth"], flow["tails"]
    result = admin(ls_env, backend, "connect", "--project", str(pid), "--url", backend.url)
    assert result.returncode == 0, result.stderr + result.stdout
    first = sorted(np.random.default_rng(24).choice(sorted(truth), FIRST_LABELS, replace=False).tolist())
    with stopwatch(f"decl 2 {FIRST_LABELS} random first labels + training"):
        for t in first:
            ls.annotate(t, truth[t])
        pool = [t for t in truth if t not in set(first)]

        def trained():
            status = backend.status(pid)
            return status if status.get("model_version") and not status.get("training") \
                and status.get("n_labeled") == FIRST_LABELS and (status.get("n_scored") or 0) >= len(pool) else None
        status = wait_for(f"a model trained on the {FIRST_LABELS} labels scoring the pool", trained, TRAIN_TIMEOUT,
                          backend)
    assert set(status["tail_declared"]) == tails and tails <= set(status["tail_classes"]), status
    assert "declared by the admin" in status["tail_rule"]
    counts = {d: sum(truth[t] == d for t in first) for d in sorted(set(truth.values()))}
    flow.update(first=first, pool=pool)
    metrics["declared: first labels per digit"] = counts
    metrics["declared: tail classes (declared / counted)"] = f"{status['tail_declared']} / {status.get('tail_classes')}"


def test_3_the_tab_puts_the_declared_digits_first(ls, ls_env, backend, flow, stopwatch, metrics):
    pid, truth, tails, pool = flow["pid"], flow["truth"], flow["tails"], flow["pool"]
    with stopwatch("decl 3 enable-ordering + read the queue"):
        result = admin(ls_env, backend, "enable-ordering", "--project", str(pid))
        assert result.returncode == 0, result.stderr + result.stdout
        view = next(v for v in ls.get("/api/dm/views/", params={"project": pid})
                    if v["data"].get("title") == "Tail classes first")
        queue = [t["id"] for t in ls.tasks(pid, view=view["id"])]
    assert sorted(queue) == sorted(pool)
    base_rate = sum(truth[t] in tails for t in pool) / len(pool)
    p_at_k = sum(truth[t] in tails for t in queue[:TOP_K]) / TOP_K
    metrics["declared: base rate of the declared digits in the pool"] = round(base_rate, 4)
    metrics["declared: precision@50 of the tab"] = round(p_at_k, 4)
    metrics["declared: lift@50"] = round(p_at_k / base_rate, 2)
