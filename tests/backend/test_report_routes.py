"""The mining report over HTTP: /mcm/report (HTML and JSON) and its PNG figures, for a project trained
for real (simple-cnn + MinorityMiner on MNIST digits) behind a fake Label Studio.

The labeled tasks get a timeline (one label a minute, in task-id order: 30 zeros, 30 ones, then
5 sevens) and the "Tail classes first" tab records that ordering was enabled before the 56th label,
so the yield figures are known by hand: before 0 of 55, since then 5 of 10.
"""
from __future__ import annotations

import base64
import os
import re

import pytest

from backend.report import stats as report
from backend.app import create_app, service_of
from backend.settings import Settings
from backend_fakes import LABEL_CONFIG, FakeLabelStudio, ImageServer, mnist_by_digit, png_bytes, populate_project
from backend_helpers import wait_until

PID = 1
T0 = 1_767_225_600.0  # 2026-01-01T00:00:00Z
ENABLED_BEFORE = 55   # labels before ordering was enabled
FIGURES = ("tail_yield", "classes", "precision_recall", "pool_scores", "versions")
PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    fake, images = FakeLabelStudio(), ImageServer()
    truth = populate_project(fake, images, pid=PID, head=30, tail=5, unlabeled_per_class=8)
    labeled = sorted(t for t, task in fake.tasks.items() if task["annotations"])
    for i, tid in enumerate(labeled):
        fake.tasks[tid]["annotations"][0]["created_at"] = report.iso(T0 + 60 * i)
    enabled = report.iso(T0 + 60 * ENABLED_BEFORE - 30)
    fake.views.append({"id": 5, "project": PID, "data": {"title": "Tail classes first", "mcm_enabled_at": enabled}})
    settings = Settings(model_dir=str(tmp_path_factory.mktemp("models")), backbone="simple-cnn",
                        allowed_hosts=("127.0.0.1",), debounce_seconds=0.0, label_studio_url=fake.url,
                        label_studio_api_key=fake.legacy_token, cnn_epochs=4, retrain_min_interval=0.0,
                        maintain_seconds=3600.0, report_folds=3, miner_options='{"n_models": 1}')
    app = create_app(settings)
    client = app.test_client()
    assert client.post("/setup", json={"project": f"{PID}.1", "schema": LABEL_CONFIG}).status_code == 200
    assert client.post("/webhook", json={"action": "START_TRAINING", "project": {"id": PID}}).status_code == 201
    assert service_of(app).scheduler.wait_idle(timeout=300)
    state = {"fake": fake, "images": images, "truth": truth, "settings": settings, "app": app, "enabled": enabled,
             "labeled": labeled}
    yield state
    service_of(state["app"]).close()
    fake.close()
    images.close()


def _get(env, path, **kwargs):
    return env["app"].test_client().get(path, **kwargs)


def _report_json(env, pid=PID) -> dict:
    response = _get(env, f"/mcm/report?project={pid}&format=json")
    assert response.status_code == 200, response.json
    return response.json


def _wait_heldout(env, timeout: float = 420.0) -> dict:
    def finished() -> dict | None:
        summary = _report_json(env)
        return None if summary["heldout"]["status"] in ("queued", "computing") else summary
    return wait_until(finished, timeout, "the held-out evaluation finishing", interval=2)


