"""The prediction lifecycle (backend/publishing.py) against the fake Label Studio over real HTTP.

The fake refuses an annotation whose pre-filled prediction was deleted, as Label Studio does
(400 "parent_prediction: Invalid pk"), so these tests fail exactly where annotators lost work.
"""
from __future__ import annotations

import numpy as np
import pytest
import requests

from backend.labelstudio import client as labelstudio
from backend.label_config import parse_label_config
from backend.ledger import Ledger
from backend.publishing import Publisher, head_size
from backend.ranking import Ranking
from backend.pacing import ready_at
from backend_fakes import LABEL_CONFIG
from backend_helpers import ShiftedClock

PID = 5
CONFIG = parse_label_config(LABEL_CONFIG)
GRACE = 3600.0


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def world(fake_ls, tmp_path):
    fake_ls.add_project(PID, LABEL_CONFIG)
    for tid in range(1, 61):
        fake_ls.add_task(PID, tid, f"https://img.example/{tid}.png")
    clock = Clock()
    client = labelstudio.make_client(fake_ls.url, fake_ls.legacy_token)
    publisher = Publisher(client, PID, str(tmp_path / "project"), CONFIG, chunk_size=7, clock=clock)
    return fake_ls, publisher, clock


def ranking(seed: int, n: int = 60) -> Ranking:
    rng = np.random.default_rng(seed)
    return Ranking.build(np.arange(1, n + 1), rng.random(n), rng.integers(0, 3, n))


def version(n: int) -> str:
    return f"mcm-v{n}-20261127T12{n:04d}"


def rows(fake, v: str) -> list[dict]:
    return [p for p in fake.predictions if p["model_version"] == v]


def submit(fake, task_id: int, parent: int | None) -> int:
    body = {"result": [{"from_name": "choice", "to_name": "image", "type": "choices",
                        "value": {"choices": ["zero"]}}], "parent_prediction": parent}
    response = requests.post(f"{fake.url}/api/tasks/{task_id}/annotations/", json=body,
                             headers={"Authorization": f"Token {fake.legacy_token}"}, timeout=10)
    return response.status_code


def test_publish_pushes_the_head_in_score_order_then_switches_model_version(world):
    fake, publisher, _ = world
    r = ranking(0)
    timings = publisher.publish(version(1), r, head=10)
    pushed = rows(fake, version(1))
    assert fake.projects[PID]["model_version"] == version(1)
    assert [p["task"] for p in pushed] == r.task_ids[:10].tolist()  # exactly the top 10, highest first
    assert [p["score"] for p in pushed] == sorted((p["score"] for p in pushed), reverse=True)
    assert timings["head"] == 10 and timings["pool"] == 60
    ledger = publisher.ledger.read()
    assert ledger["current"] == version(1) and ledger["versions"][version(1)]["pushed"] == 10


def test_an_open_task_survives_retrains_within_the_grace_period_and_old_versions_go_after_it(world):
    fake, publisher, clock = world
    publisher.publish(version(1), ranking(1), head=10)
    top_task = int(ranking(1).task_ids[0])
    opened = fake.open_task(top_task)            # the annotator opens the first task of the queue
    assert opened is not None
    for n in range(2, 7):                        # five retrains while the task stays open
        clock.advance(60)
        publisher.publish(version(n), ranking(n), head=10)
        assert publisher.retire(GRACE) == 0      # nothing is old enough yet
    assert submit(fake, top_task, opened) == 201, "the annotator's submission must be saved"

    clock.advance(GRACE + 1)                     # long after: every superseded version is retired
    deleted = publisher.retire(GRACE)
    assert deleted == 5 * 10
    assert {p["model_version"] for p in fake.predictions} == {version(6)}
    assert len(rows(fake, version(6))) == 10
    assert all(publisher.ledger.read()["versions"][version(n)].get("retired_at") for n in range(1, 6))


