"""Scale benchmark of the backend's refresh against a real Label Studio (a script, not a test).

    python -m benchmarks.scale_ls --tasks 20000 --db sqlite|postgresql [--annotated 2000] [--runs 3]
        [--out DIR] [--ls-url URL --api-key KEY] [--retire-seconds S] [--costs]

Starts a private Label Studio (scripts/ls_server.sh, MCM_LS_DB=--db) unless --ls-url is given, builds a
project of --tasks synthetic tasks (--annotated of them annotated) whose features are pre-filled in the
backend's feature cache (the images do not exist), creates the tail-first view (backend/labelstudio/tabs.py's
ordering and filter), trains once and refreshes once (the state before a retrain).
Then each run: annotates a few more tasks, trains and calls `refresh(runtime, project_id, previous_version)`
(both in benchmarks/scale_backend.py, the only file that knows the backend's API): publish the head of
the queue and switch model_version, fill the rest of the pool, retire the previous version (at once,
grace period 0, so its cost is measured; --retire-seconds caps that phase and reports its rate) while
  - every call into backend.labelstudio.client is timed by name (pushing, switching, listing, deleting, ...);
  - a watcher polls the view's first 50 tasks, to find when they are the new model's top 50 (in the
    queue order) with the new model's scores ("training finished -> view reflects the new model");
  - a probe makes an annotator's requests on the project every 0.25 s (next task, submit, delete the
    annotation) and records each latency and any 5xx / "database is locked".
--costs then measures single-prediction deletes, ways to find a version's prediction ids, bulk
version deletes of 200 / 1,000 / 5,000 predictions and a 1,000-row import/predictions (benchmarks/costs.py).
Prints a markdown table and the JSON (medians over --runs); --out DIR also writes the JSON there.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import signal
import statistics
import sys
import tempfile
import threading
import time

import numpy as np

from benchmarks import scale_backend as backend
from benchmarks.lsbench import (Http, LabelStudioServer, Probe, Project, build_project, load,
                                model_version_counts, view_head)

logger = logging.getLogger("scale_ls")

# Calls into the step module (backend.labelstudio.client) that are plumbing, not refresh steps.
NOT_STEPS = {"make_client", "auth_header", "post_json", "chunked", "get_label_config", "list_annotated_tasks"}
STEP_LABELS = {"list_unlabeled_tasks": "list unlabeled", "get_tasks": "get tasks by id", "push_predictions": "push predictions",
               "set_model_version": "switch model_version", "delete_prediction": "retire (single deletes)"}
PHASES = {"publish_seconds": "publish: head of the queue + switch", "fill_seconds": "fill: the rest of the pool",
          "retire_seconds": "retire: delete the previous version's rows", "retired_rows": "rows retired",
          "retire_rows_per_second": "retire rate (rows/s)"}


class StepTimer:
    """Times every public function of the step module while installed (seconds, calls, first start)."""

    def __init__(self, module=None) -> None:
        self.module = module or backend.STEP_MODULE
        self.seconds: dict[str, float] = {}
        self.calls: dict[str, int] = {}
        self.first_start: dict[str, float] = {}
        self._lock = threading.Lock()
        self._originals: dict[str, object] = {}

    def install(self) -> None:
        module = self.module
        for name in dir(module):
            fn = getattr(module, name)
            if (name.startswith("_") or name in NOT_STEPS or not callable(fn)
                    or getattr(fn, "__module__", "") != module.__name__):
                continue
            self._originals[name] = fn
            setattr(module, name, self._wrap(name, fn))

    def uninstall(self) -> None:
        for name, fn in self._originals.items():
            setattr(self.module, name, fn)
        self._originals.clear()

    def _wrap(self, name, fn):
        def timed(*args, **kwargs):
            t0 = time.monotonic()
            with self._lock:
                self.first_start.setdefault(name, t0)
            try:
                return fn(*args, **kwargs)
            finally:
                with self._lock:
                    self.seconds[name] = self.seconds.get(name, 0.0) + time.monotonic() - t0
                    self.calls[name] = self.calls.get(name, 0) + 1
        return timed


class ViewWatcher(threading.Thread):
    """Polls the view's first 50 tasks until they are `expected`; records when each answer arrived.

    It stops at the first match, so its own requests load Label Studio no longer than needed.
    """

    def __init__(self, http: Http, view_id: int, expected: dict[int, float], t0: float,
                 interval: float = 0.5) -> None:
        super().__init__(daemon=True, name="view-watcher")
        self.http, self.view_id, self.expected, self.t0, self.interval = http, view_id, expected, t0, interval
        self.polls = self.failures = 0
        self.reflected_after: float | None = None
        self._halt = threading.Event()

    def run(self) -> None:
        while not self._halt.is_set():
            status, _, rows = view_head(self.http, self.view_id, timeout=120)
            self.polls += 1
            self.failures += status != 200
            if status == 200 and reflects(rows, self.expected):
                self.reflected_after = time.monotonic() - self.t0
                return
            self._halt.wait(self.interval)

    def stop(self) -> None:
        self._halt.set()


def expected_head(runtime, project: Project, n: int = 50) -> dict[int, float]:
    """{task id: score} of the current model's n highest-scored unlabeled tasks (as pushed to Label Studio)."""
    scores = backend.score_unlabeled(runtime, project.id, project.unlabeled())
    return dict(sorted(scores.items(), key=lambda item: -item[1])[:n])


