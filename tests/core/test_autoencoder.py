import numpy as np
import pytest
import torch
from torch import nn

from mcm_core.autoencoder import AutoencoderScorer, EnsembleAutoencoder, default_hidden, train_ensemble


class ReferenceAutoencoder(nn.Module):
    """The paper's architecture written plainly (encoder in->h1->h2 with ReLU, mirror decoder), the
    reference the batched EnsembleAutoencoder must equal member by member."""

    def __init__(self, in_dim: int, hidden: tuple[int, ...] = (10, 9)):
        super().__init__()
        dims = [in_dim, *hidden]
        enc = []
        for a, b in zip(dims[:-1], dims[1:]):
            enc += [nn.Linear(a, b), nn.ReLU()]
        rdims, dec = dims[::-1], []
        for i, (a, b) in enumerate(zip(rdims[:-1], rdims[1:])):
            dec += [nn.Linear(a, b)] + ([nn.ReLU()] if i < len(rdims) - 2 else [])
        self.encoder, self.decoder = nn.Sequential(*enc), nn.Sequential(*dec)

    def forward(self, x):
        return self.decoder(self.encoder(x))


def test_paper_architecture():
    ens = EnsembleAutoencoder(10, default_hidden(10), n_models=1)
    assert [tuple(w.shape[1:]) for w in ens.weights] == [(10, 10), (10, 9), (9, 10), (10, 10)]
    assert default_hidden(10) == (10, 9)
    assert default_hidden(100) == (50, 25)


def test_softmax_output_is_a_probability_vector():
    ens = EnsembleAutoencoder(4, (3, 2), n_models=2, softmax_output=True)
    out = ens(torch.randn(5, 4))
    assert torch.allclose(out.sum(-1), torch.ones(2, 5), atol=1e-6)


def test_training_runs_at_least_min_steps_and_reduces_loss():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(100, 5)).astype(np.float32)
    torch.manual_seed(0)
    ens = EnsembleAutoencoder(5, (4, 3), n_models=1)
    with torch.no_grad():
        before = float(((ens(torch.from_numpy(x)) - torch.from_numpy(x)) ** 2).mean())
    info = train_ensemble(ens, x, min_steps=400, max_steps=5000, patience=2)[0]
    assert info.total_steps >= 400
    assert info.best_val_loss < before


def test_max_steps_caps_training():
    x = np.random.default_rng(0).normal(size=(640, 3)).astype(np.float32)
    info = train_ensemble(EnsembleAutoencoder(3, (2, 2)), x, min_steps=10, max_steps=25, patience=100,
                          max_steps_per_epoch=None)[0]
    assert info.total_steps == 25 and info.epochs == 3  # 576 training rows: 9 batches of 64 an epoch


def test_scorer_flags_unseen_output_pattern():
    # standardised and raw logits, probabilities; single model and ensemble
    # labeled logits: always one of classes 0-2 dominant; a class-3-dominant output is novel
    rng = np.random.default_rng(0)
    k = rng.integers(0, 3, 400)
    z = rng.normal(scale=0.3, size=(400, 4)).astype(np.float32)
    z[np.arange(400), k] += 5.0
    for space, std, n in (("logits", False, 3), ("logits", True, 1), ("probs", False, 2)):
        sc = AutoencoderScorer(4, input_space=space, standardize=std, n_models=n, hidden=(3, 2),
                               min_steps=600, seed=0).fit(z)
        novel = np.array([[0, 0, 0, 5.0]], np.float32)
        s = sc.score(np.concatenate([novel, z]))
        assert (s >= 0).all() and (s <= sc.upper_bound).all()
        assert s[0] > np.quantile(s[1:], 0.95), (space, std, n)


def test_ensemble_members_match_single_autoencoder_math():
    torch.manual_seed(0)
    ens = EnsembleAutoencoder(5, (4, 3), n_models=3)
    x = torch.randn(7, 5)
    out = ens(x)
    assert out.shape == (3, 7, 5)
    for m in range(3):  # member m == the reference architecture carrying member m's weights
        ae = ReferenceAutoencoder(5, (4, 3))
        linears = [l for l in ae.modules() if isinstance(l, nn.Linear)]
        with torch.no_grad():
            for lin, w, b in zip(linears, ens.weights, ens.biases):
                lin.weight.copy_(w[m].T)
                lin.bias.copy_(b[m, 0])
            assert torch.allclose(ae(x), out[m], atol=1e-5)


