"""Frozen (or, for ``simple-cnn``, trainable) feature extractors that turn images into the
penultimate-layer feature vectors the minority-class miner is trained on.

Why a separate module: the miner only ever sees ``float32 (N, D)`` features, so every model
choice (torchvision ResNet, a user's TorchScript file, the paper's small CNN) is hidden behind
one small ``Backbone`` interface. Image decoding/preprocessing is split from the network pass
(``prepare`` -> compact ``uint8 (N, H, W, C)`` array, ``extract_prepared`` -> features) so a
caller can cache decoded images and re-extract (e.g. after re-training ``simple-cnn``) without
downloading or decoding them again.

Specs understood by :func:`build_backbone`:

``resnet18`` / ``resnet50``
    torchvision ResNet with ``fc`` replaced by identity (512 / 2048-d features). ImageNet
    preprocessing: resize shorter side to 256 (bilinear), center crop 224, RGB, ImageNet
    mean/std. Weights: ``weights`` = a local ``state_dict`` file (``torch.save(model.state_dict())``
    or a checkpoint dict holding it under ``state_dict``/``model_state_dict``/``model``);
    otherwise torchvision's ``DEFAULT`` weights (downloaded to the torch hub cache; fails with a
    ``BackboneError`` when offline).
``torchscript:<path>``
    A TorchScript file (``torch.jit.save``). Feature rule, first that applies:
    1. the module has an exported ``features`` *method* (``@torch.jit.export def features``):
       its output, flattened to ``(N, -1)``;
    2. the module's last child is a ``Linear`` (or a ``Sequential`` ending in one, recursively,
       e.g. ``classifier``): all other children are run in order (flattening before a Linear)
       and the last Linear is dropped. This is verified once at load time on a seeded random
       batch: re-applying the dropped Linear must reproduce the model's own output, otherwise
       the rule is rejected (the model's ``forward`` does more than chain its children);
    3. otherwise the model's output itself (logged as a warning).
    ``feature_source`` tells which rule was used. Preprocessing: resize shorter side to
    ``resize`` (default ``round(input_size * 256 / 224)``), center crop ``input_size``
    (default 224), ``channels`` 3 (RGB) or 1 (grayscale), normalise with ``mean``/``std``
    (default ImageNet; for 1 channel the average of the three ImageNet values).
``pool-cnn``
    A small CNN for images that are not grayscale digits (:class:`PoolCNNBackbone`): input that
    does not depend on colours or polarity (:func:`robust_channels`, 32x32x2), trained on the
    labels with augmentation and on the unlabeled pool (``fit_prepared(..., unlabeled=)``) with a
    consistency loss. ``weights`` = a file written by :meth:`PoolCNNBackbone.save`.
``simple-cnn``
    The paper's small CNN (:mod:`mcm_core.small_cnn`), trained on the labeled images with
    :meth:`SimpleCNNBackbone.fit`. Images: grayscale, resized (bilinear) to ``image_size``
    (default 28) square, scaled to ``[0, 1]``. ``weights`` = a file written by
    :meth:`SimpleCNNBackbone.save`.

All images go through EXIF orientation, then mode conversion (16-bit and float images are
scaled to 8 bits first). Extraction runs on CPU in eval mode under ``torch.no_grad`` in batches
of ``batch_size``; ``num_threads`` (if given) sets torch's intra-op threads for the call.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import warnings
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageOps
from torch import nn

from .atomic import atomic_torch_save
from .small_cnn import PoolCNN, SmallCNN, small_cnn_features, train_pool_cnn, train_small_cnn

log = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
WEIGHTS_SETTING = "MCM_BACKBONE_WEIGHTS"
SPEC_SETTING = "MCM_BACKBONE"
_STATE_DICT_KEYS = ("state_dict", "model_state_dict", "model")


class BackboneError(RuntimeError):
    """A backbone cannot be built or used: bad spec, missing/corrupt weights, untrained model."""


# ----------------------------------------------------------------------------- image helpers


def _to_8bit_mode(img: Image.Image, mode: str) -> Image.Image:
    """Convert any PIL image to ``mode`` ("RGB" or "L"); 16-bit/float images are rescaled first
    because PIL's own conversion clips them instead of scaling."""
    if not isinstance(img, Image.Image):
        raise ValueError(f"expected a PIL.Image.Image, got {type(img).__name__}")
    try:
        img = ImageOps.exif_transpose(img)
    except Exception as exc:  # malformed EXIF must not make an otherwise readable image unusable
        log.debug("ignoring unreadable EXIF orientation: %s", exc)
    if img.mode.startswith("I;16"):
        arr = np.asarray(img, dtype=np.float64) / 257.0
        img = Image.fromarray(np.clip(np.rint(arr), 0, 255).astype(np.uint8), "L")
    elif img.mode in ("I", "F"):
        arr = np.asarray(img, dtype=np.float64)
        lo, hi = float(arr.min()), float(arr.max())
        arr = (arr - lo) / (hi - lo) * 255.0 if hi > lo else np.zeros_like(arr)
        img = Image.fromarray(np.clip(np.rint(arr), 0, 255).astype(np.uint8), "L")
    elif img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    return img if img.mode == mode else img.convert(mode)