def test_retirement_works_in_budgets_and_resumes(world, monkeypatch):
    fake, publisher, clock = world
    publisher.publish(version(1), ranking(1), head=30)
    publisher.publish(version(2), ranking(2), head=5)
    clock.advance(GRACE)

    def ticking_clock_budget():  # each deletion costs 1 s of the fake clock; budget 10 s
        original = labelstudio.delete_prediction

        def slow(client, prediction_id):
            clock.advance(1)
            return original(client, prediction_id)
        return slow

    import backend.publishing as publishing
    with monkeypatch.context() as patched:  # restored before the unbudgeted retire below
        patched.setattr(publishing.labelstudio, "delete_prediction", ticking_clock_budget())
        first = publisher.retire(GRACE, max_seconds=10)
    assert 0 < first < 30 and len(rows(fake, version(1))) == 30 - first
    assert not publisher.ledger.read()["versions"][version(1)].get("retired_at")
    assert publisher.retire(GRACE) == 30 - first
    assert rows(fake, version(1)) == [] and len(rows(fake, version(2))) == 5


def test_retire_never_touches_the_current_version_or_the_one_label_studio_shows(world):
    fake, publisher, clock = world
    publisher.publish(version(1), ranking(1), head=8)
    publisher.publish(version(2), ranking(2), head=8)
    clock.advance(GRACE * 2)
    # Someone pointed Label Studio back at v1: it is in use, so it stays.
    assert publisher.retire(GRACE, label_studio_version=version(1)) == 0
    assert len(rows(fake, version(1))) == 8 and len(rows(fake, version(2))) == 8
    assert publisher.retire(GRACE) == 8
    assert len(rows(fake, version(2))) == 8  # current: never retired


def test_fill_pushes_the_rest_in_order_once_the_version_has_settled(world):
    fake, publisher, clock = world
    publisher.publish(version(1), ranking(1), head=10)       # first version: fills at once
    assert publisher.fill(fill_after=300) == 50
    clock.advance(10)
    r2 = ranking(2)
    publisher.publish(version(2), r2, head=10)
    assert publisher.fill(fill_after=300) == 0                # not settled yet
    clock.advance(301)
    assert publisher.fill(fill_after=300) == 50
    pushed = rows(fake, version(2))
    assert [p["task"] for p in pushed] == r2.task_ids.tolist()  # the whole pool, highest score first
    assert publisher.ledger.read()["versions"][version(2)].get("filled_at")
    assert publisher.fill(fill_after=300) == 0                # nothing left


def test_fill_stops_when_a_newer_version_is_published(world, monkeypatch):
    fake, publisher, clock = world
    monkeypatch.setattr("backend.publishing.FILL_CHUNK", 10)
    publisher.publish(version(1), ranking(1), head=10)
    checks = {"n": 0}

    def newer_arrives() -> bool:  # asked before each chunk
        checks["n"] += 1
        if checks["n"] == 2:
            publisher.publish(version(2), ranking(2), head=10)
        return False

    assert publisher.fill(fill_after=0, should_stop=newer_arrives) == 10  # one chunk, then it noticed
    assert len(rows(fake, version(1))) == 20
    assert fake.projects[PID]["model_version"] == version(2)
    assert publisher.ledger.read()["versions"][version(1)]["pushed"] == 20


def test_new_tasks_are_pushed_at_once_only_if_they_rank_within_the_pushed_part(world):
    fake, publisher, _ = world
    r = ranking(3)
    publisher.publish(version(1), r, head=10)
    cutoff = r.scores[9]
    for tid in (61, 62):
        fake.add_task(PID, tid, f"https://img.example/{tid}.png")
    part = Ranking.build([61, 62], [min(1.0, cutoff + 0.01), cutoff / 2], [0, 1])
    assert publisher.add_tasks(part) == 1
    assert [p["task"] for p in rows(fake, version(1)) if p["task"] > 60] == [61]
    assert publisher.ledger.read()["versions"][version(1)]["pushed"] == 11
    assert publisher.ledger.read()["versions"][version(1)]["pool"] == 62


def test_a_deleted_task_never_costs_the_others_their_scores(world):
    fake, publisher, _ = world
    del fake.tasks[int(ranking(4).task_ids[3])]  # deleted in Label Studio after it was listed
    gone = []
    publisher.on_missing_tasks = gone.extend
    publisher.publish(version(1), ranking(4), head=10)
    assert gone == [int(ranking(4).task_ids[3])]
    assert len(rows(fake, version(1))) == 9


