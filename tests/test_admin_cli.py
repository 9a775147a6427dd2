"""Unit tests of the admin command's failure messages (backend/admin/cli.py).

Why a fake Label Studio here: the point is that each failure cause (unreachable server, bad
token, unknown project, no backend connected) yields one clear line and exit code 1, never a
traceback. The real-server behaviour is covered by tests/e2e.
"""
from __future__ import annotations

import json
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

import pytest

from backend.admin import cli as admin

GOOD_TOKEN = "0123456789abcdef0123456789abcdef01234567"
USER = {"id": 1, "email": "a@example.com", "username": "", "first_name": "", "last_name": "",
        "active_organization": 1, "avatar": None, "initials": "a", "phone": "",
        "allow_newsletters": None, "date_joined": "2026-01-01T00:00:00Z", "last_activity": "2026-01-01T00:00:00Z"}
PROJECT = {"id": 1, "title": "digits", "model_version": "Minority-class mining", "sampling": "Sequential sampling",
           "task_number": 10, "num_tasks_with_annotations": 4, "label_config": "<View/>"}


@pytest.fixture(autouse=True)
def _no_backend_settings(monkeypatch):
    """The admin's environment must not leak in: each test sets what it needs."""
    for name in ("MCM_BACKEND_URL", "BASIC_AUTH_USER", "BASIC_AUTH_PASS"):
        monkeypatch.delenv(name, raising=False)


class FakeLabelStudio(BaseHTTPRequestHandler):
    """Answers the handful of routes admin.py reads; `ml_backends` and `versions` set per test."""

    ml_backends: list = []
    versions: list = []
    project: dict = {}  # this test's changes to PROJECT (PATCH /api/projects/1 writes here)

    def log_message(self, *args):  # keep test output clean
        pass

    def _send(self, code: int, obj) -> None:
        body = json.dumps(obj).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        if self.headers.get("Authorization") != f"Token {GOOD_TOKEN}":
            return self._send(401, {"detail": "Invalid token."})
        url = urlparse(self.path)
        path = url.path.rstrip("/")
        if path == "/api/current-user/whoami":
            return self._send(200, USER)
        if path == "/api/projects/1":
            return self._send(200, {**PROJECT, **self.project})
        if path.startswith("/api/projects/") and path.endswith("/model-versions"):
            return self._send(200, {"static": self.versions, "live": None})
        if path.startswith("/api/projects/"):
            return self._send(404, {"detail": "Not found."})
        if path == "/api/ml":
            project = int(parse_qs(url.query).get("project", ["0"])[0])
            return self._send(200, [b for b in self.ml_backends if b["project"] == project])
        return self._send(404, {"detail": f"no route {path}"})

    def do_PATCH(self):
        if self.headers.get("Authorization") != f"Token {GOOD_TOKEN}":
            return self._send(401, {"detail": "Invalid token."})
        if urlparse(self.path).path.rstrip("/") != "/api/projects/1":
            return self._send(404, {"detail": "Not found."})
        self.project.update(json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0)))))
        return self._send(200, {**PROJECT, **self.project})


@pytest.fixture
def fake_ls(monkeypatch):
    """The fake's class-level answers start empty and are restored after the test (they are class attributes)."""
    for name, empty in (("ml_backends", []), ("versions", []), ("project", {})):
        monkeypatch.setattr(FakeLabelStudio, name, empty)
    server = ThreadingHTTPServer(("127.0.0.1", 0), FakeLabelStudio)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = admin.main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_unreachable_label_studio_names_the_url(capsys):
    url = f"http://127.0.0.1:{closed_port()}"
    code, _, err = run(capsys, "--ls-url", url, "--api-key", GOOD_TOKEN, "status", "--project", "1")
    assert code == 1
    assert err.startswith("error: Label Studio unreachable at " + url)
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_bad_token(capsys, fake_ls):
    code, _, err = run(capsys, "--ls-url", fake_ls, "--api-key", "wrong", "retrain", "--project", "1")
    assert code == 1
    assert "rejected the API key (HTTP 401)" in err and len(err.strip().splitlines()) == 1