def _resize_shorter_side(img: Image.Image, size: int) -> Image.Image:
    w, h = img.size
    if min(w, h) == size:
        return img
    if w <= h:
        new_w, new_h = size, int(size * h / w)
    else:
        new_w, new_h = int(size * w / h), size
    return img.resize((new_w, new_h), Image.Resampling.BILINEAR)


def _center_crop(img: Image.Image, size: int) -> Image.Image:
    w, h = img.size
    if w < size or h < size:  # only after a resize to a smaller "resize" setting
        img = img.resize((max(w, size), max(h, size)), Image.Resampling.BILINEAR)
        w, h = img.size
    left = int(round((w - size) / 2.0))
    top = int(round((h - size) / 2.0))
    return img.crop((left, top, left + size, top + size))


@contextlib.contextmanager
def _torch_threads(num_threads: int | None) -> Iterator[None]:
    """Temporarily set torch's intra-op thread count (process-wide; restored afterwards)."""
    if num_threads is None:
        yield
        return
    previous = torch.get_num_threads()
    torch.set_num_threads(int(num_threads))
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def _file_sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _load_state_dict_file(path: str, what: str, setting: str = WEIGHTS_SETTING) -> dict[str, torch.Tensor]:
    """Read a ``state_dict`` (or a checkpoint dict wrapping one) with ``weights_only=True``;
    any failure becomes a BackboneError that names the file and the setting it came from."""
    if not os.path.isfile(path):
        raise BackboneError(f"{what} weights file {path!r} ({setting}) does not exist")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # corrupt file, pickled nn.Module, not a torch file ...
        raise BackboneError(
            f"cannot read {what} weights file {path!r} ({setting}): {exc}. Expected "
            "torch.save(model.state_dict(), path) or a checkpoint dict holding the state_dict "
            f"under one of {_STATE_DICT_KEYS}"
        ) from exc
    if isinstance(obj, dict):
        for key in _STATE_DICT_KEYS:
            if isinstance(obj.get(key), dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not obj or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items()
    ):
        raise BackboneError(
            f"{what} weights file {path!r} ({setting}) holds no state_dict "
            f"(a dict of tensors, possibly under one of {_STATE_DICT_KEYS})"
        )
    for prefix in ("module.", "model."):  # DataParallel / Lightning-style wrappers
        if all(k.startswith(prefix) for k in obj):
            obj = {k[len(prefix):]: v for k, v in obj.items()}
    return obj


# ----------------------------------------------------------------------------- base class