def reflects(rows: list[tuple], expected: dict[int, float]) -> bool:
    return (len(rows) == len(expected) and {r[0] for r in rows} == set(expected)
            and all(r[1] is not None and abs(float(r[1]) - expected[r[0]]) < 1e-6 for r in rows))


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.rng = np.random.default_rng(args.seed + 1)
        self.server = LabelStudioServer(args.db, url=args.ls_url, api_key=args.api_key)
        self.version: str | None = None
        self.work = tempfile.mkdtemp(prefix="mcm-scale-work-")  # models and the feature cache
        self.figures: dict = {"tasks": args.tasks, "annotated": args.annotated, "db": args.db,
                              "label_studio": args.ls_url or "private (scripts/ls_server.sh)", "runs": []}

    def setup(self) -> None:
        self.server.start()
        self.figures["server_start_seconds"] = self.server.start_seconds and round(self.server.start_seconds, 1)
        self.http = Http(self.server.url, self.server.api_key)
        logger.info("building a project of %d tasks on %s (load %s)", self.args.tasks, self.server.url, load())
        self.project, import_seconds = build_project(self.http, self.args.tasks, self.args.annotated,
                                                     self.args.classes, self.args.dim, self.args.seed)
        self.figures["project"] = self.project.id
        self.figures["import_tasks_seconds"] = round(import_seconds, 1)
        self.runtime = backend.make_runtime(self.work, self.server.url, self.server.api_key, self.args.miner_options)
        backend.fill_feature_cache(self.runtime, self.project.id, self.project.tasks, self.project.features)
        t0 = time.monotonic()
        self.version = backend.train(self.runtime, self.project.id)
        backend.refresh(self.runtime, self.project.id, None)
        self.figures["initial_train_and_refresh_seconds"] = round(time.monotonic() - t0, 1)
        logger.info("initial model %s pushed in %.1fs", self.version, time.monotonic() - t0)

    def annotate_more(self, n: int) -> None:
        """Annotate n more unlabeled tasks with their true class (so each retrain sees new data)."""
        pool = [t["id"] for t in self.project.tasks if t["id"] not in self.project.annotated]
        for task_id in self.rng.choice(pool, size=min(n, len(pool)), replace=False).tolist():
            self.http.json("POST", f"api/tasks/{task_id}/annotations/",
                           json={"result": self.project.true_result(task_id), "was_cancelled": False})
            self.project.annotated.add(task_id)

    def run_once(self, index: int) -> dict:
        args, project = self.args, self.project
        self.annotate_more(args.new_annotations)
        t0 = time.monotonic()
        version = backend.train(self.runtime, project.id)
        train_seconds = time.monotonic() - t0
        previous, self.version = self.version, version
        probe_tasks = sorted(project.annotated)[:20]
        expected = expected_head(self.runtime, project)  # bench overhead: before the clock starts
        timer = StepTimer()
        t_trained = time.monotonic()
        watcher = ViewWatcher(self.http, project.view_id, expected, t_trained)
        probe = Probe(self.http, project, probe_tasks, interval=args.probe_interval, timeout=600)
        load_before = load()
        timer.install()
        watcher.start()
        probe.start()
        try:
            phases = backend.refresh(self.runtime, project.id, previous)
        finally:
            timer.uninstall()
        refresh_seconds = time.monotonic() - t_trained
        row: dict = {"run": index + 1, "model_version": version, "previous_version": previous,
                     "load_before": load_before, "train_seconds": round(train_seconds, 1),
                     "refresh_call_seconds": round(refresh_seconds, 1),
                     "steps_seconds": {k: round(v, 2) for k, v in timer.seconds.items()},
                     "steps_calls": dict(timer.calls),
                     "refresh_phases": phases if isinstance(phases, dict) else None}
        counts = model_version_counts(self.http, project.id)
        row["previous_version_left"] = (counts or {}).get(previous) if previous else None
        done = time.monotonic()
        row["refresh_until_server_done_seconds"] = round(done - t_trained, 1)
        status, seconds, _ = view_head(self.http, project.view_id)
        row["first_50_of_view_seconds"] = round(seconds, 3) if status == 200 else f"HTTP {status}"
        probe.stop()
        watcher.join(timeout=5.0)  # a last chance to see the settled view
        watcher.stop()
        watcher.join(timeout=180)
        probe.join(timeout=600)
        hit = watcher.reflected_after
        row["trained_to_view_reflects_seconds"] = round(hit, 1) if hit is not None else None
        row["view_polls"], row["view_poll_failures"] = watcher.polls, watcher.failures
        row["probe"] = probe.summary()
        row["load_after"] = load()
        logger.info("run %d: %s", index + 1, json.dumps(row))
        return row

    def run(self) -> dict:
        try:
            self.setup()
            for index in range(self.args.runs):
                self.figures["runs"].append(self.run_once(index))
            if self.args.costs:
                from benchmarks.costs import measure_costs
                self.figures["costs"] = measure_costs(self.http, self.project, self.args)
        finally:
            if not self.args.keep_server:
                self.server.stop(remove=True)
            shutil.rmtree(self.work, ignore_errors=True)
        self.figures["medians"] = medians(self.figures["runs"])
        return self.figures


