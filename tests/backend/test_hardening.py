"""Issue 10: webhook authentication and scoping, request bounds, 4xx for malformed input, crash recovery.

Each test reproduces one defect a probe found (see the issue) against the Flask
test client; small real models are trained once per module for the tests that
need a served model.
"""
from __future__ import annotations

import base64
import io
import os
import shutil
import threading

import numpy as np
import pytest
from PIL import Image

from backend.app import create_app, service_of
from backend.versions import ModelStore
from backend_fakes import LABEL_CONFIG, ImageServer, mnist_by_digit, png_bytes

AUTH = {"Authorization": "Basic " + base64.b64encode(b"ml:s3cret").decode()}
PID = 1


# --- fixtures ----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def trained_template(tmp_path_factory):
    """MODEL_DIR/1 with two small but real versions (simple-cnn + miner), built once per module."""
    from backend.ingest.extractor import Extractor
    from mcm_core import MinorityMiner

    root = tmp_path_factory.mktemp("template")
    extractor = Extractor("simple-cnn", cnn_epochs=1)
    digits = mnist_by_digit()
    images = [Image.fromarray(digits[d][i]) for d in (0, 1, 7) for i in range(20)]
    labels = np.repeat([0, 1, 2], 20)
    prepared = extractor.backbone.prepare(images)
    store = ModelStore(str(root / str(PID)))
    versions = []
    for seed in range(2):
        cnn = extractor.train(prepared, labels, num_classes=3, seed=seed)
        miner = MinorityMiner(num_classes=3, seed=seed, n_models=1, ae_min_steps=30, ae_max_steps=60,
                              rc_max_epochs=25).fit(extractor.features(prepared, cnn), labels)
        meta = {"project": PID, "classes": ["zero", "one", "seven"], "image_key": "image", "image_name": "image",
                "control_name": "choice", "backbone": "simple-cnn", "n_labeled": 60, "tail_classes": [],
                "labeled_per_class": {"zero": 20, "one": 20, "seven": 20}, "trained_at": "2026-01-01T00:00:00Z"}

        def write(directory, miner=miner, cnn=cnn):
            miner.save(os.path.join(directory, "miner.pt"))
            cnn.save(os.path.join(directory, "backbone.pt"))
            return {}
        versions.append(store.save(write, meta))
    return {"dir": str(root / str(PID)), "versions": versions}


def _with_models(settings, template) -> str:
    target = os.path.join(settings.model_dir, str(PID))
    shutil.copytree(template["dir"], target)
    return target


@pytest.fixture
def guarded(make_settings):
    """An app with basic auth whose training function only records the projects it was asked to train."""
    calls: list[int] = []
    settings = make_settings(basic_auth_user="ml", basic_auth_pass="s3cret")
    app = create_app(settings, train_fn=calls.append)
    yield app, calls, settings
    service_of(app).close()


def _connect(client, pid=PID, headers=AUTH):
    response = client.post("/setup", json={"project": f"{pid}.1700000000", "schema": LABEL_CONFIG}, headers=headers)
    assert response.status_code == 200, response.json


# --- defect 2: unauthenticated webhooks act, on any project ---------------------------------------------
def test_webhook_requires_basic_auth_when_it_is_configured(guarded):
    app, calls, _ = guarded
    client = app.test_client()
    _connect(client)
    hook = {"action": "START_TRAINING", "project": {"id": PID}}
    response = client.post("/webhook", json=hook)
    assert response.status_code == 401 and "basic auth" in response.json["error"]
    assert client.post("/webhook", json=hook, headers=AUTH).status_code == 201
    assert service_of(app).scheduler.wait_idle(timeout=10) and calls == [PID]


