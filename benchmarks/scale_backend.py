"""Everything the scale benchmark takes from the backend, in one file.

Why: the backend's modules and refresh strategy change; what the benchmark measures does not. Pointing
the benchmark at another backend layout or another refresh is editing this file only: `refresh` is the
strategy under test, `STEP_MODULE` the module whose public functions are timed as steps.

The baseline figures in docs/scale.md were measured with the earlier layout (backend/jobs.py's
rescore_project: push every unlabeled task, then delete the previous version); git history has it.
"""
from __future__ import annotations

import os

import numpy as np

from backend.labelstudio import client as STEP_MODULE  # noqa: F401  (re-exported: its calls are the timed steps)
from backend.labelstudio.tabs import UNLABELED, VIEW_ORDERING, VIEW_TITLE  # noqa: F401  (the tail-first view)
from benchmarks.backend_speed import _label_config, _synthetic_features, synthetic_tasks

VIEW_FILTERS = {"conjunction": "and", "items": [UNLABELED]}

label_config = _label_config


RETIRE_SECONDS: float | None = None  # cap of the retire phase (None: until the previous version is gone)


def refresh(runtime, project_id: int, previous_version: str | None):
    """The backend's refresh after a training. Swapping the strategy under test is this one place.

    Publish (the head of the queue, then switch model_version), then what the
    maintainer does later, here at once so that its cost is measured: fill the rest of the pool
    and retire the previous version (grace period 0). Returns the phases' seconds."""
    import time

    from backend.label_config import config_from_meta
    from backend.refresh import refresh_project

    t0 = time.monotonic()
    phases = {"publish_head": refresh_project(project_id, runtime)}
    publisher = runtime.publisher(project_id, config_from_meta(runtime.projects.get(project_id).model.meta))
    t1 = time.monotonic()
    while publisher.fill(fill_after=0, max_seconds=30):
        pass
    t2 = time.monotonic()
    retired = 0
    while RETIRE_SECONDS is None or time.monotonic() - t2 < RETIRE_SECONDS:
        step = publisher.retire(grace=0, max_seconds=30 if RETIRE_SECONDS is None
                                else max(1.0, min(30.0, RETIRE_SECONDS - (time.monotonic() - t2))))
        retired += step
        if not step:
            break
    t3 = time.monotonic()
    phases.update(publish_seconds=round(t1 - t0, 2), fill_seconds=round(t2 - t1, 2),
                  retire_seconds=round(t3 - t2, 2), retired_rows=retired,
                  retire_rows_per_second=round(retired / max(t3 - t2, 1e-9), 1))
    return phases


def train(runtime, project_id: int) -> str | None:
    """Train on the project's annotations without refreshing; the new model version."""
    from backend.fitting import train_project
    return train_project(project_id, runtime, rescore=False)


def score_unlabeled(runtime, project_id: int, tasks: list[dict]) -> dict[int, float]:
    """{task id: score} of the current model, exactly as the refresh will push them (the queue order)."""
    from backend.scoring import queue_order, score_tasks
    model = runtime.projects.get(project_id).model
    ranking, _ = score_tasks(project_id, tasks, runtime, model)
    ranking = queue_order(project_id, ranking, {t["id"]: t["data"]["image"] for t in tasks}, runtime.ingest, model)
    return {int(i): float(s) for i, s in zip(ranking.task_ids, ranking.scores)}


def make_runtime(work: str, ls_url: str, api_key: str, miner_options: str = ""):
    """The backend's Context with a resnet18 of random local weights:
    features come from the cache."""
    import torch
    import torchvision

    from backend.ingest.extractor import Extractor
    from backend.settings import Settings

    weights_path = os.path.join(work, "resnet18-random.pt")
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), weights_path)
    settings = Settings(model_dir=os.path.join(work, "models"), backbone="resnet18", backbone_weights=weights_path,
                        label_studio_url=ls_url, label_studio_api_key=api_key, debounce_seconds=0.0,
                        predict_chunk=1000, torch_threads=1, miner_options=miner_options)
    from backend.context import Context
    return Context(settings, Extractor("resnet18", weights_path, num_threads=1))


def fill_feature_cache(runtime, project_id: int, tasks: list[dict], features: np.ndarray) -> None:
    """Put row i of `features` in the project's feature cache under tasks[i]'s (id, image url)."""
    cache = runtime.ingest.cache(project_id)
    keys = [(t["id"], t["data"]["image"]) for t in tasks]
    for start in range(0, len(keys), 20000):
        cache.put(keys[start:start + 20000], features[start:start + 20000])


def synthetic_project(n_annotated: int, n_unlabeled: int, n_classes: int, dim: int,
                      seed: int = 0) -> tuple[list[str], list[dict], np.ndarray, np.ndarray]:
    """(classes, tasks, features, labels) shaped like the speed benchmark's: half the classes 20x rarer.

    Row i of `features` and `labels` (true class index) belongs to `tasks[i]`; the first
    `n_annotated` tasks carry an annotation.
    """
    rng = np.random.default_rng(seed)
    classes = [f"class{i}" for i in range(n_classes)]
    head = n_classes // 2
    weights = np.array([20.0] * head + [1.0] * (n_classes - head))
    labels = rng.choice(n_classes, n_annotated, p=weights / weights.sum())
    hidden = rng.choice(n_classes, n_unlabeled, p=weights / weights.sum())
    centers = rng.normal(size=(n_classes, dim)).astype(np.float32)
    features = np.concatenate([_synthetic_features(n_annotated, labels, centers, rng),
                               _synthetic_features(n_unlabeled, hidden, centers, rng)])
    return classes, synthetic_tasks(labels, classes, n_unlabeled), features, np.concatenate([labels, hidden])
