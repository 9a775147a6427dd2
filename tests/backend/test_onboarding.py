"""Issue 22: set up from the web UI alone.

A project admin labeled tasks, then connected the backend on Settings -> Model -> Connect Model: nothing
trained until the next submission or "Start Training", "Retrieve Predictions" created nothing and said
nothing, and the tail-first tab needed the command line. Here Label Studio's Connect is played as it
happens (backend/connections.py): /setup first, then Label Studio saves the ML backend row, then more
/setup calls (every Model page load, every GET /api/ml). The delayed check runs on a fake clock, moved
by the test, so no test waits for real seconds.
"""
from __future__ import annotations

import os
import threading

import numpy as np
import pytest

from backend import onboarding
from backend.labelstudio import client as labelstudio
from backend.app import create_app, service_of
from backend.context import Context
from backend.label_config import parse_label_config
from backend.publishing import Publisher
from backend.ranking import Ranking
from backend.labelstudio.tabs import ENABLED_AT_KEY, VIEW_ORDERING, VIEW_TITLE
from backend_fakes import LABEL_CONFIG

PID = 4
CONFIG = parse_label_config(LABEL_CONFIG)
DELAYS = onboarding.DELAYS  # read at import: conftest.py stretches them for the other tests


class Clock:
    def __init__(self) -> None:
        self.now = 5_000.0

    def __call__(self) -> float:
        return self.now


def _labeled_project(fake, pid: int = PID, labeled: int = 6, unlabeled: int = 4) -> None:
    """A project with `labeled` annotated tasks and no ML backend row yet (Label Studio saves it after /setup)."""
    fake.add_project(pid, LABEL_CONFIG, ml_backend=None)
    for i in range(labeled + unlabeled):
        fake.add_task(pid, pid * 1000 + i, f"https://img.example/{i}.png",
                      label=("zero", "one")[i % 2] if i < labeled else None)


def _setup(client, pid: int):
    return client.post("/setup", json={"project": f"{pid}.1700000000", "schema": LABEL_CONFIG})


@pytest.fixture
def connect(make_settings, fake_ls):
    """An app on the fake Label Studio whose training records the projects it trains; its first-training
    checks on a fake clock (`advance(seconds)` runs what is due)."""
    apps = []

    def build(**overrides):
        calls: list[int] = []
        settings = make_settings(label_studio_url=fake_ls.url, label_studio_api_key=fake_ls.legacy_token,
                                 **overrides)
        app = create_app(settings, train_fn=calls.append)
        state = service_of(app)
        clock = Clock()
        state.first_training.clock = clock
        state.first_training.delays = DELAYS

        def advance(seconds: float) -> None:
            clock.now += seconds
            state.first_training.wake()
            assert state.first_training.wait_settled(timeout=60)
            assert state.scheduler.wait_idle(timeout=60)

        apps.append(state)
        return app.test_client(), state, calls, advance
    yield build
    for state in apps:
        state.close()


def test_connecting_a_labeled_project_starts_exactly_one_training(connect, fake_ls):
    client, state, calls, advance = connect()
    _labeled_project(fake_ls)
    assert _setup(client, PID).status_code == 200      # Connect: Label Studio validates with /setup ...
    fake_ls.register_backend(PID, "http://127.0.0.1:9090")  # ... then saves the ML backend row
    for _ in range(3):                                 # update_state, the Model page, GET /api/ml
        assert _setup(client, PID).status_code == 200
    assert calls == [] and fake_ls.ml_queries == []    # /setup itself never asks Label Studio nor trains
    advance(DELAYS[0])
    assert calls == [PID]                              # on the old code: nothing until a submission
    assert state.first_training.outcomes[PID] == onboarding.REQUESTED
    for _ in range(5):                                 # more page loads within the cooldown: nothing more
        _setup(client, PID)
        advance(5.0)
    assert calls == [PID]


def test_the_check_retries_until_label_studio_lists_the_backend(connect, fake_ls):
    client, state, calls, advance = connect()
    _labeled_project(fake_ls)
    assert _setup(client, PID).status_code == 200
    advance(DELAYS[0])              # Label Studio has not saved the row yet
    assert calls == [] and state.first_training.outcomes[PID] == onboarding.RETRY
    fake_ls.register_backend(PID, "http://127.0.0.1:9090")
    advance(DELAYS[1])              # the cached refusal is forgotten: asked again
    assert calls == [PID] and fake_ls.ml_queries == [PID, PID]


def test_annotations_imported_with_the_tasks_count_as_labels(connect, fake_ls):
    """Label Studio 1.23's num_tasks_with_annotations leaves out imported annotations (found in the browser
    stage: a project imported with its labels never trained); finished_task_number counts them."""
    client, state, calls, advance = connect()
    _labeled_project(fake_ls)
    fake_ls.projects[PID].update(num_tasks_with_annotations=0, finished_task_number=6)
    fake_ls.register_backend(PID, "http://127.0.0.1:9090")
    _setup(client, PID)
    advance(DELAYS[0])
    assert calls == [PID] and state.first_training.outcomes[PID] == onboarding.REQUESTED