class Backbone:
    """Images -> ``float32 (N, feature_dim)`` penultimate features.

    Subclasses define the preprocessing of one image (``_prepare_one`` -> ``uint8 (H, W, C)``)
    and the network pass on a normalised float batch (``_forward``)."""

    spec: str = ""
    trainable: bool = False
    learns_from_unlabeled: bool = False  # fit_prepared(..., unlabeled=pool images) is used

    def __init__(
        self,
        *,
        input_shape: tuple[int, int, int],
        mean: Sequence[float],
        std: Sequence[float],
        batch_size: int = 32,
        num_threads: int | None = None,
    ) -> None:
        if int(batch_size) < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if len(mean) != input_shape[2] or len(std) != input_shape[2]:
            raise ValueError(
                f"mean/std need {input_shape[2]} values (one per channel), got {mean}, {std}"
            )
        if any(s <= 0 for s in std):
            raise ValueError(f"std values must be > 0, got {std}")
        self.input_shape = tuple(int(v) for v in input_shape)  # (H, W, C) of prepared images
        self.batch_size = int(batch_size)
        self.num_threads = num_threads
        self._mean = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
        self._std = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)
        self.feature_dim: int | None = None

    # -- preprocessing -----------------------------------------------------------------
    def _prepare_one(self, img: Image.Image) -> np.ndarray:
        raise NotImplementedError

    def prepare(self, images: Sequence[Image.Image]) -> np.ndarray:
        """Decode-side preprocessing: PIL images -> ``uint8 (N, H, W, C)`` (one byte per pixel,
        cheap to cache). Feed the result to :meth:`extract_prepared`."""
        out = np.empty((len(images), *self.input_shape), dtype=np.uint8)
        for i, img in enumerate(images):
            try:
                arr = self._prepare_one(img)
            except ValueError as exc:
                raise ValueError(f"image {i}: {exc}") from exc
            out[i] = arr.reshape(self.input_shape)
        return out

    def _check_prepared(self, arr: np.ndarray) -> None:
        if not isinstance(arr, np.ndarray) or arr.dtype != np.uint8:
            raise ValueError(
                "prepared images must be a uint8 numpy array from Backbone.prepare(), got "
                f"{type(arr).__name__} {getattr(arr, 'dtype', '')}"
            )
        if arr.ndim != 4 or tuple(arr.shape[1:]) != self.input_shape:
            raise ValueError(
                f"prepared images must have shape (N, {', '.join(map(str, self.input_shape))}) "
                f"for backbone {self.spec!r}, got {arr.shape}"
            )

    def _to_tensor(self, batch: np.ndarray) -> torch.Tensor:
        x = torch.from_numpy(np.ascontiguousarray(batch)).permute(0, 3, 1, 2).float()
        return (x / 255.0 - self._mean) / self._std

    # -- network pass ------------------------------------------------------------------
    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def _eval_modules(self) -> list[nn.Module]:
        """Modules to put in eval mode before a pass: the network in ``self.model``, once built."""
        model = getattr(self, "model", None)
        return [model] if model is not None else []

    def extract_prepared(self, arr: np.ndarray) -> np.ndarray:
        """Features of images already run through :meth:`prepare`: ``float32 (N, D)``."""
        self._check_prepared(arr)
        self._check_ready()
        for module in self._eval_modules():
            module.eval()
        chunks: list[np.ndarray] = []
        with _torch_threads(self.num_threads), torch.no_grad():
            for start in range(0, len(arr), self.batch_size):
                feats = self._forward(self._to_tensor(arr[start : start + self.batch_size]))
                chunks.append(feats.reshape(feats.shape[0], -1).to(torch.float32).numpy())
        if not chunks:
            return np.zeros((0, self.feature_dim or 0), dtype=np.float32)
        out = np.concatenate(chunks, axis=0)
        if not np.all(np.isfinite(out)):
            raise BackboneError(f"backbone {self.spec!r} produced non-finite features")
        return out

    def extract(self, images: Sequence[Image.Image]) -> np.ndarray:
        """PIL images -> ``float32 (N, D)`` penultimate features (batched, eval, no grad)."""
        return self.extract_prepared(self.prepare(images))

    def _check_ready(self) -> None:
        """Raise BackboneError if features cannot be extracted yet."""

    @property
    def fingerprint(self) -> str:
        """Identity of (spec, weights, preprocessing): features are cacheable under it."""
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}(spec={self.spec!r}, feature_dim={self.feature_dim})"


class _CenterCropBackbone(Backbone):
    """Shared ImageNet-style preprocessing: resize shorter side, center crop, RGB or L."""

    def __init__(self, *, input_size: int, resize: int | None, channels: int, **kwargs: Any):
        if channels not in (1, 3):
            raise ValueError(f"channels must be 1 (grayscale) or 3 (RGB), got {channels}")
        if int(input_size) < 1:
            raise ValueError(f"input_size must be >= 1, got {input_size}")
        self.input_size = int(input_size)
        self.resize = int(resize) if resize is not None else int(round(input_size * 256 / 224))
        self._mode = "RGB" if channels == 3 else "L"
        super().__init__(input_shape=(self.input_size, self.input_size, channels), **kwargs)

    def _prepare_one(self, img: Image.Image) -> np.ndarray:
        img = _to_8bit_mode(img, self._mode)
        img = _center_crop(_resize_shorter_side(img, self.resize), self.input_size)
        return np.asarray(img, dtype=np.uint8)

    def _preprocessing_id(self) -> str:
        return (
            f"resize={self.resize},crop={self.input_size},mode={self._mode},"
            f"mean={self._mean.flatten().tolist()},std={self._std.flatten().tolist()}"
        )


# ----------------------------------------------------------------------------- ResNet


_RESNETS = {"resnet18": 512, "resnet50": 2048}


