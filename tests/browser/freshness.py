"""How fresh the annotator's queue is: which model orders it, and how long a new label takes to count.

Definition used (measurable from outside, with nothing but public APIs):

  The submission-to-fresh-queue lag of a saved annotation that makes k tasks labeled during the
  session (saves ordered by the time Label Studio answered 201, k counting distinct tasks) is the
  time from that answer until Label Studio's `project.model_version` (the version the queue's
  score column and ordering use) is a model version trained on at least `base + k` labeled tasks,
  where `base` is the number of labeled tasks before the session.

Why that identifies "trained on a label set that includes the submission": the backend trains on
every annotated task Label Studio lists at training time, annotations are only added during the
session, and so a model trained on `base + k` labeled tasks saw the saves that labeled the first
k tasks. A version's
label count is the backend's `n_labeled` (GET /mcm/status while that version is current, or its
meta.json in MODEL_DIR for one the poller missed).

`VersionWatch` samples both sides every `interval` seconds in a background thread.
"""
from __future__ import annotations

import dataclasses
import json
import re
import threading
import time
from pathlib import Path
from statistics import median
from typing import Callable

VERSION_NUMBER = re.compile(r"^mcm-v(\d+)-")


@dataclasses.dataclass
class Sample:
    t: float                    # time.monotonic()
    backend_version: str | None
    n_labeled: int | None
    training: bool | None
    ls_version: str | None      # Label Studio's project.model_version


class VersionWatch(threading.Thread):
    """Background sampler of the backend's current model and Label Studio's project.model_version."""

    def __init__(self, backend_status: Callable[[], dict], ls_project: Callable[[], dict], model_dir: Path,
                 interval: float = 0.5) -> None:
        super().__init__(name="version-watch", daemon=True)
        self._backend_status = backend_status
        self._ls_project = ls_project
        self._model_dir = model_dir
        self._interval = interval
        self._halt = threading.Event()
        self.samples: list[Sample] = []
        self.n_labeled_of: dict[str, int] = {}
        self.errors = 0

    def run(self) -> None:
        while not self._halt.is_set():
            t = time.monotonic()
            status, ls_version = {}, None
            try:
                status = self._backend_status()
            except Exception:  # noqa: BLE001 (a missed sample is only a gap)
                self.errors += 1
            try:
                ls_version = self._ls_project().get("model_version")
            except Exception:  # noqa: BLE001
                self.errors += 1
            version = status.get("model_version")
            if version and status.get("n_labeled") is not None:
                self.n_labeled_of.setdefault(version, int(status["n_labeled"]))
            self.samples.append(Sample(t, version, status.get("n_labeled"), status.get("training"), ls_version))
            self._halt.wait(self._interval)

    def stop(self) -> None:
        self._halt.set()
        self.join(timeout=10)

    def n_labeled(self, version: str | None) -> int | None:
        """Labeled tasks `version` was trained on (from /mcm/status, else its meta.json)."""
        if not version:
            return None
        if version not in self.n_labeled_of:
            for meta in self._model_dir.glob(f"*/{version}/meta.json"):
                try:
                    self.n_labeled_of[version] = int(json.loads(meta.read_text())["n_labeled"])
                except (OSError, ValueError, KeyError):
                    pass
        return self.n_labeled_of.get(version)

    def versions_seen(self) -> list[str]:
        seen: list[str] = []
        for s in self.samples:
            for v in (s.backend_version, s.ls_version):
                if v and v not in seen:
                    seen.append(v)
        return seen


def retrains_between(first: str | None, last: str | None, seen: list[str]) -> int:
    """Trainings from version `first` to `last` (version numbers; else distinct versions seen)."""
    a = VERSION_NUMBER.match(first or "")
    b = VERSION_NUMBER.match(last or "")
    if a and b:
        return int(b.group(1)) - int(a.group(1))
    return max(0, len(seen) - 1)


def fresh_queue_lags(saves: list[tuple[float, int]], base: int, watch: VersionWatch) -> list[float | None]:
    """Lag of each save `(time, task id)`, in time order, per the module's definition; None if never observed.

    k counts distinct tasks: a second annotation of a task adds no labeled task to train on.
    """
    lags: list[float | None] = []
    tasks: set[int] = set()
    for t_saved, task in sorted(saves):
        tasks.add(task)
        k = len(tasks)
        lag = None
        for sample in watch.samples:
            if sample.t < t_saved:
                continue
            n = watch.n_labeled(sample.ls_version)
            if n is not None and n >= base + k:
                lag = round(sample.t - t_saved, 1)
                break
        lags.append(lag)
    return lags


def summarize_lags(lags: list[float | None]) -> dict:
    seen = [x for x in lags if x is not None]
    return {
        "n": len(lags),
        "observed": len(seen),
        "median_s": round(median(seen), 1) if seen else None,
        "max_s": max(seen) if seen else None,
        "each_s": lags,
    }
