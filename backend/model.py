"""The LabelStudioMLBase subclass: maps tasks to predictions, nothing more.

label-studio-ml 1.0.9 re-creates this object on every /setup, so it holds no
weights: it reads the already-loaded model of its project from the Runtime.
"""
from __future__ import annotations

import logging

from label_studio_ml.model import LabelStudioMLBase

from .jobs import score_task_chunk
from .runtime import Runtime

logger = logging.getLogger(__name__)

# Events that (re)train a project: only START_TRAINING, which Label Studio sends for the "Start
# Training" button and, when the Model page's "Start model training on annotation submission" is
# on, after every N annotations (project.min_annotations_to_start_training). The annotation
# webhooks themselves are ignored, so what that page shows is what happens.
TRAIN_EVENTS = ("START_TRAINING",)
# Tasks created after a training are scored with the current model at once.
SCORE_EVENTS = ("TASKS_CREATED",)


class MinorityMinerModel(LabelStudioMLBase):
    TRAIN_EVENTS = TRAIN_EVENTS

    def __init__(self, label_config=None, train_output=None, *, runtime: Runtime | None = None,
                 project_id: int | None = None, **kwargs):
        super().__init__(label_config=label_config, train_output=train_output, **kwargs)
        self.runtime = runtime
        self.project_id = project_id

    @property
    def model_version(self) -> str:
        if self.runtime is None or self.project_id is None:
            return "INITIAL"
        model = self.runtime.project(self.project_id).model
        return model.version if model else "INITIAL"

    def predict(self, tasks, **kwargs):
        """One entry per task: a prediction dict, or [] (no prediction) for a task that cannot be scored.

        Label Studio accepts a list of predictions per task and stores none for an
        empty list, so a broken image costs only that task's prediction while the
        list keeps the length Label Studio needs to match results to tasks.
        """
        if self.runtime is None or self.project_id is None:
            raise RuntimeError("MinorityMinerModel.predict needs a runtime and a project id")
        state = self.runtime.project(self.project_id)
        model = state.model
        if model is None:
            return [[] for _ in tasks]
        predictions, skipped = score_task_chunk(self.project_id, tasks, self.runtime, model)
        by_task = {p["task"]: p for p in predictions}
        results = []
        for task in tasks:
            prediction = by_task.get(task.get("id"))
            if prediction is None:
                results.append([])
            else:
                results.append({k: v for k, v in prediction.items() if k != "task"})
        return results

    def fit(self, tasks, workdir=None, **kwargs):
        """Training is scheduled by the app's /webhook, never run inside a request."""
        return {}
