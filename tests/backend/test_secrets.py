"""Issue 19, items 8 and 9: Label Studio's response headers never reach a log or an answer, and the
scripts never put a secret on a command line nor write one into a file others can read first.

The sdk's ApiError str() holds every response header, `set-cookie: sessionid=...` issued for the
backend's key included; errors are described by their status and body instead (describe_error).
"""
from __future__ import annotations

import logging
import os
import re
import stat
import subprocess
from pathlib import Path

import httpx
import pytest
from label_studio_sdk.core.api_error import ApiError

from backend import labelstudio
from backend.app import create_app
from backend.labelstudio import LabelStudioError, describe_error, traceback_is_safe
from backend.pacing import TrainingQueue
from backend_helpers import app_state

ROOT = Path(__file__).resolve().parents[2]
SCRIPTS = sorted((ROOT / "scripts").glob("*.sh"))
SESSION = "sessionid=s3cr3t-session"
LS_HEADERS = {"content-type": "application/json", "set-cookie": f"{SESSION}; HttpOnly; Path=/",
              "vary": "Cookie"}


def _api_error(status: int = 403, body: object = None) -> ApiError:
    return ApiError(headers=dict(LS_HEADERS), status_code=status, body=body or {"detail": "You do not have permission"})


def _no_headers(text: str) -> None:
    lowered = text.lower()
    assert "set-cookie" not in lowered and "sessionid" not in lowered and "s3cr3t" not in lowered, text


# --- describe_error: status and body, never headers ------------------------------------------------------
def test_describe_error_gives_status_and_a_cut_body_never_the_headers():
    text = describe_error(_api_error(400, {"detail": "x" * 1000}))
    _no_headers(text)
    assert text.startswith("Label Studio answered HTTP 400: ") and "detail" in text
    assert len(text) <= len("Label Studio answered HTTP 400: ") + labelstudio.ERROR_BODY_CHARS
    request = httpx.Request("GET", "http://ls.test/api/projects/1/")
    response = httpx.Response(502, headers={"set-cookie": SESSION}, text="bad gateway", request=request)
    text = describe_error(httpx.HTTPStatusError("boom", request=request, response=response))
    _no_headers(text)
    assert text == "Label Studio answered HTTP 502: bad gateway"
    assert describe_error(ValueError("plain")) == "ValueError: plain"


def test_a_traceback_holding_an_api_error_is_not_logged():
    assert not traceback_is_safe(_api_error())
    try:
        try:
            raise _api_error()
        except ApiError:
            raise RuntimeError("while reading the project")
    except RuntimeError as chained:
        assert not traceback_is_safe(chained)  # printed as "During handling of the above exception"
    assert traceback_is_safe(RuntimeError("no Label Studio answer in here"))


def test_sdk_calls_raise_label_studio_errors_without_headers(fake_ls):
    client = labelstudio.make_client(fake_ls.url, fake_ls.legacy_token)
    with pytest.raises(LabelStudioError) as missing:
        labelstudio.get_label_config(client, 404)  # the fake answers 404 with its own response headers
    assert "HTTP 404" in str(missing.value) and "headers" not in str(missing.value).lower()
    assert missing.value.__cause__ is None and missing.value.__suppress_context__


# --- where Label Studio errors are logged or kept ---------------------------------------------------------
def test_a_training_failing_on_label_studio_logs_no_headers(caplog):
    caplog.set_level(logging.INFO)

    def run(project_id):
        raise _api_error(403)

    queue = TrainingQueue(run, debounce_seconds=0.0)
    try:
        queue.request(1, "test")
        assert queue.wait_idle(1, timeout=30)
    finally:
        queue.close()
    assert queue.last_error(1) == "Label Studio answered HTTP 403: {'detail': 'You do not have permission'}"
    assert "training failed" in caplog.text
    _no_headers(caplog.text)


def test_the_report_502_carries_the_status_not_label_studios_headers(make_settings, fake_ls, monkeypatch):
    settings = make_settings(label_studio_url=fake_ls.url, label_studio_api_key=fake_ls.legacy_token)
    app = create_app(settings, train_fn=lambda project_id: None)
    try:
        state = app_state(app)
        monkeypatch.setattr(state, "require_connected", lambda project_id: None)  # connection: tested elsewhere

        def failing(project_id):
            raise _api_error(500, "Server Error (500)")

        monkeypatch.setattr(state.reports, "get", failing)
        response = app.test_client().get("/mcm/report?project=1&format=json")
        assert response.status_code == 502, response.json
        error = response.json["error"]
        assert "cannot read project 1 from Label Studio" in error and "HTTP 500" in error
        _no_headers(error)
        assert "headers" not in error and "content-type" not in error
    finally:
        app_state(app).close()