def _median(values: list) -> float | None:
    """Median of the runs' figures (a run that never reached a figure, None, is left out)."""
    numbers = [v for v in values if isinstance(v, (int, float))]
    return round(statistics.median(numbers), 3) if numbers else None


def medians(runs: list[dict]) -> dict:
    """Median of each figure over the runs (a run that never reached a figure, None, is left out)."""
    if not runs:
        return {}
    out: dict = {}
    for key in ("train_seconds", "refresh_call_seconds", "refresh_until_server_done_seconds",
                "first_50_of_view_seconds", "trained_to_view_reflects_seconds", "previous_version_left"):
        out[key] = _median([r.get(key) for r in runs])
    for phase in PHASES:
        out[f"phase:{phase}"] = _median([(r.get("refresh_phases") or {}).get(phase) for r in runs])
    for step in sorted({s for r in runs for s in r["steps_seconds"]}):
        out[f"step:{step}"] = _median([r["steps_seconds"].get(step) for r in runs])
    for stat in ("max_s", "p99_s"):
        out[f"probe_{stat}"] = _median([r["probe"]["all"].get(stat) for r in runs])
    out["probe_errors_total"] = sum(r["probe"]["all"].get("errors_5xx_or_no_answer", 0) for r in runs)
    out["probe_locked_total"] = sum(r["probe"]["all"].get("database_is_locked", 0) for r in runs)
    return out