def test_unknown_versions_of_ours_are_adopted_and_retired_after_the_grace(world):
    fake, publisher, clock = world
    client = publisher.client
    labelstudio.push_predictions(client, PID, ranking(5).predictions(0, 4, CONFIG, version(7)))
    labelstudio.push_predictions(client, PID, ranking(5).predictions(0, 3, CONFIG, "someone-elses-model"))
    publisher.publish(version(8), ranking(6), head=5)
    assert publisher.adopt_unknown_versions(lambda v: v.startswith("mcm-v")) == [version(7)]
    assert publisher.retire(GRACE) == 0
    clock.advance(GRACE)
    assert publisher.retire(GRACE) == 4
    assert len([p for p in fake.predictions if p["model_version"] == "someone-elses-model"]) == 3


def test_ledger_survives_a_corrupt_file(tmp_path):
    ledger = Ledger(str(tmp_path))
    (tmp_path / "published.json").write_text("{not json")
    assert ledger.read() == {"current": None, "versions": {}}
    with ledger.editing() as data:
        data["current"] = "v"
    assert Ledger(str(tmp_path)).read()["current"] == "v"


@pytest.mark.parametrize("setting,new_labels,pool,expected", [
    (100, 0, 1000, 100), (100, 40, 1000, 160), (100, 5, 50, 50), (1, 0, 0, 1)])
def test_head_size_grows_with_the_labels_added_since_the_last_version(setting, new_labels, pool, expected):
    assert head_size(setting, new_labels, pool) == expected


@pytest.mark.parametrize("pending,last_event,last_start,expected", [
    (100.0, 100.0, None, 102.0),    # a lone event: after the debounce
    (100.0, 130.0, None, 132.0),    # a burst: quiet 2 s after the last event...
    (100.0, 159.0, None, 160.0),    # ...but no later than max_wait after the first
    (100.0, 100.0, 90.0, 120.0),    # min_interval since the previous start
    (100.0, 100.0, 50.0, 102.0),    # previous start long ago: debounce only
])
def test_pacing_rules(pending, last_event, last_start, expected):
    assert ready_at(pending, last_event, last_start, debounce=2.0, min_interval=30.0, max_wait=60.0) == expected


# --- the maintainer: recovery after a crash, Label Studio pointed elsewhere ------------------------
def test_maintainer_publishes_a_model_the_crash_left_unpublished_and_keeps_label_studio_in_line(
        fake_ls, images, make_settings):
    from backend.fitting import train_project
    from backend.maintainer import CHECK_LABEL_STUDIO_SECONDS, Maintainer
    from backend.context import Context
    from backend_fakes import populate_project

    truth = populate_project(fake_ls, images, pid=PID, head=20, tail=4, unlabeled_per_class=4)
    settings = make_settings(label_studio_url=fake_ls.url, label_studio_api_key=fake_ls.legacy_token,
                             cnn_epochs=2, fill_after_seconds=0.0, prediction_grace_seconds=0.0)
    version = train_project(PID, Context(settings), rescore=False)  # then the process "died"
    assert fake_ls.projects[PID]["model_version"] == "" and not fake_ls.predictions

    restarted = Context(settings)  # a new process finds the saved model...
    clock = ShiftedClock()
    maintainer = Maintainer(restarted, is_busy=lambda project_id: False, clock=clock)
    maintainer.maintain(PID)       # ...and its first upkeep pass publishes it
    assert fake_ls.projects[PID]["model_version"] == version
    assert {p["task"] for p in fake_ls.predictions if p["model_version"] == version} == set(truth)

    # Label Studio reset model_version to the backend's title (it does so on connect): switched back.
    fake_ls.projects[PID]["model_version"] = "Minority-class mining"
    clock.advance(CHECK_LABEL_STUDIO_SECONDS)  # Label Studio is asked again
    maintainer.maintain(PID)
    assert fake_ls.projects[PID]["model_version"] == version

    # Another model's version chosen by the team is left alone, and reported.
    fake_ls.projects[PID]["model_version"] = "yolo-v8"
    clock.advance(CHECK_LABEL_STUDIO_SECONDS)  # Label Studio is asked again
    maintainer.maintain(PID)
    assert fake_ls.projects[PID]["model_version"] == "yolo-v8" and maintainer.foreign_version[PID] == "yolo-v8"

    # While the project trains, upkeep leaves it alone.
    fake_ls.projects[PID]["model_version"] = ""
    busy = Maintainer(restarted, is_busy=lambda project_id: True)
    busy.maintain(PID)
    assert fake_ls.projects[PID]["model_version"] == ""
