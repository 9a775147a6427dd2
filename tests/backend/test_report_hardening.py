"""The mining report against what any Label Studio user can write: class names with `$` (matplotlib's
mathtext), forged or impossible tab dates, thousands of classes; and rendering that does not make
every project wait for one.

No model is trained here: the figures are drawn from hand-built reports, the routes serve a project
with labels only (test_report_routes.py covers a trained one).
"""
from __future__ import annotations

import json
import os
import threading
from types import SimpleNamespace

import pytest

from backend import report, report_figures
from backend.label_config import LabelConfig
from backend.report import LabelEvent
from backend.report_source import ORDERING_FILE, Report, read_enabled_at, remember_enabled_at
from backend.validation import Skipped
from backend_helpers import app_state

PNG = b"\x89PNG\r\n\x1a\n"
MATH = r"rare $\frac{1}{$"  # an unbalanced mathtext expression: matplotlib raised on it
T0 = 1_767_225_600.0  # 2026-01-01T00:00:00Z
WAIT = 60.0  # a guard against a hang, never reached when the code is right


def hand_report(project_id: int, classes: list[str], per_class: list[int], enabled_at: float | None = None) -> Report:
    """A built report with `per_class[k]` label events of class k, one a minute, classes interleaved."""
    events, t = [], T0
    for round_ in range(max(per_class)):
        for name, n in zip(classes, per_class):
            if round_ < n:
                events.append(LabelEvent(len(events) + 1, t, name))
                t += 60.0
    counts = report.class_counts(events, classes)
    ratios, tail = report.skewness(counts, LabelConfig("image", "image", "choice", tuple(classes)))
    summary = {"labeled_per_class": counts, "skewness_ratio": ratios, "heldout": {"status": "too_little_data",
               "message": "no model"}, "tail_yield": report.phase_yield(events, tail, enabled_at), "pool": {}}
    buckets = report.yield_buckets(events, tail, enabled_at)
    return Report(project_id, summary, classes, tail, events, enabled_at, buckets, None, None, [])


# ------------------------------------------------------------------------------ text drawn literally
def test_a_class_name_with_dollars_is_drawn_as_text(caplog):
    rep = hand_report(1, ["zero", "one", MATH], [30, 30, 3], enabled_at=T0 + 600)
    assert MATH in rep.tail
    png = report_figures.render_figure(rep, "classes")
    assert png.startswith(PNG)
    assert "could not be drawn" not in caplog.text  # drawn, not replaced by the failure message
    fig = report_figures.draw_figure(rep, "classes")
    [ax] = fig.axes
    assert any(t.get_text().startswith(MATH) for t in ax.get_legend().get_texts())
    assert MATH in ax.get_title(loc="left")
    for name in report_figures.DRAW:
        assert report_figures.render_figure(rep, name).startswith(PNG)


# ------------------------------------------------------------------------------ thousands of classes
def test_the_classes_legend_is_capped_with_2000_classes():
    classes = [f"class {k:04d}" for k in range(2000)]
    per_class = [1 + (k % 5) * 3 for k in range(2000)]  # 1, 4, 7, 10, 13 labels: the 1s are tail
    rep = hand_report(2, classes, per_class)
    fig = report_figures.DRAW["classes"](rep)
    texts = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert len(texts) == 13  # 12 classes and "other"
    assert texts[-1] == f"other (1988 classes, {len(rep.tail) - 12} tail)"
    assert all(", tail" in t for t in texts[:-1])  # tail classes first: what the tab mines for
    assert report_figures.render_figure(rep, "classes").startswith(PNG)


def test_class_steps_agree_with_the_cumulative_counts():
    events = [LabelEvent(i + 1, 1000.0 + i, c) for i, c in enumerate("aabaaabbbt")]
    steps = report.class_steps(events, ["a", "b", "t", "never"])
    series = report.cumulative_per_class(events, ["a", "b", "t", "never"])
    for name, (x, y) in steps.items():
        at = [int(y[(x <= n).nonzero()[0][-1]]) for n in range(1, 11)]  # a step holds until the next x
        assert at == series[name].tolist()
    assert steps["never"][0].tolist() == [0, 10] and steps["never"][1].tolist() == [0, 0]


