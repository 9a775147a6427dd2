"""Unit tests of the admin command's failure messages (backend/admin.py).

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

from backend import admin

GOOD_TOKEN = "0123456789abcdef0123456789abcdef01234567"
USER = {"id": 1, "email": "a@example.com", "username": "", "first_name": "", "last_name": "",
        "active_organization": 1, "avatar": None, "initials": "a", "phone": "",
        "allow_newsletters": None, "date_joined": "2026-01-01T00:00:00Z", "last_activity": "2026-01-01T00:00:00Z"}
PROJECT = {"id": 1, "title": "digits", "model_version": "Minority-class mining", "sampling": "Sequential sampling",
           "task_number": 10, "num_tasks_with_annotations": 4, "label_config": "<View/>"}


class FakeLabelStudio(BaseHTTPRequestHandler):
    """Answers the handful of routes admin.py reads; `ml_backends` and `versions` set per test."""

    ml_backends: list = []
    versions: list = []

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
            return self._send(200, PROJECT)
        if path.startswith("/api/projects/") and path.endswith("/model-versions"):
            return self._send(200, {"static": self.versions, "live": None})
        if path.startswith("/api/projects/"):
            return self._send(404, {"detail": "Not found."})
        if path == "/api/ml":
            project = int(parse_qs(url.query).get("project", ["0"])[0])
            return self._send(200, [b for b in self.ml_backends if b["project"] == project])
        return self._send(404, {"detail": f"no route {path}"})


@pytest.fixture
def fake_ls():
    FakeLabelStudio.ml_backends, FakeLabelStudio.versions = [], []
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
    for command in ("connect", "enable-ordering", "retrain", "status", "report"):
        assert command in out


def test_report_names_a_backend_that_is_down(capsys, fake_ls, tmp_path):
    url = f"http://127.0.0.1:{closed_port()}"
    FakeLabelStudio.ml_backends = [{"id": 3, "project": 1, "url": url, "title": "t", "state": "CO"}]
    code, _, err = run(capsys, "--ls-url", fake_ls, "--api-key", GOOD_TOKEN, "report", "--project", "1",
                       "--out", str(tmp_path / "r"))
    assert code == 1 and f"backend unreachable at {url}" in err and not (tmp_path / "r").exists()
