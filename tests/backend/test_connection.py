"""Issue 19 (secure by default): "connected" means connected in Label Studio, and the defaults
refuse unauthenticated clients that are not on the loopback.

An attacker on the loopback called /setup and /train for a project that had no ML backend in Label
Studio and got 12 predictions pushed there; 50 /setup calls with made-up ids made 50 folders under
MODEL_DIR. The fake Label Studio lists each project's ML backends (GET /api/ml) and counts the
questions, so the tests see what the backend asks and what it pushes.
"""
from __future__ import annotations

import base64
import json
import os
import socket

import pytest

from backend.app import create_app, service_of
from backend.settings import Settings
from backend_fakes import LABEL_CONFIG, populate_project

PID = 1
TTL = 300.0


class Clock:
    def __init__(self) -> None:
        self.now = 1_000.0

    def __call__(self) -> float:
        return self.now


def _settings(make_settings, fake, **overrides) -> Settings:
    values = dict(label_studio_url=fake.url, label_studio_api_key=fake.legacy_token, cnn_epochs=1,
                  connection_ttl=TTL)
    return make_settings(**{**values, **overrides})


def _setup(client, pid, **kwargs):
    return client.post("/setup", json={"project": f"{pid}.1700000000", "schema": LABEL_CONFIG}, **kwargs)


def _train(client, pid, **kwargs):
    return client.post("/webhook", json={"action": "START_TRAINING", "project": {"id": pid}}, **kwargs)


@pytest.fixture
def recorded(make_settings, fake_ls):
    """An app on the fake Label Studio whose training function records the projects it trains."""
    apps = []

    def build(**overrides):
        calls: list[int] = []
        app = create_app(_settings(make_settings, fake_ls, **overrides), train_fn=calls.append)
        service_of(app).connections.clock = Clock()
        apps.append(app)
        return app, app.test_client(), calls
    yield build
    for app in apps:
        service_of(app).close()


def _project_dirs(settings: Settings) -> list[str]:
    return os.listdir(settings.model_dir) if os.path.isdir(settings.model_dir) else []


# --- item 2: act only on projects connected in Label Studio ----------------------------------------------
def test_a_project_without_our_ml_backend_gets_4xx_and_nothing_is_pushed(make_settings, fake_ls, images):
    populate_project(fake_ls, images, pid=PID, head=8, tail=3, unlabeled_per_class=2)
    fake_ls.ml_backends.pop(PID)  # the project exists, but no ML backend is registered for it
    settings = _settings(make_settings, fake_ls)
    app = create_app(settings)  # the real training: on the old code it trained and pushed
    client = app.test_client()
    try:
        assert _setup(client, PID).status_code == 200  # Label Studio calls /setup before saving a connection
        for response in (client.post("/train", json={"project": PID}), _train(client, PID),
                         client.get(f"/mcm/report?project={PID}&format=json")):
            assert response.status_code == 404, response.json
            assert f"project {PID} is not connected" in response.json["error"]
            assert "no ML backend registered in Label Studio" in response.json["error"]
            assert "MCM_PROJECTS" in response.json["error"]
        predict = client.post("/predict", json={"project": f"{PID}.1", "tasks": [{"id": 1, "data": {}}]})
        assert predict.status_code == 200 and predict.json["results"] == [[]]
        status = client.get(f"/mcm/status?project={PID}").json
        assert status["connected"] is False and "no ML backend" in status["reason"]
        assert client.get(f"/versions?project={PID}").json["versions"] == []
        assert not service_of(app).maintainer.is_connected(PID)  # the background upkeep skips it too
        assert service_of(app).scheduler.wait_idle(timeout=60)
    finally:
        service_of(app).close()
    assert fake_ls.predictions == [] and fake_ls.projects[PID]["model_version"] == ""
    assert _project_dirs(settings) == []


def test_fifty_setups_with_made_up_ids_leave_nothing_on_disk_or_in_memory(recorded, fake_ls):
    app, client, calls = recorded()
    for pid in range(5000, 5050):
        response = _setup(client, pid)
        assert response.status_code == 200 and response.json["model_version"] == "INITIAL"
    settings = service_of(app).settings
    assert _project_dirs(settings) == [] and service_of(app).context.projects.in_memory() == []
    assert fake_ls.ml_queries == []  # /setup never asks Label Studio (Label Studio would wait on itself)
    assert _train(client, 5000).status_code == 404
    assert _project_dirs(settings) == [] and calls == []


