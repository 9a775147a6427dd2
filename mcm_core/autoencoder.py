"""One-class autoencoder over (re-calibrated) outputs: it learns what head-class output patterns
look like on the skewed labeled data, so outputs it reconstructs badly are likely tail classes."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from .recalibration import scaled_batch_size
from .rowwise import apply_rowwise
from .training import EarlyStopping
from .scoring import (RECONSTRUCTION_SCORE_BOUND, normalise_weights, softmax, weighted_reconstruction_score,
                      weighted_score_bound)

INPUT_SPACES = ("logits", "probs")


def default_hidden(num_classes: int) -> tuple[int, int]:
    """Paper: C->10->9 for C=10. For large C keep a bottleneck below C (else it learns identity)."""
    if num_classes <= 10:
        return (10, 9)
    return (max(10, num_classes // 2), max(9, num_classes // 4))


@dataclass
class AETrainInfo:
    steps: int            # optimisation step of the restored (best) weights
    epochs: int
    best_val_loss: float
    total_steps: int = 0  # optimisation steps run in all


def _holdout_split(x: np.ndarray, holdout_fraction: float,
                   rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """(train rows, held-out rows) in original order; tiny sets (< 20 rows) validate on train."""
    xt = torch.from_numpy(np.asarray(x, dtype=np.float32))
    perm = rng.permutation(len(xt))
    n_val = int(holdout_fraction * len(xt)) if len(xt) >= 20 else 0
    x_tr = xt[np.sort(perm[n_val:])]
    return x_tr, (xt[np.sort(perm[:n_val])] if n_val else x_tr)


class EnsembleAutoencoder(nn.Module):
    """``n_models`` independent autoencoders in one batched matmul: per member an encoder
    in->h1->h2 with ReLU and a mirror decoder h2->h1->in (the paper's C->10->9 for C = 10), same
    init distribution as nn.Linear. Batching only removes the per-step Python overhead, so an
    ensemble of 5 costs about as much as one model. In probability space the decoder ends with
    softmax, so the reconstruction is a probability vector too (keeps S <= 2)."""

    def __init__(self, in_dim: int, hidden: tuple[int, ...] = (10, 9), n_models: int = 1,
                 softmax_output: bool = False):
        super().__init__()
        dims = [in_dim, *hidden]
        self.dims = dims + dims[-2::-1]  # e.g. 10,10,9,10,10
        self.n_models = n_models
        self.n_encoder = len(hidden)
        self.weights = nn.ParameterList()
        self.biases = nn.ParameterList()
        for a, b in zip(self.dims[:-1], self.dims[1:]):
            bound = 1.0 / np.sqrt(a)
            self.weights.append(nn.Parameter(torch.empty(n_models, a, b).uniform_(-bound, bound)))
            self.biases.append(nn.Parameter(torch.empty(n_models, 1, b).uniform_(-bound, bound)))
        self.softmax_output = softmax_output

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (n_models, B, in_dim) or (B, in_dim) (broadcast to every member) -> (n_models, B, in_dim)."""
        if x.dim() == 2:
            x = x.unsqueeze(0).expand(self.n_models, -1, -1)
        h = x
        last = len(self.weights) - 1
        for i, (w, b) in enumerate(zip(self.weights, self.biases)):
            h = torch.baddbmm(b, h, w)
            if i != last:
                h = torch.relu(h)
        return torch.softmax(h, dim=-1) if self.softmax_output else h


def train_ensemble(model: EnsembleAutoencoder, x: np.ndarray, *, lr: float = 1e-3, batch_size: int = 64,
                   min_steps: int = 2000, max_steps: int = 20000, patience: int = 10,
                   holdout_fraction: float = 0.1, max_steps_per_epoch: int | None = 32,
                   seed: int = 0) -> list[AETrainInfo]:
    """Adam + MSE for every member (own mini-batch order, own early stopping with best-weight
    restore): at least ``min_steps`` optimisation steps (a few hundred labeled examples would give
    only a handful of steps per epoch), then early stopping on a held-out reconstruction loss
    (mcm_core.training), capped at ``max_steps``; stops when all members have stopped.

    ``max_steps_per_epoch`` (default 32) enlarges the batch on large N so one epoch (= one early-
    stopping check, patience is counted in epochs) stays <= 32 steps, and ``max_steps`` then
    shrinks to the same number of row passes (max_steps * batch_size rows, at least min_steps):
    10k labeled rows train in <= ~4.5k steps of ~280 rows instead of up to 20k steps of 64.
    ~2k labeled rows (MNIST-5k: 29 batches of 64) train exactly as before."""
    M = model.n_models
    gen = torch.Generator().manual_seed(seed)
    rng = np.random.default_rng(seed)
    x_tr, x_val = _holdout_split(x, holdout_fraction, rng)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    stopper = EarlyStopping(M, patience, tolerance=1e-8)
    stop_step = np.zeros(M, int)
    best_params = [p.detach().clone() for p in model.parameters()]
    steps, epochs, n_tr = 0, 0, len(x_tr)
    big_batch = scaled_batch_size(n_tr, batch_size, max_steps_per_epoch)
    if big_batch > batch_size:  # same budget of row passes as max_steps small batches, >= min_steps
        max_steps = max(min_steps, int(max_steps * batch_size / big_batch))
        batch_size = big_batch
    while steps < max_steps:
        model.train()
        orders = torch.stack([torch.randperm(n_tr, generator=gen) for _ in range(M)])
        for i in range(0, n_tr, batch_size):
            b = x_tr[orders[:, i:i + batch_size]]  # (M, B, C)
            opt.zero_grad()
            # sum over members of each member's mean MSE: the gradients stay independent
            loss = ((model(b) - b) ** 2).mean(dim=(1, 2)).sum()
            loss.backward()
            opt.step()
            steps += 1
            if steps >= max_steps:
                break
        epochs += 1
        with torch.no_grad():
            val = ((model(x_val) - x_val.unsqueeze(0)) ** 2).mean(dim=(1, 2)).numpy()
            active = ~stopper.exhausted() if steps > min_steps else None  # stopped members keep their best
            for m in np.flatnonzero(stopper.update(val, active=active)):
                for bp, p in zip(best_params, model.parameters()):
                    bp[m] = p[m]
                stop_step[m] = steps
        if steps >= min_steps and stopper.exhausted().all():
            break
    with torch.no_grad():
        for bp, p in zip(best_params, model.parameters()):
            p.copy_(bp)
    model.eval()
    return [AETrainInfo(int(stop_step[m]), epochs, float(stopper.best[m]), steps) for m in range(M)]


class AutoencoderScorer:
    """Fit an autoencoder (or a small ensemble) on labeled outputs z and score S = ||p - p_hat||^2.

    input_space="logits" (paper): the AE sees z (per-dimension standardised if ``standardize``),
    S = ||softmax(z) - softmax(z_hat)||^2.
    input_space="probs" (authors' released code): the AE sees p = softmax(z), decoder ends in
    softmax, S = ||p - p_hat||^2 (same ranking as their MSE, which is S / C).
    ``score_weights`` (C,) turns the score into S_w = sum_k w_k (p_k - p_hat_k)^2 (w rescaled to
    sum 1); the AE is still trained with the plain MSE (weighting the training loss made it worse).
    """

    def __init__(self, num_classes: int, *, input_space: str = "probs", hidden: tuple[int, ...] | None = None,
                 standardize: bool = False, n_models: int = 5, lr: float = 1e-3, batch_size: int = 64,
                 min_steps: int = 2000, max_steps: int = 20000, patience: int = 10,
                 max_steps_per_epoch: int | None = 32, score_weights=None, seed: int = 0):
        if input_space not in INPUT_SPACES:
            raise ValueError(f"input_space must be one of {INPUT_SPACES}, got {input_space!r}")
        if n_models < 1:
            raise ValueError(f"n_models must be >= 1, got {n_models}")
        self.num_classes = int(num_classes)
        self.input_space = input_space
        self.hidden = tuple(hidden) if hidden else default_hidden(num_classes)
        self.standardize = bool(standardize)
        self.n_models = int(n_models)
        self.train_kwargs = dict(lr=lr, batch_size=batch_size, min_steps=min_steps, max_steps=max_steps,
                                 patience=patience, max_steps_per_epoch=max_steps_per_epoch)
        self.score_weights = None if score_weights is None else normalise_weights(score_weights, num_classes)
        self.seed = int(seed)
        self.model: EnsembleAutoencoder | None = None
        self.mean = np.zeros(num_classes, np.float32)
        self.std = np.ones(num_classes, np.float32)
        self.infos: list[AETrainInfo] = []

    @property
    def upper_bound(self) -> float:
        """0 <= score <= upper_bound: 2 for S, w_(1) + w_(2) for S_w (mean over members keeps it)."""
        if self.score_weights is None:
            return RECONSTRUCTION_SCORE_BOUND
        return weighted_score_bound(self.score_weights)

    def _ae_input(self, z: np.ndarray) -> np.ndarray:
        if self.input_space == "probs":
            return softmax(z).astype(np.float32)
        return ((z - self.mean) / self.std).astype(np.float32)

    def fit(self, z: np.ndarray) -> "AutoencoderScorer":
        z = np.asarray(z, dtype=np.float32)
        if self.input_space == "logits" and self.standardize:
            self.mean = z.mean(0).astype(np.float32)
            self.std = np.maximum(z.std(0), 1e-6).astype(np.float32)
        x = self._ae_input(z)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            self.model = self._new_model()
        self.infos = train_ensemble(self.model, x, seed=self.seed, **self.train_kwargs)
        return self

    def _new_model(self) -> EnsembleAutoencoder:
        return EnsembleAutoencoder(self.num_classes, self.hidden, self.n_models,
                                   softmax_output=self.input_space == "probs")

    @torch.no_grad()
    def reconstruct_probs(self, z: np.ndarray) -> np.ndarray:
        """(n_models, M, C) reconstructed probability vectors."""
        # row-wise in fixed-size padded blocks (rowwise.py): members first again after the transpose
        out = apply_rowwise(lambda b: self.model(b).transpose(0, 1), self._ae_input(z))
        out = out.transpose(1, 0, 2).astype(np.float64)
        if self.input_space == "probs":
            return out
        return softmax(out * self.std + self.mean)

    def score(self, z: np.ndarray, batch_size: int = 65536) -> np.ndarray:
        if self.model is None:
            raise ValueError("autoencoder scorer is not fitted: call fit() first")
        z = np.asarray(z, dtype=np.float32)
        out = np.empty(len(z), dtype=np.float64)
        for i in range(0, len(z), batch_size):
            zb = z[i:i + batch_size]
            p = softmax(zb)
            # mean over ensemble members of S (each <= upper_bound, so the mean is too)
            p_hat = self.reconstruct_probs(zb)
            if self.score_weights is None:
                out[i:i + batch_size] = ((p[None] - p_hat) ** 2).sum(-1).mean(0)
            else:
                out[i:i + batch_size] = weighted_reconstruction_score(p[None], p_hat, self.score_weights).mean(0)
        return out

    # -- persistence helpers (plain tensors only) --
    def state(self) -> dict:
        st = {"mean": torch.from_numpy(self.mean.copy()), "std": torch.from_numpy(self.std.copy()),
              "model": self.model.state_dict()}
        if self.score_weights is not None:
            st["score_weights"] = torch.from_numpy(self.score_weights.copy())
        return st

    def load_state(self, state: dict) -> None:
        self.mean = state["mean"].numpy().astype(np.float32)
        self.std = state["std"].numpy().astype(np.float32)
        w = state.get("score_weights")  # absent in files written before weighted scores: plain S
        self.score_weights = None if w is None else normalise_weights(w.numpy(), self.num_classes)
        self.model = self._new_model()
        self.model.load_state_dict(state["model"])
        self.model.eval()
