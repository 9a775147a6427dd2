import numpy as np
import pytest
import torch

torch.set_num_threads(1)


def make_blobs(n_per_class, num_classes=4, dim=8, seed=0, sep=4.0):
    """Gaussian blobs, one per class, with given per-class counts (list or int)."""
    rng = np.random.default_rng(seed)
    counts = n_per_class if isinstance(n_per_class, (list, tuple)) else [n_per_class] * num_classes
    centers = rng.normal(size=(num_classes, dim)) * sep
    xs, ys = [], []
    for k, n in enumerate(counts):
        xs.append(centers[k] + rng.normal(size=(n, dim)))
        ys.append(np.full(n, k))
    return np.concatenate(xs).astype(np.float32), np.concatenate(ys).astype(np.int64), centers


@pytest.fixture(scope="session")
def blobs():
    """`make_blobs` as a fixture: test modules must not `import conftest` (several conftest.py exist)."""
    return make_blobs