def markdown(figures: dict) -> str:
    m = figures["medians"]
    if not m:
        return f"### {figures['tasks']:,} tasks on {figures['db']}: no refresh runs"
    lines = [f"### {figures['tasks']:,} tasks on {figures['db']} ({len(figures['runs'])} run(s), medians)", "",
             "| step | seconds |", "|---|---|"]
    for step, label in STEP_LABELS.items():
        if f"step:{step}" in m:
            lines.append(f"| {label} | {m[f'step:{step}']} |")
    for key, value in m.items():
        if key.startswith("step:") and key[5:] not in STEP_LABELS:
            lines.append(f"| {key[5:]} | {value} |")
    for phase, label in PHASES.items():
        lines.append(f"| {label} | {m.get(f'phase:{phase}')} |")
    lines += [f"| previous version's predictions left (retire capped by --retire-seconds) | "
              f"{m['previous_version_left']} |",
              f"| refresh call (client side) | {m['refresh_call_seconds']} |",
              f"| refresh until the server is done | {m['refresh_until_server_done_seconds']} |",
              f"| first 50 tasks of the tail-first view | {m['first_50_of_view_seconds']} |",
              f"| training finished -> view shows the new model's top 50 | {m['trained_to_view_reflects_seconds']} |",
              f"| annotator probe: longest wait | {m['probe_max_s']} |",
              f"| annotator probe: p99 wait | {m['probe_p99_s']} |",
              f"| annotator probe: 5xx / no answer (all runs) | {m['probe_errors_total']} "
              f"({m['probe_locked_total']} 'database is locked') |"]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", type=int, default=20_000, help="tasks in the project (annotated included)")
    parser.add_argument("--annotated", type=int, default=2_000)
    parser.add_argument("--db", choices=("sqlite", "postgresql"), default="sqlite")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--new-annotations", type=int, default=20, help="tasks annotated before each retrain")
    parser.add_argument("--max-delete-seconds", type=float, default=900.0,
                        help="--costs: how long to wait for one bulk delete")
    parser.add_argument("--retire-seconds", type=float, default=None,
                        help="cap the retire phase (default: until the previous version is gone) "
                        "and report its rate")
    parser.add_argument("--probe-interval", type=float, default=0.25)
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--miner-options", default="", help="MCM_MINER_OPTIONS (JSON)")
    parser.add_argument("--ls-url", default=None, help="use this Label Studio instead of starting one")
    parser.add_argument("--api-key", default=None)
    parser.add_argument("--costs", action="store_true", help="also measure the single-call costs (docs/scale.md)")
    parser.add_argument("--keep-server", action="store_true", help="leave the private server running")
    parser.add_argument("--out", default=None, help="directory for the JSON figures")
    args = parser.parse_args(argv)
    if args.annotated >= args.tasks:
        parser.error("--annotated must be smaller than --tasks")
    if bool(args.ls_url) != bool(args.api_key):
        parser.error("--ls-url and --api-key go together")

    # A terminated benchmark still stops the servers it started (the `finally` in Bench.run).
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    import torch
    torch.set_num_threads(1)
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s] [%(name)s] %(message)s")
    for noisy in ("httpx", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    backend.RETIRE_SECONDS = args.retire_seconds
    figures = Bench(args).run()
    text = json.dumps(figures, indent=1, default=str)
    print(markdown(figures))
    print(text)
    if args.out:
        os.makedirs(args.out, exist_ok=True)
        path = os.path.join(args.out, f"scale_{args.db}_{args.tasks}_{time.strftime('%Y%m%dT%H%M%S')}.json")
        with open(path, "w") as handle:
            handle.write(text + "\n")
        print(f"written to {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