def test_report_numbers_agree_with_the_status_and_the_hand_computed_timeline(env):
    status = _get(env, f"/mcm/status?project={PID}").json
    summary = _report_json(env)
    assert summary["model_version"] == status["model_version"] == summary["published_version"]
    assert summary["n_annotations"] == summary["n_labeled_tasks"] == 65
    assert summary["labeled_per_class"] == status["labeled_per_class"] == {"zero": 30, "one": 30, "seven": 5}
    assert summary["tail_classes"] == status["tail_classes"] == ["seven"] == summary["tail_classes_now"]
    assert summary["skewness_ratio"]["seven"] == round(5 / (65 / 3), 4)
    assert summary["ordering"]["enabled_at"] == env["enabled"] and summary["ordering"]["tab"] == "Tail classes first"
    tail_yield = summary["tail_yield"]
    assert tail_yield["before"] == {"n": 55, "n_tail": 0, "share": 0.0}
    assert tail_yield["after"] == {"n": 10, "n_tail": 5, "share": 0.5}
    assert [(b["n"], b["phase"]) for b in tail_yield["buckets"]] == [(50, "before"), (5, "before"), (10, "after")]
    pool = summary["pool"]
    assert pool["n_unlabeled"] == status["n_scored"] == len(env["truth"])
    assert sum(pool["histogram"]["counts"]) == len(env["truth"])
    # An estimate or "unknown" (0 tail labels of 55 before ordering say nothing precise), never the
    # share of tasks the model predicts as tail.
    shown = tail_yield["base_rate_estimate"]
    assert tail_yield["base_rate"] == (shown["value"] if shown else None)
    assert tail_yield["base_rate_best"] is not None and "predicted" not in tail_yield["base_rate_method"]
    [row] = summary["versions"]
    assert row["version"] == status["model_version"] and row["current"] and row["n_labeled"] == 65
    assert row["train_seconds"] > 0 and row["rescore_seconds"] > 0 and row["published_at"]
    assert summary["heldout"]["status"] in ("queued", "computing", "ready")
    assert summary["last_error"] is None


def test_the_backend_remembers_when_ordering_was_enabled(env):
    from backend.report.source import read_enabled_at, remember_enabled_at

    project_dir = env["settings"].project_dir(PID)
    _report_json(env)  # the report reads the Data Manager tabs: the backend sees the tab's key once
    assert read_enabled_at(project_dir)["enabled_at"] == env["enabled"]
    views, env["fake"].views = env["fake"].views, []  # a person edited the tab in the UI: the key is gone
    try:
        client = service_of(env["app"]).context.client()
        assert remember_enabled_at(client, PID, project_dir)["enabled_at"] == env["enabled"]
        os.remove(os.path.join(project_dir, "ordering.json"))
        assert remember_enabled_at(client, PID, project_dir) is None
    finally:
        env["fake"].views = views
    assert remember_enabled_at(client, PID, project_dir)["enabled_at"] == env["enabled"]


def test_heldout_evaluation_runs_in_the_background_and_sets_the_likely_tail_count(env):
    summary = _wait_heldout(env)
    held = summary["heldout"]
    assert held["status"] == "ready", held
    assert held["evaluated_version"] == summary["model_version"] and held["folds"] == 3
    assert held["n_labeled"] == 65 and held["n_tail"] == 5 and held["prevalence"] == round(5 / 65, 5)
    assert 0.0 <= held["auc_pr"] <= 1.0 and len(held["fold_auc_pr"]) == 3
    assert held["best_baseline"] in {"entropy", "maxscore", "margin", "weighted_entropy"}
    assert held["best_baseline_auc_pr"] == max(held["baselines_auc_pr"].values())
    stored = os.path.join(env["settings"].model_dir, str(PID), summary["model_version"], "heldout.json")
    assert os.path.exists(stored)
    # "Likely tail tasks left": pool tasks the fold models score at or above the held-out threshold; the
    # figure marks as many tasks from the top of the published ranking.
    threshold = (held["threshold"] or {}).get("score")
    pool = summary["pool"]
    # The base rate's best estimate is now the calibrated expected count: the held-out tail share per score
    # bin times the unlabeled tasks the fold models put in that bin, plus the 5 tail labels since ordering.
    best = summary["tail_yield"]["base_rate_best"]
    assert best["source"] == "calibrated expected count" and best["low"] <= best["value"] <= best["high"]
    assert sum(held["calibration"]["n"]) == 65 and sum(held["calibration"]["n_tail"]) == 5
    assert held["pool_evaluated"] == len(env["truth"]) and pool["threshold_score"] == threshold
    if threshold is not None:
        ids, scores = service_of(env["app"]).heldout.read_pool(PID, summary["model_version"])
        assert sorted(ids.tolist()) == sorted(env["truth"])
        assert pool["likely_tail_left"] == int((scores >= threshold).sum())
        pushed = sorted((p["score"] for p in env["fake"].predictions
                         if p["model_version"] == summary["published_version"]), reverse=True)
        if pool["likely_tail_left"]:
            assert pool["queue_score_at_likely"] == pytest.approx(pushed[pool["likely_tail_left"] - 1])
    assert {name: v["status"] for name, v in summary["figures"].items()} == {name: "ok" for name in FIGURES}


