"""The scale benchmark's own logic (no server): what counts as "the view reflects the new model", how
the refresh's phases enter the medians, the annotator probe's summary, and ls_server.sh's refusals.

The benchmark itself runs against real servers (benchmarks/README.md); these tests keep its verdicts honest.
"""
from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from benchmarks.lsbench import Http, Probe, Project
from benchmarks.scale_backend import synthetic_project
from benchmarks.scale_ls import StepTimer, medians, reflects

ROOT = Path(__file__).resolve().parents[1]


def test_reflects_needs_the_same_tasks_with_the_new_scores():
    expected = {1: 0.9, 2: 0.8, 3: 0.7}
    assert reflects([(2, 0.8, ["new"]), (1, 0.9, ["new"]), (3, 0.7, ["old", "new"])], expected)
    assert not reflects([(1, 0.9, None), (2, 0.8, None)], expected)                 # one missing
    assert not reflects([(1, 0.9, None), (2, 0.8, None), (4, 0.7, None)], expected)  # another task
    assert not reflects([(1, 0.9, None), (2, 0.8, None), (3, 0.65, None)], expected)  # old score
    assert not reflects([(1, 0.9, None), (2, 0.8, None), (3, None, None)], expected)  # no score


def _run(retire_rate, probe_max=1.0, reflect=5.0, left=0):
    return {"train_seconds": 1.0, "refresh_call_seconds": 10.0,
            "refresh_until_server_done_seconds": 20.0, "first_50_of_view_seconds": 0.2,
            "trained_to_view_reflects_seconds": reflect, "steps_seconds": {"push_predictions": 3.0},
            "previous_version_left": left,
            "refresh_phases": None if retire_rate is None else
            {"publish_seconds": 2.0, "fill_seconds": 15.0, "retire_seconds": 100.0,
             "retired_rows": int(retire_rate * 100), "retire_rows_per_second": retire_rate},
            "probe": {"all": {"max_s": probe_max, "p99_s": probe_max / 2, "errors_5xx_or_no_answer": 1,
                              "database_is_locked": 1}}}


def test_medians_of_phases_probe_and_view_leave_out_runs_that_never_got_a_figure():
    m = medians([_run(10.0, probe_max=3.0), _run(20.0, probe_max=9.0, left=50),
                 _run(None, probe_max=5.0, reflect=None)])
    assert m["probe_max_s"] == 5.0 and m["step:push_predictions"] == 3.0
    assert m["trained_to_view_reflects_seconds"] == 5.0  # a run that never reflected is not a zero
    assert m["phase:retire_rows_per_second"] == 15.0     # a run without phases is not a zero
    assert m["phase:fill_seconds"] == 15.0 and m["previous_version_left"] == 0
    assert m["probe_errors_total"] == 3 and m["probe_locked_total"] == 3


def test_markdown_shows_every_phase():
    from benchmarks.scale_ls import markdown
    runs = [_run(12.5)]
    text = markdown({"tasks": 100, "db": "sqlite", "runs": runs, "medians": medians(runs)})
    assert "| retire rate (rows/s) | 12.5 |" in text and "| fill: the rest of the pool | 15.0 |" in text


def test_step_timer_times_labelstudio_calls_by_name_and_restores_them(monkeypatch):
    from benchmarks.scale_backend import STEP_MODULE as steps
    calls = []

    def fake_switch(client, project_id, version):
        calls.append(version)
    fake_switch.__module__ = steps.__name__
    monkeypatch.setattr(steps, "set_model_version", fake_switch)
    make_client = steps.make_client
    timer = StepTimer(steps)
    timer.install()
    try:
        assert steps.set_model_version is not fake_switch
        assert steps.make_client is make_client  # plumbing is not a step
        steps.set_model_version(None, 1, "v1")
        steps.set_model_version(None, 1, "v2")
    finally:
        timer.uninstall()
    assert steps.set_model_version is fake_switch and calls == ["v1", "v2"]
    assert timer.calls == {"set_model_version": 2} and timer.seconds["set_model_version"] >= 0