def test_events_for_projects_never_connected_get_404_and_leave_no_state(guarded):
    app, calls, settings = guarded
    client = app.test_client()
    threads_before = {t.name for t in threading.enumerate()}
    for pid in range(1000, 1300):
        response = client.post("/webhook", json={"action": "START_TRAINING", "project": {"id": pid}}, headers=AUTH)
        assert response.status_code == 404 and f"project {pid} is not connected" in response.json["error"]
    created = client.post("/webhook", json={"action": "TASKS_CREATED", "project": {"id": 1000},
                                            "tasks": [{"id": 1, "data": {"image": "http://x/y.png"}}]}, headers=AUTH)
    assert created.status_code == 404
    assert client.post("/train", json={"project": "1000.1"}, headers=AUTH).status_code == 404
    status = client.get("/mcm/status?project=1001", headers=AUTH)
    assert status.status_code == 200 and status.json["connected"] is False and status.json["model_version"] is None
    assert client.get("/is_training?project=1002", headers=AUTH).json["is_training"] is False
    predict = client.post("/predict", json={"project": "1003.1", "tasks": [{"id": 1, "data": {"image": "/x.png"}}]},
                          headers=AUTH)
    assert predict.status_code == 200 and predict.json["results"] == [[]]
    assert calls == []
    assert [t.name for t in threading.enumerate() if t.name not in threads_before and "train" in t.name] == []
    assert not os.path.isdir(settings.model_dir) or os.listdir(settings.model_dir) == []
    assert service_of(app).context.projects.in_memory() == []


def test_setup_connects_a_project_durably_and_a_bad_config_does_not(guarded, make_settings):
    app, calls, settings = guarded
    client = app.test_client()
    bad = client.post("/setup", json={"project": "7.1", "schema": "<View/>"}, headers=AUTH)
    assert bad.status_code == 400
    _connect(client, pid=8)
    assert os.path.exists(os.path.join(settings.model_dir, "8", "connected.json"))
    service_of(app).close()
    restarted = create_app(settings, train_fn=calls.append)  # a new process reads the record from MODEL_DIR
    client = restarted.test_client()
    assert client.post("/webhook", json={"action": "START_TRAINING", "project": {"id": 8}},
                       headers=AUTH).status_code == 201
    assert client.post("/webhook", json={"action": "START_TRAINING", "project": {"id": 7}},
                       headers=AUTH).status_code == 404
    assert service_of(restarted).scheduler.wait_idle(timeout=10) and calls == [8]


def test_a_project_with_a_trained_model_counts_as_connected(make_settings, trained_template):
    calls: list[int] = []
    settings = make_settings()
    _with_models(settings, trained_template)  # e.g. trained before connections were recorded
    app = create_app(settings, train_fn=calls.append)
    try:
        response = app.test_client().post("/webhook", json={"action": "START_TRAINING", "project": {"id": PID}})
        assert response.status_code == 201
        assert service_of(app).scheduler.wait_idle(timeout=10) and calls == [PID]
    finally:
        service_of(app).close()


def test_tasks_created_scores_the_tasks_label_studio_has_not_the_payloads_urls(make_settings, fake_ls, images,
                                                                              trained_template):
    evil = ImageServer()  # stands for the attacker's server on another port
    try:
        settings = make_settings(label_studio_url=fake_ls.url, label_studio_api_key=fake_ls.legacy_token)
        _with_models(settings, trained_template)
        fake_ls.add_project(PID, LABEL_CONFIG)
        fake_ls.add_project(2, LABEL_CONFIG)
        images.files["/img/11.png"] = png_bytes(mnist_by_digit()[7][400])
        fake_ls.add_task(PID, 10, f"{images.url}/img/11.png")
        app = create_app(settings)
        from backend.refresh import refresh_project
        refresh_project(PID, service_of(app).context)  # the model is live, task 10 scored
        fake_ls.add_task(PID, 11, f"{images.url}/img/11.png")
        fake_ls.add_task(2, 21, f"{images.url}/img/11.png")  # another project's task
        trap = f"http://127.0.0.1:{evil.port}\\@127.0.0.1:{fake_ls.port}/data/upload/x.png"
        payload = {"action": "TASKS_CREATED", "project": {"id": PID},
                   "tasks": [{"id": tid, "data": {"image": trap}} for tid in (11, 21, 99)]}
        response = app.test_client().post("/webhook", json=payload)
        assert response.status_code == 202
        service_of(app).scorer.flush(timeout=60)
        service_of(app).close()
        assert evil.requests == []
        assert {p["task"] for p in fake_ls.predictions} == {10, 11}
        assert ("GET", "/api/tasks/") in fake_ls.calls
    finally:
        evil.close()