def test_page_inlines_every_figure_without_scripts(env):
    summary = _wait_heldout(env)  # the page shows the held-out AUC-PR once it is ready
    assert summary["heldout"]["status"] == "ready", summary["heldout"]
    response = _get(env, f"/mcm/report?project={PID}")
    assert response.status_code == 200 and response.mimetype == "text/html"
    assert "default-src 'none'" in response.headers["Content-Security-Policy"]
    page = response.get_data(as_text=True)
    images = re.findall(r'<img src="data:image/png;base64,([^"]+)"', page)
    assert len(images) == len(FIGURES)
    assert all(base64.b64decode(data).startswith(PNG) for data in images)
    assert "<script" not in page.lower()
    assert f"project {PID}" in page and "seven" in page and "Held-out AUC-PR" in page
    assert f"{summary['heldout']['auc_pr']:.3f}" in page


@pytest.mark.parametrize("name", FIGURES)
def test_each_figure_is_a_png(env, name):
    response = _get(env, f"/mcm/report/{name}.png?project={PID}")
    assert response.status_code == 200 and response.mimetype == "image/png"
    assert response.data.startswith(PNG) and len(response.data) > 5000


def test_bad_requests_get_clear_errors_and_keep_no_state(env):
    assert _get(env, f"/mcm/report/nonsense.png?project={PID}").status_code == 404
    bad_format = _get(env, f"/mcm/report?project={PID}&format=xml")
    assert bad_format.status_code == 400 and "'format' must be one of html, json" in bad_format.json["error"]
    assert _get(env, "/mcm/report").status_code == 400
    assert _get(env, "/mcm/report?project=abc").status_code == 400
    unknown = _get(env, "/mcm/report?project=77")
    assert unknown.status_code == 404 and "not connected" in unknown.json["error"]
    assert _get(env, "/mcm/report/classes.png?project=77").status_code == 404
    assert not os.path.exists(os.path.join(env["settings"].model_dir, "77"))


def test_too_little_data_draws_messages_and_escapes_label_studio_text(env, fake_ls, tmp_path):
    # its own Label Studio and app (the module's settings): the module's project stays as it was
    fake = fake_ls
    app = create_app(Settings(**{**env["settings"].__dict__, "model_dir": str(tmp_path / "models"),
                                 "label_studio_url": fake.url, "label_studio_api_key": fake.legacy_token}))
    try:
        client, own = app.test_client(), {"app": app}
        config = LABEL_CONFIG.replace('<Choice value="zero"/><Choice value="one"/><Choice value="seven"/>',
                                      '<Choice value="&lt;b&gt;bold&lt;/b&gt;"/><Choice value="plain"/>')
        fake.add_project(2, config)
        for i, label in enumerate(("<b>bold</b>", "<b>bold</b>", "plain")):
            fake.uploads[f"2/{i}.png"] = png_bytes(mnist_by_digit()[1][i])
            fake.add_task(2, 20000 + i, f"/data/upload/2/{i}.png", label=label)
        assert client.post("/setup", json={"project": "2.5", "schema": config}).status_code == 200
        summary = _report_json(own, pid=2)
        assert summary["model_version"] is None and summary["labeled_per_class"] == {"<b>bold</b>": 2, "plain": 1}
        assert summary["ordering"]["enabled_at"] is None and "unknown" in summary["ordering"]["note"]
        assert summary["tail_yield"]["unknown"] == {"n": 3, "n_tail": 0, "share": 0.0}
        states = {name: v["status"] for name, v in summary["figures"].items()}
        assert states == {"tail_yield": "too_little_data", "classes": "ok", "precision_recall": "too_little_data",
                          "pool_scores": "too_little_data", "versions": "too_little_data"}
        assert "no trained model yet" in summary["figures"]["precision_recall"]["message"]
        for name in FIGURES:
            png = client.get(f"/mcm/report/{name}.png?project=2")
            assert png.status_code == 200 and png.data.startswith(PNG)
        page = client.get("/mcm/report?project=2").get_data(as_text=True)
        assert "&lt;b&gt;bold&lt;/b&gt;" in page and "<b>bold</b>" not in page
    finally:
        service_of(app).close()


