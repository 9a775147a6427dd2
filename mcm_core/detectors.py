"""A torchvision Faster R-CNN as a source of candidate detections and of box features.

The paper's RC layer replaces a detector's classification head. In a two-stage detector that head
(`roi_heads.box_predictor.cls_score`) reads one feature vector per box: RoIAlign on the feature
pyramid, then the box head (`TwoMLPHead`, 1024-d). `TorchvisionDetector` exposes exactly that:
- `detect(image)`: the detector's own boxes and confidences (its class-specific scores after
  NMS), with the box-head features of those boxes;
- `box_features(image, boxes)`: the box-head features of any boxes, e.g. the annotated ones the
  RC layer is trained on.
So the miner trains on, and scores, the same representation the detector classifies. Only the
Faster R-CNN family has such a box head (RetinaNet, SSD and FCOS classify dense anchors).

Weights: a local state_dict file (`weights`), or torchvision's DEFAULT (COCO) weights, which need
internet access once. Boxes are (x0, y0, x1, y1) fractions of the image, as in mcm_core.detection.
"""
from __future__ import annotations

import hashlib
import logging

import numpy as np
import torch

from .backbones import BackboneError, _file_sha256, _load_state_dict_file, _to_8bit_mode, _torch_threads
from .detection import as_boxes

log = logging.getLogger(__name__)

ARCHITECTURES = ("fasterrcnn_mobilenet_v3_large_320_fpn", "fasterrcnn_mobilenet_v3_large_fpn",
                 "fasterrcnn_resnet50_fpn", "fasterrcnn_resnet50_fpn_v2")
WEIGHTS_SETTING = "MCM_DETECTOR_WEIGHTS"


class TorchvisionDetector:
    """A Faster R-CNN in eval mode on CPU; thread-safe for inference (no state changes)."""

    def __init__(self, arch: str, weights: str | None = None, *, score_threshold: float = 0.05,
                 max_detections: int = 100, num_threads: int | None = None) -> None:
        import torchvision

        if arch not in ARCHITECTURES:
            raise BackboneError(f"unknown detector {arch!r}; use one of {', '.join(ARCHITECTURES)} (two-stage "
                                "detectors with a box head)")
        self.arch = arch
        self.num_threads = num_threads
        if weights:
            state = _load_state_dict_file(weights, arch, WEIGHTS_SETTING)
            self._weights_id = f"file-sha256={_file_sha256(weights)}"
        else:
            state = self._download_default(arch)
            self._weights_id = "torchvision-default"
        cls = state.get("roi_heads.box_predictor.cls_score.weight")
        if cls is None:
            raise BackboneError(f"{WEIGHTS_SETTING}={weights!r} is not a {arch} state_dict (no "
                                "roi_heads.box_predictor.cls_score.weight)")
        model = getattr(torchvision.models.detection, arch)(
            weights=None, weights_backbone=None, num_classes=int(cls.shape[0]),
            box_score_thresh=float(score_threshold), box_detections_per_img=int(max_detections))
        try:
            model.load_state_dict(state, strict=True)
        except RuntimeError as exc:
            raise BackboneError(f"weights ({WEIGHTS_SETTING}) do not match {arch}: {exc}") from exc
        self.model = model.eval()
        self.feature_dim = int(model.roi_heads.box_predictor.cls_score.in_features)
        self.num_classes = int(cls.shape[0])
        log.info("detector %s loaded (%s, %d classes, %d-d box features)", arch, self._weights_id,
                 self.num_classes, self.feature_dim)

    @staticmethod
    def _download_default(arch: str) -> dict[str, torch.Tensor]:
        import torchvision

        enum = torchvision.models.get_model_weights(arch).DEFAULT
        try:
            return enum.get_state_dict(progress=False, check_hash=True)
        except Exception as exc:  # offline, hash mismatch ...
            raise BackboneError(f"could not load torchvision's {enum!r} for {arch} ({type(exc).__name__}: {exc}). "
                                f"Without network access, set {WEIGHTS_SETTING} to a local {arch} state_dict "
                                "file (.pth)") from exc

    @property
    def fingerprint(self) -> str:
        return f"{self.arch}|{self._weights_id}|thresh={self.model.roi_heads.score_thresh}"

    @property
    def cache_kind(self) -> str:
        """A directory name that changes whenever the features would."""
        return f"detector-{self.arch}-{hashlib.sha256(self.fingerprint.encode()).hexdigest()[:16]}"

    def _backbone_pass(self, image):
        x = torch.from_numpy(np.asarray(_to_8bit_mode(image, "RGB"), dtype=np.float32) / 255.0).permute(2, 0, 1)
        images, _ = self.model.transform([x])
        return images, self.model.backbone(images.tensors)

    def _features(self, images, features, boxes_t: torch.Tensor) -> np.ndarray:
        heads = self.model.roi_heads
        pooled = heads.box_roi_pool(features, [boxes_t], images.image_sizes)
        return heads.box_head(pooled).reshape(len(boxes_t), -1).numpy().astype(np.float32)

    @staticmethod
    def _scale(images) -> torch.Tensor:
        h, w = images.image_sizes[0]
        return torch.tensor([w, h, w, h], dtype=torch.float32)

    @torch.no_grad()
    def detect(self, image) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(boxes (n, 4) fractions, confidences (n,), box features (n, D)) of one PIL image."""
        with _torch_threads(self.num_threads):
            images, features = self._backbone_pass(image)
            proposals, _ = self.model.rpn(images, features)
            found, _ = self.model.roi_heads(features, proposals, images.image_sizes)
            boxes_t = found[0]["boxes"]
            feats = self._features(images, features, boxes_t) if len(boxes_t) else \
                np.zeros((0, self.feature_dim), np.float32)
            boxes = (boxes_t / self._scale(images)).clamp(0, 1).numpy().astype(np.float64)
        return boxes, found[0]["scores"].numpy().astype(np.float64), feats

    @torch.no_grad()
    def box_features(self, image, boxes) -> np.ndarray:
        """(n, D) box-head features of the given (n, 4) fraction boxes of one PIL image."""
        b = as_boxes(boxes)
        if not len(b):
            return np.zeros((0, self.feature_dim), np.float32)
        with _torch_threads(self.num_threads):
            images, features = self._backbone_pass(image)
            return self._features(images, features, torch.from_numpy(b).float() * self._scale(images))