def test_an_unexpected_error_answers_and_logs_without_label_studios_headers(make_settings, fake_ls, monkeypatch,
                                                                             caplog):
    """Any route's unexpected ApiError (e.g. a token refresh refused) goes through the 500 handler."""
    settings = make_settings(label_studio_url=fake_ls.url, label_studio_api_key=fake_ls.legacy_token)
    app = create_app(settings, train_fn=lambda project_id: None)
    try:
        state = app_state(app)

        def failing(project_id):
            raise _api_error(401, {"detail": "token expired"})

        monkeypatch.setattr(state, "connection", failing)
        response = app.test_client().get("/mcm/status?project=1")
        assert response.status_code == 500 and "HTTP 401" in response.json["error"], response.json
        _no_headers(response.json["error"])
        _no_headers(caplog.text)
    finally:
        app_state(app).close()


# --- scripts: no secret in argv, secret files private from their creation -------------------------------
# A secret expanded into an external command's arguments (readable by every local user in `ps`).
ARGV_SECRET = [
    re.compile(r"--(password|user-token|token|api-key|api_key|pass)[= ]+\S*\$"),
    re.compile(r"(-H|--header)[= ]+[\"']?Authorization", re.I),
    re.compile(r"(^|\s)(-u|--user)[= ]+[\"']?[^\s\"']*:\$"),  # curl user:password
    re.compile(r"://[^/\s\"']*:\$[^@\s]*@"),                   # credentials inside a URL
    re.compile(r"\s-c\s+[\"'][^\"']*PASSWORD", re.I),          # psql -c "... PASSWORD '...'"
]


def _code_lines(path: Path):
    """(number, code) of each line outside heredoc bodies, without comments."""
    heredoc_end = None
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if heredoc_end is not None:
            if line.strip() == heredoc_end:
                heredoc_end = None
            continue
        code = line if line.lstrip().startswith("#!") else re.sub(r"(^|\s)#.*$", "", line)
        opened = re.search(r"<<-?\s*['\"]?([A-Za-z_]+)['\"]?", code)
        if opened:
            heredoc_end = opened.group(1)
        if code.strip():
            yield number, code


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_scripts_never_put_a_secret_on_a_command_line(script):
    offending = [f"{script.name}:{n}: {code.strip()}" for n, code in _code_lines(script)
                 if any(p.search(code) for p in ARGV_SECRET)]
    assert not offending, "secrets in a command's arguments (visible in ps):\n" + "\n".join(offending)


def test_label_studio_gets_its_first_user_and_token_from_the_environment():
    text = (ROOT / "scripts" / "ls_server.sh").read_text()
    for name in ("LABEL_STUDIO_USERNAME", "LABEL_STUDIO_PASSWORD", "LABEL_STUDIO_USER_TOKEN"):
        assert re.search(rf"export [^\n]*{name}=", text), name
    start = text[text.index('exec "$VENV/bin/label-studio" start'):]
    assert "--username" not in start.split(")", 1)[0]


def _write_secret_file_function() -> str:
    text = (ROOT / "scripts" / "ls_server.sh").read_text()
    found = re.search(r"^write_secret_file\(\) \{.*?^\}", text, re.S | re.M)
    assert found, "scripts/ls_server.sh defines write_secret_file"
    return found.group(0)


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_files_holding_secrets_are_written_only_under_umask_077(script):
    body = _write_secret_file_function()
    assert re.search(r"umask 077\s*&&\s*cat >", body), body
    direct = [f"{script.name}:{n}: {code.strip()}" for n, code in _code_lines(script)
              if re.search(r">>?\s*[\"']?[^\s\"']*\.env\b", code) and code not in body]
    assert not direct, "an .env file written without write_secret_file (readable by others until a chmod):\n" \
        + "\n".join(direct)
    if script.name == "ls_server.sh":
        assert re.search(r'write_secret_file "\$state/ls\.env"', script.read_text())
        launch = script.read_text()
        launch = launch[launch.index("    (\n      umask 077"):launch.index('exec "$VENV/bin/label-studio"')]
        assert "LABEL_STUDIO_BASE_DATA_DIR" in launch  # Label Studio's database and log: the owner's only


def test_write_secret_file_makes_an_owner_only_file_under_a_permissive_umask(tmp_path):
    target = tmp_path / "ls.env"
    subprocess.run(["bash", "-c", f'umask 022; {_write_secret_file_function()}\nwrite_secret_file "$1"', "_",
                    str(target)], input="LABEL_STUDIO_API_KEY=abc\n", text=True, check=True)
    assert stat.S_IMODE(os.stat(target).st_mode) == 0o600
    assert target.read_text() == "LABEL_STUDIO_API_KEY=abc\n"
    assert [p.name for p in tmp_path.iterdir()] == ["ls.env"]  # no temporary file left behind