class TorchvisionResNetBackbone(_CenterCropBackbone):
    """torchvision ResNet-18/50 with ``fc`` = identity: the global-average-pooled features."""

    def __init__(self, arch: str, weights: str | None = None, *, batch_size: int = 32,
                 num_threads: int | None = None) -> None:
        import torchvision

        if arch not in _RESNETS:
            raise BackboneError(f"unknown torchvision backbone {arch!r}; use one of {sorted(_RESNETS)}")
        self.spec = arch
        super().__init__(input_size=224, resize=256, channels=3, mean=IMAGENET_MEAN,
                         std=IMAGENET_STD, batch_size=batch_size, num_threads=num_threads)
        model = getattr(torchvision.models, arch)(weights=None)
        model.fc = nn.Identity()
        if weights:
            state = _load_state_dict_file(weights, arch)
            self._weights_id = f"file-sha256={_file_sha256(weights)}"
            source = repr(weights)
        else:
            state = self._download_default(arch)
            self._weights_id = "torchvision-default"
            source = "torchvision DEFAULT weights"
        state = {k: v for k, v in state.items() if not k.startswith("fc.")}
        try:
            model.load_state_dict(state, strict=True)
        except RuntimeError as exc:
            raise BackboneError(
                f"weights {source} ({WEIGHTS_SETTING}) do not match {arch}: {exc}"
            ) from exc
        self.model = model.eval()
        self.feature_dim = _RESNETS[arch]
        self._weights_name = source
        log.info("backbone %s loaded from %s (%d-d features)", arch, source, self.feature_dim)

    @staticmethod
    def _download_default(arch: str) -> dict[str, torch.Tensor]:
        """torchvision's own DEFAULT weights (torch hub cache, download on first use)."""
        import torchvision

        enum = torchvision.models.get_model_weights(arch).DEFAULT
        try:
            return enum.get_state_dict(progress=False, check_hash=True)
        except Exception as exc:  # URLError, hash mismatch, disk full ...
            raise BackboneError(
                f"could not load torchvision's {enum!r} for {arch} ({type(exc).__name__}: {exc}). "
                f"Without network access, set {WEIGHTS_SETTING} to a local {arch} state_dict "
                "file (.pth)"
            ) from exc

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)

    @property
    def fingerprint(self) -> str:
        return f"{self.spec}|{self._weights_id}|{self._preprocessing_id()}"


# ----------------------------------------------------------------------------- TorchScript


def _is_module_type(module: nn.Module, name: str) -> bool:
    return getattr(module, "original_name", type(module).__name__) == name


def _split_last_linear(module: nn.Module) -> tuple[list[nn.Module], nn.Module] | None:
    """(children to chain, final Linear) if the module's last child is a Linear or a Sequential
    ending in one (recursively), else None."""
    children = [child for _, child in module.named_children()]
    if not children:
        return None
    *head, last = children
    if _is_module_type(last, "Linear"):
        return head, last
    if _is_module_type(last, "Sequential"):
        inner = _split_last_linear(last)
        if inner is not None:
            return head + inner[0], inner[1]
    return None


def _run_chain(modules: Sequence[nn.Module], x: torch.Tensor) -> torch.Tensor:
    for module in modules:
        if _is_module_type(module, "Linear") and x.dim() > 2:
            x = torch.flatten(x, 1)
        x = module(x)
    return torch.flatten(x, 1) if x.dim() > 2 else x


