"""The task kind of a project, chosen once from its label config: classification or detection.

Each kind (backend/classification.py, backend/detection.py) offers the same verbs, so no other
module asks which kind a project is:
    collect(project_id, config, annotated, skipped) -> LabeledTasks   read the annotated tasks
    label_event(task, annotations, config)          -> (label, objects, annotations) | None  (report)
    training_rows(project_id, context, labeled)     -> TrainingRows    what the miner trains on
    version_meta(settings, config, miner)           -> dict            the kind's part of meta.json
    weak_order_sentence(settings)                   -> str | None      what the tab follows while the model is weak
    score_tasks(project_id, tasks, context, model, config, refresh) -> (Ranking, skipped)
    check_configured(context)                       raises LabelConfigError when the backend lacks what it needs
and says how it is named (`row_name`, `label_name`) and whether the report's held-out evaluation
applies (`heldout_supported`).
"""
from __future__ import annotations

from .classification import Classification
from .detection import Detection
from .label_config import LabelConfig

CLASSIFICATION = Classification()
DETECTION = Detection()
_BY_CONTROL = {"choices": CLASSIFICATION, "rectangles": DETECTION}  # LabelConfig.kind: the control tag's


def kind_of(config: LabelConfig) -> Classification | Detection:
    """The task kind of a project with this label config."""
    return _BY_CONTROL[config.kind]