def test_label_studio_connect_flow_setup_first_then_the_ml_backend_row(recorded, fake_ls):
    """Label Studio validates a new connection by calling /setup before it saves the ML backend: /setup
    answers 200, and the next action finds the backend registered (a cached refusal is forgotten)."""
    app, client, calls = recorded()
    fake_ls.add_project(3, LABEL_CONFIG, ml_backend=None)
    assert _train(client, 3).status_code == 404  # not connected yet (and that answer is cached)
    assert _setup(client, 3).status_code == 200  # Connect: /setup, then Label Studio saves the row
    fake_ls.register_backend(3, "http://127.0.0.1:9090")
    assert _train(client, 3).status_code == 201
    assert service_of(app).scheduler.wait_idle(timeout=10) and calls == [3]
    record = json.loads(open(os.path.join(service_of(app).settings.model_dir, "3",
                                          "connected.json")).read())
    assert record["verified_by"] == "label-studio"


def test_label_studio_is_asked_once_per_ttl_per_project(recorded, fake_ls):
    app, client, calls = recorded()
    clock = service_of(app).connections.clock
    fake_ls.add_project(PID, LABEL_CONFIG)
    for _ in range(5):
        assert _train(client, PID).status_code == 201
        assert client.get(f"/mcm/status?project={PID}").json["connected"] is True
        assert client.post("/predict", json={"project": PID, "tasks": []}).status_code == 200
        assert _setup(client, PID).status_code == 200
        assert _train(client, 777).status_code == 404  # a refusal is cached too
    assert fake_ls.ml_queries == [PID, 777]
    clock.now += TTL - 1
    _train(client, PID)
    assert fake_ls.ml_queries == [PID, 777]
    clock.now += 2
    _train(client, PID)
    _train(client, 777)
    assert fake_ls.ml_queries == [PID, 777, PID, 777]


def test_backend_url_setting_names_which_ml_backend_is_this_one(recorded, fake_ls):
    fake_ls.add_project(PID, LABEL_CONFIG, ml_backend="http://other-backend:9090")
    fake_ls.add_project(2, LABEL_CONFIG, ml_backend="http://mcm:9090/")
    app, client, calls = recorded(backend_url="http://mcm:9090")
    refused = _train(client, PID)
    assert refused.status_code == 404 and "MCM_BACKEND_URL=http://mcm:9090" in refused.json["error"]
    assert _train(client, 2).status_code == 201  # the same URL but for the trailing slash
    assert service_of(app).scheduler.wait_idle(timeout=10) and calls == [2]


def test_allow_list_is_authoritative_and_label_studio_is_not_asked(recorded, fake_ls):
    fake_ls.add_project(PID, LABEL_CONFIG)  # registered in Label Studio, but not listed
    app, client, calls = recorded(projects=("2", "5"))
    refused = _setup(client, PID)
    assert refused.status_code == 404 and "MCM_PROJECTS does not list it" in refused.json["error"]
    assert _train(client, PID).status_code == 404
    assert _setup(client, 2).status_code == 200
    assert _train(client, 2).status_code == 201 and _train(client, 5).status_code == 201
    assert service_of(app).scheduler.wait_idle(timeout=10) and sorted(calls) == [2, 5]
    assert fake_ls.ml_queries == []
    assert sorted(_project_dirs(service_of(app).settings)) == ["2", "5"]
    with pytest.raises(ValueError, match="MCM_PROJECTS"):
        Settings.from_env({"MCM_PROJECTS": "1,two"})


@pytest.mark.parametrize("failure", ["HTTP 500", "unreachable", "not configured"])
def test_label_studio_unreachable_verified_projects_work_unverified_get_503(recorded, fake_ls, failure):
    fake_ls.add_project(PID, LABEL_CONFIG)
    app, client, _ = recorded()
    assert _train(client, PID).status_code == 201  # verified now: recorded in MODEL_DIR/1/connected.json
    model_dir = service_of(app).settings.model_dir
    os.makedirs(os.path.join(model_dir, "4"))
    with open(os.path.join(model_dir, "4", "connected.json"), "w") as handle:  # what the old /setup wrote
        json.dump({"project": 4, "label_studio_project": "4.1", "connected_at": "2026-01-01T00:00:00Z"}, handle)
    fake_ls.add_project(4, LABEL_CONFIG)
    fake_ls.add_project(6, LABEL_CONFIG)
    with socket.socket() as held:  # a port nobody listens on
        held.bind(("127.0.0.1", 0))
        overrides = {"HTTP 500": {}, "unreachable": {"label_studio_url": f"http://127.0.0.1:{held.getsockname()[1]}"},
                     "not configured": {"label_studio_api_key": None, "projects": ()}}[failure]
        fake_ls.ml_status = 500 if failure == "HTTP 500" else 200
        restarted, client, calls = recorded(**overrides)  # a new process: nothing cached
        assert _train(client, PID).status_code == 201
        for pid in (4, 6):  # an old unverified record does not count
            response = _train(client, pid)
            assert response.status_code == 503 and f"project {pid}" in response.json["error"]
            assert "never verified" in response.json["error"]
            predict = client.post("/predict", json={"project": pid, "tasks": [{"id": 1, "data": {}}]})
            assert predict.status_code == 503
        assert service_of(restarted).scheduler.wait_idle(timeout=10) and calls == [PID]
    assert not os.path.exists(os.path.join(model_dir, "6"))