class TorchScriptBackbone(_CenterCropBackbone):
    """A user's TorchScript model; see the module docstring for the penultimate-feature rule."""

    def __init__(self, path: str, *, input_size: int = 224, resize: int | None = None,
                 channels: int = 3, mean: Sequence[float] | None = None,
                 std: Sequence[float] | None = None, batch_size: int = 32,
                 num_threads: int | None = None) -> None:
        self.spec = f"torchscript:{path}"
        if mean is None:
            mean = IMAGENET_MEAN if channels == 3 else (sum(IMAGENET_MEAN) / 3,)
        if std is None:
            std = IMAGENET_STD if channels == 3 else (sum(IMAGENET_STD) / 3,)
        super().__init__(input_size=input_size, resize=resize, channels=channels, mean=mean,
                         std=std, batch_size=batch_size, num_threads=num_threads)
        if not path or not os.path.isfile(path):
            raise BackboneError(f"TorchScript model file {path!r} ({SPEC_SETTING}) does not exist")
        try:
            with warnings.catch_warnings():  # torch 2.x marks torch.jit as deprecated; still works
                warnings.simplefilter("ignore", FutureWarning)
                self.model = torch.jit.load(path, map_location="cpu").eval()
        except Exception as exc:
            raise BackboneError(
                f"cannot load TorchScript model {path!r} ({SPEC_SETTING}): {exc}. "
                "Expected a file written by torch.jit.save(torch.jit.script(model), path)"
            ) from exc
        self._path = path
        self._file_sha = _file_sha256(path)
        self._features_fn: Callable[[torch.Tensor], torch.Tensor]
        with _torch_threads(num_threads), torch.no_grad():
            self.feature_source, self._features_fn = self._choose_feature_rule()
            probe = self._features_fn(self._probe_batch())
        self.feature_dim = int(probe.reshape(probe.shape[0], -1).shape[1])
        log.info("backbone %s: %d-d features via %s", self.spec, self.feature_dim,
                 self.feature_source)

    def _probe_batch(self) -> torch.Tensor:
        gen = torch.Generator().manual_seed(0)
        h, w, c = self.input_shape
        return torch.randn(2, c, h, w, generator=gen)

    def _choose_feature_rule(self) -> tuple[str, Callable[[torch.Tensor], torch.Tensor]]:
        x = self._probe_batch()
        try:
            full = self.model(x)
        except Exception as exc:
            raise BackboneError(
                f"TorchScript model {self._path!r} fails on a (2, {x.shape[1]}, {x.shape[2]}, "
                f"{x.shape[3]}) input; set input_size/channels to what it expects: {exc}"
            ) from exc
        if not isinstance(full, torch.Tensor):
            raise BackboneError(
                f"TorchScript model {self._path!r} must return a tensor, got {type(full).__name__}"
            )
        method = getattr(self.model, "features", None)
        if method is not None and not isinstance(method, nn.Module) and callable(method):
            return "features-method", method
        split = _split_last_linear(self.model)
        if split is not None:
            chain, last_linear = split
            try:
                reproduced = last_linear(_run_chain(chain, x))
                faithful = reproduced.shape == full.shape and torch.allclose(
                    reproduced, full, rtol=1e-4, atol=1e-5)
            except Exception as exc:
                log.warning("chaining the children of %s failed: %s", self._path, exc)
                faithful = False
            if faithful:
                return "drop-last-linear", lambda t: _run_chain(chain, t)
            log.warning("%s: running the children in order does not reproduce forward(); "
                        "falling back to the model output", self._path)
        log.warning("%s: no exported features() method and no removable final Linear; "
                    "using the model's output as features", self._path)
        return "model-output", self.model

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._features_fn(x)

    @property
    def fingerprint(self) -> str:
        return f"torchscript|sha256={self._file_sha}|{self.feature_source}|{self._preprocessing_id()}"


# ----------------------------------------------------------------------------- simple-cnn


class _TrainedCNNBackbone(Backbone):
    """What simple-cnn and pool-cnn share: a small CNN trained on the project's labeled images
    (``trainable = True``), its weights hash in the fingerprint (the feature cache key), and a file
    written atomically by :meth:`save` with the architecture needed to rebuild it. A subclass names its
    ``FORMAT`` and ``IN_CHANNELS`` and says how to describe (:meth:`_architecture`) and rebuild
    (:meth:`_build_model`) its network."""

    trainable = True
    FORMAT = ""
    IN_CHANNELS = 1

    def __init__(self, weights: str | None, *, image_size: int, batch_size: int, num_threads: int | None,
                 train_options: dict[str, Any]) -> None:
        self.image_size = int(image_size)
        super().__init__(input_shape=(self.image_size, self.image_size, self.IN_CHANNELS),
                         mean=(0.0,) * self.IN_CHANNELS, std=(1.0,) * self.IN_CHANNELS,
                         batch_size=batch_size, num_threads=num_threads)
        self.train_options = train_options
        self.model: nn.Module | None = None
        self.num_classes: int | None = None
        self._state_sha: str | None = None
        if weights:
            self.load(weights)

    def _check_ready(self) -> None:
        if self.model is None:
            raise BackboneError(f"{self.spec} is not trained yet: call fit() on labeled images, or load "
                                f"weights saved by save() ({WEIGHTS_SETTING})")

    def _set_model(self, model: nn.Module, num_classes: int) -> None:
        self.model, self.num_classes = model, num_classes
        self._state_sha = _state_sha256(model)
        with _torch_threads(self.num_threads), torch.no_grad():
            probe = self._forward(torch.zeros(1, self.IN_CHANNELS, self.image_size, self.image_size))
        self.feature_dim = int(probe.shape[1])

    def _architecture(self) -> dict[str, int]:
        raise NotImplementedError

    def _build_model(self, saved: dict) -> nn.Module:
        raise NotImplementedError

    def save(self, path: str) -> None:
        """Atomically write the trained network and its architecture (temp file + os.replace)."""
        self._check_ready()
        atomic_torch_save({"format": self.FORMAT, "num_classes": self.num_classes, "image_size": self.image_size,
                           **self._architecture(), "state_dict": self.model.state_dict()}, path)

    def load(self, path: str) -> _TrainedCNNBackbone:
        """Load a file written by :meth:`save`; BackboneError naming the file otherwise."""
        what = self.spec
        obj = _read_trained_file(path, what, self.FORMAT, f"{type(self).__name__}.save()")
        if obj.get("image_size") != self.image_size:
            raise BackboneError(f"{what} weights {path!r} were trained on {obj['image_size']}px images, "
                                f"this backbone is configured for {self.image_size}px")
        try:
            model = self._build_model(obj)
            model.load_state_dict(obj["state_dict"], strict=True)
        except (KeyError, TypeError, ValueError, RuntimeError) as exc:
            raise BackboneError(f"{what} weights {path!r} do not match its network: {exc}") from exc
        self._set_model(model.eval(), int(obj["num_classes"]))
        return self

    @property
    def fingerprint(self) -> str:
        return f"{self.spec}|size={self.image_size}|state-sha256={self._state_sha or 'untrained'}"