def test_unknown_project(capsys, fake_ls):
    code, _, err = run(capsys, "--ls-url", fake_ls, "--api-key", GOOD_TOKEN, "enable-ordering", "--project", "42")
    assert code == 1
    assert "unknown project 42" in err


@pytest.mark.parametrize("command", ["retrain", "status", "enable-ordering", "report"])
def test_backend_not_connected(capsys, fake_ls, command):
    code, _, err = run(capsys, "--ls-url", fake_ls, "--api-key", GOOD_TOKEN, command, "--project", "1")
    assert code == 1
    assert "backend not connected: project 1 has no ML backend" in err
    assert "connect --project 1" in err


def test_missing_settings(capsys, monkeypatch):
    monkeypatch.delenv("LABEL_STUDIO_URL", raising=False)
    monkeypatch.delenv("LABEL_STUDIO_API_KEY", raising=False)
    code, _, err = run(capsys, "status", "--project", "1")
    assert code == 1 and "LABEL_STUDIO_URL" in err


def test_enable_ordering_without_predictions_says_so(capsys, fake_ls):
    FakeLabelStudio.ml_backends = [{"id": 3, "project": 1, "url": f"http://127.0.0.1:{closed_port()}",
                                    "title": "t", "state": "CO"}]
    code, out, err = run(capsys, "--ls-url", fake_ls, "--api-key", GOOD_TOKEN, "enable-ordering", "--project", "1")
    assert code == 1
    assert "project 1 has no predictions yet" in err
    assert "could not read the backend's status" in out  # backend down is a warning, not the failure


def test_newest_version_prefers_the_backends_current_one(fake_ls):
    FakeLabelStudio.versions = [
        {"model_version": "mcm-v3", "count": 5, "latest": "2026-01-03T00:00:00Z"},
        {"model_version": "mcm-v2", "count": 7, "latest": "2026-01-02T00:00:00Z"},
    ]
    ls = admin.LabelStudioAdmin(fake_ls, GOOD_TOKEN)
    assert admin.newest_prediction_version(ls, 1, "mcm-v2") == ("mcm-v2", 7)
    assert admin.newest_prediction_version(ls, 1, "mcm-v9") == ("mcm-v3", 5)  # unknown: newest wins
    assert admin.newest_prediction_version(ls, 1, None) == ("mcm-v3", 5)