def test_a_burst_of_tasks_created_events_becomes_one_job_per_project():
    from backend.new_tasks import NewTaskScorer

    started, release = threading.Event(), threading.Event()
    calls: list[tuple[int, list[int]]] = []

    def run(pid, ids):
        calls.append((pid, ids))
        started.set()
        release.wait(10)

    scorer = NewTaskScorer(run)
    scorer.submit(1, [1])
    assert started.wait(10)
    for tid in range(2, 300):  # arrive while the first job runs: merged into one follow-up
        scorer.submit(1, [tid])
    scorer.submit(2, [5])
    release.set()
    scorer.flush(timeout=10)
    assert calls == [(1, [1]), (1, list(range(2, 300))), (2, [5])]
    scorer.close()


# --- defect 5: request bodies and malformed input ---------------------------------------------------------
def test_request_bodies_over_the_limit_get_413(make_settings):
    app = create_app(make_settings(max_request_bytes=100_000))
    client = app.test_client()
    big = b'{"action": "START_TRAINING", "project": 1, "pad": "' + b"x" * 200_000 + b'"}'
    for path in ("/webhook", "/predict", "/setup", "/train", "/versions"):
        response = client.post(path, data=big, content_type="application/json")
        assert response.status_code == 413 and "MCM_MAX_REQUEST_BYTES" in response.json["error"], path
    chunked = client.post("/webhook", input_stream=io.BytesIO(big), content_type="application/json",
                          environ_overrides={"wsgi.input_terminated": True})  # no Content-Length
    assert chunked.status_code == 413
    small = client.post("/webhook", json={"action": "PROJECT_UPDATED", "project": {"id": 1}})
    assert small.status_code == 200
    service_of(app).close()


MALFORMED = [
    ("/predict", {"project": "\u00b2", "tasks": []}, "project"),
    ("/predict", {"project": "1.1", "tasks": [{"id": "abc"}]}, "tasks[0].id"),
    ("/predict", {"project": "1.1", "tasks": [{"id": [1]}]}, "tasks[0].id"),
    ("/predict", {"project": "1.1", "tasks": [{"id": 1, "data": "x"}]}, "tasks[0].data"),
    ("/predict", {"project": "1.1", "tasks": [{"id": 1, "data": [1]}]}, "tasks[0].data"),
    ("/predict", {"project": "1.1", "tasks": [], "label_config": {"a": 1}}, "label_config"),
    ("/predict", {"project": 1.5, "tasks": []}, "project"),
    ("/webhook", {"action": "ANNOTATION_CREATED", "project": {"id": 1}, "annotation": {"result": 5}},
     "annotation.result"),
    ("/webhook", {"action": "ANNOTATION_CREATED", "project": {"id": 1},
                  "annotation": {"result": [{"from_name": "choice", "value": 5}]}}, "annotation.result[0].value"),
    ("/webhook", {"action": "TASKS_CREATED", "project": {"id": 1}, "tasks": 5}, "tasks"),
    ("/webhook", {"action": "ANNOTATION_CREATED", "project": {"id": 1, "label_config": {}}}, "project.label_config"),
    ("/webhook", {"action": ["START_TRAINING"], "project": {"id": 1}}, "action"),
    ("/setup", {"project": "\u00b2.1", "schema": LABEL_CONFIG}, "project"),
    ("/setup", {"project": "1.1", "schema": {"x": 1}}, "schema"),
    ("/train", {"project": [1]}, "project"),
]


@pytest.mark.parametrize("path, payload, field", MALFORMED)
def test_malformed_input_is_a_400_naming_the_field(guarded, path, payload, field):
    app, calls, _ = guarded
    client = app.test_client()
    _connect(client)
    response = client.post(path, json=payload, headers=AUTH)
    assert response.status_code == 400, response.data[:300]
    assert field in response.json["error"]
    assert calls == []