class SimpleCNNBackbone(_TrainedCNNBackbone):
    """The paper's small CNN, trained on the labeled images.

    Images are converted to grayscale, resized to ``image_size`` x ``image_size`` (bilinear,
    aspect ratio not kept: the paper's inputs are small square digits/sprites) and scaled to
    [0, 1]. ``train_options`` are passed to ``mcm_core.small_cnn.train_small_cnn``."""

    spec = "simple-cnn"
    FORMAT = "mcm-simple-cnn-v1"
    IN_CHANNELS = 1

    def __init__(self, weights: str | None = None, *, image_size: int = 28,
                 batch_size: int = 256, num_threads: int | None = None,
                 train_options: dict[str, Any] | None = None) -> None:
        if int(image_size) < 4:
            raise ValueError(f"image_size must be >= 4, got {image_size}")
        super().__init__(weights, image_size=image_size, batch_size=batch_size, num_threads=num_threads,
                         train_options=dict(train_options or {}))

    def _prepare_one(self, img: Image.Image) -> np.ndarray:
        img = _to_8bit_mode(img, "L")
        if img.size != (self.image_size, self.image_size):
            img = img.resize((self.image_size, self.image_size), Image.Resampling.BILINEAR)
        return np.asarray(img, dtype=np.uint8)[:, :, None]

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        feats = small_cnn_features(self.model, x.numpy(), batch_size=max(1, x.shape[0]))
        return torch.from_numpy(np.asarray(feats, dtype=np.float32))

    def fit(self, images: Sequence[Image.Image], labels: Sequence[int], num_classes: int,
            seed: int = 0) -> SimpleCNNBackbone:
        """Train the small CNN from scratch on labeled PIL images; returns self."""
        return self.fit_prepared(self.prepare(images), labels, num_classes, seed)

    def fit_prepared(self, arr: np.ndarray, labels: Sequence[int], num_classes: int,
                     seed: int = 0) -> SimpleCNNBackbone:
        """Like :meth:`fit` on images already run through :meth:`prepare`."""
        y = _check_fit_args(self, arr, labels, num_classes)
        images = arr[..., 0].astype(np.float32) / 255.0  # (N, H, W) in [0, 1]
        with _torch_threads(self.num_threads):
            model = train_small_cnn(images, y, int(num_classes), seed=int(seed),
                                    **self.train_options)
        self._set_model(model.eval(), int(num_classes))
        log.info("simple-cnn trained on %d images, %d classes, seed %d (%d-d features)",
                 len(y), num_classes, seed, self.feature_dim)
        return self

    def _architecture(self) -> dict[str, int]:
        return {"in_channels": 1, "feature_dim": int(getattr(self.model, "feature_dim", self.feature_dim))}

    def _build_model(self, saved: dict) -> nn.Module:
        return SmallCNN(int(saved["num_classes"]), in_channels=int(saved.get("in_channels", 1)),
                        feature_dim=int(saved.get("feature_dim", 128)))


# ----------------------------------------------------------------------------- pool-cnn


