import numpy as np
import pytest
import torch
from torch import nn

from mcm_core.recalibration import (focal_loss, fit_recalibration, inverse_frequency_alpha,
                                    stratified_holdout, train_with_early_stopping)


def test_focal_loss_gamma0_alpha1_is_cross_entropy():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(7, 5, generator=g)
    y = torch.tensor([0, 1, 2, 3, 4, 0, 2])
    fl = focal_loss(logits, y, alpha=torch.ones(5), gamma=0.0)
    assert torch.allclose(fl, nn.functional.cross_entropy(logits, y), atol=1e-6)
    assert torch.allclose(focal_loss(logits, y, None, 0.0), nn.functional.cross_entropy(logits, y), atol=1e-6)


def test_focal_loss_hand_computation():
    # two classes, logits (0, ln 3): p = (1/4, 3/4)
    logits = torch.tensor([[0.0, float(np.log(3.0))]])
    alpha = torch.tensor([0.8, 0.2])
    # target 0: p_t = 1/4 -> -0.8 * (3/4)^2 * ln(1/4)
    expected0 = -0.8 * 0.75 ** 2 * np.log(0.25)
    # target 1: p_t = 3/4 -> -0.2 * (1/4)^2 * ln(3/4)
    expected1 = -0.2 * 0.25 ** 2 * np.log(0.75)
    got = focal_loss(logits.repeat(2, 1), torch.tensor([0, 1]), alpha, gamma=2.0, reduction="none")
    assert got.numpy() == pytest.approx([expected0, expected1], rel=1e-5)


def test_inverse_frequency_alpha():
    labels = np.array([0, 0, 0, 1])  # counts 3, 1, 0 -> inv 1/3, 1, 1 (unseen treated as 1)
    a = inverse_frequency_alpha(labels, 3)
    inv = np.array([1 / 3, 1.0, 1.0])
    assert a == pytest.approx(inv / inv.sum())
    assert a.sum() == pytest.approx(1.0)


def test_stratified_holdout_handles_tiny_classes():
    labels = np.array([0] * 20 + [1] * 10 + [2])  # class 2 has one example, class 3 none
    rng = np.random.default_rng(0)
    tr, ho = stratified_holdout(labels, 0.2, rng)
    assert len(np.intersect1d(tr, ho)) == 0
    assert len(tr) + len(ho) == len(labels)
    assert np.bincount(labels[ho], minlength=3).tolist() == [4, 2, 0]
    assert 30 in tr  # the single class-2 example stays in training


def test_early_stopping_restores_best_epoch():
    # Train data pulls the single weight towards +1, held-out data is best at w = 0.3.
    # Starting from w = -1, the held-out loss falls until w passes 0.3, then rises: the restored
    # weight must be the one of the best recorded epoch, not the last one.
    torch.manual_seed(0)
    model = nn.Linear(1, 1, bias=False)
    with torch.no_grad():
        model.weight.fill_(-1.0)
    x_tr = torch.ones(8, 1)
    y_tr = torch.ones(8, 1)
    x_val = torch.ones(4, 1)
    y_val = torch.full((4, 1), 0.3)
    mse = nn.MSELoss()
    weights = []

    def loss_fn(out, target):
        return mse(out, target)

    class Recorder(nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, x):
            return self.inner(x)

        def train(self, mode=True):  # called once per epoch before the updates
            if not mode:
                weights.append(float(self.inner.weight.detach()))
            return super().train(mode)

    rec = Recorder(model)
    res = train_with_early_stopping(rec, loss_fn, x_tr, y_tr, x_val, y_val, lr=0.1, batch_size=8,
                                    max_epochs=100, patience=3, generator=torch.Generator().manual_seed(0))
    assert res.epochs_run < 100  # it did stop early
    assert res.best_epoch == int(np.argmin(res.history))
    assert res.best_epoch < res.epochs_run - 1  # the last epoch was not the best one
    final_w = float(model.weight.detach())
    assert final_w == pytest.approx(weights[res.best_epoch], abs=1e-6)
    assert (final_w - 0.3) ** 2 == pytest.approx(min(res.history), rel=1e-4)


def test_fit_recalibration_learns_and_is_seeded(blobs):
    x, y, _ = blobs([40, 40, 5, 1], num_classes=5, dim=6)  # class 4 has no example
    def run():
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(3)
            layer, res = fit_recalibration(x, y, 5, seed=3)
        with torch.no_grad():
            return layer(torch.from_numpy(x)).numpy()
    z1, z2 = run(), run()
    assert np.array_equal(z1, z2)
    assert (z1.argmax(1) == y).mean() > 0.9


def test_fit_recalibration_rejects_bad_alpha(blobs):
    x, y, _ = blobs(10, num_classes=3)
    with pytest.raises(ValueError, match="alpha"):
        fit_recalibration(x, y, 3, alpha=np.ones(4))


def test_scaled_batch_size():
    from mcm_core.recalibration import scaled_batch_size
    assert scaled_batch_size(1607, 256, 8) == 256       # MNIST-5k-sized: unchanged (7 steps per epoch)
    assert scaled_batch_size(8000, 256, 8) == 1000      # 10k labeled rows: 8 steps of 1000
    assert scaled_batch_size(8001, 256, 8) == 1001      # ceil, never more than 8 steps
    assert scaled_batch_size(8000, 256, None) == 256
    with pytest.raises(ValueError):
        scaled_batch_size(100, 0, 8)
    with pytest.raises(ValueError):
        scaled_batch_size(100, 64, 0)


def _walk_past_optimum(min_epochs: int):
    """Train data pulls w from -1 towards +1; the held-out loss is lowest at w = 0.3."""
    torch.manual_seed(0)
    model = nn.Linear(1, 1, bias=False)
    with torch.no_grad():
        model.weight.fill_(-1.0)
    res = train_with_early_stopping(
        model, nn.MSELoss(), torch.ones(8, 1), torch.ones(8, 1), torch.ones(4, 1), torch.full((4, 1), 0.3),
        lr=0.1, batch_size=8, max_epochs=100, patience=3, generator=torch.Generator().manual_seed(0),
        min_epochs=min_epochs)
    return res, float(model.weight.detach())


def test_min_epochs_warm_up_ignores_early_epochs():
    plain, _ = _walk_past_optimum(0)
    warm = plain.best_epoch + 4  # the plain run's best epoch now lies inside the warm-up
    res, w = _walk_past_optimum(warm)
    assert res.history[:plain.best_epoch + 1] == pytest.approx(plain.history[:plain.best_epoch + 1])
    assert res.best_epoch == warm - 1  # first epoch after the warm-up: the loss only rises from there
    assert res.best_epoch > plain.best_epoch
    assert res.epochs_run == warm + 3  # then patience 3 ends the run
    assert (w - 0.3) ** 2 == pytest.approx(res.history[res.best_epoch], rel=1e-4)
    with pytest.raises(ValueError, match="min_epochs"):
        _walk_past_optimum(-1)
