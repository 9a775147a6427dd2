"""The paper's small CNN, used as the biased model M in the benchmark and as a
trainable backbone ("simple-cnn") when no pretrained weights are available.

Two conv blocks + one hidden dense layer; the hidden layer is the penultimate
feature space the miner works on (``features``), ``head`` is M's own last layer.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn


class SmallCNN(nn.Module):
    """conv(32)-maxpool-conv(64)-maxpool-dropout -> dense(128) -> dense(C).

    Pooling after each conv keeps a CPU epoch on 2k MNIST images at about a second."""

    def __init__(self, num_classes: int, in_channels: int = 1, feature_dim: int = 128):
        super().__init__()
        if num_classes < 2:
            raise ValueError(f"num_classes must be >= 2, got {num_classes}")
        self.num_classes = int(num_classes)
        self.in_channels = int(in_channels)
        self.feature_dim = int(feature_dim)
        self.conv = nn.Sequential(
            nn.Conv2d(in_channels, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2, ceil_mode=True),
            nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2, ceil_mode=True),
            nn.Dropout(0.25),
            # Fixed spatial size makes the dense layer independent of the input size (8x8 digits, 28x28 MNIST, 224 photos).
            nn.AdaptiveAvgPool2d((7, 7)),
        )
        self.fc = nn.Sequential(nn.Flatten(), nn.Linear(64 * 7 * 7, feature_dim), nn.ReLU())
        self.dropout = nn.Dropout(0.5)
        self.head = nn.Linear(feature_dim, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate activations (N, feature_dim)."""
        return self.fc(self.conv(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.dropout(self.features(x)))


def _as_nchw(images: np.ndarray, in_channels: int | None = None) -> torch.Tensor:
    arr = np.asarray(images, dtype=np.float32)
    if arr.ndim == 3:
        arr = arr[:, None, :, :]
    if arr.ndim != 4:
        raise ValueError(f"images must have shape (N,H,W) or (N,C,H,W), got {arr.shape}")
    if arr.shape[0] == 0:
        raise ValueError("images is empty")
    if not np.isfinite(arr).all():
        raise ValueError("images contain NaN or inf")
    if in_channels is not None and arr.shape[1] != in_channels:
        raise ValueError(f"images have {arr.shape[1]} channels, model expects {in_channels}")
    return torch.from_numpy(np.ascontiguousarray(arr))


def train_small_cnn(
    images: np.ndarray,
    labels: np.ndarray,
    num_classes: int,
    seed: int = 0,
    epochs: int = 8,
    batch_size: int = 64,
    lr: float = 1e-3,
) -> SmallCNN:
    """Train M with plain cross-entropy (it is meant to inherit the data's skew)."""
    x = _as_nchw(images)
    y = np.asarray(labels)
    if y.ndim != 1 or len(y) != len(x):
        raise ValueError(f"labels must have shape ({len(x)},), got {y.shape}")
    if y.size and (y.min() < 0 or y.max() >= num_classes):
        raise ValueError(f"labels must lie in [0, {num_classes})")
    torch.manual_seed(seed)
    model = SmallCNN(num_classes, in_channels=x.shape[1])
    _train_ce(model, model.parameters(), model, x, torch.from_numpy(y.astype(np.int64)), epochs,
              torch.Generator().manual_seed(seed), batch_size, lr)
    return model


def _train_ce(model: nn.Module, params, forward, x: torch.Tensor, y: torch.Tensor, epochs: int,
              gen: torch.Generator, batch_size: int, lr: float) -> None:
    """Mini-batch Adam on cross-entropy of forward(x) over ``params``; leaves the model in eval mode."""
    opt = torch.optim.Adam(params, lr=lr)
    model.train()
    for _ in range(epochs):
        perm = torch.randperm(len(x), generator=gen)
        for i in range(0, len(x), batch_size):
            idx = perm[i:i + batch_size]
            opt.zero_grad()
            nn.functional.cross_entropy(forward(x[idx]), y[idx]).backward()
            opt.step()
    model.eval()


@torch.no_grad()
def small_cnn_features(model: SmallCNN, images: np.ndarray, batch_size: int = 256) -> np.ndarray:
    """Penultimate features (N, D) float32, eval mode."""
    x = _as_nchw(images, model.in_channels)
    model.eval()
    out = [model.features(x[i:i + batch_size]) for i in range(0, len(x), batch_size)]
    return torch.cat(out).numpy().astype(np.float32)


@torch.no_grad()
def small_cnn_logits(model: SmallCNN, images: np.ndarray, batch_size: int = 256) -> np.ndarray:
    """M's own logits (N, C): the input of the uncertainty baselines."""
    x = _as_nchw(images, model.in_channels)
    model.eval()
    out = [model(x[i:i + batch_size]) for i in range(0, len(x), batch_size)]
    return torch.cat(out).numpy().astype(np.float32)


@torch.no_grad()
def small_cnn_conv_outputs(model: SmallCNN, images: np.ndarray, batch_size: int = 256) -> np.ndarray:
    """Outputs of the (frozen) convolution stack, flattened (N, 64*7*7): computed once, they let
    the dense layers be retrained many times without re-running the convolutions."""
    x = _as_nchw(images, model.in_channels)
    model.eval()
    out = [model.conv(x[i:i + batch_size]).flatten(1) for i in range(0, len(x), batch_size)]
    return torch.cat(out).numpy().astype(np.float32)


def fine_tune_dense(model: SmallCNN, conv_out: np.ndarray, labels: np.ndarray, epochs: int, seed: int = 0,
                    batch_size: int = 64, lr: float = 1e-3) -> SmallCNN:
    """Retrain the dense layers (feature layer + head) in place with cross-entropy on
    precomputed convolution outputs; the convolutions stay frozen."""
    x = torch.from_numpy(np.asarray(conv_out, dtype=np.float32))
    y = torch.from_numpy(np.asarray(labels, dtype=np.int64))
    if len(x) != len(y) or len(x) == 0:
        raise ValueError(f"conv_out has {len(x)} rows, labels {len(y)}")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)  # dropout masks
        _train_ce(model, list(model.fc.parameters()) + list(model.head.parameters()),
                  lambda c: model.head(model.dropout(model.fc(c))), x, y, epochs,
                  torch.Generator().manual_seed(seed), batch_size, lr)
    return model


@torch.no_grad()
def dense_features_logits(model: SmallCNN, conv_out: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(penultimate features, logits) from precomputed convolution outputs, eval mode."""
    model.eval()
    f = model.fc(torch.from_numpy(np.asarray(conv_out, dtype=np.float32)))
    return f.numpy().astype(np.float32), model.head(f).numpy().astype(np.float32)