def robust_channels(img: Image.Image, size: int) -> np.ndarray:
    """``uint8 (size, size, 2)``: the image resized to a square, as two channels that do not depend on
    its colours or its polarity (dark on light or light on dark):

    0. each pixel's RGB distance to the background colour (the median of the border ring), and
    1. luma, inverted when the border is brighter than the image's mean (so the background is dark),

    each stretched from its 1st to its 99th percentile to [0, 255]. A two-colour image (a glyph in
    any colour on any plain background) and its inverse give the same channels up to rounding."""
    rgb = _to_8bit_mode(img, "RGB")
    if rgb.size != (size, size):
        rgb = rgb.resize((size, size), Image.Resampling.BILINEAR)  # antialiased when shrinking
    a = np.asarray(rgb, dtype=np.float64)
    ring = np.zeros((size, size), dtype=bool)
    b = max(1, size // 16)
    ring[:b], ring[-b:], ring[:, :b], ring[:, -b:] = True, True, True, True
    background = np.median(a[ring], axis=0)
    distance = np.sqrt(((a - background) ** 2).sum(axis=2))
    luma = a @ np.array([0.299, 0.587, 0.114])
    if np.median(luma[ring]) > luma.mean():
        luma = 255.0 - luma
    return np.stack([_stretch(distance), _stretch(luma)], axis=2)


def _stretch(v: np.ndarray) -> np.ndarray:
    """[1st, 99th percentile] -> [0, 255]: the contrast of any colour pair becomes the same."""
    lo, hi = np.percentile(v, (1.0, 99.0))
    if hi - lo < 1e-6:
        return np.zeros(v.shape, dtype=np.uint8)
    return np.rint(np.clip((v - lo) / (hi - lo), 0.0, 1.0) * 255.0).astype(np.uint8)


class PoolCNNBackbone(_TrainedCNNBackbone):
    """A small CNN for images that are not grayscale digits: colour- and polarity-robust input
    (:func:`robust_channels`), trained on the labeled images with augmentation and on the
    ``unlabeled`` ones with a consistency loss (``mcm_core.small_cnn.train_pool_cnn``).
    ``train_options``: ``steps`` (300), ``batch_size`` (64), ``pool_batch`` (32), ``lr`` (1e-3),
    ``pool_weight`` (1.0), ``max_pool`` (5000: a seeded sample of a bigger pool), ``rotation`` (30
    degrees), ``flip`` (False), ``width`` (16), ``feature_dim`` (128)."""

    spec = "pool-cnn"
    FORMAT = "mcm-pool-cnn-v1"
    IN_CHANNELS = 2
    learns_from_unlabeled = True
    DEFAULT_TRAIN: dict[str, Any] = {"steps": 300, "batch_size": 64, "pool_batch": 32, "lr": 1e-3,
                                     "pool_weight": 1.0, "max_pool": 5000, "rotation": 30.0, "flip": False,
                                     "width": 16, "feature_dim": 128}

    def __init__(self, weights: str | None = None, *, image_size: int = 32, batch_size: int = 256,
                 num_threads: int | None = None, train_options: dict[str, Any] | None = None) -> None:
        if int(image_size) < 8:
            raise ValueError(f"image_size must be >= 8, got {image_size}")
        unknown = set(train_options or {}) - set(self.DEFAULT_TRAIN)
        if unknown:
            raise ValueError(f"unknown pool-cnn train_options {sorted(unknown)}; "
                             f"expected some of {sorted(self.DEFAULT_TRAIN)}")
        super().__init__(weights, image_size=image_size, batch_size=batch_size, num_threads=num_threads,
                         train_options={**self.DEFAULT_TRAIN, **(train_options or {})})

    def _prepare_one(self, img: Image.Image) -> np.ndarray:
        return robust_channels(img, self.image_size)

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.features(x)

    def fit(self, images: Sequence[Image.Image], labels: Sequence[int], num_classes: int, seed: int = 0, *,
            unlabeled: Sequence[Image.Image] | None = None) -> PoolCNNBackbone:
        """Train on labeled PIL images, and on the ``unlabeled`` ones too; returns self."""
        pool = self.prepare(unlabeled) if unlabeled is not None else None
        return self.fit_prepared(self.prepare(images), labels, num_classes, seed, unlabeled=pool)

    def fit_prepared(self, arr: np.ndarray, labels: Sequence[int], num_classes: int, seed: int = 0, *,
                     unlabeled: np.ndarray | None = None) -> PoolCNNBackbone:
        """Like :meth:`fit` on arrays from :meth:`prepare`. ``unlabeled``: prepared images of the pool
        (the project's unlabeled tasks); without them the consistency loss uses the labeled images."""
        y = _check_fit_args(self, arr, labels, num_classes)
        opts = self.train_options
        pool = arr
        if unlabeled is not None:
            self._check_prepared(unlabeled)
            if len(unlabeled) > int(opts["max_pool"]):
                keep = np.random.default_rng(int(seed)).choice(len(unlabeled), int(opts["max_pool"]), replace=False)
                unlabeled = unlabeled[np.sort(keep)]
            pool = np.concatenate([arr, unlabeled])
        with _torch_threads(self.num_threads), torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(seed))
            model = PoolCNN(int(num_classes), in_channels=2, width=int(opts["width"]),
                            feature_dim=int(opts["feature_dim"]))
            train_pool_cnn(model, arr, y, pool, torch.Generator().manual_seed(int(seed)),
                           steps=int(opts["steps"]), batch_size=int(opts["batch_size"]),
                           pool_batch=int(opts["pool_batch"]), lr=float(opts["lr"]),
                           pool_weight=float(opts["pool_weight"]),
                           augment_options={"rotation": float(opts["rotation"]), "flip": bool(opts["flip"])})
        self._set_model(model.eval(), int(num_classes))
        log.info("pool-cnn trained on %d labeled + %d unlabeled images, %d classes, seed %d (%d-d features)",
                 len(y), 0 if unlabeled is None else len(unlabeled), num_classes, seed, self.feature_dim)
        return self

    def _architecture(self) -> dict[str, int]:
        return {"width": int(self.model.width), "feature_dim": int(self.model.feature_dim)}

    def _build_model(self, saved: dict) -> nn.Module:
        return PoolCNN(int(saved["num_classes"]), in_channels=2, width=int(saved["width"]),
                       feature_dim=int(saved["feature_dim"]))


