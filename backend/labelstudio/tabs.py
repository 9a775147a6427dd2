"""The Data Manager tabs that put the tail first: unlabeled tasks, highest prediction score first.

Annotators open a tab and click "Label Tasks As Displayed". Label Studio serves that
queue as the first unlabeled task of the tab without skipping a task another
annotator has open (projects/functions/next_task.py, `get_next_task` with a Data
Manager queue), so two annotators on one tab label the same tasks. For a team, the
unlabeled tasks are split into lanes: disjoint ranges of task ids of equal size,
one tab per annotator, each still ordered by score. Tail tasks are spread over the
ids, so each lane gets its share of them.

Who creates the tab: the backend itself on a project's first publish (`create_tail_tab`, unless
MCM_AUTO_TAB=false), so that connecting on the Model page is enough; `admin enable-ordering` creates
or updates it too, and is the way to get lanes.
"""
from __future__ import annotations

import time
from datetime import datetime
from typing import Any, Sequence

from ..validation import Skipped, parse_timestamp, short
from . import client as labelstudio

VIEW_TITLE = "Tail classes first"
VIEW_ORDERING = ["-tasks:predictions_score"]
# When the tab was created: the mining report's "ordering enabled" moment (backend/report/source.py).
# Kept when enable-ordering updates the tab; Label Studio's UI may drop it when a person edits the
# tab, so the backend remembers the first value it reads.
ENABLED_AT_KEY = "mcm_enabled_at"
UNLABELED = {"filter": "filter:tasks:total_annotations", "operator": "equal", "type": "Number", "value": 0}


def lane_title(title: str, lane: int, lanes: int) -> str:
    return f"{title} - lane {lane} of {lanes}"


def lane_filters(task_ids: Sequence[int], lanes: int) -> list[dict]:
    """Per lane, a Data Manager filter item on task id: equal shares of `task_ids`; the last lane is
    open-ended so tasks imported later (higher ids) land in it."""
    if lanes < 1:
        raise ValueError(f"lanes must be >= 1, got {lanes}")
    ids = sorted(int(t) for t in task_ids)
    if len(ids) < lanes:
        raise ValueError(f"{len(ids)} unlabeled tasks cannot be split into {lanes} lanes")
    starts = [ids[len(ids) * i // lanes] for i in range(lanes)]
    items = [{"filter": "filter:tasks:id", "operator": "in", "type": "Number",
              "value": {"min": start, "max": nxt - 1}} for start, nxt in zip(starts, starts[1:])]
    items.append({"filter": "filter:tasks:id", "operator": "greater_or_equal", "type": "Number",
                  "value": starts[-1]})
    return items


def tab_data(title: str, extra_filter: dict | None = None) -> dict:
    items = [UNLABELED] + ([extra_filter] if extra_filter else [])
    return {"title": title, "ordering": VIEW_ORDERING, "filters": {"conjunction": "and", "items": items}}


MAX_TITLE_CHARS = 200


def view_data(view: Any) -> dict:
    """A Data Manager tab's `data` as a dict ({} when Label Studio holds anything else there: a
    person or another tool may have stored any JSON in it). `view`: the sdk's View or its JSON."""
    data = view.get("data") if isinstance(view, dict) else getattr(view, "data", None)
    return data if isinstance(data, dict) else {}


def tab_title(view: Any) -> str | None:
    """The tab's title (at most MAX_TITLE_CHARS), None when it has no text title."""
    title = view_data(view).get("title")
    return title[:MAX_TITLE_CHARS] if isinstance(title, str) else None


def enabled_at(view: Any, skipped: Skipped | None = None) -> tuple[datetime, str] | None:
    """(when `enable-ordering` created the tab, its title), or None for a tab without that record.
    A record that is not a usable time (validation.parse_timestamp) is counted in `skipped`."""
    raw = view_data(view).get(ENABLED_AT_KEY)
    if raw is None:
        return None
    at = parse_timestamp(raw)
    if at is None:
        if skipped is not None:
            skipped.add("tabs", None, f"tab {tab_title(view)!r}: {ENABLED_AT_KEY} {short(raw)} is not an ISO-8601 "
                                      "time between 1970 and 2200")
        return None
    return at, tab_title(view) or ""


def stamped(data: dict) -> dict:
    """A new tab's data with the time it was created (ENABLED_AT_KEY: the report's "ordering enabled")."""
    return {**data, ENABLED_AT_KEY: time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}


def create_tail_tab(client, project_id: int, title: str = VIEW_TITLE) -> bool:
    """Create the tail-first tab unless the project has a tab of that title (a person's edits of it
    are left alone); True when it was created. `client`: the sdk's LabelStudio. Raises
    LabelStudioError when Label Studio refuses."""
    if any(tab_title(v) == title for v in labelstudio.list_views(client, project_id)):
        return False
    labelstudio.request(client, "POST", "api/dm/views/", f"creating the Data Manager tab {title!r} of project "
                        f"{project_id}", json={"project": int(project_id), "data": stamped(tab_data(title))})
    return True


def upsert_tabs(ls, project_id: int, tabs: list[dict], stale_prefix: str | None = None) -> list[tuple[Any, bool]]:
    """Create or update each tab by title (returns (view, created) per tab); delete tabs whose title
    starts with `stale_prefix` but are not in `tabs` (lanes of an earlier, different split).
    A created tab records when (ENABLED_AT_KEY); an updated one keeps what it recorded."""
    views = ls.call("listing Data Manager views", ls.client.views.list, project=project_id) or []
    by_title = {tab_title(v): v for v in views if tab_title(v) is not None}
    out = []
    for data in tabs:
        view = by_title.get(data["title"])
        if view is None:
            data = stamped(data)
            out.append((ls.call("creating the view", ls.client.views.create, project=project_id, data=data), True))
        else:
            merged = {**view_data(view), **data}
            out.append((ls.call("updating the view", ls.client.views.update, id=str(view.id), project=project_id,
                                data=merged), False))
    wanted = {t["title"] for t in tabs}
    for title, view in by_title.items():
        if stale_prefix and title and title.startswith(stale_prefix) and title not in wanted:
            ls.call("deleting an old lane tab", ls.client.views.delete, id=str(view.id))
    return out