def test_basic_auth_and_label_studio_down(env, tmp_path):
    settings = Settings(**{**env["settings"].__dict__, "basic_auth_user": "ml", "basic_auth_pass": "s3cret"})
    app = create_app(settings)
    try:
        client = app.test_client()
        assert client.get(f"/mcm/report?project={PID}").status_code == 401
        assert client.get(f"/mcm/report/classes.png?project={PID}").status_code == 401
        good = {"Authorization": "Basic " + base64.b64encode(b"ml:s3cret").decode()}
        assert client.get(f"/mcm/report?project={PID}&format=json", headers=good).status_code == 200
    finally:
        service_of(app).close()
    with socket_port() as dead:
        app = create_app(Settings(**{**env["settings"].__dict__, "label_studio_url": dead}))
        try:
            down = app.test_client().get(f"/mcm/report?project={PID}")
            assert down.status_code == 502 and "cannot read project 1 from Label Studio" in down.json["error"]
        finally:
            service_of(app).close()


def test_admin_report_writes_the_figures_and_summary_from_the_backend(env, tmp_path, capsys, monkeypatch):
    """`python -m backend.admin report --url`: over real HTTP, from the backend alone."""
    import threading

    from werkzeug.serving import make_server

    from backend.admin import cli as admin

    monkeypatch.delenv("BASIC_AUTH_USER", raising=False)
    monkeypatch.delenv("BASIC_AUTH_PASS", raising=False)
    server = make_server("127.0.0.1", 0, env["app"], threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        out = tmp_path / "report"
        code = admin.main(["report", "--project", str(PID), "--url", f"http://127.0.0.1:{server.server_port}",
                           "--out", str(out), "--wait", "60"])
    finally:
        server.shutdown()
    printed = capsys.readouterr().out
    assert code == 0, printed
    import json

    summary = json.loads((out / "summary.json").read_text())
    assert summary["labeled_per_class"] == {"zero": 30, "one": 30, "seven": 5}
    assert sorted(p.name for p in out.glob("*.png")) == sorted(f"{name}.png" for name in FIGURES)
    assert all((out / f"{name}.png").read_bytes().startswith(PNG) for name in FIGURES)
    assert "<img src=\"data:image/png;base64," in (out / "report.html").read_text()
    assert "tail yield before: 0.0% (0 of 55); since: 50.0% (5 of 10)" in printed
    assert f"miner {summary['heldout']['auc_pr']:.3f}" in printed

    with socket_port() as dead:
        code = admin.main(["report", "--project", str(PID), "--url", dead, "--out", str(tmp_path / "x")])
    err = capsys.readouterr().err
    assert code == 1 and "backend unreachable" in err and not (tmp_path / "x").exists()


def socket_port():
    """A URL nobody listens on (the port is held until the block ends)."""
    import contextlib
    import socket

    @contextlib.contextmanager
    def held():
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            yield f"http://127.0.0.1:{s.getsockname()[1]}"
    return held()
