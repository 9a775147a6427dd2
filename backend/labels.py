"""Collecting labels from Label Studio: the project's label config and its annotated tasks, each read
as its task kind reads it (backend/task_kinds.py): one class per task, or one image's boxes."""
from __future__ import annotations

from .annotations import LabeledTasks
from .label_config import parse_label_config
from .labelstudio import client as labelstudio
from .task_kinds import kind_of
from .validation import Skipped


def collect_labels(client, project_id: int, skipped: Skipped | None = None) -> LabeledTasks:
    """The project's label config and annotated tasks from Label Studio; unusable ones are logged,
    malformed annotations and regions also counted in `skipped` (the project's, for /mcm/status)."""
    skipped = skipped if skipped is not None else Skipped(project_id)
    config = parse_label_config(labelstudio.get_label_config(client, project_id), skipped)
    annotated = [t for t in labelstudio.list_annotated_tasks(client, project_id)
                 if isinstance(t, dict) and isinstance(t.get("id"), int) and not isinstance(t["id"], bool)]
    return kind_of(config).collect(project_id, config, annotated, skipped)