# ------------------------------------------------------------------------------ no global render lock
def test_one_project_rendering_does_not_hold_up_another(monkeypatch):
    """Project 1's figure is stopped half-way (its drawing waits for an Event); project 2's figure must
    still render. With one lock for all projects it waited for project 1."""
    entered, release = threading.Event(), threading.Event()
    draw = report_figures.DRAW["classes"]

    def stalled(rep):
        if rep.project_id == 1:
            entered.set()
            release.wait(WAIT)
        return draw(rep)

    monkeypatch.setitem(report_figures.DRAW, "classes", stalled)
    first, second = hand_report(1, ["a", "b"], [3, 1]), hand_report(2, ["a", "b"], [3, 1])
    results: dict[int, bytes] = {}
    done = threading.Event()

    def render(rep, finished=None):
        results[rep.project_id] = rep.figure("classes")
        if finished:
            finished.set()

    one = threading.Thread(target=render, args=(first,), daemon=True)
    one.start()
    try:
        assert entered.wait(WAIT)
        threading.Thread(target=render, args=(second, done), daemon=True).start()
        assert done.wait(WAIT), "project 2's figure waited for project 1's"
        assert results[2].startswith(PNG) and 1 not in results
    finally:
        release.set()
        one.join(WAIT)
    assert results[1].startswith(PNG)


# ------------------------------------------------------------------------------ dates
def test_label_studio_dates_outside_2000_to_tomorrow_are_refused():
    now = T0
    assert report.label_studio_time("2026-01-01T00:00:00Z", now) == T0
    assert report.label_studio_time("2026-01-01T23:00:00Z", now) is not None  # a skewed clock
    for forged in ("0001-01-01T00:00:00+14:00", "1999-12-31T23:59:59Z", "2026-01-03T00:00:00Z",
                   "9999-12-31T23:59:59-14:00", "nonsense", 12, None):
        assert report.label_studio_time(forged, now) is None, forged
    assert report.iso(-62135647200.0) is None  # a year-0 time has no date to print (it raised)


def test_annotations_with_impossible_dates_are_left_out_and_counted():
    from backend.label_config import parse_label_config

    config = parse_label_config("""<View><Image name="image" value="$image"/><Choices name="choice"
      toName="image"><Choice value="a"/><Choice value="b"/></Choices></View>""")

    def task(tid, created):
        return {"id": tid, "annotations": [{"id": tid, "created_at": created, "updated_at": created, "result": [
            {"from_name": "choice", "to_name": "image", "type": "choices", "value": {"choices": ["a"]}}]}]}

    skipped = Skipped(1)
    events, n = report.label_events([task(1, "2026-01-01T00:00:00Z"), task(2, "0001-01-01T00:00:00+14:00")],
                                    config, skipped, now=T0 + 3600)
    assert [e.task_id for e in events] == [1] and n == 2
    assert skipped.count("dates") == 1 and skipped.as_dict()["recent"][0]["task"] == 2


class FakeViews:
    """`client._client_wrapper.httpx_client.request("api/dm/views/")` as report_source calls it."""

    def __init__(self, views: list[dict]):
        self.views = views
        self._client_wrapper = SimpleNamespace(httpx_client=self)

    def request(self, path, method, params):
        body = json.dumps(self.views)
        return SimpleNamespace(status_code=200, text=body, json=lambda: json.loads(body))


def tab(enabled: str, title: str = "Tail classes first") -> dict:
    return {"id": 5, "project": 1, "data": {"title": title, "mcm_enabled_at": enabled}}


def test_the_first_recorded_ordering_time_wins_over_later_edits_of_the_tab(tmp_path, caplog):
    client = FakeViews([tab("2026-03-01T10:00:00Z")])
    assert remember_enabled_at(client, 1, str(tmp_path))["enabled_at"] == "2026-03-01T10:00:00Z"
    client.views = [tab("2026-01-01T00:00:00Z"), tab("2026-02-01T00:00:00Z", "a new tab")]  # forged earlier
    assert remember_enabled_at(client, 1, str(tmp_path))["enabled_at"] == "2026-03-01T10:00:00Z"
    assert read_enabled_at(str(tmp_path))["enabled_at"] == "2026-03-01T10:00:00Z"
    assert "2026-01-01T00:00:00Z ignored: the backend recorded 2026-03-01T10:00:00Z first" in caplog.text
    skipped = Skipped(1)
    assert remember_enabled_at(client, 1, str(tmp_path), skipped)["enabled_at"] == "2026-03-01T10:00:00Z"
    assert skipped.count("tabs") == 1  # counted where /mcm/status shows it