def test_a_project_disconnected_in_label_studio_loses_its_record(recorded, fake_ls):
    fake_ls.add_project(PID, LABEL_CONFIG)
    app, client, _ = recorded()
    assert _train(client, PID).status_code == 201
    record = os.path.join(service_of(app).settings.model_dir, str(PID), "connected.json")
    assert os.path.exists(record)
    fake_ls.ml_backends[PID] = []  # the admin removed the model in Settings > Model
    service_of(app).connections.clock.now += TTL + 1
    assert _train(client, PID).status_code == 404
    assert not os.path.exists(record)  # so a later Label Studio outage does not revive it


# --- item 3: safe defaults ------------------------------------------------------------------------------------
def test_non_loopback_clients_without_basic_auth_get_403(make_settings):
    app = create_app(make_settings())
    client = app.test_client()
    outside = {"REMOTE_ADDR": "10.1.2.3"}
    try:
        response = _setup(client, 2, environ_base=outside)
        assert response.status_code == 403
        assert "BASIC_AUTH_USER" in response.json["error"] and "MCM_ALLOW_UNAUTHENTICATED" in response.json["error"]
        for path in ("/predict", "/webhook", "/train"):
            assert client.post(path, json={}, environ_base=outside).status_code == 403
        assert client.get("/mcm/status?project=2", environ_base=outside).status_code == 403
        assert client.get("/health", environ_base=outside).status_code == 200
        for local in ("127.0.0.1", "127.8.9.10", "::1", "::ffff:127.0.0.1"):
            assert _setup(client, 2, environ_base={"REMOTE_ADDR": local}).status_code == 200, local
        assert _setup(client, 2, environ_base={"REMOTE_ADDR": "::ffff:10.1.2.3"}).status_code == 403
    finally:
        service_of(app).close()
    for overrides, expected in (({"allow_unauthenticated": True}, 200),
                                ({"basic_auth_user": "ml", "basic_auth_pass": "s3cret"}, 401)):
        app = create_app(make_settings(**overrides))
        try:
            assert _setup(app.test_client(), 2, environ_base=outside).status_code == expected
        finally:
            service_of(app).close()
    app = create_app(make_settings(basic_auth_user="ml", basic_auth_pass="s3cret"))
    try:
        good = {"Authorization": "Basic " + base64.b64encode(b"ml:s3cret").decode()}
        assert _setup(app.test_client(), 2, environ_base=outside, headers=good).status_code == 200
    finally:
        service_of(app).close()


def test_wsgi_refuses_a_non_loopback_host_without_basic_auth(tmp_path, monkeypatch, caplog):
    import flask

    import _wsgi

    served = []
    monkeypatch.setattr(flask.Flask, "run", lambda self, **kwargs: served.append(kwargs))  # never blocks
    for name in ("BASIC_AUTH_USER", "BASIC_AUTH_PASS", "MCM_ALLOW_UNAUTHENTICATED", "LABEL_STUDIO_API_KEY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("MCM_BACKBONE", "simple-cnn")
    monkeypatch.setenv("MODEL_DIR", str(tmp_path / "models"))
    assert _wsgi.main(["--host", "0.0.0.0", "--port", "0"]) == 2
    assert served == []
    assert "0.0.0.0" in caplog.text and "BASIC_AUTH_USER" in caplog.text
    assert "MCM_ALLOW_UNAUTHENTICATED=true" in caplog.text
    check = _wsgi.check_bind_address
    for host in ("127.0.0.1", "localhost", "::1"):
        check(host, Settings())
    check("0.0.0.0", Settings(allow_unauthenticated=True))
    check("0.0.0.0", Settings(basic_auth_user="ml", basic_auth_pass="s3cret"))
    with pytest.raises(ValueError, match="10.0.0.5"):
        check("10.0.0.5", Settings())
    monkeypatch.setenv("MCM_ALLOW_UNAUTHENTICATED", "maybe")
    assert _wsgi.main(["--host", "0.0.0.0", "--port", "0"]) == 2 and "must be true or false" in caplog.text


@pytest.mark.parametrize("field, value", [("basic_auth_pass", "change-me-please"), ("basic_auth_pass", "CHANGE-ME-too"),
                                          ("label_studio_api_key", "replace-with-40-hex-chars")])
def test_placeholder_secrets_are_refused_at_start(field, value):
    extra = {"basic_auth_user": "ml"} if field == "basic_auth_pass" else {}
    with pytest.raises(ValueError, match=field.upper()) as raised:
        Settings(**{field: value}, **extra)
    assert value not in str(raised.value)  # never echoed: it may be a real secret after all
    Settings(**{field: "a-real-secret-9f2c"}, **extra)