def test_a_connected_project_without_labels_trains_nothing(connect, fake_ls):
    client, state, calls, advance = connect()
    _labeled_project(fake_ls, labeled=0)
    fake_ls.register_backend(PID, "http://127.0.0.1:9090")
    _setup(client, PID)
    advance(DELAYS[0])
    assert calls == [] and state.first_training.outcomes[PID] == onboarding.NO_LABELS


def test_made_up_ids_start_nothing_leave_nothing_and_stay_bounded(connect, fake_ls):
    threads_before = {t.ident for t in threading.enumerate()}
    client, state, calls, advance = connect()
    for pid in range(7000, 7000 + 3 * onboarding.MAX_PENDING):
        assert _setup(client, pid).status_code == 200
    assert len(state.first_training.pending()) == onboarding.MAX_PENDING  # the rest are not even scheduled
    new_threads = [t.name for t in threading.enumerate() if t.ident not in threads_before]
    assert new_threads.count("mcm-onboarding") == 1  # one thread for every check, no timer per id
    for delay in DELAYS:            # every attempt: Label Studio has no such project
        advance(delay)
    assert state.first_training.pending() == set() and calls == []
    assert len(fake_ls.ml_queries) <= onboarding.MAX_PENDING * len(DELAYS)
    model_dir = state.settings.model_dir
    assert not os.path.isdir(model_dir) or os.listdir(model_dir) == []
    assert state.context.projects.in_memory() == []


def test_predict_without_a_model_trains_first_and_says_so(connect, fake_ls):
    client, state, calls, advance = connect()
    _labeled_project(fake_ls)
    fake_ls.register_backend(PID, "http://127.0.0.1:9090")
    tasks = [{"id": PID * 1000 + 8, "data": {"image": "https://img.example/8.png"}}]
    answer = client.post("/predict", json={"project": f"{PID}.1", "tasks": tasks})
    assert answer.status_code == 200 and answer.json["results"] == [[]]  # Label Studio stores nothing
    assert answer.json["status"] == "no_model" and "first training was requested" in answer.json["message"]
    advance(0.0)
    assert calls == [PID]


def _publisher(fake, tmp_path, auto_tab: bool) -> Publisher:
    fake.add_project(PID, LABEL_CONFIG)
    for tid in range(1, 21):
        fake.add_task(PID, tid, f"https://img.example/{tid}.png")
    client = labelstudio.make_client(fake.url, fake.legacy_token)
    return Publisher(client, PID, str(tmp_path / "project"), CONFIG, auto_tab=auto_tab)


def _ranking(seed: int) -> Ranking:
    rng = np.random.default_rng(seed)
    return Ranking.build(np.arange(1, 21), rng.random(20), rng.integers(0, 3, 20))


def test_the_first_publish_creates_the_tail_first_tab_once(fake_ls, tmp_path):
    publisher = _publisher(fake_ls, tmp_path, auto_tab=True)
    publisher.publish("mcm-v1-20260101T000000", _ranking(0), head=5)
    [tab] = fake_ls.views
    assert tab["project"] == PID and tab["data"]["title"] == VIEW_TITLE
    assert tab["data"]["ordering"] == VIEW_ORDERING and tab["data"][ENABLED_AT_KEY]  # the report's "ordering on"
    assert tab["data"]["filters"]["items"][0]["filter"] == "filter:tasks:total_annotations"
    fake_ls.views[0]["data"]["title"] = "renamed by a person"
    publisher.publish("mcm-v2-20260101T000100", _ranking(1), head=5)  # not the first publish: nothing new
    assert len(fake_ls.views) == 1 and fake_ls.projects[PID]["model_version"] == "mcm-v2-20260101T000100"


def test_an_existing_tab_is_left_alone_and_a_refusal_does_not_stop_publishing(fake_ls, tmp_path):
    publisher = _publisher(fake_ls, tmp_path, auto_tab=True)
    fake_ls.views.append({"id": 3, "project": PID, "data": {"title": VIEW_TITLE, "ordering": ["tasks:id"]}})
    publisher.publish("mcm-v1-20260101T000000", _ranking(0), head=5)
    assert fake_ls.views == [{"id": 3, "project": PID, "data": {"title": VIEW_TITLE, "ordering": ["tasks:id"]}}]
    down = labelstudio.make_client("http://127.0.0.1:9", fake_ls.legacy_token)  # nothing listens there
    assert Publisher(down, PID, str(tmp_path / "p"), CONFIG, auto_tab=True).create_tab() is False  # logged only


def test_auto_tab_false_creates_no_tab(fake_ls, tmp_path, make_settings, monkeypatch):
    publisher = _publisher(fake_ls, tmp_path, auto_tab=False)
    publisher.publish("mcm-v1-20260101T000000", _ranking(0), head=5)
    assert fake_ls.views == [] and fake_ls.projects[PID]["model_version"] == "mcm-v1-20260101T000000"
    monkeypatch.setenv("MCM_AUTO_TAB", "false")
    from backend.settings import Settings

    settings = Settings.from_env()
    assert settings.auto_tab is False and make_settings().auto_tab is True  # on by default
    context = Context(make_settings(auto_tab=False, label_studio_url=fake_ls.url,
                                    label_studio_api_key=fake_ls.legacy_token))
    assert context.publisher(PID, CONFIG).auto_tab is False
