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


# ---------------------------------------------------------------------------------------------- pool-cnn
# A small CNN for images that are not MNIST (colours, polarity, sizes, rotations, noise) and few labels.
# It learns from the labels with augmentation and from every image of the pool with a consistency loss
# (the Pi-model: two random views of an unlabeled image must get the same class probabilities), which
# also gives batch normalisation the pool's statistics. Measured on issue 21's newcomer images
# (benchmarks/backbone_newcomer.py): better than the labels alone, and than a SimCLR pretext on the
# pool followed by fine-tuning, or SimCLR's loss as the pool term, both also 3-8x slower on a CPU.


def _conv_bn(c_in: int, c_out: int) -> list[nn.Module]:
    return [nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU()]


class PoolCNN(nn.Module):
    """conv-bn-relu blocks (width, 2w, 4w, feature_dim) with 2x2 max pooling between them, global
    average pooling -> ``features`` (N, feature_dim); ``head`` gives the classes. Global pooling
    makes it independent of the input size."""

    def __init__(self, num_classes: int, in_channels: int = 2, width: int = 16, feature_dim: int = 128):
        super().__init__()
        if num_classes < 2:
            raise ValueError(f"num_classes must be >= 2, got {num_classes}")
        self.num_classes, self.in_channels = int(num_classes), int(in_channels)
        self.width, self.feature_dim = int(width), int(feature_dim)
        w = self.width
        self.encoder = nn.Sequential(
            *_conv_bn(in_channels, w), nn.MaxPool2d(2, ceil_mode=True),
            *_conv_bn(w, 2 * w), nn.MaxPool2d(2, ceil_mode=True),
            *_conv_bn(2 * w, 4 * w), nn.MaxPool2d(2, ceil_mode=True),
            *_conv_bn(4 * w, feature_dim), nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.head = nn.Linear(feature_dim, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def _uniform(n: int, lo: float, hi: float, gen: torch.Generator) -> torch.Tensor:
    return lo + (hi - lo) * torch.rand(n, generator=gen)


def augment(x: torch.Tensor, gen: torch.Generator, *, rotation: float = 30.0, scale: tuple = (0.8, 1.2),
            shift: float = 0.12, flip: bool = False, contrast: float = 0.4, noise: float = 0.08) -> torch.Tensor:
    """A random view of each image of (N, C, H, W) in [0, 1] with a dark background: one affine warp
    (rotation +-`rotation` degrees, zoom, shift by a fraction of the side, a horizontal flip if
    `flip`), per-image gamma, contrast and brightness, Gaussian noise. Deterministic given `gen`."""
    n = x.shape[0]
    angle = _uniform(n, -rotation, rotation, gen) * (np.pi / 180.0)
    zoom = _uniform(n, *scale, gen)
    mirror = torch.where(torch.rand(n, generator=gen) < 0.5, -1.0, 1.0) if flip else torch.ones(n)
    cos, sin = torch.cos(angle) / zoom, torch.sin(angle) / zoom
    theta = torch.stack([torch.stack([cos * mirror, -sin, _uniform(n, -shift, shift, gen) * 2], 1),
                         torch.stack([sin * mirror, cos, _uniform(n, -shift, shift, gen) * 2], 1)], 1)
    grid = nn.functional.affine_grid(theta, list(x.shape), align_corners=False)
    out = nn.functional.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    gamma = torch.exp(_uniform(n, -0.4, 0.4, gen)).view(n, 1, 1, 1)
    gain = _uniform(n, 1 - contrast, 1 + contrast, gen).view(n, 1, 1, 1)
    bias = _uniform(n, -contrast / 4, contrast / 4, gen).view(n, 1, 1, 1)
    out = out.clamp(0, 1) ** gamma * gain + bias
    sigma = _uniform(n, 0, noise, gen).view(n, 1, 1, 1)
    return out + sigma * torch.randn(out.shape, generator=gen)


def _unit(arr: np.ndarray) -> torch.Tensor:
    """uint8 (N, H, W, C) -> float (N, C, H, W) in [0, 1]."""
    return torch.from_numpy(np.ascontiguousarray(arr)).permute(0, 3, 1, 2).float() / 255.0


def train_pool_cnn(model: PoolCNN, images: np.ndarray, labels: np.ndarray, pool: np.ndarray | None,
                   gen: torch.Generator, *, steps: int = 300, batch_size: int = 64, pool_batch: int = 32,
                   lr: float = 1e-3, pool_weight: float = 1.0, augment_options: dict | None = None) -> PoolCNN:
    """In place, ``steps`` Adam steps of: cross-entropy on a random view of a batch of the labeled
    ``uint8 (N, H, W, C)`` images + ``pool_weight`` x the squared distance between the class
    probabilities of two random views of a batch of ``pool`` images (one forward pass for all)."""
    y = torch.from_numpy(np.asarray(labels, dtype=np.int64))
    opt = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=1e-4)
    batch, aug = min(batch_size, len(images)), augment_options or {}
    use_pool = pool is not None and len(pool) > 0 and pool_weight > 0
    u_batch = min(pool_batch, len(pool)) if use_pool else 0
    model.train()
    for _ in range(steps):
        idx = torch.randint(len(images), (batch,), generator=gen)
        views = [augment(_unit(images[idx.numpy()]), gen, **aug)]
        if use_pool:
            u = _unit(pool[torch.randint(len(pool), (u_batch,), generator=gen).numpy()])
            views += [augment(u, gen, **aug), augment(u, gen, **aug)]
        logits = model(torch.cat(views))
        loss = nn.functional.cross_entropy(logits[:batch], y[idx])
        if use_pool:
            p = torch.softmax(logits[batch:], 1)
            loss = loss + pool_weight * ((p[:u_batch] - p[u_batch:]) ** 2).sum(1).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    return model