def test_probe_summary_counts_slow_and_locked_requests():
    _, tasks, features, labels = synthetic_project(2, 1, 3, 4)
    probe = Probe(Http("http://127.0.0.1:9", "k"), Project(1, ["a", "b", "c"], tasks, features, labels), [1])
    locked = ('{"status_code": 500, "detail": "Sqlite <a href=\'https://docs.djangoproject.com/en/3.1/ref/'
              'databases/#database-is-locked-errors\'>doesn\'t operate well</a> on multiple transactions."}')
    for seconds, status, body in ((0.1, 200, ""), (7.0, 500, locked), (0.2, 0, "timeout")):
        probe._record("submit", status, seconds, body)
    summary = probe.summary()
    assert summary["all"]["max_s"] == 7.0 and summary["all"]["requests"] == 3
    assert summary["submit"]["errors_5xx_or_no_answer"] == 2 and summary["submit"]["database_is_locked"] == 1
    assert summary["submit"]["http_5xx"] == 1 and summary["submit"]["no_answer"] == 1
    assert summary["next"] == {"requests": 0}


LS_VENV = Path(os.environ.get("MCM_LS_VENV", Path.home() / ".cache/mcm/ls-venv"))
needs_ls = pytest.mark.skipif(not (LS_VENV / "bin/label-studio").exists(),
                              reason="Label Studio venv not installed (scripts/ls_server.sh ensure-venv)")


def _start(state: Path, **env) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(ROOT / "scripts/ls_server.sh"), "start", str(state)], capture_output=True,
                          text=True, env={**os.environ, "MCM_LS_PORT": "1", **env}, timeout=120)


@needs_ls
def test_ls_server_refuses_an_unknown_database(tmp_path):
    result = _start(tmp_path / "state", MCM_LS_DB="mysql")
    assert result.returncode != 0
    assert "MCM_LS_DB must be sqlite or postgresql, not 'mysql'" in result.stderr
    assert not (tmp_path / "state" / "pg").exists() and not (tmp_path / "state" / "ls.pid").exists()


@needs_ls
def test_ls_server_refuses_to_switch_the_database_of_a_state_dir(tmp_path):
    state = tmp_path / "state"
    state.mkdir()
    (state / "ls.env").write_text("LABEL_STUDIO_URL=http://127.0.0.1:1\nLABEL_STUDIO_API_KEY=x\n"
                                  "MCM_LS_USER_SAVED=a@b.c\nMCM_LS_PASSWORD_SAVED=p\nMCM_LS_PORT_SAVED=1\n"
                                  "MCM_LS_FILES_ROOT_SAVED=/tmp\nMCM_LS_DB_SAVED=sqlite\n")
    result = _start(state, MCM_LS_DB="postgresql")
    assert result.returncode != 0
    assert "was created with MCM_LS_DB=sqlite" in result.stderr
    assert not (state / "pg").exists()


def test_backend_speed_benchmark_runs_the_whole_path_on_a_small_project(tmp_path, capsys):
    """benchmarks.backend_speed against its in-process fake Label Studio: trains, ranks every unlabeled
    task, pushes the head and answers /predict (it broke once when the refresh's listing changed)."""
    import json

    from benchmarks import backend_speed

    out = tmp_path / "speed.json"
    assert backend_speed.main(["--annotated", "300", "--unlabeled", "450", "--dim", "32", "--out", str(out)]) == 0
    figures = json.loads(out.read_text())
    assert figures["n_scored"] == 450 and figures["model_version"].startswith("mcm-v1-")
    # the head: the whole queue window (MCM_QUEUE_WINDOW, 500 by default; more than MCM_HEAD_SIZE's 100), here
    # the whole pool of 450
    assert figures["refresh_seconds"]["pool"] == 450 and figures["refresh_seconds"]["created"] == 450
    assert set(figures["predict_100_seconds"]) == {"first", "median"}