def test_the_first_ordering_time_wins_even_when_model_dir_is_read_only(tmp_path, monkeypatch):
    from backend import report_source

    def refuse(path, data):
        raise OSError(30, "Read-only file system")

    monkeypatch.setattr(report_source, "atomic_write_json", refuse)
    monkeypatch.setattr(report_source, "_first_seen", {}, raising=False)
    client = FakeViews([tab("2026-03-01T10:00:00Z")])
    assert remember_enabled_at(client, 1, str(tmp_path))["enabled_at"] == "2026-03-01T10:00:00Z"
    client.views = [tab("2026-01-01T00:00:00Z")]
    assert remember_enabled_at(client, 1, str(tmp_path))["enabled_at"] == "2026-03-01T10:00:00Z"
    assert not os.path.exists(tmp_path / ORDERING_FILE)


def test_a_tab_date_out_of_range_is_ignored_and_logged(tmp_path, caplog):
    client = FakeViews([tab("0001-01-01T00:00:00+14:00"), tab("2190-01-01T00:00:00Z", "future")])
    assert remember_enabled_at(client, 1, str(tmp_path)) is None
    assert not os.path.exists(tmp_path / ORDERING_FILE)
    assert "'0001-01-01T00:00:00+14:00'" in caplog.text and "2190-01-01T00:00:00Z is outside" in caplog.text
    client.views.append(tab("2026-03-01T10:00:00Z", "real"))
    assert remember_enabled_at(client, 1, str(tmp_path))["tab"] == "real"


# ------------------------------------------------------------------------------ over HTTP
@pytest.fixture
def served(fake_ls, images, make_settings):
    """Project 3: classes zero, one and MATH, labeled, never trained; its tab dated year 1 (+14:00)."""
    from backend.app import create_app
    from backend_fakes import LABEL_CONFIG, mnist_by_digit, png_bytes

    config = LABEL_CONFIG.replace('<Choice value="seven"/>', f'<Choice value="{MATH}"/>')
    fake_ls.add_project(3, config)
    for i, label in enumerate(["zero"] * 6 + ["one"] * 6 + [MATH]):
        fake_ls.uploads[f"3/{i}.png"] = png_bytes(mnist_by_digit()[1][i])
        fake_ls.add_task(3, 30000 + i, f"/data/upload/3/{i}.png", label=label,
                         created_at=report.iso(T0 + 60 * i))
    fake_ls.views.append({"id": 9, "project": 3, "data": {"title": "Tail classes first",
                                                          "mcm_enabled_at": "0001-01-01T00:00:00+14:00"}})
    app = create_app(make_settings(label_studio_url=fake_ls.url, label_studio_api_key=fake_ls.legacy_token))
    client = app.test_client()
    assert client.post("/setup", json={"project": "3.1", "schema": config}).status_code == 200
    yield client, app_state(app)
    app_state(app).close()


def test_report_answers_with_a_dollar_class_name_and_a_year_one_tab_date(served, caplog):
    served, state = served
    summary = served.get("/mcm/report?project=3&format=json")
    assert summary.status_code == 200, summary.get_data(as_text=True)[:300]
    assert summary.json["ordering"]["enabled_at"] is None and summary.json["tail_classes"] == [MATH]
    page = served.get("/mcm/report?project=3")
    assert page.status_code == 200 and MATH in page.get_data(as_text=True)
    png = served.get("/mcm/report/classes.png?project=3")
    assert png.status_code == 200 and png.data.startswith(PNG)
    assert "could not be drawn" not in caplog.text
    assert state.context.projects.get(3).skipped.count("tabs") >= 1  # the year-1 date, counted and logged