def test_help_lists_every_command(capsys):
    with pytest.raises(SystemExit) as exc:
        admin.main(["--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    for command in ("connect", "enable-ordering", "tail-classes", "retrain", "status", "report"):
        assert command in out


def test_report_names_a_backend_that_is_down(capsys, fake_ls, tmp_path):
    url = f"http://127.0.0.1:{closed_port()}"
    FakeLabelStudio.ml_backends = [{"id": 3, "project": 1, "url": url, "title": "t", "state": "CO"}]
    code, _, err = run(capsys, "--ls-url", fake_ls, "--api-key", GOOD_TOKEN, "report", "--project", "1",
                       "--out", str(tmp_path / "r"))
    assert code == 1 and f"backend unreachable at {url}" in err and not (tmp_path / "r").exists()


# ----------------------------------------------------------------------------- what the backend's JSON may not do
ESC = "\x1b"
PNG = b"\x89PNG\r\n\x1a\nfake"


def report_summary(**changes) -> dict:
    """A /mcm/report?format=json answer with every field `report_lines` prints."""
    summary = {"project": 1, "n_labeled_tasks": 3, "n_annotations": 3, "tail_classes": ["seven"],
               "model_version": "mcm-v1", "ordering": {"enabled_at": None},
               "tail_yield": {"unknown": {"n": 3, "n_tail": 1, "share": 1 / 3}, "base_rate": None},
               "heldout": {"status": "too_little_data", "message": "no tail"}, "pool": {}, "last_error": None,
               "figures": {"classes": {"status": "ok"}}}
    return {**summary, **changes}


class FakeBackend(BaseHTTPRequestHandler):
    """Our backend's report and status routes; records the Authorization header of every request."""

    summary: dict = {}
    status: dict = {}
    seen_auth: list = []

    def log_message(self, *args):
        pass

    def _send(self, code: int, body: bytes, kind: str) -> None:
        self.send_response(code)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        type(self).seen_auth.append(self.headers.get("Authorization"))
        url = urlparse(self.path)
        if url.path.endswith(".png"):
            return self._send(200, PNG, "image/png")
        if url.path == "/mcm/report" and "format=json" in url.query:
            return self._send(200, json.dumps(self.summary).encode(), "application/json")
        if url.path == "/mcm/report":
            return self._send(200, b"<html></html>", "text/html")
        if url.path == "/mcm/status":
            return self._send(200, json.dumps(self.status).encode(), "application/json")
        return self._send(500, f"no route {url.path} {ESC}[2J".encode(), "text/plain")


def _serve(handler) -> tuple[str, ThreadingHTTPServer]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return f"http://127.0.0.1:{server.server_address[1]}", server


@pytest.fixture
def fake_backend():
    """Two fake backends: `chosen` (the admin's URL) and `stored` (the URL an attacker put in Label Studio)."""
    handlers = {name: type(name, (FakeBackend,), {"summary": report_summary(), "status": {}, "seen_auth": []})
                for name in ("chosen", "stored")}
    servers = {name: _serve(handler) for name, handler in handlers.items()}
    yield {name: (url, handlers[name]) for name, (url, _server) in servers.items()}
    for _url, server in servers.values():
        server.shutdown()
        server.server_close()


def test_report_writes_only_the_fixed_figure_names(capsys, fake_backend, tmp_path):
    url, handler = fake_backend["chosen"]
    handler.summary = report_summary(figures={"../../escaped": {}, "/tmp/abs": {}, "classes": {}, "tail_yield": {}})
    out = tmp_path / "a" / "b" / "out"
    code, printed, err = run(capsys, "report", "--project", "1", "--url", url, "--out", str(out))
    assert code == 0, err
    written = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*") if p.is_file())
    assert written == ["a/b/out/classes.png", "a/b/out/report.html", "a/b/out/summary.json",
                       "a/b/out/tail_yield.png"]
    assert "ignoring figure '../../escaped'" in printed and "ignoring figure '/tmp/abs'" in printed


def test_credentials_never_go_to_the_backend_url_stored_in_label_studio(capsys, fake_ls, fake_backend, monkeypatch,
                                                                         tmp_path):
    """Any Label Studio admin can point the project's ML backend at their own server: it must not
    receive BASIC_AUTH_USER/BASIC_AUTH_PASS. The admin's own URL (--url, MCM_BACKEND_URL) does."""
    stored_url, stored = fake_backend["stored"]
    chosen_url, chosen = fake_backend["chosen"]
    FakeLabelStudio.ml_backends = [{"id": 3, "project": 1, "url": stored_url, "title": "t", "state": "CO"}]
    monkeypatch.setenv("BASIC_AUTH_USER", "ml")
    monkeypatch.setenv("BASIC_AUTH_PASS", "s3cret")
    ls = ("--ls-url", fake_ls, "--api-key", GOOD_TOKEN)

    code, _, err = run(capsys, *ls, "report", "--project", "1", "--out", str(tmp_path / "r"))
    assert code == 1 and "pass --url or set MCM_BACKEND_URL" in err
    code, printed, _ = run(capsys, *ls, "status", "--project", "1")
    assert "pass --url or set MCM_BACKEND_URL" in printed
    run(capsys, *ls, "enable-ordering", "--project", "1")
    assert stored.seen_auth == []  # not even contacted

    monkeypatch.delenv("BASIC_AUTH_PASS")  # no credentials configured: the stored URL is read, without any
    code, _, err = run(capsys, *ls, "report", "--project", "1", "--out", str(tmp_path / "r"))
    assert code == 0, err
    assert stored.seen_auth and set(stored.seen_auth) == {None}

    monkeypatch.setenv("BASIC_AUTH_PASS", "s3cret")
    monkeypatch.setenv("MCM_BACKEND_URL", chosen_url)
    stored.seen_auth.clear()
    code, _, err = run(capsys, *ls, "report", "--project", "1", "--out", str(tmp_path / "r2"))
    assert code == 0, err
    run(capsys, *ls, "status", "--project", "1")
    assert stored.seen_auth == [] and chosen.seen_auth and all(a.startswith("Basic ") for a in chosen.seen_auth)


def test_control_characters_from_the_json_are_not_printed(capsys, fake_ls, fake_backend, tmp_path):
    """Escape sequences in class names, versions or errors (from Label Studio, through the backend's JSON)
    could clear the admin's terminal, forge a hyperlink or reorder text: they are stripped, the text stays."""
    url, handler = fake_backend["chosen"]
    evil = f"seven{ESC}[2J{ESC}]8;;http://x.example/{ESC}\\\x9b31m\x07\u202e"
    handler.summary = report_summary(tail_classes=[evil], model_version=evil, last_error=f"boom\n{evil}",
                                     heldout={"status": "failed", "message": evil})
    code, printed, err = run(capsys, "report", "--project", "1", "--url", url, "--out", str(tmp_path / "r"))
    assert code == 0, err
    assert "tail classes: seven[2J" in printed and "  last error: boom seven[2J" in printed

    FakeLabelStudio.ml_backends = [{"id": 3, "project": 1, "url": url, "title": f"t{ESC}[1m", "state": "CO"}]
    handler.status = {"model_version": evil, "labeled_per_class": {evil: 3}, "tail_classes": [evil],
                      "last_error": evil}
    code, status_out, err = run(capsys, "--ls-url", fake_ls, "--api-key", GOOD_TOKEN, "status", "--project", "1",
                                "--url", url)
    assert code == 0 and "tail classes: seven[2J" in status_out and "last error: seven[2J" in status_out
    code, _, error = run(capsys, "report", "--project", "1", "--url", url + "/nowhere")  # a 500 whose body has ESC
    assert code == 1 and "HTTP 500" in error and "no route /nowhere/mcm/report [2J" in error
    for bad in (ESC, "\x9b", "\x07", "\u202e"):
        assert bad not in printed + status_out + error


DIGITS = """<View><Image name="image" value="$image"/>
<Choices name="digit" toName="image"><Choice value="3"/><Choice value="5"/><Choice value="8"/></Choices></View>"""


def test_tail_classes_are_declared_in_the_label_config_and_unknown_names_refused(capsys, fake_ls):
    from backend.label_config import parse_label_config

    FakeLabelStudio.project = {"label_config": DIGITS}
    common = ("--ls-url", fake_ls, "--api-key", GOOD_TOKEN, "tail-classes", "--project", "1")
    code, out, _ = run(capsys, *common)
    assert code == 0 and "declared tail classes: none" in out
    code, out, _ = run(capsys, *common, "--set", "8, 5")
    config = parse_label_config(FakeLabelStudio.project["label_config"])
    assert code == 0 and config.declared_tail == ("5", "8") and config.count_tail
    assert "declared tail classes: 5, 8" in out and "next training" in out
    code, _, err = run(capsys, *common, "--set", "9")
    assert code == 1 and err.strip() == "error: unknown class(es) ['9']; the label config's classes are ['3', '5', '8']"
    assert parse_label_config(FakeLabelStudio.project["label_config"]).declared_tail == ("5", "8")  # unchanged
    code, out, _ = run(capsys, *common, "--only-declared")
    config = parse_label_config(FakeLabelStudio.project["label_config"])
    assert code == 0 and config.declared_tail == ("5", "8") and not config.count_tail and "is off" in out