def _state_sha256(model: nn.Module) -> str:
    """Hash of the weights: the trained backbone's part of the feature cache key."""
    digest = hashlib.sha256()
    for key, value in sorted(model.state_dict().items()):
        digest.update(key.encode())
        digest.update(value.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def _check_fit_args(backbone: Backbone, arr: np.ndarray, labels: Sequence[int], num_classes: int) -> np.ndarray:
    """The labels as an int array, after checking them against the prepared images."""
    backbone._check_prepared(arr)
    y = np.asarray(labels)
    if y.ndim != 1 or len(y) != len(arr):
        raise ValueError(f"labels must be 1-D with one entry per image ({len(arr)}), got shape {y.shape}")
    if int(num_classes) < 2:
        raise ValueError(f"num_classes must be >= 2, got {num_classes}")
    if len(y) == 0:
        raise ValueError(f"cannot fit {backbone.spec} on zero images")
    if not np.issubdtype(y.dtype, np.integer) or y.min() < 0 or y.max() >= num_classes:
        raise ValueError(f"labels must be integers in [0, {num_classes}), got {y.dtype} in [{y.min()}, {y.max()}]")
    return y.astype(np.int64)


def _read_trained_file(path: str, what: str, fmt: str, writer: str) -> dict:
    """The dict a trainable backbone's save() wrote (tensors and numbers only: weights_only load)."""
    if not os.path.isfile(path):
        raise BackboneError(f"{what} weights file {path!r} ({WEIGHTS_SETTING}) does not exist")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise BackboneError(f"cannot read {what} weights file {path!r}: {exc}") from exc
    if not isinstance(obj, dict) or obj.get("format") != fmt:
        raise BackboneError(f"{path!r} is not a {what} weights file written by {writer}")
    return obj


# ----------------------------------------------------------------------------- factory


def build_backbone(spec: str, weights: str | None = None, **options: Any) -> Backbone:
    """Build the backbone named by ``spec`` (the MCM_BACKBONE setting).

    ``weights`` is a local file (MCM_BACKBONE_WEIGHTS) for ``resnet*``, ``pool-cnn`` and ``simple-cnn``;
    ``options`` are keyword arguments of the backbone class (``batch_size``, ``num_threads``;
    ``input_size``/``resize``/``channels``/``mean``/``std`` for TorchScript; ``image_size``/
    ``train_options`` for pool-cnn and simple-cnn)."""
    if not isinstance(spec, str) or not spec.strip():
        raise BackboneError(f"{SPEC_SETTING} is empty; use resnet18, resnet50, "
                            "torchscript:<path>, pool-cnn or simple-cnn")
    spec = spec.strip()
    weights = weights or None
    if spec.lower().startswith("torchscript:"):
        if weights:
            raise BackboneError(f"{WEIGHTS_SETTING} is not used with torchscript backbones: the "
                                f"model file is given in {SPEC_SETTING}=torchscript:<path>")
        return TorchScriptBackbone(spec.split(":", 1)[1].strip(), **options)
    name = spec.lower()
    if name in _RESNETS:
        return TorchvisionResNetBackbone(name, weights, **options)
    if name == "simple-cnn":
        return SimpleCNNBackbone(weights, **options)
    if name == "pool-cnn":
        return PoolCNNBackbone(weights, **options)
    raise BackboneError(f"unknown {SPEC_SETTING}={spec!r}; use resnet18, resnet50, "
                        "torchscript:<path>, pool-cnn or simple-cnn")