@pytest.mark.parametrize("query", ["project=%C2%B2", "project=1e5", "project=-1", "project=", "x=1"])
def test_malformed_project_in_a_query_is_a_400(guarded, query):
    app, _, _ = guarded
    for path in ("/versions", "/mcm/status", "/is_training", "/mcm/report", "/mcm/report/classes.png"):
        response = app.test_client().get(f"{path}?{query}", headers=AUTH)
        assert response.status_code == 400 and "project" in response.json["error"], (path, query)


@pytest.mark.parametrize("credentials", ["m\u00fc:s3cret".encode(), "ml:s3cr\u00e9t".encode(), b"\xff\xfe:x", b"nocolon"])
def test_odd_basic_auth_credentials_get_a_json_401(guarded, credentials):
    app, _, _ = guarded
    headers = {"Authorization": "Basic " + base64.b64encode(credentials).decode()}
    response = app.test_client().post("/setup", json={"project": "1.1", "schema": LABEL_CONFIG}, headers=headers)
    assert response.status_code == 401 and response.is_json


def test_deeply_nested_json_is_a_400(guarded):
    app, _, _ = guarded
    response = app.test_client().post("/predict", data="[" * 100_000, content_type="application/json", headers=AUTH)
    assert response.status_code == 400


# --- defect 6: crash recovery ------------------------------------------------------------------------------
@pytest.mark.parametrize("pointer", ['{"version": "mcm-v2-2026', "[]", '{"version": 5}', '"x"',
                                     '{"version": "mcm-v9-20260101T000000"}', ""])
def test_a_bad_pointer_file_falls_back_to_the_newest_loadable_version(make_settings, trained_template, pointer):
    settings = make_settings()
    project_dir = _with_models(settings, trained_template)
    with open(os.path.join(project_dir, "current.json"), "w") as handle:
        handle.write(pointer)
    app = create_app(settings)  # start-up must not stop
    try:
        status = app.test_client().get(f"/mcm/status?project={PID}").json
        assert status["model_version"] == trained_template["versions"][-1]
        assert "current.json" in status["last_error"]
    finally:
        service_of(app).close()


def test_a_pointer_broken_while_running_keeps_predictions_coming(make_settings, trained_template, images):
    settings = make_settings()
    project_dir = _with_models(settings, trained_template)
    images.files["/img/a.png"] = png_bytes(mnist_by_digit()[0][450])
    app = create_app(settings)
    client = app.test_client()
    body = {"project": f"{PID}.1", "tasks": [{"id": 1, "data": {"image": f"{images.url}/img/a.png"}}]}
    try:
        assert client.post("/predict", json=body).json["results"][0]["model_version"]
        with open(os.path.join(project_dir, "current.json"), "w") as handle:
            handle.write("[]")
        response = client.post("/predict", json=body)
        assert response.status_code == 200
        assert response.json["results"][0]["model_version"] == trained_template["versions"][-1]
        assert "current.json" in client.get(f"/mcm/status?project={PID}").json["last_error"]
    finally:
        service_of(app).close()


def test_a_full_disk_costs_the_feature_cache_not_the_predictions(make_settings, trained_template, images,
                                                                 monkeypatch):
    settings = make_settings()
    _with_models(settings, trained_template)
    for name in ("a", "b", "c"):
        images.files[f"/img/{name}.png"] = png_bytes(mnist_by_digit()[1][300 + ord(name) - ord("a")])
    app = create_app(settings)
    client = app.test_client()

    def tasks(names):
        return [{"id": ord(n), "data": {"image": f"{images.url}/img/{n}.png"}} for n in names]
    try:
        first = client.post("/predict", json={"project": f"{PID}.1", "tasks": tasks("ab")}).json["results"]
        assert all(r for r in first)

        def disk_full(*args, **kwargs):
            raise OSError(28, "No space left on device")
        monkeypatch.setattr("backend.ingest.cache.atomic_savez", disk_full)
        monkeypatch.setattr("backend.versions.atomic_write_json", disk_full)
        _connect(client, pid=5, headers={})  # recording the connection fails too: kept in memory
        response = client.post("/predict", json={"project": f"{PID}.1", "tasks": tasks("abc")})
        assert response.status_code == 200
        results = response.json["results"]
        assert all(r and r["model_version"] for r in results)  # the uncached task too, and the cached ones
        assert [r["score"] for r in results[:2]] == pytest.approx([r["score"] for r in first], abs=1e-6)
    finally:
        service_of(app).close()


