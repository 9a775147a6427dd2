"""Model versions: versioned, atomic storage under MODEL_DIR/<project_id>/, and loading one.

Layout:
    MODEL_DIR/<project>/<version>/miner.pt      MinorityMiner.save
    MODEL_DIR/<project>/<version>/backbone.pt   the trained simple-cnn (trainable backbones only)
    MODEL_DIR/<project>/<version>/prefill.npz   mcm_core.prefill.PrefillClassifier: what predictions pre-tick
                                                (versions saved before it pre-fill nothing)
    MODEL_DIR/<project>/<version>/meta.json     classes, counts, timings
    MODEL_DIR/<project>/current.json            {"version": ...}: the pointer, replaced atomically
    MODEL_DIR/<project>/connected.json          the project's connection was verified (backend/connections.py)
A version directory is built under a temporary name and renamed into place, and
the pointer is switched only afterwards, so a crash mid-save never loses the
previous model.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
import shutil
import tempfile
import threading
import time
from typing import Any, Callable

from mcm_core import MinorityMiner
from mcm_core.atomic import atomic_write_json
from mcm_core.prefill import PrefillClassifier

VERSION_RE = re.compile(r"^mcm-v(\d+)-\d{8}T\d{6}$")
PREFILL_FILE = "prefill.npz"
logger = logging.getLogger(__name__)


@dataclasses.dataclass
class LoadedModel:
    """One version in memory: the miner, the trained CNN (simple-cnn only), its meta.json and the
    pre-fill classifier (None: a version saved before pre-fills were checked, which pre-fills nothing)."""

    version: str
    miner: Any
    trained_backbone: Any | None
    meta: dict
    prefill: Any | None = None
    # simple-cnn: features of this version's CNN for cached tasks, (task id, url) -> row
    feature_memo: dict = dataclasses.field(default_factory=dict)
    memo_values: list = dataclasses.field(default_factory=list)
    memo_lock: threading.Lock = dataclasses.field(default_factory=threading.Lock)


def counted_tail_names(meta: dict) -> list[str]:
    """The class names the count rule gave a version (its meta's "tail_counted"); [] when absent or not a
    list of names (a version saved before, or a damaged file: the count rule then starts afresh)."""
    names = meta.get("tail_counted") if isinstance(meta, dict) else None
    return [c for c in names if isinstance(c, str)] if isinstance(names, list) else []


class ModelStore:
    """Reads and writes one project's versions."""

    def __init__(self, project_dir: str) -> None:
        self.project_dir = project_dir

    @property
    def pointer_path(self) -> str:
        return os.path.join(self.project_dir, "current.json")

    def version_dir(self, version: str) -> str:
        if not VERSION_RE.match(version):
            raise ValueError(f"not a model version name: {version!r}")
        return os.path.join(self.project_dir, version)

    def versions(self) -> list[str]:
        """Complete versions, oldest first."""
        if not os.path.isdir(self.project_dir):
            return []
        found = [d for d in os.listdir(self.project_dir)
                 if VERSION_RE.match(d) and os.path.exists(os.path.join(self.project_dir, d, "meta.json"))]
        return sorted(found, key=lambda v: int(VERSION_RE.match(v).group(1)))

    def read_pointer(self) -> tuple[str | None, str | None]:
        """(current version, None), (None, None) before the first training, or (None, what is wrong with the file).

        A truncated, mistyped or dangling pointer is reported, never raised: the
        caller then serves the newest loadable version instead of stopping.
        """
        try:
            with open(self.pointer_path, "rb") as handle:
                raw = handle.read(4096)
        except FileNotFoundError:
            return None, None
        except OSError as exc:
            return None, f"cannot read {self.pointer_path}: {exc}"
        try:
            payload = json.loads(raw)
        except ValueError as exc:
            return None, f"{self.pointer_path} is not valid JSON ({exc}); content {raw[:80]!r}"
        version = payload.get("version") if isinstance(payload, dict) else None
        if not isinstance(version, str) or not VERSION_RE.match(version):
            return None, f"{self.pointer_path} does not name a model version: {raw[:80]!r}"
        if not os.path.exists(os.path.join(self.project_dir, version, "meta.json")):
            return None, f"{self.pointer_path} names {version}, which has no complete version directory"
        return version, None

    def current_version(self) -> str | None:
        return self.read_pointer()[0]

    @property
    def connected_path(self) -> str:
        return os.path.join(self.project_dir, "connected.json")

    def ranking_path(self, version: str) -> str:
        """The version's ranking of the pool, as published (backend/publishing.py)."""
        return os.path.join(self.version_dir(version), "ranking.npz")

    def pointer_mtime(self) -> float | None:
        try:
            return os.stat(self.pointer_path).st_mtime_ns
        except FileNotFoundError:
            return None

    def next_version(self) -> str:
        existing = [int(VERSION_RE.match(v).group(1)) for v in self.versions()]
        number = max(existing, default=0) + 1
        return f"mcm-v{number}-{time.strftime('%Y%m%dT%H%M%S', time.gmtime())}"

    def save(self, write_files: Callable[[str], dict], meta: dict) -> str:
        """Create a new version: `write_files(tmpdir)` writes the model files and returns extra meta."""
        os.makedirs(self.project_dir, exist_ok=True)
        version = self.next_version()
        tmp = tempfile.mkdtemp(dir=self.project_dir, prefix=".saving-")
        try:
            extra = write_files(tmp) or {}
            atomic_write_json(os.path.join(tmp, "meta.json"), {**meta, **extra, "version": version})
            os.replace(tmp, os.path.join(self.project_dir, version))
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        atomic_write_json(self.pointer_path, {"version": version})
        return version

    @property
    def scoring_path(self) -> str:
        return os.path.join(self.project_dir, "scoring.json")

    def record_scoring(self, version: str, n_scored: int) -> None:
        """Remember how many tasks a version scored, so /mcm/status survives a restart."""
        atomic_write_json(self.scoring_path, {"version": version, "n_scored": int(n_scored),
                                              "scored_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())})

    def read_scoring(self) -> dict:
        try:
            with open(self.scoring_path) as handle:
                record = json.load(handle)
        except (OSError, ValueError):
            return {}
        return record if isinstance(record, dict) else {}

    def read_meta(self, version: str) -> dict:
        with open(os.path.join(self.version_dir(version), "meta.json")) as handle:
            return json.load(handle)

    def prune(self, keep: int = 5) -> None:
        """Remove old versions beyond the newest `keep` (never the current one)."""
        current = self.current_version()
        for version in self.versions()[:-keep]:
            if version != current:
                shutil.rmtree(os.path.join(self.project_dir, version), ignore_errors=True)


def load_version(store: ModelStore, version: str, extractor) -> LoadedModel:
    """Read one stored version (raises if any of its files is missing or unreadable)."""
    started = time.monotonic()
    directory = store.version_dir(version)
    meta = store.read_meta(version)
    miner = MinorityMiner.load(os.path.join(directory, "miner.pt"))
    # a detection version scored with a detector's box features has no trained CNN
    with_cnn = extractor.trainable and meta.get("trained_backbone", True)
    trained = extractor.load_trained(os.path.join(directory, "backbone.pt")) if with_cnn else None
    prefill = load_prefill(directory, meta, version)
    logger.info("project %s: loaded model %s in %.2fs", meta.get("project"), version, time.monotonic() - started)
    return LoadedModel(version=version, miner=miner, trained_backbone=trained, meta=meta, prefill=prefill)


def load_prefill(directory: str, meta: dict, version: str):
    """The version's PrefillClassifier, or None: then its predictions pre-tick nothing. A missing file
    (a version saved before pre-fills were checked) or an unreadable one never stops the version: the
    scores do not depend on it, and no pre-fill is the safe answer."""
    path = os.path.join(directory, PREFILL_FILE)
    if not os.path.exists(path):
        logger.info("project %s: model %s has no %s (saved before pre-fills were checked): its predictions "
                    "pre-fill nothing until the next training", meta.get("project"), version, PREFILL_FILE)
        return None
    try:
        return PrefillClassifier.load(path)
    except ValueError as exc:
        logger.warning("project %s: model %s: %s; its predictions pre-fill nothing", meta.get("project"), version, exc)
        return None
