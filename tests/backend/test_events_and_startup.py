"""Every webhook event's routing, start-up failures and the command line."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

from backend.app import create_app
from backend.context import Context
from backend_fakes import LABEL_CONFIG
from backend_helpers import app_state

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PYTHON = sys.executable


@pytest.fixture
def recorded(make_settings):
    """An app whose training function records the projects it was asked to train."""
    calls: list[int] = []
    app = create_app(make_settings(debounce_seconds=0.3), train_fn=calls.append)
    connected = app.test_client().post("/setup", json={"project": "42.1700000000", "schema": LABEL_CONFIG})
    assert connected.status_code == 200  # Label Studio calls /setup when it connects a project
    yield app, calls
    app_state(app).close()


def test_start_training_schedules_one_training(recorded):
    app, calls = recorded
    client = app.test_client()
    for _ in range(5):
        response = client.post("/webhook", json={"action": "START_TRAINING", "project": {"id": 42, "title": "p"}})
        assert response.status_code == 201 and response.json["project"] == 42
    assert app_state(app).queue.wait_idle(timeout=10)
    assert calls == [42]


@pytest.mark.parametrize("action", ["ANNOTATION_CREATED", "ANNOTATIONS_CREATED", "ANNOTATION_UPDATED",
                                    "ANNOTATIONS_DELETED", "PROJECT_UPDATED", "SOMETHING_NEW"])
def test_other_events_are_acknowledged_and_ignored(recorded, action):
    """Annotation events train only through Label Studio's own START_TRAINING (the Model page's
    'Start model training on annotation submission'), so that page matches what happens."""
    app, calls = recorded
    response = app.test_client().post("/webhook", json={"action": action, "project": {"id": 42}})
    assert response.status_code == 200 and response.json["status"] == "ignored"
    assert app_state(app).queue.wait_idle(timeout=5) and calls == []


def test_training_without_label_studio_settings_reports_the_missing_setting(make_settings):
    app = create_app(make_settings())  # no LABEL_STUDIO_URL / key
    client = app.test_client()
    assert client.post("/setup", json={"project": "3.1", "schema": LABEL_CONFIG}).status_code == 200
    assert client.post("/webhook", json={"action": "START_TRAINING", "project": {"id": 3}}).status_code == 201
    assert app_state(app).queue.wait_idle(timeout=30)
    status = client.get("/mcm/status?project=3").json
    assert "LABEL_STUDIO_URL" in status["last_error"] and status["model_version"] is None
    app_state(app).close()


def test_missing_backbone_weights_stop_start_up_naming_the_file(make_settings, tmp_path):
    missing = str(tmp_path / "nope.pt")
    with pytest.raises(Exception, match="nope.pt"):
        Context(make_settings(backbone="resnet18", backbone_weights=missing))
    with pytest.raises(Exception, match="MCM_BACKBONE"):
        Context(make_settings(backbone="vgg99"))
    with pytest.raises(ValueError, match="MCM_MINER_OPTIONS"):
        Context(make_settings(miner_options='{"no_such_option": 1}'))


def test_wsgi_help_lists_every_setting():
    out = subprocess.run([PYTHON, "_wsgi.py", "--help"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    for name in ("--port", "--host", "LABEL_STUDIO_URL", "LABEL_STUDIO_API_KEY", "MODEL_DIR", "MCM_BACKBONE",
                 "MCM_BACKBONE_WEIGHTS", "MCM_ALLOWED_HOSTS", "BASIC_AUTH_USER", "BASIC_AUTH_PASS", "REDIS_URL",
                 "MCM_DEBOUNCE_SECONDS", "MCM_RETRAIN_MIN_INTERVAL", "MCM_PREDICTION_GRACE_SECONDS", "MCM_SEED",
                 "MCM_PREDICT_CHUNK", "LOG_LEVEL"):
        assert name in out.stdout


def test_wsgi_refuses_to_start_with_bad_weights(tmp_path, monkeypatch, caplog):
    import _wsgi

    monkeypatch.setenv("MCM_BACKBONE", "resnet18")
    monkeypatch.setenv("MCM_BACKBONE_WEIGHTS", str(tmp_path / "missing.pt"))
    monkeypatch.setenv("MODEL_DIR", str(tmp_path / "models"))
    assert _wsgi.main(["--port", "0"]) == 2
    assert "missing.pt" in caplog.text and "cannot start" in caplog.text
