"""Adapter between the backend and `mcm_core.backbones`.

It decides what the feature cache holds (frozen backbone: feature vectors;
trainable simple-cnn: prepared images, because the CNN's features change at
every retrain) and hides the backbone API from the rest of the backend.
"""
from __future__ import annotations

import hashlib
import logging
import re

import numpy as np
from PIL import Image

from mcm_core.backbones import build_backbone

logger = logging.getLogger(__name__)


class Extractor:
    """Builds the configured backbone once (fails fast on bad weights)."""

    def __init__(self, spec: str, weights: str | None = None, *, cnn_epochs: int = 8,
                 num_threads: int | None = None) -> None:
        self.spec = spec
        self.weights = weights
        options: dict = {"num_threads": num_threads}
        if spec.strip().lower() == "simple-cnn":
            options["train_options"] = {"epochs": int(cnn_epochs)}
        self._build = lambda: build_backbone(spec, weights, **options)
        self.backbone = self._build()
        self.trainable = bool(getattr(self.backbone, "trainable", False))
        # pool-cnn: its training also learns from unlabeled images (a consistency loss on the pool)
        self.learns_from_unlabeled = bool(getattr(self.backbone, "learns_from_unlabeled", False))

    @property
    def cache_kind(self) -> str:
        """Cache directory name: changes whenever what is cached would change."""
        if self.trainable:
            return "images-" + "x".join(str(v) for v in self.backbone.input_shape)
        fingerprint = getattr(self.backbone, "fingerprint", self.spec)
        slug = re.sub(r"[^A-Za-z0-9_.-]+", "_", self.spec.split(":")[0])[:40]
        return f"features-{slug}-{hashlib.sha256(fingerprint.encode()).hexdigest()[:16]}"

    def prepare(self, images: list[Image.Image]) -> np.ndarray:
        """Decoded images -> what the cache stores (features, or uint8 prepared images)."""
        return self.to_cache(self.backbone.prepare(images))

    def prepare_one(self, image: Image.Image) -> np.ndarray:
        """One decoded image -> its small uint8 array, so a batch never holds decoded images."""
        return self.backbone.prepare([image])[0]

    def to_cache(self, prepared: np.ndarray) -> np.ndarray:
        """Stacked `prepare_one` arrays -> what the cache stores."""
        if self.trainable:
            return prepared
        return np.asarray(self.backbone.extract_prepared(prepared), dtype=np.float32)

    def features(self, cached: np.ndarray, trained=None) -> np.ndarray:
        """Feature rows from cached arrays (simple-cnn: with the given trained CNN)."""
        if not self.trainable:
            return np.asarray(cached, dtype=np.float32)
        if trained is None:
            raise RuntimeError("simple-cnn features need a trained CNN")
        return np.asarray(trained.extract_prepared(cached), dtype=np.float32)

    def train(self, cached: np.ndarray, labels: np.ndarray, num_classes: int, seed: int,
              unlabeled: np.ndarray | None = None):
        """A fresh trainable backbone (simple-cnn, pool-cnn) fitted on the prepared images; `unlabeled`:
        prepared images without labels, for a backbone that learns from them too (others ignore it)."""
        model = self._build()
        if self.learns_from_unlabeled and unlabeled is not None and len(unlabeled):
            model.fit_prepared(cached, labels, num_classes=num_classes, seed=seed, unlabeled=unlabeled)
        else:
            model.fit_prepared(cached, labels, num_classes=num_classes, seed=seed)
        return model

    def load_trained(self, path: str):
        model = self._build()
        model.load(path)
        return model