def test_ensemble_training_restores_each_members_best():
    x = np.random.default_rng(1).normal(size=(200, 4)).astype(np.float32)
    ens = EnsembleAutoencoder(4, (3, 2), n_models=2)
    infos = train_ensemble(ens, x, min_steps=100, max_steps=2000, patience=3, seed=0)
    assert len(infos) == 2
    xv = torch.from_numpy(x)
    perm = np.random.default_rng(0).permutation(200)
    x_val = xv[np.sort(perm[:20])]
    with torch.no_grad():
        val = ((ens(x_val) - x_val) ** 2).mean(dim=(1, 2)).numpy()
    assert val == pytest.approx([i.best_val_loss for i in infos], rel=1e-5)


def test_scorer_errors():
    with pytest.raises(ValueError):
        AutoencoderScorer(3, input_space="features")
    with pytest.raises(ValueError):
        AutoencoderScorer(3, n_models=0)
    with pytest.raises(ValueError, match="not fitted"):
        AutoencoderScorer(3).score(np.zeros((1, 3), np.float32))


def test_max_steps_per_epoch_enlarges_the_batch_only_on_large_sets():
    x = np.random.default_rng(2).normal(size=(200, 3)).astype(np.float32)  # 180 training rows
    # 180 rows / batch 64 -> 3 steps per epoch; capped at 2 -> batch 90, so 20 steps take 10 epochs
    capped = train_ensemble(EnsembleAutoencoder(3, (2, 2)), x, min_steps=20, max_steps=20, patience=100,
                            max_steps_per_epoch=2)
    plain = train_ensemble(EnsembleAutoencoder(3, (2, 2)), x, min_steps=20, max_steps=20, patience=100,
                           max_steps_per_epoch=None)
    loose = train_ensemble(EnsembleAutoencoder(3, (2, 2)), x, min_steps=20, max_steps=20, patience=100,
                           max_steps_per_epoch=32)
    assert capped[0].epochs == 10
    assert plain[0].epochs == loose[0].epochs == 7  # ceil(20 / 3): a loose cap changes nothing


def test_weighted_scorer_score_bound_and_state():
    rng = np.random.default_rng(0)
    k = rng.integers(0, 3, 300)
    z = rng.normal(scale=0.3, size=(300, 4)).astype(np.float32)
    z[np.arange(300), k] += 5.0
    w = np.array([1.0, 1.0, 1.0, 7.0])
    sc = AutoencoderScorer(4, hidden=(3, 2), n_models=2, min_steps=300, score_weights=w, seed=0).fit(z)
    assert sc.upper_bound == pytest.approx(0.8)  # (7 + 1) / 10
    probe = np.concatenate([np.array([[0, 0, 0, 5.0]], np.float32), z[:50]])
    p = np.exp(probe - probe.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    expected = ((p[None] - sc.reconstruct_probs(probe)) ** 2 * (w / w.sum())).sum(-1).mean(0)
    s = sc.score(probe)
    assert s == pytest.approx(expected, rel=1e-6)
    assert (s >= 0).all() and (s <= sc.upper_bound).all() and s[0] > s[1:].max()
    again = AutoencoderScorer(4, hidden=(3, 2), n_models=2)
    again.load_state(sc.state())
    assert np.array_equal(again.score(probe), s) and again.upper_bound == sc.upper_bound
    old_state = {k_: v for k_, v in sc.state().items() if k_ != "score_weights"}
    again.load_state(old_state)  # files without weights score the plain S
    assert again.score_weights is None and again.upper_bound == 2.0
    with pytest.raises(ValueError, match="class weights"):
        AutoencoderScorer(4, score_weights=[1.0, -1.0, 1.0, 1.0])