# --- property-based fuzzing of the HTTP boundary ----------------------------------------------------------
def test_fuzzed_requests_never_get_a_5xx_and_the_server_stays_healthy(make_settings, trained_template, monkeypatch):
    from hypothesis import HealthCheck, given, settings as hsettings, strategies as st

    # No name ever resolves to an address the fetcher may contact: fuzzed URLs never leave this process.
    monkeypatch.setattr("backend.ingest.pinned_http._resolve_all", lambda host: ["127.0.0.1"])
    settings = make_settings(basic_auth_user="ml", basic_auth_pass="s3cret", allowed_hosts=())
    _with_models(settings, trained_template)
    app = create_app(settings, train_fn=lambda pid: None)
    client = app.test_client()

    scalars = st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats() | st.text(max_size=12)
    values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=3)
                          | st.dictionaries(st.text(max_size=8), inner, max_size=3), max_leaves=12)
    projects = st.sampled_from([1, "1.17", {"id": 1}, "\u00b2", "1.x", -1, 0, True, 2**63]) | values
    tasks = st.lists(st.fixed_dictionaries({"id": st.integers(0, 5) | values}, optional={
        "data": st.fixed_dictionaries({"image": st.sampled_from(["/data/upload/1/a.png", "http://h\\@x/a.png",
                                                                 "s3://b/k.png", "http://a@b/c"]) | values})
        | values}), max_size=4) | values
    results = st.lists(st.fixed_dictionaries({}, optional={"from_name": values, "value": values}), max_size=2)
    annotations = st.fixed_dictionaries({}, optional={"result": results | values, "id": values}) | values
    actions = st.sampled_from(["START_TRAINING", "ANNOTATION_CREATED", "TASKS_CREATED", "ANNOTATIONS_DELETED",
                               "PROJECT_UPDATED"]) | values
    bodies = {
        "/predict": st.fixed_dictionaries({}, optional={"project": projects, "tasks": tasks,
                                                        "label_config": st.just(LABEL_CONFIG) | values}),
        "/webhook": st.fixed_dictionaries({}, optional={
            "action": actions, "project": projects | st.fixed_dictionaries({"id": projects}, optional={
                "label_config": st.just(LABEL_CONFIG) | values}),
            "annotation": annotations, "tasks": tasks}),
        "/setup": st.fixed_dictionaries({}, optional={"project": projects, "schema": st.just(LABEL_CONFIG) | values,
                                                      "label_config": values}),
    }
    header_text = st.text(st.characters(min_codepoint=32, max_codepoint=255), max_size=40)
    auth_headers = (st.just(AUTH["Authorization"]) | header_text | header_text.map(lambda t: "Basic " + t)
                    | st.binary(max_size=30).map(lambda b: "Basic " + base64.b64encode(b).decode()))

    @hsettings(max_examples=150, deadline=None, derandomize=True,
               suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(path=st.sampled_from(sorted(bodies)), data=st.data(), auth=auth_headers,
           raw=st.none() | st.binary(max_size=64))
    def check(path, data, auth, raw):
        body = data.draw(bodies[path] | values)
        kwargs = {"data": raw, "content_type": "application/json"} if raw is not None else {"json": body}
        response = client.post(path, headers={"Authorization": auth}, **kwargs)
        assert response.status_code < 500, (path, body, response.data[:300])

    try:
        check()
        assert client.get("/health").status_code == 200
        _connect(client)
        predict = client.post("/predict", json={"project": "1.1", "tasks": []}, headers=AUTH)
        assert predict.status_code == 200 and predict.json["model_version"] == trained_template["versions"][-1]
    finally:
        service_of(app).close()
