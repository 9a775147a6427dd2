import numpy as np
import pytest
import torch

from mcm_core.small_cnn import SmallCNN, small_cnn_features, small_cnn_logits, train_small_cnn


def _toy(n=60, size=8, seed=0):
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 3
    x = rng.random((n, size, size)).astype(np.float32) * 0.2
    for i, k in enumerate(y):  # class = which third of the image is bright
        x[i, :, k * size // 3:(k + 1) * size // 3] += 0.8
    return np.clip(x, 0, 1), y


def test_shapes_and_penultimate_features():
    m = SmallCNN(3)
    x = torch.rand(4, 1, 28, 28)
    assert m.features(x).shape == (4, 128)
    assert m(x).shape == (4, 3)
    assert SmallCNN(5, in_channels=3)(torch.rand(2, 3, 32, 32)).shape == (2, 5)


def test_train_is_deterministic_and_learns():
    x, y = _toy()
    m1 = train_small_cnn(x, y, 3, seed=0, epochs=15)
    m2 = train_small_cnn(x, y, 3, seed=0, epochs=15)
    f1, f2 = small_cnn_features(m1, x), small_cnn_features(m2, x)
    assert f1.dtype == np.float32 and f1.shape == (60, 128)
    assert np.array_equal(f1, f2)
    assert (small_cnn_logits(m1, x).argmax(1) == y).mean() > 0.9


def test_bad_inputs():
    x, y = _toy()
    with pytest.raises(ValueError):
        train_small_cnn(x, y + 3, 3)
    with pytest.raises(ValueError):
        train_small_cnn(x[:, 0], y, 3)
    with pytest.raises(ValueError):
        SmallCNN(1)
    m = SmallCNN(3)
    with pytest.raises(ValueError):
        small_cnn_features(m, np.zeros((2, 3, 8, 8), np.float32))  # wrong channel count
